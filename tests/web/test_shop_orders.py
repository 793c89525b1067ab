"""A customer's checkout and their own orders (issue 29), on a real dev server and worker: the cart
placed as one order however often the form is sent, tracked to delivery with its tracking number and
rewards; cancel and address changes through the workflow's updates; nobody else's orders on any route."""

from __future__ import annotations

import dataclasses
import os
import re
import uuid

import httpx
import pytest

from core.idempotency import new_form_key
from orders.model import INVENTORY, ORDERS, STOCK
from shop.accounts import account_key
from shop.card import CardEntry
from tests.fixtures import ADDRESS, enter_card, provider_payments, signed_in, wait_until

PASSWORD = "correct horse battery"
PAYING = "4242424242424242"


@pytest.fixture
def app(order_app):
    return order_app


def customer_client(app, name: str = "Ada Lovelace"):
    """A browser signed in to the shop as a new, verified customer; and their account."""
    address = f"{name.split()[0].lower()}-{uuid.uuid4().hex[:8]}@example.com"
    accounts = app.extensions["customer_accounts"]
    record, _ = accounts.register(name, address, PASSWORD)
    accounts.change(account_key(address), lambda r: {**r, "verified": True})
    client = app.test_client()
    assert client.post("/shop/signin", data={"email": address, "password": PASSWORD}).status_code == 303
    return client, accounts.get(account_key(address))


def add(client, sku: str, quantity: int) -> None:
    answer = client.post("/shop/cart", data={"sku": sku, "action": "add", "quantity": str(quantity), "from": "catalog"})
    assert answer.status_code == 303, answer.get_data(as_text=True)


def checkout_form(client, expedited: bool = True, card: str | None = PAYING) -> dict[str, str]:
    """The checkout form as a browser sends it, its card (`card`'s number; None: none) entered as Stripe.js does."""
    page = client.get("/shop/checkout").get_data(as_text=True)
    key = re.search(r'name="submission_key" value="([^"]+)"', page).group(1)
    setup_intent = re.search(r'name="setup_intent" value="([^"]+)"', page).group(1)
    if card is not None:
        secret = re.search(r'data-secret="([^"]+)"', page).group(1)
        confirmed = enter_card(setup_intent, secret, card)
        assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
    form = {"submission_key": key, "setup_intent": setup_intent, **{f"address.{part}": v for part, v in ADDRESS.items()}}
    return {**form, "expedited": "yes"} if expedited else form


def stored(app, order_id: str) -> dict | None:
    return app.extensions["order_service"].store.get(ORDERS, order_id)


@pytest.mark.timeout(60)
def test_a_customer_checks_out_once_however_often_the_form_is_sent_and_follows_it_to_delivery(app):
    client, account = customer_client(app)
    add(client, "KB-100", 2)
    form = checkout_form(client)
    placed = client.post("/shop/checkout", data=form)
    assert placed.status_code == 303, placed.get_data(as_text=True)
    order_url = placed.headers["Location"]
    order_id = order_url.rsplit("/", 1)[1]
    again = client.post("/shop/checkout", data=form)  # pressed twice, or sent again after a lost answer
    assert again.status_code == 303 and again.headers["Location"] == order_url
    assert "Your cart is empty" in client.get("/shop/cart").get_data(as_text=True)
    remembered = app.extensions["customer_accounts"].get(account_key(account["email"]))["address"]
    assert remembered == ADDRESS
    done = wait_until(lambda: (stored(app, order_id) or {}).get("status") == "completed", timeout=40, what="delivery")
    assert done
    page = client.get(order_url).get_data(as_text=True)
    assert "Delivered" in page and "tracking number" in page and "$178" in page
    record = stored(app, order_id)
    assert record["customer_id"] == account["customer_id"] and record["customer_email"] == account["email"]

    def rewarded() -> str | None:
        page = client.get("/shop/orders").get_data(as_text=True)
        return page if "<strong>178</strong> points" in page else None

    mine = wait_until(rewarded, what="the rewards")  # counted in the record by the award of points
    assert order_id in mine and "Delivered" in mine
    # The money came from the card typed in, set up for the customer's own Stripe customer.
    intent = provider_object(f"payment_intents/{record['payment']['intent_id']}")
    setup = provider_object(f"setup_intents/{form['setup_intent']}")
    assert intent["status"] == "succeeded" and intent["amount"] == 17800
    assert intent["payment_method"] == setup["payment_method"] and intent["customer"] == setup["customer"]
    account = app.extensions["customer_accounts"].get(account_key(account["email"]))
    assert setup["customer"] == account["stripe_customer"]
    assert provider_object(f"payment_methods/{intent['payment_method']}")["card"]["last4"] == "4242"
    assert "Paid with Visa ending 4242." in page and record["card"] == "Visa ending 4242"


def provider_object(path: str) -> dict:
    """An object as the payment provider holds it, from its own API."""
    answer = httpx.get(f"{os.environ['STRIPE_API_BASE']}/v1/{path}", auth=(os.environ["STRIPE_API_KEY"], ""), timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.timeout(60)
def test_a_card_declined_when_the_order_charges_it_fails_the_order_with_the_reason_and_takes_nothing(app):
    client, account = customer_client(app)
    add(client, "MN-270", 1)
    placed = client.post(
        "/shop/checkout", data=checkout_form(client, card="4000000000000341")
    )  # set up fine, declined at the charge
    order_url = placed.headers["Location"]
    order_id = order_url.rsplit("/", 1)[1]
    failed = wait_until(lambda: (stored(app, order_id) or {}).get("status") == "failed", timeout=40, what="the decline")
    assert failed
    page = client.get(order_url).get_data(as_text=True)
    assert "declined" in page, page
    (status, amount, refunded), *_ = provider_payments(order_id)
    assert status != "succeeded" and amount == cents_of(stored(app, order_id)["total"]) and refunded == 0
    assert "Not charged to Visa ending 0341." in page


def cents_of(amount: float) -> int:
    return round(amount * 100)


def test_checkout_places_nothing_without_a_card_stripe_confirmed_for_this_customer_and_this_form(app):
    """The SetupIntent's ID comes from the browser: one not confirmed, another customer's, another
    form's or a made-up one is refused beside the card, the address kept, and nothing is placed."""
    client, account = customer_client(app)
    other, _ = customer_client(app, "Mallory Eve")
    add(client, "CB-010", 1)
    add(other, "CB-010", 1)
    theirs = checkout_form(other)  # confirmed, for the other customer
    earlier = checkout_form(client)  # confirmed, for another of this customer's forms
    unconfirmed = checkout_form(client, card=None)
    for setup_intent in (theirs["setup_intent"], earlier["setup_intent"], unconfirmed["setup_intent"], "seti_madeup", ""):
        answer = client.post("/shop/checkout", data={**unconfirmed, "setup_intent": setup_intent})
        page = answer.get_data(as_text=True)
        assert answer.status_code == 400 and "Enter your card" in page and 'href="#card"' in page, setup_intent
        assert ADDRESS["street"] in page and 'data-secret="' in page  # the address kept; fields for the card again
    # Its own form, its SetupIntent confirmed with a bank account rather than a card: not what the shop charges.
    page = client.get("/shop/checkout").get_data(as_text=True)  # (a page's secret, for its own SetupIntent)
    setup_intent = re.search(r'name="setup_intent" value="([^"]+)"', page).group(1)
    secret = re.search(r'data-secret="([^"]+)"', page).group(1)
    confirmed = httpx.post(
        f"{os.environ['STRIPE_API_BASE']}/v1/setup_intents/{setup_intent}/confirm",
        json={
            "key": os.environ["STRIPE_PUBLISHABLE_KEY"],
            "client_secret": secret,
            "payment_method_data": {"type": "sepa_debit", "sepa_debit": {"iban": "DE89370400440532013000"}},
        },
        timeout=10,
    )
    assert confirmed.status_code == 200 and confirmed.json()["status"] == "succeeded", confirmed.text
    key = re.search(r'name="submission_key" value="([^"]+)"', page).group(1)
    answer = client.post("/shop/checkout", data={**unconfirmed, "submission_key": key, "setup_intent": setup_intent})
    assert answer.status_code == 400 and "Enter your card" in answer.get_data(as_text=True)
    placed = client.post("/shop/checkout", data=earlier)  # its own form still places its order, after the refusals
    assert placed.status_code == 303
    store = app.extensions["order_service"].store
    mine = wait_until(lambda: store.list_by(ORDERS, "customer_id", account["customer_id"]), what="the order recorded")
    assert [order["order_id"] for order in mine] == [placed.headers["Location"].rsplit("/", 1)[1]]


def test_a_card_entered_before_an_address_error_is_kept_and_the_order_then_charges_it(app):
    client, _ = customer_client(app)
    add(client, "CB-010", 1)
    form = checkout_form(client)
    refused = client.post("/shop/checkout", data={**form, "address.city": ""})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "Visa ending 4242, checked by Stripe" in page and "data-secret" not in page
    assert f'name="setup_intent" value="{form["setup_intent"]}"' in page
    assert client.post("/shop/checkout", data=form).status_code == 303


def test_another_customer_cannot_see_or_act_on_the_first_customers_orders(app, order_stack):
    first, _ = customer_client(app)
    add(first, "CB-010", 1)
    order_id = first.post("/shop/checkout", data=checkout_form(first, expedited=False)).headers["Location"].rsplit("/", 1)[1]
    other, _ = customer_client(app, "Mallory Eve")
    for method, path in [
        ("GET", f"/shop/orders/{order_id}"),
        ("POST", f"/shop/orders/{order_id}/cancel"),
        ("POST", f"/shop/orders/{order_id}/address"),
    ]:
        answer = other.open(
            path, method=method, data={f"address.{k}": v for k, v in ADDRESS.items()} if method == "POST" else None
        )
        assert answer.status_code == 404, (method, path, answer.status_code)
    assert order_id not in other.get("/shop/orders").get_data(as_text=True)
    assert other.get("/shop/orders/0123456789ab").status_code == 404  # unknown: the same answer
    anonymous = app.test_client()
    signin = anonymous.get(f"/shop/orders/{order_id}")
    assert signin.status_code == 303 and signin.headers["Location"] == f"/shop/signin?next=/shop/orders/{order_id}"
    for path in (f"/shop/orders/{order_id}/cancel", f"/shop/orders/{order_id}/address", "/shop/checkout"):
        refused = anonymous.post(path, data={f"address.{k}": "Elsewhere" for k in ADDRESS})
        assert refused.status_code == 303 and refused.headers["Location"].startswith("/shop/signin?next=/shop/"), path
    # An operator's sign-in is not a customer's.
    operator = signed_in(app.test_client(), order_stack[0])
    assert operator.get(f"/shop/orders/{order_id}").status_code == 303
    record = wait_until(lambda: stored(app, order_id), what="the order recorded")  # untouched by every refused call
    assert record["address"] == ADDRESS and not record["cancelled"], record


@pytest.mark.timeout(60)
def test_a_customer_changes_the_address_and_cancels_an_order_waiting_for_review_and_is_told_why_not_after(app):
    client, _ = customer_client(app)
    add(client, "LP-140", 1)  # above the review limit
    order_url = client.post("/shop/checkout", data=checkout_form(client, expedited=False)).headers["Location"]
    order_id = order_url.rsplit("/", 1)[1]
    wait_until(lambda: (stored(app, order_id) or {}).get("status") == "awaiting_review", what="the review")
    page = client.get(order_url).get_data(as_text=True)
    assert "Waiting for our review" in page and "We decide by" in page and "Cancel the order" in page
    moved = client.post(
        f"{order_url}/address", data={**{f"address.{k}": v for k, v in ADDRESS.items()}, "address.city": "Cambridge"}
    )
    assert moved.status_code == 303
    wait_until(lambda: (stored(app, order_id) or {}).get("address", {}).get("city") == "Cambridge", what="the new address")
    bad = client.post(f"{order_url}/address", data={f"address.{k}": "" for k in ADDRESS})
    assert bad.status_code == 400 and 'aria-invalid="true"' in bad.get_data(as_text=True)
    assert client.post(f"{order_url}/cancel").status_code == 303
    wait_until(lambda: (stored(app, order_id) or {}).get("status") == "cancelled", what="the cancel")
    page = client.get(order_url).get_data(as_text=True)
    assert "Cancel the order" not in page and "Change the shipping address" not in page
    refused = client.post(f"{order_url}/cancel")
    assert refused.status_code == 409 and "already" in refused.get_data(as_text=True).lower()


def test_checkout_refuses_an_empty_cart_and_what_the_stock_no_longer_covers(app):
    client, _ = customer_client(app)
    empty = client.post(
        "/shop/checkout", data={"submission_key": new_form_key(), **{f"address.{k}": v for k, v in ADDRESS.items()}}
    )
    assert empty.status_code == 400 and "Your cart is empty" in empty.get_data(as_text=True)
    add(client, "MN-270", 2)
    store = app.extensions["order_service"].store
    levels = app.extensions["order_service"].stock_levels()
    store.update(INVENTORY, STOCK, lambda doc: {**(doc or {}), "levels": {**levels, "MN-270": 1}})
    try:
        short = client.post("/shop/checkout", data=checkout_form(client))
        assert short.status_code == 409 and "Only 1 left" in short.get_data(as_text=True)
    finally:
        store.update(INVENTORY, STOCK, lambda doc: {**doc, "levels": {**doc["levels"], "MN-270": levels["MN-270"]}})


def test_checkout_sent_again_after_a_lost_answer_opens_the_order_it_placed(app):
    """The answer to Place order was lost (the browser kept its cookie: the cart, no record of the
    order): sending the form again opens that order, even with the stock now short, or the cart
    changed since; an out-of-date form is refused and nothing is placed."""
    client, account = customer_client(app)
    add(client, "HD-300", 1)
    form = checkout_form(client, expedited=False)
    with client.session_transaction() as before:
        kept = dict(before)
    order_url = client.post("/shop/checkout", data=form).headers["Location"]
    with client.session_transaction() as session:  # as if the answer, and its cookie, never arrived
        session.clear()
        session.update(kept)
    again = client.post("/shop/checkout", data=form)
    assert again.status_code == 303 and again.headers["Location"] == order_url
    with client.session_transaction() as session:
        session.clear()
        session.update({**kept, "cart": {"HD-300": 1, "CB-010": 3}})  # the cart changed meanwhile
    changed = client.post("/shop/checkout", data=form)
    assert changed.status_code == 303 and changed.headers["Location"] == order_url
    store = app.extensions["order_service"].store
    mine = wait_until(lambda: store.list_by(ORDERS, "customer_id", account["customer_id"]), what="the order recorded")
    assert [o["order_id"] for o in mine] == [order_url.rsplit("/", 1)[1]]  # one order, however often the form went
    add(client, "CB-010", 1)
    stale = client.post("/shop/checkout", data={k: v for k, v in form.items() if k != "submission_key"})
    assert stale.status_code == 400 and "out of date" in stale.get_data(as_text=True)


def test_only_the_checkout_lets_stripe_js_load_and_call_stripe(app):
    client, _ = customer_client(app)
    add(client, "CB-010", 1)
    base = os.environ["STRIPE_API_BASE"]
    checkout = client.get("/shop/checkout")
    policy = checkout.headers["Content-Security-Policy"]
    assert f"script-src 'self' {base};" in policy and f"connect-src 'self' {base};" in policy, policy
    assert f'<script src="{base}/js.stripe.com/v3/"></script>' in checkout.get_data(as_text=True)
    for path in ("/shop", "/shop/cart", "/shop/orders"):
        assert base not in client.get(path).headers["Content-Security-Policy"], path
    # With Stripe's own Stripe.js: its script, API and frames (Stripe's CSP guide), nothing else.
    settings = dataclasses.replace(app.extensions["settings"], stripe_js_url="https://js.stripe.com/v3/")
    stripe_policy = CardEntry(settings).content_security_policy()
    assert stripe_policy["script-src"] == "'self' https://js.stripe.com"
    assert stripe_policy["connect-src"] == "'self' https://api.stripe.com"
    assert stripe_policy["frame-src"] == "https://js.stripe.com https://hooks.stripe.com"
