"""The order half's Temporal-facing service: every Temporal call the order routes and CLI make.

`OrderService` starts one `OrderWorkflow` per order, reads its status from
the projection the workflow records at every step (querying it only before the
first record), sends the operator's updates (approve, cancel, change the address) and
signals (expedite, simulate a failure). Lists, timelines and fallbacks read the
projections the activities write to the JSON store. It knows nothing of Flask:
`orders/web.py` and `orders/cli.py` map its errors to HTTP answers and exit
codes (404 unknown order, 409 an action the order refuses, in the workflow's
own words, 504 unconfirmed, 503 Temporal unreachable).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowQueryFailedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.formatting import CHART_DAYS, counts_by_day, last_days
from core.idempotency import IdempotencyKeyReused, fingerprint
from core.listing import SEARCH, Listing, list_page
from core.rules import Messages, Rules
from core.settings import Settings, temporal_connect_config
from core.store import Store
from core.temporal_client import OutcomeUnknown, ProcessClient, TemporalUnavailable, workflow_ui_url
from orders.actions import recorded_actions
from orders.activities import order_events, stored_order
from orders.model import (
    ACTION_REFUSED,
    FINAL_ORDER_STATUSES,
    INVENTORY,
    ORDER_STATUSES,
    ORDERS,
    STOCK,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    FailureInjection,
    MessageFrom,
    OrderPolicy,
    OrderRequest,
    OrderStatus,
    ShippingTiming,
    order_workflow_id,
    workflow_texts,
)
from orders.rewards_model import REWARDS
from orders.validation import CUSTOMER_ID_PATTERN, NewOrder
from orders.workflow import OrderWorkflow

# Order IDs are 12 hex characters (`create`); anything else (the shipping child's ID, a loan's,
# a path trick) is unknown without asking Temporal, and never reaches the store as a file name.
ORDER_ID = re.compile(r"^[0-9a-f]{12}$")
# The orders list's filters (query parameters) and the store's field each reads.
LIST_FILTERS: dict[str, tuple[str, ...] | None] = {"status": ORDER_STATUSES, "customer": None, "email": None, SEARCH: None}
LIST_FIELDS = {"status": "status", "customer": "customer_id", "email": "customer_email"}
CUSTOMER_ID = re.compile(CUSTOMER_ID_PATTERN)
# Seconds to wait for Temporal: a start or a signal is one server call; a query
# needs a worker (without one it waits, then the store answers); an update
# needs a worker to run its handler (cancel also waits for the undo steps).
START_TIMEOUT = 5.0
SIGNAL_TIMEOUT = 5.0
QUERY_TIMEOUT = 2.0
UPDATE_TIMEOUT = 10.0


def idempotent_order_id(customer_id: str, idempotency_key: str) -> str:
    """The order ID a customer's idempotency key stands for: the same key, the same order."""
    return hashlib.sha256(f"{customer_id}\0{idempotency_key}".encode()).hexdigest()[:12]


def order_fingerprint(order: NewOrder) -> str:
    """A digest of the order as validated: what a retry with the same idempotency key must repeat."""
    return fingerprint(order)


class OrderNotFound(Exception):
    """No order with this ID: neither a workflow nor a stored projection."""


class NoRewards(Exception):
    """The customer has no rewards: no order of theirs was delivered yet (or no such customer)."""


class ActionRefused(Exception):
    """The order refused an operator action; the message (from the workflow) says why."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ActionFailed(Exception):
    """The order's workflow failed the action for a reason that is not a refusal."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ActionUnconfirmed(Exception):
    """An update was sent but no worker answered in time: it may still be applied."""


@dataclass(frozen=True)
class OrderView:
    """An order's status as a JSON-ready dict, and where it came from."""

    status: dict[str, Any]
    # "store": the projection the workflow recorded (the usual answer);
    # "workflow": the live query (nothing recorded yet); "start": only the
    # accepted start input (nothing recorded, no worker answered).
    source: str


@dataclass(frozen=True)
class CreatedOrder:
    order_id: str
    workflow_id: str
    # False when an idempotency key named an order placed before: the same order, not a new one.
    created: bool = True


class OrderService:
    def __init__(self, settings: Settings, rules: Rules, messages: Messages, temporal: ProcessClient, store: Store):
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

    async def create(self, order: NewOrder, idempotency_key: str | None = None) -> CreatedOrder:
        """Start the order's workflow; the server holds the order from here on.

        With an idempotency key, the order ID is derived from the customer and
        the key, and the server refuses a second workflow with that ID, running
        or closed: a client that retries after losing the answer gets the same
        order back (`created=False`), never a second one. The workflow's memo
        keeps the order's fingerprint with it, so the same key sent with another
        order is refused (`IdempotencyKeyReused`) rather than answered with the first.
        """
        order_id = idempotent_order_id(order.customer_id, idempotency_key) if idempotency_key else uuid.uuid4().hex[:12]
        workflow_id = order_workflow_id(order_id)
        fingerprint = order_fingerprint(order) if idempotency_key else None
        items = sum(line.quantity for line in order.lines)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                client = await self.temporal.get()
                await client.start_workflow(
                    OrderWorkflow.run,
                    self._request(order_id, order),
                    id=workflow_id,
                    task_queue=self.settings.order_task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
                    memo={"order_fingerprint": fingerprint} if fingerprint else None,
                    static_summary=f"Order {order_id}: {items} item(s){', expedited' if order.expedited else ''}",
                )
        except WorkflowAlreadyStartedError:
            if fingerprint is None:
                raise  # a random ID that collided: not expected in practice
            await self._check_same_order(workflow_id, fingerprint)
            return CreatedOrder(order_id, workflow_id, created=False)
        except (RPCError, TimeoutError) as err:
            # Sent, then no answer (a deadline, a dropped connection): the order may have started.
            # Whether its workflow exists now says; "nothing was changed" only when it does not.
            try:
                exists = await self._exists(workflow_id)
            except TemporalUnavailable:
                raise OutcomeUnknown(workflow_id) from err
            if not exists:
                raise TemporalUnavailable(f"no order {workflow_id} after: {err}") from err
            if fingerprint is not None:
                await self._check_same_order(workflow_id, fingerprint)  # ours, or an earlier order's key
        return CreatedOrder(order_id, workflow_id)

    async def _check_same_order(self, workflow_id: str, fingerprint: str) -> None:
        """Raise IdempotencyKeyReused unless the order under this key has this fingerprint.

        Orders placed before fingerprints were kept have none: they count as the
        same order, as they did then.
        """
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                client = await self.temporal.get()
                memo = await (await client.get_workflow_handle(workflow_id).describe()).memo()
        except RPCError as err:
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer describing {workflow_id}") from err
        if memo.get("order_fingerprint", fingerprint) != fingerprint:
            raise IdempotencyKeyReused(workflow_id)

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
            # The workflow words its refusals, notices and emails with these texts.
            texts=workflow_texts(self.messages.orders),
            customer_email=order.customer_email,
            messages_need_sender=True,
            card=order.card,
        )

    def listing(self, page: int, chosen: tuple[str, str] | None = None, after: str | None = None) -> Listing:
        """One page of stored orders, newest first, or those with the `chosen` status, customer ID or email."""
        listing = list_page(self.store, ORDERS, "status", LIST_FIELDS, "customer", page, chosen, lambda o: o["order_id"], after)
        return dataclasses.replace(listing, records=[stored_order(order) for order in listing.records])

    def statuses_by_day(self, days: int = CHART_DAYS) -> dict[str, dict[str, int]]:
        """The orders placed on each of the last `days` days by their status now: counts the store keeps."""
        return counts_by_day(self.store.count_by(ORDERS, "day_status"), last_days(days))

    def stock_levels(self) -> dict[str, int]:
        levels = (self.store.get(INVENTORY, STOCK) or {}).get("levels", {})  # what the reservations keep
        return {item.sku: levels.get(item.sku, item.stock) for item in self.rules.catalog}

    async def status(self, order_id: str) -> OrderView:
        """The order's status: the projection the workflow records at every step, from the store.

        Reading it costs the worker nothing, however many pages refresh: the
        workflow writes it (`record_progress`, a local activity) in the same
        workflow task as every change it shows, so it is as fresh as a query
        would be. Only an order the workflow has not recorded yet (just placed)
        asks the workflow, and with no worker the start input answers.
        """
        workflow_id = self._workflow_id(order_id)
        stored = self.store.get(ORDERS, order_id)
        if stored is not None:
            return OrderView(stored_order(stored), "store")
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                client = await self.temporal.get()
                status = await client.get_workflow_handle(workflow_id).query(OrderWorkflow.status)
            return OrderView(dataclasses.asdict(status), "workflow")
        except (RPCError, TimeoutError, TemporalUnavailable, WorkflowQueryFailedError):
            pass  # unknown, no worker, or no server: the store may have it by now
        stored = self.store.get(ORDERS, order_id)
        if stored is not None:
            return OrderView(stored_order(stored), "store")
        return OrderView(dataclasses.asdict(await self._accepted_order(workflow_id)), "start")

    async def _accepted_order(self, workflow_id: str) -> OrderStatus:
        """The status of an order no worker has touched yet, from its workflow's start input."""

        async def start_input(client: Client) -> OrderRequest:
            # The first event of every workflow's history is its start, with the input.
            async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
                payloads = event.workflow_execution_started_event_attributes.input.payloads
                [request] = await client.data_converter.decode(payloads, [OrderRequest])
                return request
            raise OrderNotFound(workflow_id)

        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                request = await start_input(await self.temporal.get())
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise OrderNotFound(workflow_id) from err
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer reading {workflow_id}") from err
        return OrderStatus.accepted(request)

    async def events(self, order_id: str) -> list[dict]:
        """The order's audit trail, oldest first."""
        workflow_id = self._workflow_id(order_id)
        events = order_events(self.store, order_id)
        if not events and self.store.get(ORDERS, order_id) is None and not await self._exists(workflow_id):
            raise OrderNotFound(workflow_id)
        return events

    async def rewards(self, customer_id: str) -> dict[str, Any]:
        """The customer's points and tier, as their record holds them (the award of points counts them there)."""
        stored = self.stored_rewards(customer_id) if CUSTOMER_ID.match(customer_id) else None
        if stored is None:
            raise NoRewards(customer_id)
        return stored

    def stored_rewards(self, customer_id: str) -> dict[str, Any] | None:
        try:
            return self.store.get(REWARDS, customer_id)
        except ValueError:
            return None  # an ID the store cannot hold (leading "-" or "_") was never stored

    # --- operator actions ----------------------------------------------------------

    async def approve(self, order_id: str, request: ApproveRequest) -> OrderView:
        return await self._update(order_id, OrderWorkflow.approve, request)

    async def cancel(self, order_id: str, request: CancelRequest) -> OrderView:
        return await self._update(order_id, OrderWorkflow.cancel, request)

    async def change_address(self, order_id: str, change: AddressChange) -> OrderView:
        return await self._update(order_id, OrderWorkflow.update_address, change)

    async def expedite(self, order_id: str, sender: str) -> None:
        await self._signal(order_id, OrderWorkflow.expedite, MessageFrom(sender))

    async def simulate_failure(self, order_id: str, failure: FailureInjection) -> None:
        await self._signal(order_id, OrderWorkflow.inject_failure, failure)

    async def _update(self, order_id: str, update, argument) -> OrderView:
        workflow_id = self._workflow_id(order_id)
        try:
            async with asyncio.timeout(UPDATE_TIMEOUT + 1):
                client = await self.temporal.get()
                status = await client.get_workflow_handle(workflow_id).execute_update(
                    update, argument, rpc_timeout=timedelta(seconds=UPDATE_TIMEOUT)
                )
        except WorkflowUpdateFailedError as err:
            if isinstance(err.cause, ApplicationError) and err.cause.type == ACTION_REFUSED:
                raise ActionRefused(err.cause.message) from err
            raise ActionFailed(str(err.cause or err)) from err
        except RPCError as err:
            raise await self._closed_or_unavailable(order_id, err) from err
        except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError) as err:
            raise ActionUnconfirmed(workflow_id) from err
        return OrderView(dataclasses.asdict(status), "workflow")

    async def _signal(self, order_id: str, signal, *args) -> None:
        workflow_id = self._workflow_id(order_id)
        try:
            async with asyncio.timeout(SIGNAL_TIMEOUT):
                client = await self.temporal.get()
                await client.get_workflow_handle(workflow_id).signal(signal, *args)
        except RPCError as err:
            raise await self._closed_or_unavailable(order_id, err) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer signalling {workflow_id}") from err

    async def _closed_or_unavailable(self, order_id: str, err: RPCError) -> Exception:
        """What an action's RPC error means: the order is unknown, over, or the server is away.

        The server answers NOT_FOUND both for an unknown workflow and for one
        that has completed; only the workflow's description (or, once the server
        has forgotten the workflow, the stored projection) tells them apart.
        """
        if err.status != RPCStatusCode.NOT_FOUND:
            return TemporalUnavailable(str(err))
        stored = self.store.get(ORDERS, order_id)
        if stored is None and not await self._exists(order_workflow_id(order_id)):
            return OrderNotFound(order_id)
        status = self.status_label(stored["status"]).lower() if stored else "closed"
        return ActionRefused(self.messages.orders["already_final"].format(status=status))

    # --- how an order is shown -------------------------------------------------------

    def describe(self, view: OrderView) -> dict[str, Any]:
        """The API's view of an order: its status, plus what a client needs to show it."""
        status = view.status
        workflow_id = order_workflow_id(status["order_id"])
        return {
            **status,
            "workflow_id": workflow_id,
            "status_label": self.status_label(status["status"]),
            "final": status["status"] in FINAL_ORDER_STATUSES,
            "actions": recorded_actions(status),
            "source": view.source,
            "temporal_url": self.temporal_url(workflow_id),
        }

    def status_label(self, status: str) -> str:
        return self.messages.orders.get(f"status_{status}", status.replace("_", " "))

    def status_labels(self) -> dict[str, str]:
        return {status: self.status_label(status) for status in ORDER_STATUSES}

    def temporal_url(self, workflow_id: str) -> str:
        return workflow_ui_url(self.settings.temporal_ui_url, self.namespace, workflow_id)

    # --- helpers ---------------------------------------------------------------------

    def _workflow_id(self, order_id: str) -> str:
        if not ORDER_ID.match(order_id):
            raise OrderNotFound(order_id)
        return order_workflow_id(order_id)

    async def placed_with_key(self, customer_id: str, idempotency_key: str) -> str | None:
        """The order this customer placed with this key (recorded, or started), else None."""
        order_id = idempotent_order_id(customer_id, idempotency_key)
        found = self.store.get(ORDERS, order_id) is not None or await self._exists(order_workflow_id(order_id))
        return order_id if found else None

    async def _exists(self, workflow_id: str) -> bool:
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                client = await self.temporal.get()
                await client.get_workflow_handle(workflow_id).describe()
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return False
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable(f"no answer describing {workflow_id}") from err
        return True
