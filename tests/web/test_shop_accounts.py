"""Customers' accounts (issue 29): register, confirm the address by the emailed link, sign in and
out, reset a forgotten password; no page tells whether an address has an account; the visitor's
cart joins the account's at sign-in."""

from __future__ import annotations

import dataclasses
import email
import re
import time

import pytest

from shop.accounts import CUSTOMERS, SESSION_DAYS, account_key
from tests.fixtures import NO_TEMPORAL, make_app

PASSWORD = "correct horse battery"


@pytest.fixture
def app(settings, smtp_sink, monkeypatch):
    return make_app(dataclasses.replace(settings, smtp_url=smtp_sink.url), NO_TEMPORAL, monkeypatch)


@pytest.fixture
def shopper(app):
    return app.test_client()


def last_link(smtp_sink, to: str) -> str:
    message = email.message_from_bytes(smtp_sink.mail.contents[-1])
    assert message["To"] == to
    return re.search(r"http://[^/]+(/shop/\S+)", message.get_payload(decode=True).decode()).group(1)


def register(shopper, email_: str = "ada@example.com", name: str = "Ada Lovelace", password: str = PASSWORD):
    return shopper.post("/shop/register", data={"name": name, "email": email_, "password": password, "password_again": password})


def test_a_customer_registers_confirms_the_address_and_signs_in_and_out(app, shopper, smtp_sink):
    answer = register(shopper, email_=" Ada@Example.com ")
    assert answer.status_code == 200 and "Check your email" in answer.get_data(as_text=True)
    record = app.extensions["customer_accounts"].get(account_key("ada@example.com"))
    assert record["email"] == "ada@example.com" and not record["verified"] and record["password_hash"].startswith("$argon2id$")
    refused = shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD})
    assert refused.status_code == 403 and "Confirm your email address first" in refused.get_data(as_text=True)
    link = last_link(smtp_sink, "ada@example.com")
    assert link.startswith("/shop/verify/")
    confirmed = shopper.get(link)
    assert confirmed.status_code == 303 and confirmed.headers["Location"] == "/shop/signin"
    assert shopper.get(link).status_code == 303  # the link again: still confirmed, nothing else
    wrong = shopper.post("/shop/signin", data={"email": "ada@example.com", "password": "not the password"})
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    signed = shopper.post("/shop/signin", data={"email": "ADA@example.com", "password": PASSWORD})
    assert signed.status_code == 303
    assert "Signed in as <strong>Ada Lovelace</strong>" in shopper.get("/shop").get_data(as_text=True)
    shopper.post("/shop/signout")
    assert "Create an account" in shopper.get("/shop").get_data(as_text=True)


def test_registering_an_address_twice_tells_the_owner_by_email_not_the_page(app, shopper, smtp_sink):
    register(shopper)
    shopper.get(last_link(smtp_sink, "ada@example.com"))
    again = register(app.test_client(), name="Mallory", password="another long password")
    assert again.status_code == 200 and "Check your email" in again.get_data(as_text=True)
    message = email.message_from_bytes(smtp_sink.mail.contents[-1])
    assert (
        message["Subject"] == "You already have a shop account"
        and "Hello Ada Lovelace" in message.get_payload(decode=True).decode()
    )
    record = app.extensions["customer_accounts"].get(account_key("ada@example.com"))
    assert record["name"] == "Ada Lovelace"  # unchanged, password too
    assert shopper.post("/shop/signin", data={"email": "ada@example.com", "password": "another long password"}).status_code == 401


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"name": "", "email": "a@example.com", "password": PASSWORD, "password_again": PASSWORD}, "name"),
        ({"name": "A", "email": "a@", "password": PASSWORD, "password_again": PASSWORD}, "email"),
        ({"name": "A", "email": "a@example.com", "password": "short", "password_again": "short"}, "password"),
        ({"name": "A", "email": "a@example.com", "password": PASSWORD, "password_again": PASSWORD + "x"}, "password_again"),
    ],
)
def test_a_registration_with_a_bad_field_is_shown_again_with_the_reason_and_no_password(shopper, form, field):
    answer = shopper.post("/shop/register", data=form)
    page = answer.get_data(as_text=True)
    assert answer.status_code == 400 and f'id="{field}-error"' in page
    assert PASSWORD not in page and "short" not in page.split("<main", 1)[1].split("characters or more")[0][-200:]
    if field != "email":
        assert f'value="{form["email"]}"' in page  # what was typed is kept, the passwords aside


def test_a_forgotten_password_is_reset_once_by_the_emailed_link_and_ends_other_sessions(app, shopper, smtp_sink):
    register(shopper)
    shopper.get(last_link(smtp_sink, "ada@example.com"))
    other = app.test_client()
    assert other.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD}).status_code == 303
    unknown = shopper.post("/shop/reset", data={"email": "nobody@example.com"})
    assert unknown.status_code == 200 and "If nobody@example.com has a shop account" in unknown.get_data(as_text=True)
    sent = len(smtp_sink.mail.contents)
    assert sent == 1  # nothing went to the unknown address
    shopper.post("/shop/reset", data={"email": "ada@example.com"})
    link = last_link(smtp_sink, "ada@example.com")
    assert shopper.get(link).status_code == 200
    assert (
        shopper.post(link, data={"password": "a new long password", "password_again": "a new long password"}).status_code == 303
    )
    assert shopper.get(link).status_code == 400  # used
    assert (
        shopper.post(link, data={"password": "a third long password", "password_again": "a third long password"}).status_code
        == 400
    )
    assert "Signed in as <strong>" not in other.get("/shop").get_data(as_text=True)  # the other session ended
    assert shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD}).status_code == 401
    assert shopper.post("/shop/signin", data={"email": "ada@example.com", "password": "a new long password"}).status_code == 303


def test_links_that_are_forged_expired_or_for_another_purpose_do_not_work(app, shopper, smtp_sink):
    register(shopper)
    verify = last_link(smtp_sink, "ada@example.com")
    token = verify.removeprefix("/shop/verify/")
    assert shopper.get(f"/shop/reset/{token}").status_code == 400  # a verification link is no reset link
    tampered = ("A" if token[0] != "A" else "B") + token[1:]  # the payload changed, the signature kept
    assert shopper.get(f"/shop/verify/{tampered}").status_code == 400
    assert shopper.get("/shop/verify/nonsense").status_code == 400


def test_the_visitors_cart_joins_the_accounts_at_sign_in_and_stays_with_the_account(app, shopper, smtp_sink):
    register(shopper)
    shopper.get(last_link(smtp_sink, "ada@example.com"))
    key = account_key("ada@example.com")
    store = app.extensions["customer_accounts"]._store
    store.update(CUSTOMERS, key, lambda record: {**record, "cart": {"KB-100": 1, "CB-010": 2}})
    shopper.post("/shop/cart", data={"sku": "KB-100", "action": "add", "quantity": "3", "from": "catalog"})
    shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD})
    cart = shopper.get("/shop/cart").get_data(as_text=True)
    assert 'id="quantity-KB-100" name="quantity" type="text" inputmode="numeric" maxlength="2" value="3"' in cart
    assert 'value="2"' in cart and "for 5 items" in cart
    shopper.post("/shop/cart", data={"sku": "CB-010", "action": "remove", "from": "cart"})  # kept in the account too
    shopper.post("/shop/signout")
    assert "Your cart is empty" in shopper.get("/shop/cart").get_data(as_text=True)
    elsewhere = app.test_client()  # another browser: the account's cart
    elsewhere.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD})
    assert "for 3 items" in elsewhere.get("/shop/cart").get_data(as_text=True)


def test_registering_an_unconfirmed_address_again_replaces_the_first_claim(app, shopper, smtp_sink):
    """Whoever registers someone else's address first holds nothing: the owner's own registration
    replaces the password, and the link sent for the first one no longer confirms anything."""
    register(app.test_client(), name="Mallory", password="the intruder's password")
    first_link = last_link(smtp_sink, "ada@example.com")
    register(shopper)
    assert shopper.get(first_link).status_code == 400  # the first claim's link
    shopper.get(last_link(smtp_sink, "ada@example.com"))
    assert (
        shopper.post("/shop/signin", data={"email": "ada@example.com", "password": "the intruder's password"}).status_code == 401
    )
    assert shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD}).status_code == 303
    assert app.extensions["customer_accounts"].get(account_key("ada@example.com"))["name"] == "Ada Lovelace"


@pytest.mark.parametrize("name", ["Ada www.example.com", "Ada =?utf-8?q?x?=", "Ada\u202eLovelace", "x" * 101])
def test_a_name_that_could_carry_a_link_or_hide_text_is_refused(shopper, name):
    answer = shopper.post(
        "/shop/register", data={"name": name, "email": "a@example.com", "password": PASSWORD, "password_again": PASSWORD}
    )
    assert answer.status_code == 400 and 'id="name-error"' in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "next_", ["/shop/%0Ax", "/shop/../orders", "//evil.example/shop/", "https://evil.example/shop/", "/shop/orders?x=1"]
)
def test_sign_in_goes_back_only_to_a_plain_shop_path(app, shopper, smtp_sink, next_):
    register(shopper)
    shopper.get(last_link(smtp_sink, "ada@example.com"))
    answer = shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD, "next": next_})
    assert answer.status_code == 303 and answer.headers["Location"] == "/shop", next_
    back = shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD, "next": "/shop/orders"})
    assert back.headers["Location"] == "/shop/orders"


def test_a_second_customer_signing_in_on_a_shared_browser_does_not_get_the_first_ones_cart(app, shopper, smtp_sink):
    for address in ("ada@example.com", "grace@example.com"):
        register(app.test_client(), email_=address)
        app.test_client().get(last_link(smtp_sink, address))
    shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD})
    shopper.post("/shop/cart", data={"sku": "KB-100", "action": "add", "quantity": "2", "from": "catalog"})
    shopper.post("/shop/signin", data={"email": "grace@example.com", "password": PASSWORD})  # Ada never signed out
    assert "Your cart is empty" in shopper.get("/shop/cart").get_data(as_text=True)
    assert app.extensions["customer_accounts"].get(account_key("grace@example.com"))["cart"] == {}


def test_signing_out_closes_the_sign_in_on_the_server_and_a_sign_in_lasts_two_weeks(app, shopper, smtp_sink):
    register(shopper)
    shopper.get(last_link(smtp_sink, "ada@example.com"))
    shopper.post("/shop/signin", data={"email": "ada@example.com", "password": PASSWORD})
    with shopper.session_transaction() as session:
        copied = dict(session)  # a copy of the cookie, taken while signed in
    entry = copied["customer"]
    accounts = app.extensions["customer_accounts"]
    assert accounts.current(entry["k"], entry["v"], entry["s"]) is not None
    assert accounts.current(entry["k"], entry["v"], entry["s"], now=time.time() + (SESSION_DAYS + 1) * 86400) is None
    shopper.post("/shop/signout")
    with shopper.session_transaction() as session:
        session.update(copied)  # the copy, sent again
    assert "Signed in as <strong>" not in shopper.get("/shop").get_data(as_text=True)
    assert shopper.get("/shop/orders").status_code == 303  # to the sign-in
