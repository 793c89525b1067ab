"""The order half of the web app: OrderService, the JSON API, the pages and the `flask orders` CLI.

`init_app(app, settings, rules, temporal, store)` registers everything on the
app that `starter.create_app` builds:

- `OrderService`, the only code here that talks to Temporal: it starts one
  `OrderWorkflow` per order, queries it for the live status, sends the
  operator's updates (approve, cancel, change the address) and signals
  (expedite, simulate a failure). Lists, timelines and fallbacks read the
  projections the activities write to the JSON store.
- `orders_api`: JSON under /api/orders and /api/customers/<id>/rewards.
- `orders_pages`: the dashboard with the order form (/orders) and the order's
  tracker page (/orders/<id>) with the operator's action forms.
- `flask --app starter orders ...`: the same actions from a terminal.

Views stay thin: they parse and validate input (validation.py), call the
service, and map its outcomes to status codes: 404 unknown order, 409 an
action the order refuses (the workflow's own words), 503 Temporal unreachable.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import click
from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, url_for
from flask.cli import AppGroup
from temporalio.client import (
    Client,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from werkzeug.exceptions import BadRequest

from activities import order_events
from config import Messages, Rules, Settings, temporal_connect_config
from shared import (
    ACTION_REFUSED,
    FAILURE_STEPS,
    FINAL_ORDER_STATUSES,
    ORDER_MILESTONES,
    ORDER_STATUSES,
    ORDERS,
    REWARDS,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    FailureInjection,
    OrderPolicy,
    OrderRequest,
    OrderStatus,
    ShippingTiming,
    order_workflow_id,
    rewards_workflow_id,
)
from store import JsonStore
from temporal_bridge import TemporalBridge, TemporalUnavailable
from validation import (
    ADDRESS_FIELDS,
    CUSTOMER_ID_PATTERN,
    MAX_FAILURE_TIMES,
    InvalidOrder,
    NewOrder,
    parse_form_address_change,
    parse_form_failure,
    parse_form_order,
    parse_json_address_change,
    parse_json_approve,
    parse_json_cancel,
    parse_json_failure,
    parse_json_order,
)
from workflows import HANDED_TO_CARRIER, OrderWorkflow, RewardsWorkflow

PAGE_SIZE = 20
# Order IDs are 12 hex characters; anything outside this shape is unknown
# without asking Temporal (and never reaches the store as a file name).
ORDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)
# Seconds to wait for Temporal: a start or a signal is one server call; a query
# needs a worker (without one it waits, then the store answers); an update
# needs a worker to run its handler (cancel also waits for the undo steps).
START_TIMEOUT = 5.0
SIGNAL_TIMEOUT = 5.0
QUERY_TIMEOUT = 2.0
UPDATE_TIMEOUT = 10.0
# The status.attempts entry that tells how many tries a milestone took.
MILESTONE_ATTEMPTS = {
    "validated": "validate",
    "charged": "charge_payment",
    "shipped": "dispatched",
    "delivered": "delivered",
}
ACTIONS = ("approve", "cancel", "address", "expedite", "simulate-failure")


# --- the service: every Temporal call of the order pages ------------------------


class OrderNotFound(Exception):
    """No order with this ID: neither a workflow nor a stored projection."""


class NoRewards(Exception):
    """The customer has no rewards: no order of theirs was delivered yet (or no such customer)."""


class ActionRefused(Exception):
    """The order refused an operator action; the message (from the workflow) says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ActionUnconfirmed(Exception):
    """An update was sent but no worker answered in time: it may still be applied."""


@dataclass(frozen=True)
class OrderView:
    """An order's status as a JSON-ready dict, and where it came from."""

    status: dict[str, Any]
    # "workflow": the live query; "store": the projection the activities wrote
    # (no worker answered); "start": only the accepted start input (no worker yet).
    source: str


@dataclass(frozen=True)
class CreatedOrder:
    order_id: str
    workflow_id: str


class OrderService:
    def __init__(self, settings: Settings, rules: Rules, messages: Messages, temporal: TemporalBridge,
                 store: JsonStore):
        self.settings = settings
        self.rules = rules.orders
        self.messages = messages
        self.temporal = temporal
        self.store = store
        self.namespace = temporal_connect_config()["namespace"]

    @property
    def catalog_skus(self) -> list[str]:
        return [item.sku for item in self.rules.catalog]

    # --- placing and reading orders ---------------------------------------------

    def create(self, order: NewOrder) -> CreatedOrder:
        """Start the order's workflow; the server holds the order from here on."""
        order_id = uuid.uuid4().hex[:12]
        workflow_id = order_workflow_id(order_id)
        request = self._request(order_id, order)
        items = sum(line.quantity for line in order.lines)

        async def start(client: Client) -> None:
            await client.start_workflow(
                OrderWorkflow.run,
                request,
                id=workflow_id,
                task_queue=self.settings.order_task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                static_summary=f"Order {order_id}: {items} item(s){', expedited' if order.expedited else ''}",
            )

        try:
            self.temporal.run(start, timeout=START_TIMEOUT)
        except RPCError as err:
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            # The start may have reached the server before the deadline.
            if not self._exists(workflow_id):
                raise TemporalUnavailable(f"no answer starting {workflow_id}") from err
        return CreatedOrder(order_id, workflow_id)

    def _request(self, order_id: str, order: NewOrder) -> OrderRequest:
        rules = self.rules
        return OrderRequest(
            order_id=order_id,
            customer_id=order.customer_id,
            lines=order.lines,
            address=order.address,
            expedited=order.expedited,
            policy=OrderPolicy(
                max_order_total=rules.max_order_total,
                auto_approve_limit=rules.auto_approve_limit,
                review_sla_seconds=rules.review_sla_seconds,
                random_failure_rate=rules.failures.random_failure_rate,
                random_failure_seed=rules.failures.seed,
                reward_points_per_dollar=rules.rewards.points_per_dollar,
            ),
            shipping=ShippingTiming(
                prepare_seconds=rules.shipping.prepare_seconds,
                transit_seconds=rules.shipping.transit_seconds,
                expedited_transit_seconds=rules.shipping.expedited_transit_seconds,
            ),
            placed_at=datetime.now(UTC).isoformat(),
            failures=order.failures,
            shipping_task_queue=self.settings.shipping_task_queue,
            # The workflow words its refusals and timeouts with these texts.
            texts=dict(self.messages.orders),
        )

    def recent(self, page: int) -> tuple[list[dict], int, int]:
        """One page of stored orders, newest first; the total and the page count."""
        orders, total = self.store.list_recent(ORDERS, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return orders, total, max(1, math.ceil(total / PAGE_SIZE))

    def status(self, order_id: str) -> OrderView:
        """The live status from the workflow; the stored projection if no worker answers."""
        workflow_id = self._workflow_id(order_id)

        async def query(client: Client) -> OrderStatus:
            return await client.get_workflow_handle(workflow_id).query(OrderWorkflow.status)

        try:
            return OrderView(dataclasses.asdict(self.temporal.run(query, timeout=QUERY_TIMEOUT)), "workflow")
        except (RPCError, TimeoutError, TemporalUnavailable, WorkflowQueryFailedError):
            pass  # unknown, no worker, or no server: the store may still know the order
        stored = self.store.get(ORDERS, order_id)
        if stored is not None:
            return OrderView(stored, "store")
        return OrderView(dataclasses.asdict(self._accepted_order(workflow_id)), "start")

    def _accepted_order(self, workflow_id: str) -> OrderStatus:
        """The status of an order no worker has touched yet, from its workflow's start input."""

        async def start_input(client: Client) -> OrderRequest:
            # The first event of every workflow's history is its start, with the input.
            async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                [request] = await client.data_converter.decode(payloads, [OrderRequest])
                return request
            raise OrderNotFound(workflow_id)

        try:
            request = self.temporal.run(start_input, timeout=QUERY_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise OrderNotFound(workflow_id) from err
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer reading {workflow_id}") from err
        return OrderStatus.accepted(request)

    def events(self, order_id: str) -> list[dict]:
        """The order's audit trail, oldest first."""
        workflow_id = self._workflow_id(order_id)
        events = order_events(self.store, order_id)
        if not events and self.store.get(ORDERS, order_id) is None and not self._exists(workflow_id):
            raise OrderNotFound(workflow_id)
        return events

    def rewards(self, customer_id: str) -> dict[str, Any]:
        """The customer's points and tier: live from their rewards workflow, else as stored."""
        if not CUSTOMER_ID.match(customer_id):
            raise NoRewards(customer_id)

        async def query(client: Client):
            return await client.get_workflow_handle(rewards_workflow_id(customer_id)).query(RewardsWorkflow.summary)

        try:
            return dataclasses.asdict(self.temporal.run(query, timeout=QUERY_TIMEOUT))
        except (RPCError, TimeoutError, TemporalUnavailable, WorkflowQueryFailedError) as err:
            stored = self._stored_rewards(customer_id)
            if stored is not None:
                return stored
            if isinstance(err, RPCError) and err.status == RPCStatusCode.NOT_FOUND:
                raise NoRewards(customer_id) from err
            raise TemporalUnavailable(str(err)) from err

    def _stored_rewards(self, customer_id: str) -> dict[str, Any] | None:
        try:
            return self.store.get(REWARDS, customer_id)
        except ValueError:
            return None  # an ID the store cannot hold (leading "-" or "_") was never stored

    # --- operator actions ----------------------------------------------------------

    def approve(self, order_id: str, request: ApproveRequest) -> OrderView:
        return self._update(order_id, OrderWorkflow.approve, request)

    def cancel(self, order_id: str, request: CancelRequest) -> OrderView:
        return self._update(order_id, OrderWorkflow.cancel, request)

    def change_address(self, order_id: str, change: AddressChange) -> OrderView:
        return self._update(order_id, OrderWorkflow.update_address, change)

    def expedite(self, order_id: str) -> None:
        self._signal(order_id, OrderWorkflow.expedite)

    def simulate_failure(self, order_id: str, failure: FailureInjection) -> None:
        self._signal(order_id, OrderWorkflow.inject_failure, failure)

    def _update(self, order_id: str, update, argument) -> OrderView:
        workflow_id = self._workflow_id(order_id)

        async def execute(client: Client) -> OrderStatus:
            return await client.get_workflow_handle(workflow_id).execute_update(
                update, argument, rpc_timeout=timedelta(seconds=UPDATE_TIMEOUT)
            )

        try:
            status = self.temporal.run(execute, timeout=UPDATE_TIMEOUT + 1)
        except WorkflowUpdateFailedError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.type == ACTION_REFUSED:
                raise ActionRefused(err.cause.message) from err
            raise
        except RPCError as err:
            raise self._closed_or_unavailable(order_id, err) from err
        except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as err:
            raise ActionUnconfirmed(workflow_id) from err
        return OrderView(dataclasses.asdict(status), "workflow")

    def _signal(self, order_id: str, signal, *args) -> None:
        workflow_id = self._workflow_id(order_id)

        async def send(client: Client) -> None:
            await client.get_workflow_handle(workflow_id).signal(signal, *args)

        try:
            self.temporal.run(send, timeout=SIGNAL_TIMEOUT)
        except RPCError as err:
            raise self._closed_or_unavailable(order_id, err) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer signalling {workflow_id}") from err

    def _closed_or_unavailable(self, order_id: str, err: RPCError) -> Exception:
        """What an action's RPC error means: the order is unknown, over, or the server is away.

        The server answers NOT_FOUND both for an unknown workflow and for one
        that has completed; only the workflow's description (or, once the server
        has forgotten the workflow, the stored projection) tells them apart.
        """
        if err.status != RPCStatusCode.NOT_FOUND:
            return TemporalUnavailable(str(err))
        stored = self.store.get(ORDERS, order_id)
        if stored is None and not self._exists(order_workflow_id(order_id)):
            return OrderNotFound(order_id)
        status = status_label(stored["status"], self.messages).lower() if stored else "closed"
        return ActionRefused(self.messages.orders["already_final"].format(status=status))

    # --- helpers ---------------------------------------------------------------------

    def _workflow_id(self, order_id: str) -> str:
        if not ORDER_ID.match(order_id):
            raise OrderNotFound(order_id)
        return order_workflow_id(order_id)

    def _exists(self, workflow_id: str) -> bool:
        try:
            self.temporal.run(lambda client: client.get_workflow_handle(workflow_id).describe(), timeout=QUERY_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer describing {workflow_id}") from err
        return True

    def temporal_url(self, workflow_id: str) -> str:
        return f"{self.settings.temporal_ui_url}/namespaces/{quote(self.namespace)}/workflows/{quote(workflow_id)}"


def service() -> OrderService:
    return current_app.extensions["order_service"]


def texts() -> dict[str, str]:
    return service().messages.orders


def status_label(status: str, messages: Messages) -> str:
    return messages.orders.get(f"status_{status}", status.replace("_", " "))


def status_labels() -> dict[str, str]:
    return {status: status_label(status, service().messages) for status in ORDER_STATUSES}


def available_actions(status: dict[str, Any]) -> list[str]:
    """The operator actions that make sense now (the pages show only these; the
    workflow itself refuses the rest, so this is a convenience, not the rule)."""
    if status["status"] in FINAL_ORDER_STATUSES:
        return []
    actions = ["approve"] if status["status"] == "awaiting_review" else []
    if (status.get("shipment") or {}).get("stage") not in HANDED_TO_CARRIER:
        actions += ["cancel", "address"]
    if not status.get("expedited"):
        actions.append("expedite")
    return [*actions, "simulate-failure"]


def order_json(view: OrderView) -> dict[str, Any]:
    """The API's view of an order: its status, plus what a client needs to show it."""
    status = view.status
    workflow_id = order_workflow_id(status["order_id"])
    return {
        **status,
        "workflow_id": workflow_id,
        "status_label": status_label(status["status"], service().messages),
        "final": status["status"] in FINAL_ORDER_STATUSES,
        "actions": available_actions(status),
        "source": view.source,
        "temporal_url": service().temporal_url(workflow_id),
    }


# --- JSON API ----------------------------------------------------------------------

orders_api = Blueprint("orders_api", __name__, url_prefix="/api")


class BadBody(Exception):
    """The request body is not a JSON document (415) or not valid JSON (400)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def json_body(optional: bool = False) -> Any:
    """The decoded JSON body; None for a missing body when it is `optional`."""
    if optional and not request.get_data(cache=True):
        return None
    if not request.is_json:
        raise BadBody(415, texts()["not_json"])
    try:
        return request.get_json()
    except BadRequest:
        raise BadBody(400, service().messages.errors["invalid_json"]) from None


def json_error(status: int, error: str, **extra: Any):
    return jsonify({"error": error, **extra}), status


@orders_api.errorhandler(BadBody)
def _bad_body(err: BadBody):
    return json_error(err.status, err.message)


@orders_api.errorhandler(InvalidOrder)
def _invalid(err: InvalidOrder):
    return json_error(400, texts()["invalid_order"], fields=err.fields)


@orders_api.errorhandler(OrderNotFound)
def _not_found(_err: OrderNotFound):
    return json_error(404, texts()["not_found"])


@orders_api.errorhandler(NoRewards)
def _no_rewards(_err: NoRewards):
    return json_error(404, texts()["no_rewards"])


@orders_api.errorhandler(ActionRefused)
def _refused(err: ActionRefused):
    return json_error(409, err.message)


@orders_api.errorhandler(ActionUnconfirmed)
def _unconfirmed(_err: ActionUnconfirmed):
    return json_error(504, texts()["action_unconfirmed"])


@orders_api.errorhandler(TemporalUnavailable)
def _unavailable(_err: TemporalUnavailable):
    return json_error(503, texts()["unavailable"])


@orders_api.post("/orders")
def create_order():
    order = parse_json_order(json_body(), service().catalog_skus, service().messages)
    created = service().create(order)
    status_url = url_for("orders_api.order", order_id=created.order_id)
    response = jsonify({"order_id": created.order_id, "workflow_id": created.workflow_id, "status_url": status_url})
    response.headers["Location"] = status_url
    return response, 201


@orders_api.get("/orders")
def list_orders():
    page = page_argument()
    orders, total, pages = service().recent(page)
    return jsonify({
        "orders": [order_json(OrderView(order, "store")) for order in orders],
        "page": page,
        "pages": pages,
        "total": total,
    })


@orders_api.get("/orders/<order_id>")
def order(order_id: str):
    return jsonify(order_json(service().status(order_id)))


@orders_api.post("/orders/<order_id>/approve")
def approve(order_id: str):
    approval = parse_json_approve(json_body(optional=True), service().messages)
    return jsonify(order_json(service().approve(order_id, approval)))


@orders_api.post("/orders/<order_id>/cancel")
def cancel(order_id: str):
    cancellation = parse_json_cancel(json_body(), service().messages)
    return jsonify(order_json(service().cancel(order_id, cancellation)))


@orders_api.post("/orders/<order_id>/address")
def change_address(order_id: str):
    change = parse_json_address_change(json_body(), service().messages)
    return jsonify(order_json(service().change_address(order_id, change)))


@orders_api.post("/orders/<order_id>/expedite")
def expedite(order_id: str):
    service().expedite(order_id)
    return accepted(order_id, {"expedite": True})


@orders_api.post("/orders/<order_id>/simulate-failure")
def simulate_failure(order_id: str):
    failure = parse_json_failure(json_body(), service().messages)
    service().simulate_failure(order_id, failure)
    return accepted(order_id, {"failure": dataclasses.asdict(failure)})


def accepted(order_id: str, body: dict[str, Any]):
    """202 for a signal: the workflow has it and acts on it in its own time."""
    status_url = url_for("orders_api.order", order_id=order_id)
    response = jsonify({"order_id": order_id, **body, "status_url": status_url})
    response.headers["Location"] = status_url
    return response, 202


@orders_api.get("/orders/<order_id>/events")
def events(order_id: str):
    return jsonify({"events": service().events(order_id)})


@orders_api.get("/customers/<customer_id>/rewards")
def rewards(customer_id: str):
    return jsonify(service().rewards(customer_id))


def page_argument() -> int:
    raw = request.args.get("page", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest("page must be a whole number of at least 1")
    return int(raw)


# --- browser pages ---------------------------------------------------------------

orders_pages = Blueprint("orders_pages", __name__)


@orders_pages.get("/orders")
def dashboard():
    return render_dashboard(values={}, errors={}, notice=None)


@orders_pages.post("/orders")
def place_order():
    values = request.form.to_dict()
    try:
        order = parse_form_order(values, service().catalog_skus, service().messages)
        created = service().create(order)
    except InvalidOrder as err:
        notice = {"kind": "invalid", "title": texts()["invalid_order"], "text": ""}
        return render_dashboard(values, err.fields, notice), 400
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": texts()["unavailable"]}
        return render_dashboard(values, {}, notice), 503
    return redirect(url_for("orders_pages.tracker", order_id=created.order_id), code=303)


def render_dashboard(values: dict[str, str], errors: dict[str, str], notice: dict | None):
    page = page_argument()
    orders, total, pages = service().recent(page)
    return render_template(
        "orders/dashboard.html",
        orders=orders,
        page=page,
        pages=pages,
        total=total,
        catalog=service().rules.catalog,
        failure_steps=FAILURE_STEPS,
        max_failure_times=MAX_FAILURE_TIMES,
        address_fields=ADDRESS_FIELDS,
        values=values,
        errors=errors,
        notice=notice,
        labels=status_labels(),
    )


@orders_pages.get("/orders/<order_id>")
def tracker(order_id: str):
    done = request.args.get("done")
    notice = None
    if done in ACTIONS:
        notice = {"kind": "success", "title": texts()[f"done_{done.replace('-', '_')}"], "text": ""}
    return render_tracker(order_id, notice=notice)


def render_tracker(order_id: str, notice: dict | None = None, errors: dict[str, str] | None = None,
                   values: dict[str, str] | None = None, status_code: int = 200):
    try:
        view = service().status(order_id)
        events_ = service().events(order_id)
    except OrderNotFound:
        return order_error_page(404, "Order not found", texts()["not_found"])
    except TemporalUnavailable:
        return order_error_page(503, "Temporarily unavailable", texts()["unavailable"])
    order_ = order_json(view)
    return render_template(
        "orders/tracker.html",
        order=order_,
        events=events_,
        milestones=ORDER_MILESTONES,
        milestone_attempts=MILESTONE_ATTEMPTS,
        failure_steps=FAILURE_STEPS,
        max_failure_times=MAX_FAILURE_TIMES,
        address_fields=ADDRESS_FIELDS,
        notice=notice,
        errors=errors or {},
        values=values or {},
        labels=status_labels(),
        waiting_text=texts()["waiting_for_worker"],
    ), status_code


def page_action(order_id: str, action: str, run) -> Any:
    """Run one operator action from a tracker form; on success back to the page
    with a notice, otherwise the page again with the reason and the typed values."""
    values = request.form.to_dict()
    try:
        run(values)
    except InvalidOrder as err:
        notice = {"kind": "invalid", "title": texts()["invalid_order"], "text": ""}
        return render_tracker(order_id, notice, err.fields, values, 400)
    except ActionRefused as err:
        notice = {"kind": "invalid", "title": err.message, "text": ""}
        return render_tracker(order_id, notice, {}, values, 409)
    except ActionUnconfirmed:
        notice = {"kind": "unavailable", "title": texts()["action_unconfirmed"], "text": ""}
        return render_tracker(order_id, notice, {}, values, 504)
    except OrderNotFound:
        return order_error_page(404, "Order not found", texts()["not_found"])
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": texts()["unavailable"]}
        return render_tracker(order_id, notice, {}, values, 503)
    return redirect(url_for("orders_pages.tracker", order_id=order_id, done=action), code=303)


@orders_pages.post("/orders/<order_id>/approve")
def approve_page(order_id: str):
    return page_action(order_id, "approve", lambda form: service().approve(order_id, ApproveRequest()))


@orders_pages.post("/orders/<order_id>/cancel")
def cancel_page(order_id: str):
    def run(form: dict[str, str]) -> None:
        service().cancel(order_id, parse_json_cancel({"reason": form.get("reason", "")}, service().messages))

    return page_action(order_id, "cancel", run)


@orders_pages.post("/orders/<order_id>/address")
def address_page(order_id: str):
    def run(form: dict[str, str]) -> None:
        service().change_address(order_id, parse_form_address_change(form, service().messages))

    return page_action(order_id, "address", run)


@orders_pages.post("/orders/<order_id>/expedite")
def expedite_page(order_id: str):
    return page_action(order_id, "expedite", lambda form: service().expedite(order_id))


@orders_pages.post("/orders/<order_id>/simulate-failure")
def simulate_failure_page(order_id: str):
    def run(form: dict[str, str]) -> None:
        service().simulate_failure(order_id, parse_form_failure(form, service().messages))

    return page_action(order_id, "simulate-failure", run)


def order_error_page(status: int, title: str, message: str):
    return render_template(
        "error.html", status=status, title=title, message=message,
        back_url=url_for("orders_pages.dashboard"), back_text="Go to the orders",
    ), status


# --- the CLI: flask --app starter orders ... ---------------------------------------

orders_cli = AppGroup("orders", help="Place, follow and operate orders (the same service as the web pages).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def address_options(command):
    for part in reversed(ADDRESS_FIELDS):
        command = click.option(f"--{part.replace('_', '-')}", part, required=True, help=f"Address: {part}.")(command)
    return command


def cli_call(as_json: bool, call):
    """Run a service call; print why it failed and exit 1 (2 for invalid input)."""
    try:
        return call()
    except InvalidOrder as err:
        fail(as_json, texts()["invalid_order"], 2, fields=err.fields)
    except OrderNotFound:
        fail(as_json, texts()["not_found"], 1)
    except ActionRefused as err:
        fail(as_json, err.message, 1)
    except ActionUnconfirmed:
        fail(as_json, texts()["action_unconfirmed"], 1)
    except TemporalUnavailable:
        fail(as_json, texts()["unavailable"], 1)


def fail(as_json: bool, error: str, code: int, fields: dict[str, str] | None = None):
    if as_json:
        click.echo(json.dumps({"error": error, **({"fields": fields} if fields else {})}, indent=2))
    else:
        click.echo(error, err=True)
        for name, text in (fields or {}).items():
            click.echo(f"  {name}: {text}", err=True)
    click.get_current_context().exit(code)


def item_spec(spec: str) -> dict[str, Any]:
    """SKU[:QUANTITY], e.g. KB-100:2; the quantity defaults to 1."""
    sku, _, quantity = spec.partition(":")
    return {"sku": sku, "quantity": int(quantity) if quantity.isdigit() else (quantity or 1)}


def failure_spec(spec: str) -> dict[str, Any]:
    """STEP[:TIMES][:permanent], e.g. payment:2 or shipping:1:permanent."""
    step, *options = spec.split(":")
    failure: dict[str, Any] = {"step": step}
    for option in options:
        if option == "permanent":
            failure["permanent"] = True
        else:
            # Anything else is passed on as the times, so validation names the problem.
            failure["times"] = int(option) if option.isdigit() else option
    return failure


@orders_cli.command("create")
@click.option("--customer", required=True, help="Customer id (letters, digits, '-', '_').")
@click.option("--item", "items", multiple=True, required=True, metavar="SKU[:QTY]", help="A product and its quantity; repeat for more.")
@address_options
@click.option("--expedited", is_flag=True, help="Ship with the express carrier.")
@click.option("--fail", "failures", multiple=True, metavar="STEP[:TIMES][:permanent]",
              help="Simulate failures of inventory, payment or shipping; repeat for more.")
@json_option
def create_command(customer, items, expedited, failures, as_json, **address):
    """Place an order."""
    data = {
        "customer_id": customer,
        "items": [item_spec(spec) for spec in items],
        "address": address,
        "expedited": expedited,
        "failures": [failure_spec(spec) for spec in failures],
    }

    def create() -> CreatedOrder:
        return service().create(parse_json_order(data, service().catalog_skus, service().messages))

    created = cli_call(as_json, create)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(created), indent=2))
    else:
        click.echo(f"Order {created.order_id} placed (workflow {created.workflow_id}).")
        click.echo(f"Follow it: flask --app starter orders status {created.order_id}")


@orders_cli.command("status")
@click.argument("order_id")
@json_option
def status_command(order_id, as_json):
    """Show an order's status."""
    view = cli_call(as_json, lambda: service().status(order_id))
    echo_order(view, as_json)


@orders_cli.command("events")
@click.argument("order_id")
@json_option
def events_command(order_id, as_json):
    """Show an order's timeline, oldest first."""
    events_ = cli_call(as_json, lambda: service().events(order_id))
    if as_json:
        click.echo(json.dumps({"events": events_}, indent=2))
        return
    for event in events_:
        attempt = f" (attempt {event['attempt']})" if event.get("attempt") else ""
        click.echo(f"{event['at'][:19].replace('T', ' ')}  {event['kind']:<12} {event['message']}{attempt}")


@orders_cli.command("approve")
@click.argument("order_id")
@click.option("--operator", default=ApproveRequest().operator, show_default=True, help="Who approves.")
@json_option
def approve_command(order_id, operator, as_json):
    """Approve an order that awaits review."""
    view = cli_call(as_json, lambda: service().approve(
        order_id, parse_json_approve({"operator": operator}, service().messages)))
    echo_order(view, as_json)


@orders_cli.command("cancel")
@click.argument("order_id")
@click.option("--reason", required=True, help="Why the order is cancelled.")
@click.option("--operator", default=CancelRequest("").operator, show_default=True, help="Who cancels.")
@json_option
def cancel_command(order_id, reason, operator, as_json):
    """Cancel an order (before it is handed to the carrier); undoes what was done."""
    view = cli_call(as_json, lambda: service().cancel(
        order_id, parse_json_cancel({"reason": reason, "operator": operator}, service().messages)))
    echo_order(view, as_json)


@orders_cli.command("address")
@click.argument("order_id")
@address_options
@json_option
def address_command(order_id, as_json, **address):
    """Change the shipping address (before the parcel is handed to the carrier)."""
    view = cli_call(as_json, lambda: service().change_address(
        order_id, parse_json_address_change(address, service().messages)))
    echo_order(view, as_json)


def echo_order(view: OrderView, as_json: bool) -> None:
    order_ = order_json(view)
    if as_json:
        click.echo(json.dumps(order_, indent=2))
        return
    click.echo(f"Order {order_['order_id']}: {order_['status_label']} (step: {order_['step']})")
    click.echo(f"  customer: {order_['customer_id']}   total: {money(order_['total'])}"
               f"   expedited: {'yes' if order_['expedited'] else 'no'}")
    if order_["reason"]:
        click.echo(f"  reason: {order_['reason']}")
    reached = order_["milestones"]
    click.echo("  milestones: " + "  ".join(
        f"[{'x' if name in reached else ' '}] {name}" for name in ORDER_MILESTONES))
    if order_["attempts"]:
        click.echo("  attempts: " + ", ".join(f"{step} {count}" for step, count in order_["attempts"].items()))
    if order_["payment"]:
        payment = order_["payment"]
        click.echo(f"  payment: {payment['status']} {money(payment['amount'])} (key {payment['payment_key']})")
    shipment = order_["shipment"]
    carrier = f", {shipment['carrier']} {shipment['tracking_number']}" if shipment.get("carrier") else ""
    click.echo(f"  shipment: {shipment['stage'].replace('_', ' ')}{carrier}")
    if order_["compensations"]:
        click.echo("  compensations: " + ", ".join(order_["compensations"]))
    if view.source != "workflow":
        click.echo(f"  (from the {'stored projection' if view.source == 'store' else 'accepted order'}:"
                   " no worker answered just now)")


def money(amount: float | None) -> str:
    return "not priced yet" if amount is None else f"${amount:,.2f}"


# --- registration ----------------------------------------------------------------


def init_app(app: Flask, settings: Settings, rules: Rules, temporal: TemporalBridge, store: JsonStore) -> None:
    """Add the order service, API, pages and CLI to the app (after its messages are loaded)."""
    app.extensions["order_service"] = OrderService(settings, rules, app.extensions["messages"], temporal, store)
    app.register_blueprint(orders_api)
    app.register_blueprint(orders_pages)
    app.cli.add_command(orders_cli)
