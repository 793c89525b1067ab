"""The order half's HTTP routes: the JSON API under /api and the operator's pages.

- `orders_api`: JSON under /api/orders and /api/customers/<id>/rewards.
- `orders_pages`: the dashboard with the order form (/orders) and the order's
  tracker page (/orders/<id>) with the operator's action forms.

Each view parses its input (validation.py), awaits `OrderService`
(orders/service.py), and renders the outcome. The service's errors map to
answers in one place per blueprint: 404 unknown order, 409 an action the order
refuses (the workflow's own words), 504 unconfirmed, 503 Temporal unreachable.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    get_flashed_messages,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)

from core.formatting import day_chart
from core.idempotency import FORM_KEY_FIELD, IdempotencyKeyReused, form_key, new_form_key
from core.temporal_client import OutcomeUnknown, TemporalUnavailable
from orders.display import ATTEMPT_NAMES, POSTCODE_AFTER_CITY, STEP_NAMES
from orders.model import (
    FAILURE_STEPS,
    ORDER_EMAIL_KINDS,
    ORDER_MILESTONES,
    ORDER_STATUSES,
    order_workflow_id,
)
from orders.review_page import orders_review
from orders.service import (
    LIST_FILTERS,
    ActionFailed,
    ActionRefused,
    ActionUnconfirmed,
    NoRewards,
    OrderNotFound,
    OrderService,
    OrderView,
)
from orders.validation import (
    ADDRESS_FIELDS,
    MAX_FAILURE_TIMES,
    InvalidOrder,
    parse_form_address_change,
    parse_form_approve,
    parse_form_cancel,
    parse_form_failure,
    parse_form_order,
    parse_idempotency_key,
    parse_json_address_change,
    parse_json_approve,
    parse_json_cancel,
    parse_json_failure,
    parse_json_order,
)
from web.auth import current_operator
from web.common import (
    BadBody,
    after_argument,
    bad_body_error,
    error_page,
    json_body,
    json_error,
    list_filter,
    page_argument,
)

# The status.attempts entry that tells how many tries a milestone took.
MILESTONE_ATTEMPTS = {
    "validated": "validate",
    "charged": "charge_payment",
    "shipped": "dispatched",
    "delivered": "delivered",
}

# The flash() category of the banner an order page shows once after an action
# succeeded: kept in the session, never taken from the URL, which anyone can write.
ORDER_DONE = "order-done"

orders_api = Blueprint("orders_api", __name__, url_prefix="/api")
orders_pages = Blueprint("orders_pages", __name__)


def service() -> OrderService:
    return current_app.extensions["order_service"]


def texts() -> dict[str, str]:
    return service().messages.orders


def order_json(view: OrderView) -> dict[str, Any]:
    return service().describe(view)


def body(optional: bool = False) -> Any:
    return json_body(texts()["not_json"], optional=optional)


# --- JSON API ----------------------------------------------------------------------


@orders_api.errorhandler(BadBody)
def _bad_body(err: BadBody):
    return bad_body_error(err)


@orders_api.errorhandler(InvalidOrder)
def _invalid(err: InvalidOrder):
    return json_error(400, texts()["invalid_order"], fields=err.fields)


@orders_api.errorhandler(OrderNotFound)
def _not_found(_err: OrderNotFound):
    return json_error(404, texts()["not_found"])


@orders_api.errorhandler(NoRewards)
def _no_rewards(_err: NoRewards):
    return json_error(404, texts()["no_rewards"])


@orders_api.errorhandler(IdempotencyKeyReused)
def _key_reused(_err: IdempotencyKeyReused):
    # 422 as Stripe answers it: the request is well formed, but the key already stands for another order.
    error = texts()["idempotency_key_reused"]
    return json_error(422, error, fields={"Idempotency-Key": error})


@orders_api.errorhandler(ActionRefused)
def _refused(err: ActionRefused):
    return json_error(409, err.message)


@orders_api.errorhandler(ActionFailed)
def _failed(err: ActionFailed):
    return json_error(502, texts()["action_failed"].format(reason=err.message))


@orders_api.errorhandler(ActionUnconfirmed)
def _unconfirmed(_err: ActionUnconfirmed):
    return json_error(504, texts()["action_unconfirmed"])


@orders_api.errorhandler(TemporalUnavailable)
def _unavailable(_err: TemporalUnavailable):
    return json_error(503, texts()["unavailable"])


@orders_api.errorhandler(OutcomeUnknown)
def _outcome_unknown(_err: OutcomeUnknown):
    return json_error(503, texts()["placement_unknown"])


@orders_api.post("/orders")
async def create_order():
    """201 for a new order; 200 with the same order when its Idempotency-Key was used before for
    this order; 422 when the key was used for a different one."""
    order = parse_json_order(body(), service().catalog_skus, service().messages)
    key = parse_idempotency_key(request.headers.get("Idempotency-Key"), service().messages)
    created = await service().create(order, idempotency_key=key)
    status_url = url_for("orders_api.order", order_id=created.order_id)
    response = jsonify({"order_id": created.order_id, "workflow_id": created.workflow_id, "status_url": status_url})
    response.headers["Location"] = status_url
    return response, 201 if created.created else 200


@orders_api.get("/orders")
def list_orders():
    listing = service().listing(page_argument(), list_filter(LIST_FILTERS), after_argument())
    return jsonify({"orders": [order_json(OrderView(order, "store")) for order in listing.records], **listing.as_json()})


@orders_api.get("/orders/<order_id>")
async def order(order_id: str):
    return jsonify(order_json(await service().status(order_id)))


@orders_api.post("/orders/<order_id>/approve")
async def approve(order_id: str):
    raw = body(optional=True)
    approval = dataclasses.replace(parse_json_approve(raw, service().messages), operator=acting_operator(raw))
    return jsonify(order_json(await service().approve(order_id, approval)))


@orders_api.post("/orders/<order_id>/cancel")
async def cancel(order_id: str):
    raw = body()
    cancellation = dataclasses.replace(parse_json_cancel(raw, service().messages), operator=acting_operator(raw))
    return jsonify(order_json(await service().cancel(order_id, cancellation)))


@orders_api.post("/orders/<order_id>/address")
async def change_address(order_id: str):
    raw = body()
    change = dataclasses.replace(parse_json_address_change(raw, service().messages), operator=acting_operator(raw))
    return jsonify(order_json(await service().change_address(order_id, change)))


@orders_api.post("/orders/<order_id>/expedite")
async def expedite(order_id: str):
    await service().expedite(order_id, acting_operator(None))
    return accepted(order_id, {"expedite": True})


@orders_api.post("/orders/<order_id>/simulate-failure")
async def simulate_failure(order_id: str):
    failure = parse_json_failure(body(), service().messages)
    await service().simulate_failure(order_id, failure)
    return accepted(order_id, {"failure": dataclasses.asdict(failure)})


def acting_operator(values: Any) -> str:
    """Who an action is by, for the timeline and the history: the signed-in operator. A body or
    form that names someone else is refused (the field `operator`), never taken at its word."""
    operator = current_operator()
    assert operator is not None  # every action route is operator-only (web/auth.py)
    given = values.get("operator") if isinstance(values, dict) else None
    if given is not None and given != operator.name:
        raise InvalidOrder({"operator": texts()["operator_is_who_signed_in"].format(name=operator.name)})
    return operator.name


def accepted(order_id: str, body_: dict[str, Any]):
    """202 for a signal: the workflow has it and acts on it in its own time."""
    status_url = url_for("orders_api.order", order_id=order_id)
    response = jsonify({"order_id": order_id, **body_, "status_url": status_url})
    response.headers["Location"] = status_url
    return response, 202


@orders_api.get("/orders/<order_id>/events")
async def events(order_id: str):
    return jsonify({"events": await service().events(order_id)})


@orders_api.get("/customers/<customer_id>/rewards")
async def rewards(customer_id: str):
    return jsonify(await service().rewards(customer_id))


# --- browser pages ---------------------------------------------------------------


@orders_pages.get("/orders")
def dashboard():
    return render_dashboard(values={FORM_KEY_FIELD: new_form_key()}, errors={}, notice=None)


@orders_pages.post("/orders")
async def place_order():
    values = request.form.to_dict()
    key = form_key(values)  # pressing twice, or sending again after an error, places one order
    try:
        order = parse_form_order(values, service().catalog_skus, service().messages)
        created = await service().create(order, idempotency_key=key)
    except InvalidOrder as err:
        notice = {"kind": "invalid", "title": texts()["invalid_order"], "text": ""}
        return render_dashboard(values, err.fields, notice), 400
    except IdempotencyKeyReused:
        values[FORM_KEY_FIELD] = new_form_key()  # other contents: a new order, placed by sending again
        notice = {"kind": "invalid", "title": texts()["form_changed_after_submit"], "text": ""}
        return render_dashboard(values, {}, notice), 409
    except OutcomeUnknown:
        notice = {"kind": "unavailable", "title": "Please try again", "text": texts()["placement_unknown_form"]}
        return render_dashboard(values, {}, notice), 503
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": texts()["unavailable"]}
        return render_dashboard(values, {}, notice), 503
    flash_done(created.order_id, texts()["placed"], texts()["placed_emailing"].format(email=order.customer_email))
    return redirect(url_for("orders_pages.tracker", order_id=created.order_id), code=303)


def render_dashboard(values: dict[str, str], errors: dict[str, str], notice: dict | None):
    return render_template(
        "orders/dashboard.html",
        listing=service().listing(page_argument(), list_filter(LIST_FILTERS), after_argument()),
        catalog=service().rules.catalog,
        stock=service().stock_levels(),
        failure_steps=FAILURE_STEPS,
        max_failure_times=MAX_FAILURE_TIMES,
        address_fields=ADDRESS_FIELDS,
        values=values,
        errors=errors,
        notice=notice,
        labels=service().status_labels(),
        chart=day_chart(service().statuses_by_day(), ORDER_STATUSES),
    )


@orders_pages.get("/orders/<order_id>")
async def tracker(order_id: str):
    return await render_tracker(order_id, notice=flashed_done(order_id))


def flash_done(order_id: str, title: str, text: str = "") -> None:
    """The banner the order's page shows once, on the redirect after an action that succeeded."""
    flash({"order_id": order_id, "title": title, "text": text}, ORDER_DONE)  # type: ignore[arg-type]  # a dict: Flask keeps any JSON value


def flashed_done(order_id: str) -> dict | None:
    """The banner flashed for this order, if any (read once: a reload shows none)."""
    flashed: list[Any] = get_flashed_messages(category_filter=[ORDER_DONE])  # dicts (see flash_done)
    done = [message for message in flashed if isinstance(message, dict) and message.get("order_id") == order_id]
    if not done:
        return None
    return {"kind": "success", "title": done[-1]["title"], "text": done[-1]["text"]}


async def render_tracker(
    order_id: str,
    notice: dict | None = None,
    errors: dict[str, str] | None = None,
    values: dict[str, str] | None = None,
    status_code: int = 200,
):
    try:
        view = await service().status(order_id)
        timeline = await service().events(order_id)
    except OrderNotFound:
        return order_error_page(404, "Order not found", texts()["not_found"])
    except TemporalUnavailable:
        return order_error_page(503, "Temporarily unavailable", texts()["unavailable"])
    return render_template(
        "orders/tracker.html",
        order=order_json(view),
        events=timeline,
        milestones=ORDER_MILESTONES,
        email_kinds=ORDER_EMAIL_KINDS,
        milestone_attempts=MILESTONE_ATTEMPTS,
        # The attempts' order as a list too: the page's JSON sorts a mapping's keys.
        names={"steps": STEP_NAMES, "attempts": ATTEMPT_NAMES, "attempt_order": list(ATTEMPT_NAMES)},
        postcode_after_city=POSTCODE_AFTER_CITY,
        failure_steps=FAILURE_STEPS,
        max_failure_times=MAX_FAILURE_TIMES,
        address_fields=ADDRESS_FIELDS,
        notice=notice,
        errors=errors or {},
        values=values or {},
        labels=service().status_labels(),
        waiting_text=texts()["waiting_for_worker"],
        mail_about=order_workflow_id(order_id),
        signed_out_text=texts()["signed_out_live"],
    ), status_code


async def page_action(order_id: str, action: str, run) -> Any:
    """Run one operator action from a tracker form; on success back to the page
    with a notice (flashed: shown once), otherwise the page again with the reason and the typed values."""
    values = request.form.to_dict()
    try:
        await run(values)
    except InvalidOrder as err:
        notice = {"kind": "invalid", "title": texts()["invalid_order"], "text": ""}
        return await render_tracker(order_id, notice, err.fields, values, 400)
    except ActionRefused as err:
        notice = {"kind": "invalid", "title": err.message, "text": ""}
        return await render_tracker(order_id, notice, {}, values, 409)
    except ActionFailed as err:
        notice = {"kind": "unavailable", "title": texts()["action_failed"].format(reason=err.message), "text": ""}
        return await render_tracker(order_id, notice, {}, values, 502)
    except ActionUnconfirmed:
        notice = {"kind": "unavailable", "title": texts()["action_unconfirmed"], "text": ""}
        return await render_tracker(order_id, notice, {}, values, 504)
    except OrderNotFound:
        return order_error_page(404, "Order not found", texts()["not_found"])
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": texts()["unavailable"]}
        return await render_tracker(order_id, notice, {}, values, 503)
    flash_done(order_id, texts()[f"done_{action.replace('-', '_')}"])
    return redirect(url_for("orders_pages.tracker", order_id=order_id), code=303)


@orders_pages.post("/orders/<order_id>/approve")
async def approve_page(order_id: str):
    def run(form: dict[str, str]):
        approval = parse_form_approve(form, service().messages)
        return service().approve(order_id, dataclasses.replace(approval, operator=acting_operator(form)))

    return await page_action(order_id, "approve", run)


@orders_pages.post("/orders/<order_id>/cancel")
async def cancel_page(order_id: str):
    def run(form: dict[str, str]):
        cancellation = parse_form_cancel(form, service().messages)
        return service().cancel(order_id, dataclasses.replace(cancellation, operator=acting_operator(form)))

    return await page_action(order_id, "cancel", run)


@orders_pages.post("/orders/<order_id>/address")
async def address_page(order_id: str):
    def run(form: dict[str, str]):
        change = parse_form_address_change(form, service().messages)
        return service().change_address(order_id, dataclasses.replace(change, operator=acting_operator(form)))

    return await page_action(order_id, "address", run)


@orders_pages.post("/orders/<order_id>/expedite")
async def expedite_page(order_id: str):
    return await page_action(order_id, "expedite", lambda form: service().expedite(order_id, acting_operator(form)))


@orders_pages.post("/orders/<order_id>/simulate-failure")
async def simulate_failure_page(order_id: str):
    def run(form: dict[str, str]):
        return service().simulate_failure(order_id, parse_form_failure(form, service().messages))

    return await page_action(order_id, "simulate-failure", run)


def order_error_page(status: int, title: str, message: str):
    return error_page(status, title, message, back_url=url_for("orders_pages.dashboard"), back_text="Go to the orders")


def init_app(app, service_: OrderService) -> None:
    app.extensions["order_service"] = service_
    app.register_blueprint(orders_api)
    app.register_blueprint(orders_pages)
    app.register_blueprint(orders_review)  # /orders/review: the review queue (orders/review_page.py)
