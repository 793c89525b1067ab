"""A customer's checkout and their own orders: /shop/checkout, /shop/orders, /shop/orders/<id>.

Signed-in customers only (shop/session.py); anyone else is sent to sign in and
back. A customer reaches only the orders whose `customer_id` is their account's:
any other order ID answers 404, as an unknown one does, so an ID tells nothing.

Checkout places the cart as one order through the same service as the operators'
form (`OrderService.create`): the form carries an idempotency key, so pressing
twice, or sending again after a lost answer, places one order. The order's page
reads the recorded projection (no query per refresh), and offers the cancel and
the address change while the workflow allows them, through the same validated
updates as the operators' (refused with the workflow's reason).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for

from core.idempotency import FORM_KEY_FIELD, IdempotencyKeyReused, form_key, new_form_key
from core.store import filtered_page
from core.temporal_client import OutcomeUnknown, TemporalUnavailable
from core.validation import PAGE_SIZE
from orders.display import POSTCODE_AFTER_CITY
from orders.model import ORDER_MILESTONES, ORDERS, CancelRequest
from orders.service import (
    ORDER_ID,
    ActionFailed,
    ActionRefused,
    ActionUnconfirmed,
    OrderNotFound,
    OrderService,
    idempotent_order_id,
)
from orders.validation import ADDRESS_FIELDS, InvalidOrder, parse_form_address_change, parse_form_order
from shop.accounts import account_key
from shop.cart import priced
from shop.session import PLACED, catalog, keep_cart, session_cart, signed_in_customer
from shop.session import texts as shop_texts
from web.common import after_argument, page_argument

shop_orders = Blueprint("shop_orders", __name__)


def service() -> OrderService:
    return current_app.extensions["order_service"]


def texts() -> dict[str, str]:
    return service().messages.orders


def customer_only(view):
    """The view for a signed-in customer (passed as `customer`); others sign in first, then come back."""

    @functools.wraps(view)
    async def wrapped(*args: Any, **kwargs: Any):
        customer = signed_in_customer()
        if customer is None:
            # Back to the page after signing in; a form's post goes back to the page that held the form.
            order_id = kwargs.get("order_id")
            back = (
                request.path
                if request.method == "GET"
                else url_for("shop_orders.order", order_id=order_id)
                if order_id
                else url_for("shop.cart")
            )
            return redirect(url_for("shop_accounts.signin_form", next=back), code=303)
        return await view(customer, *args, **kwargs)

    return wrapped


# --- checkout ------------------------------------------------------------------------------


def render_checkout(
    customer: dict[str, Any], values: dict[str, str], errors: dict[str, str], notice: str | None, status: int = 200
):
    items = catalog()
    return render_template(
        "shop/checkout.html",
        cart=priced(session_cart(), items, service().stock_levels(), shop_texts()),
        values=values,
        errors=errors,
        notice=notice,
        address_fields=ADDRESS_FIELDS,
        customer=customer,
    ), status


@shop_orders.get("/shop/checkout")
@customer_only
async def checkout(customer: dict[str, Any]):
    remembered = customer.get("address") or {"name": customer["name"]}
    values = {f"address.{part}": remembered.get(part, "") for part in ADDRESS_FIELDS}
    values[FORM_KEY_FIELD] = new_form_key()
    return render_checkout(customer, values, {}, None)


@shop_orders.post("/shop/checkout")
@customer_only
async def place(customer: dict[str, Any]):
    values = request.form.to_dict()
    key = form_key(values)
    if key is None:  # a form from elsewhere, or an old one: a fresh form, so that one press is one order
        values[FORM_KEY_FIELD] = new_form_key()
        return render_checkout(customer, values, {}, shop_texts()["form_expired"], 400)
    placed = session.get(PLACED)
    if isinstance(placed, dict) and placed.get("key") == key:  # pressed again after it was placed
        return redirect(url_for("shop_orders.order", order_id=placed["order_id"]), code=303)
    try:
        # Sent again after a lost answer: this key's order exists (its stock is reserved, and the cart
        # may not fit what is left now). Its page, not a refusal.
        already = await service().placed_with_key(customer["customer_id"], key)
    except TemporalUnavailable:
        return render_checkout(customer, values, {}, texts()["unavailable"], 503)
    if already is not None:
        keep_cart({})
        session[PLACED] = {"key": key, "order_id": already}
        return redirect(url_for("shop_orders.order", order_id=already), code=303)
    cart = priced(session_cart(), catalog(), service().stock_levels(), shop_texts())
    if not cart.lines:
        return render_checkout(customer, values, {}, shop_texts()["empty_cart"], 400)
    if cart.problems:
        return render_checkout(customer, values, {}, shop_texts()["short_stock"], 409)
    form = {
        "customer_id": customer["customer_id"],
        "customer_email": customer["email"],
        **{f"sku_{line.sku}": str(line.quantity) for line in cart.lines},
        **{f"address.{part}": values.get(f"address.{part}", "") for part in ADDRESS_FIELDS},
        "expedited": values.get("expedited", ""),
    }
    try:
        new_order = parse_form_order(form, service().catalog_skus, service().messages)
        created = await service().create(new_order, idempotency_key=key)
    except InvalidOrder as err:
        return render_checkout(customer, values, err.fields, texts()["invalid_order"], 400)
    except IdempotencyKeyReused:
        # This form placed an order already, with other contents (the cart changed after a lost answer):
        # that order, not a second one.
        placed_id = idempotent_order_id(customer["customer_id"], key)
        session[PLACED] = {"key": key, "order_id": placed_id}
        flash(shop_texts()["cart_changed"], "invalid")
        return redirect(url_for("shop_orders.order", order_id=placed_id), code=303)
    except OutcomeUnknown:
        return render_checkout(customer, values, {}, texts()["placement_unknown_form"], 503)
    except TemporalUnavailable:
        return render_checkout(customer, values, {}, texts()["unavailable"], 503)
    current_app.extensions["customer_accounts"].remember_address(
        account_key(customer["email"]), {part: getattr(new_order.address, part) for part in ADDRESS_FIELDS}
    )
    keep_cart({})
    session[PLACED] = {"key": key, "order_id": created.order_id}
    flash(f"{texts()['placed']} {texts()['placed_emailing'].format(email=customer['email'])}", "success")
    return redirect(url_for("shop_orders.order", order_id=created.order_id), code=303)


# --- my orders -----------------------------------------------------------------------------


@shop_orders.get("/shop/orders")
@customer_only
async def orders(customer: dict[str, Any]):
    page = page_argument()
    store = service().store
    records, more = filtered_page(store, ORDERS, "customer_id", customer["customer_id"], page, PAGE_SIZE, after_argument())
    # The list compares IDs case-folded; an order is this customer's only under exactly their ID.
    records = [record for record in records if record.get("customer_id") == customer["customer_id"]]
    rewards = service().stored_rewards(customer["customer_id"])  # as recorded at each award: no query
    return render_template(
        "shop/orders.html", orders=records, page=page, more=more, rewards=rewards, labels=service().status_labels()
    )


async def own_order(customer: dict[str, Any], order_id: str) -> dict[str, Any]:
    """The customer's own order, described; 404 for any other (another's, or none)."""
    if not ORDER_ID.match(order_id):
        abort(404)
    stored = service().store.get(ORDERS, order_id)
    if stored is not None and stored.get("customer_id") != customer["customer_id"]:
        abort(404)  # recorded as someone else's: answered before Temporal is asked, outage or not
    try:
        view = await service().status(order_id)
    except OrderNotFound:
        abort(404)
    if view.status.get("customer_id") != customer["customer_id"]:
        abort(404)
    return service().describe(view)


async def render_order(customer: dict[str, Any], order_id: str, notice: str | None = None, errors=None, values=None, status=200):
    try:
        order = await own_order(customer, order_id)
    except TemporalUnavailable:
        return render_template("error.html", status=503, title="Temporarily unavailable", message=texts()["unavailable"]), 503
    return render_template(
        "shop/order.html",
        order=order,
        milestones=ORDER_MILESTONES,
        notice=notice,
        errors=errors or {},
        values=values or {f"address.{part}": order["address"].get(part, "") for part in ADDRESS_FIELDS},
        address_fields=ADDRESS_FIELDS,
        labels=service().status_labels(),
        postcode_after_city=POSTCODE_AFTER_CITY,
    ), status


@shop_orders.get("/shop/orders/<order_id>")
@customer_only
async def order(customer: dict[str, Any], order_id: str):
    return await render_order(customer, order_id)


@shop_orders.post("/shop/orders/<order_id>/cancel")
@customer_only
async def cancel(customer: dict[str, Any], order_id: str):
    return await order_action(customer, order_id, "cancel")


@shop_orders.post("/shop/orders/<order_id>/address")
@customer_only
async def change_address(customer: dict[str, Any], order_id: str):
    return await order_action(customer, order_id, "address")


async def order_action(customer: dict[str, Any], order_id: str, action: str):
    """Cancel the customer's own order or change its address, as the workflow allows; the page
    again with the workflow's reason when it refuses."""
    values = request.form.to_dict()
    try:
        await own_order(customer, order_id)  # 404 unless it is theirs
    except TemporalUnavailable:
        return render_template("error.html", status=503, title="Temporarily unavailable", message=texts()["unavailable"]), 503
    by = f"customer {customer['customer_id']}"
    try:
        if action == "cancel":
            await service().cancel(order_id, CancelRequest(shop_texts()["cancel_reason"], operator=by))
        else:
            change = parse_form_address_change(values, service().messages)
            await service().change_address(order_id, dataclasses.replace(change, operator=by))
    except InvalidOrder as err:
        return await render_order(customer, order_id, texts()["invalid_order"], err.fields, values, 400)
    except ActionRefused as err:
        return await render_order(customer, order_id, err.message, {}, values, 409)
    except ActionFailed as err:
        return await render_order(customer, order_id, texts()["action_failed"].format(reason=err.message), {}, values, 502)
    except ActionUnconfirmed:
        return await render_order(customer, order_id, texts()["action_unconfirmed"], {}, values, 504)
    except TemporalUnavailable:
        return await render_order(customer, order_id, texts()["unavailable"], {}, values, 503)
    flash(texts()[f"done_{action}"], "success")
    return redirect(url_for("shop_orders.order", order_id=order_id), code=303)


def init_app(app) -> None:
    app.register_blueprint(shop_orders)
