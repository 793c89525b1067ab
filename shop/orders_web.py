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
from core.settings import Settings
from core.store import filtered_page
from core.temporal_client import OutcomeUnknown, TemporalUnavailable
from core.validation import PAGE_SIZE
from orders.display import POSTCODE_AFTER_CITY
from orders.model import ORDER_MILESTONES, ORDERS, CancelRequest, Card
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
from shop.card import CardEntry, CardUnavailable, EnteredCard, UnknownStripeCustomer
from shop.cart import priced
from shop.session import PLACED, catalog, keep_cart, session_cart, signed_in_customer
from shop.session import texts as shop_texts
from web.common import after_argument, page_argument

shop_orders = Blueprint("shop_orders", __name__)
SETUP_INTENT_FIELD = "setup_intent"  # the checkout form's SetupIntent ID (shop/card.py)


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


def card_entry() -> CardEntry | None:
    """Checkout's card entry through Stripe.js (shop/card.py); None: the shop's test card is charged."""
    return current_app.extensions.get("card_entry")


async def stripe_customer(customer: dict[str, Any], replacing: str | None = None) -> str:
    """The account's Stripe customer, made at its first checkout (or again, `replacing` one Stripe lost)."""
    known = customer.get("stripe_customer")
    if known and known != replacing:
        return known
    made = await card_entry().stripe_customer(customer["customer_id"], customer["email"])  # type: ignore[union-attr]
    kept = current_app.extensions["customer_accounts"].change(
        account_key(customer["email"]),
        lambda record: record if record.get("stripe_customer") not in (None, replacing) else {**record, "stripe_customer": made},
    )
    return kept["stripe_customer"]


async def payment_part(customer: dict[str, Any], key: str, entered: EnteredCard | None) -> dict[str, Any]:
    """What the form's payment part shows: the card entered on this form, fields for one, or why not."""
    entry = card_entry()
    if entry is None:
        return {"mode": "test_card"}
    if entered is not None:
        return {"mode": "entered", "card": entered}
    try:
        try:
            setup = await entry.start(await stripe_customer(customer), customer["customer_id"], key)
        except UnknownStripeCustomer as lost:
            setup = await entry.start(await stripe_customer(customer, str(lost)), customer["customer_id"], key)
    except CardUnavailable:
        return {"mode": "unavailable"}
    return {"mode": "fields", "setup": setup, "key": entry.publishable_key, "script": entry.script_url}


async def render_checkout(
    customer: dict[str, Any],
    values: dict[str, str],
    errors: dict[str, str],
    notice: str | None,
    status: int = 200,
    entered: EnteredCard | None = None,
):
    payment = await payment_part(customer, values.get(FORM_KEY_FIELD, ""), entered)
    if payment["mode"] == "unavailable" and notice is None:
        notice, status = shop_texts()["card_unavailable"], 503
    return render_template(
        "shop/checkout.html",
        cart=priced(session_cart(), catalog(), service().stock_levels(), shop_texts()),
        values=values,
        errors=errors,
        notice=notice,
        address_fields=ADDRESS_FIELDS,
        customer=customer,
        payment=payment,
        texts=shop_texts(),
    ), status


@shop_orders.get("/shop/checkout")
@customer_only
async def checkout(customer: dict[str, Any]):
    remembered = customer.get("address") or {"name": customer["name"]}
    values = {f"address.{part}": remembered.get(part, "") for part in ADDRESS_FIELDS}
    values[FORM_KEY_FIELD] = new_form_key()
    return await render_checkout(customer, values, {}, None)


@shop_orders.post("/shop/checkout")
@customer_only
async def place(customer: dict[str, Any]):
    values = request.form.to_dict()
    key = form_key(values)
    if key is None:  # a form from elsewhere, or an old one: a fresh form, so that one press is one order
        values[FORM_KEY_FIELD] = new_form_key()
        return await render_checkout(customer, values, {}, shop_texts()["form_expired"], 400)
    placed = session.get(PLACED)
    if isinstance(placed, dict) and placed.get("key") == key:  # pressed again after it was placed
        return redirect(url_for("shop_orders.order", order_id=placed["order_id"]), code=303)
    try:
        # Sent again after a lost answer: this key's order exists (its stock is reserved, and the cart
        # may not fit what is left now). Its page, not a refusal.
        already = await service().placed_with_key(customer["customer_id"], key)
    except TemporalUnavailable:
        return await render_checkout(customer, values, {}, texts()["unavailable"], 503)
    if already is not None:
        keep_cart({})
        session[PLACED] = {"key": key, "order_id": already}
        return redirect(url_for("shop_orders.order", order_id=already), code=303)
    cart = priced(session_cart(), catalog(), service().stock_levels(), shop_texts())
    if not cart.lines:
        return await render_checkout(customer, values, {}, shop_texts()["empty_cart"], 400)
    if cart.problems:
        return await render_checkout(customer, values, {}, shop_texts()["short_stock"], 409)
    entry, entered = card_entry(), None
    if entry is not None:  # the card Stripe.js confirmed on this form: checked at Stripe, not taken from the form
        try:
            entered = await entry.entered(values.get(SETUP_INTENT_FIELD, ""), customer["customer_id"], key)
        except CardUnavailable:
            return await render_checkout(customer, values, {}, shop_texts()["card_unavailable"], 503)
    card_errors = {"card": shop_texts()["card_missing"]} if entry is not None and entered is None else {}
    form = {
        "customer_id": customer["customer_id"],
        "customer_email": customer["email"],
        **{f"sku_{line.sku}": str(line.quantity) for line in cart.lines},
        **{f"address.{part}": values.get(f"address.{part}", "") for part in ADDRESS_FIELDS},
        "expedited": values.get("expedited", ""),
    }
    try:
        new_order = parse_form_order(form, service().catalog_skus, service().messages)
    except InvalidOrder as err:
        return await render_checkout(customer, values, {**err.fields, **card_errors}, texts()["invalid_order"], 400, entered)
    if card_errors:
        return await render_checkout(customer, values, card_errors, texts()["invalid_order"], 400)
    if entered is not None:
        label = shop_texts()["card_label"].format(brand=entered.brand, last4=entered.last4)
        new_order = dataclasses.replace(new_order, card=Card(entered.payment_method, entered.stripe_customer, label))
    try:
        created = await service().create(new_order, idempotency_key=key)
    except IdempotencyKeyReused:
        # This form placed an order already, with other contents (the cart changed after a lost answer):
        # that order, not a second one.
        placed_id = idempotent_order_id(customer["customer_id"], key)
        session[PLACED] = {"key": key, "order_id": placed_id}
        flash(shop_texts()["cart_changed"], "invalid")
        return redirect(url_for("shop_orders.order", order_id=placed_id), code=303)
    except OutcomeUnknown:
        return await render_checkout(customer, values, {}, texts()["placement_unknown_form"], 503, entered)
    except TemporalUnavailable:
        return await render_checkout(customer, values, {}, texts()["unavailable"], 503, entered)
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


def init_app(app, settings: Settings) -> None:
    app.register_blueprint(shop_orders)
    if settings.stripe_api_key and settings.stripe_publishable_key:
        entry = app.extensions["card_entry"] = CardEntry(settings)
        # The checkout's pages load Stripe.js and let it call Stripe; no other page does.
        for endpoint in ("shop_orders.checkout", "shop_orders.place"):
            app.view_functions[endpoint] = with_policy(app.view_functions[endpoint], entry.content_security_policy())


def with_policy(view, policy: dict[str, str]):
    """The view, answering with this Content-Security-Policy (flask-talisman's per-view option)."""

    @functools.wraps(view)
    async def wrapped(*args: Any, **kwargs: Any):
        return await view(*args, **kwargs)

    wrapped.talisman_view_options = {"content_security_policy": policy}  # type: ignore[attr-defined]
    return wrapped
