"""Customers' accounts (issue 29): register, confirm the address by the emailed link, sign in and
out, reset a forgotten password; no page tells whether an address has an account; the visitor's
cart joins the account's at sign-in.

The emails go out from a workflow (shop/account_emails.py) on a real worker, as under `make run`:
the module's worker, on the module's data folder, sends them to the module's mail sink, and each
test uses addresses of its own."""

from __future__ import annotations

import dataclasses
import email
import json
import re
import time
import uuid
from email.message import Message

import pytest
from aiosmtpd.controller import Controller
from temporalio.testing import ActivityEnvironment

from core.mail import Mailer, SmtpSettings
from core.rules import load_messages
from core.store.files import JsonStore
from shop.account_email_workflow import AccountEmailRequest
from shop.account_emails import ACCOUNT_EMAILS, AccountEmailActivities, what_to_send
from shop.accounts import CUSTOMERS, SESSION_DAYS, CustomerAccounts, account_key, links_key
from tests.fixtures import NO_TEMPORAL, WorkerProcess, fresh_settings, make_app, wait_until
from tools.mail_sink import MaildirHandler
from tools.net import free_port

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def account_stack(dev_server, tmp_path_factory):
    """A worker whose emails go to a mail sink, on a data folder of the module's; (settings, address, sink,
    the sink's servers: the last one runs)."""
    root = tmp_path_factory.mktemp("accounts")
    port = free_port()
    sink = MaildirHandler(root / "mail")
    servers = [Controller(sink, hostname="127.0.0.1", port=port)]
    servers[0].start()
    settings = dataclasses.replace(fresh_settings(root / "data"), smtp_url=f"smtp://127.0.0.1:{port}")
    address = dev_server.client.service_client.config.target_host
    # An email that meets a mail server down is tried again 0.2 s later, then backs off (5 s in production).
    retry_soon = {"SMTP_URL": settings.smtp_url, "EMAIL_RETRY_INITIAL_SECONDS": "0.2"}
    worker = WorkerProcess(settings, address, root / "worker.log", extra_env=retry_soon)
    yield settings, address, sink, servers
    worker.kill()
    servers[-1].stop()


@pytest.fixture
def app(account_stack, monkeypatch):
    settings, address, _, _ = account_stack
    app = make_app(settings, address, monkeypatch)
    yield app
    app.extensions["temporal"].reset()


@pytest.fixture
def mail(account_stack) -> MaildirHandler:
    return account_stack[2]


@pytest.fixture
def shopper(app):
    return app.test_client()


def new_address(name: str = "ada") -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}@example.com"


@pytest.fixture
def ada() -> str:
    return new_address()


def emails_to(mail: MaildirHandler, to: str) -> list[Message]:
    return [message for message in map(email.message_from_bytes, list(mail.contents)) if message["To"] == to]


def nth_email(mail: MaildirHandler, to: str, nth: int = 1) -> Message:
    """The `nth` email to `to`, once the worker has sent it."""
    found = wait_until(lambda: emails_to(mail, to)[nth - 1 :] or None, timeout=20, what=f"email {nth} to {to}")
    return found[0]


def last_link(mail: MaildirHandler, to: str, nth: int = 1) -> str:
    body = nth_email(mail, to, nth).get_payload(decode=True).decode()
    return re.search(r"http://[^/]+(/shop/\S+)", body).group(1)


def register(shopper, email_: str, name: str = "Ada Lovelace", password: str = PASSWORD):
    return shopper.post("/shop/register", data={"name": name, "email": email_, "password": password, "password_again": password})


def test_a_customer_registers_confirms_the_address_and_signs_in_and_out(app, shopper, mail, ada):
    answer = register(shopper, email_=f" {ada.title()} ")
    assert answer.status_code == 200 and "Check your email" in answer.get_data(as_text=True)
    record = app.extensions["customer_accounts"].get(account_key(ada))
    assert record["email"] == ada and not record["verified"] and record["password_hash"].startswith("$argon2id$")
    refused = shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD})
    assert refused.status_code == 403 and "Confirm your email address first" in refused.get_data(as_text=True)
    link = last_link(mail, ada)
    assert link.startswith("/shop/verify/")
    confirmed = shopper.get(link)
    assert confirmed.status_code == 303 and confirmed.headers["Location"] == "/shop/signin"
    assert shopper.get(link).status_code == 303  # the link again: still confirmed, nothing else
    wrong = shopper.post("/shop/signin", data={"email": ada, "password": "not the password"})
    assert wrong.status_code == 401 and "not right" in wrong.get_data(as_text=True)
    signed = shopper.post("/shop/signin", data={"email": ada.upper(), "password": PASSWORD})
    assert signed.status_code == 303
    assert "Signed in as <strong>Ada Lovelace</strong>" in shopper.get("/shop").get_data(as_text=True)
    shopper.post("/shop/signout")
    assert "Create an account" in shopper.get("/shop").get_data(as_text=True)


def test_registering_an_address_twice_tells_the_owner_by_email_not_the_page(app, shopper, mail, ada):
    register(shopper, ada)
    shopper.get(last_link(mail, ada))
    again = register(app.test_client(), ada, name="Mallory", password="another long password")
    assert again.status_code == 200 and "Check your email" in again.get_data(as_text=True)
    message = nth_email(mail, ada, 2)
    assert (
        message["Subject"] == "You already have a shop account"
        and "Hello Ada Lovelace" in message.get_payload(decode=True).decode()
    )
    record = app.extensions["customer_accounts"].get(account_key(ada))
    assert record["name"] == "Ada Lovelace"  # unchanged, password too
    assert shopper.post("/shop/signin", data={"email": ada, "password": "another long password"}).status_code == 401


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


def test_a_forgotten_password_is_reset_once_by_the_emailed_link_and_ends_other_sessions(app, shopper, mail, ada):
    register(shopper, ada)
    shopper.get(last_link(mail, ada))
    other = app.test_client()
    assert other.post("/shop/signin", data={"email": ada, "password": PASSWORD}).status_code == 303
    nobody, store = new_address("nobody"), app.extensions["customer_accounts"]._store
    before = {record["workflow_id"] for record in store.list_all(ACCOUNT_EMAILS)}
    unknown = shopper.post("/shop/reset", data={"email": nobody})
    assert unknown.status_code == 200 and f"If {nobody} has a shop account" in unknown.get_data(as_text=True)
    # The request's workflow ran, found no account there and sent nothing: its record says so, with no address.
    [done] = wait_until(lambda: [r for r in store.list_all(ACCOUNT_EMAILS) if r["workflow_id"] not in before] or None)
    assert done["purpose"] == "reset" and done["status"] == "nothing" and nobody not in json.dumps(done)
    shopper.post("/shop/reset", data={"email": ada})
    link = last_link(mail, ada, 2)
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
    assert shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD}).status_code == 401
    assert shopper.post("/shop/signin", data={"email": ada, "password": "a new long password"}).status_code == 303


def test_links_that_are_forged_expired_or_for_another_purpose_do_not_work(app, shopper, mail, ada):
    register(shopper, ada)
    verify = last_link(mail, ada)
    token = verify.removeprefix("/shop/verify/")
    assert shopper.get(f"/shop/reset/{token}").status_code == 400  # a verification link is no reset link
    tampered = ("A" if token[0] != "A" else "B") + token[1:]  # the payload changed, the signature kept
    assert shopper.get(f"/shop/verify/{tampered}").status_code == 400
    assert shopper.get("/shop/verify/nonsense").status_code == 400


def test_the_visitors_cart_joins_the_accounts_at_sign_in_and_stays_with_the_account(app, shopper, mail, ada):
    register(shopper, ada)
    shopper.get(last_link(mail, ada))
    key = account_key(ada)
    store = app.extensions["customer_accounts"]._store
    store.update(CUSTOMERS, key, lambda record: {**record, "cart": {"KB-100": 1, "CB-010": 2}})
    shopper.post("/shop/cart", data={"sku": "KB-100", "action": "add", "quantity": "3", "from": "catalog"})
    shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD})
    cart = shopper.get("/shop/cart").get_data(as_text=True)
    assert 'id="quantity-KB-100" name="quantity" type="text" inputmode="numeric" maxlength="2" value="3"' in cart
    assert 'value="2"' in cart and "for 5 items" in cart
    shopper.post("/shop/cart", data={"sku": "CB-010", "action": "remove", "from": "cart"})  # kept in the account too
    shopper.post("/shop/signout")
    assert "Your cart is empty" in shopper.get("/shop/cart").get_data(as_text=True)
    elsewhere = app.test_client()  # another browser: the account's cart
    elsewhere.post("/shop/signin", data={"email": ada, "password": PASSWORD})
    assert "for 3 items" in elsewhere.get("/shop/cart").get_data(as_text=True)


def test_registering_an_unconfirmed_address_again_replaces_the_first_claim(app, shopper, mail, ada):
    """Whoever registers someone else's address first holds nothing: the owner's own registration
    replaces the password, and the link sent for the first one no longer confirms anything."""
    register(app.test_client(), ada, name="Mallory", password="the intruder's password")
    first_link = last_link(mail, ada)
    register(shopper, ada)
    assert shopper.get(first_link).status_code == 400  # the first claim's link
    shopper.get(last_link(mail, ada, 2))
    assert shopper.post("/shop/signin", data={"email": ada, "password": "the intruder's password"}).status_code == 401
    assert shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD}).status_code == 303
    assert app.extensions["customer_accounts"].get(account_key(ada))["name"] == "Ada Lovelace"


@pytest.mark.parametrize("name", ["Ada www.example.com", "Ada =?utf-8?q?x?=", "Ada\u202eLovelace", "x" * 101])
def test_a_name_that_could_carry_a_link_or_hide_text_is_refused(shopper, name):
    answer = shopper.post(
        "/shop/register", data={"name": name, "email": "a@example.com", "password": PASSWORD, "password_again": PASSWORD}
    )
    assert answer.status_code == 400 and 'id="name-error"' in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "next_", ["/shop/%0Ax", "/shop/../orders", "//evil.example/shop/", "https://evil.example/shop/", "/shop/orders?x=1"]
)
def test_sign_in_goes_back_only_to_a_plain_shop_path(app, shopper, mail, ada, next_):
    register(shopper, ada)
    shopper.get(last_link(mail, ada))
    answer = shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD, "next": next_})
    assert answer.status_code == 303 and answer.headers["Location"] == "/shop", next_
    back = shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD, "next": "/shop/orders"})
    assert back.headers["Location"] == "/shop/orders"


def test_a_second_customer_signing_in_on_a_shared_browser_does_not_get_the_first_ones_cart(app, shopper, mail, ada):
    grace = new_address("grace")
    for address in (ada, grace):
        register(app.test_client(), email_=address)
        app.test_client().get(last_link(mail, address))
    shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD})
    shopper.post("/shop/cart", data={"sku": "KB-100", "action": "add", "quantity": "2", "from": "catalog"})
    shopper.post("/shop/signin", data={"email": grace, "password": PASSWORD})  # Ada never signed out
    assert "Your cart is empty" in shopper.get("/shop/cart").get_data(as_text=True)
    assert app.extensions["customer_accounts"].get(account_key(grace))["cart"] == {}


def test_signing_out_closes_the_sign_in_on_the_server_and_a_sign_in_lasts_two_weeks(app, shopper, mail, ada):
    register(shopper, ada)
    shopper.get(last_link(mail, ada))
    shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD})
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


@pytest.mark.parametrize(
    ("purpose", "account", "version", "sent"),
    [
        ("register", {"verified": False, "version": 1}, 1, "verify"),
        ("register", {"verified": False, "version": 2}, 1, None),  # claimed again since: not this sign-up's link
        ("register", {"verified": True, "version": 3}, 3, "exists"),
        ("verify", {"verified": False, "version": 2}, None, "verify"),
        ("verify", {"verified": True, "version": 1}, None, None),
        ("reset", {"verified": True, "version": 1}, None, "reset"),
        ("reset", {"verified": False, "version": 1}, None, "reset"),
        ("register", None, 1, None),
        ("verify", None, None, None),
        ("reset", None, None, None),
    ],
)
def test_what_a_request_sends_depends_on_the_account_the_worker_finds(purpose, account, version, sent):
    assert what_to_send(purpose, account, version) == sent


def test_a_reset_asked_while_the_mail_server_is_down_answers_as_usual_and_the_email_comes_once_it_is_back(
    app, shopper, mail, ada, account_stack
):
    """The page does not wait for the mail server, nor depend on it: the workflow retries the email."""
    register(shopper, ada)
    shopper.get(last_link(mail, ada))
    _, _, sink, servers = account_stack
    store = app.extensions["customer_accounts"]._store
    servers[-1].stop()  # the mail server goes down
    try:
        answer = shopper.post("/shop/reset", data={"email": ada})
        assert answer.status_code == 200 and "is on its way" in answer.get_data(as_text=True)
        wait_until(
            lambda: any(r.get("status") == "retrying" and r.get("kind") == "reset" for r in store.list_all(ACCOUNT_EMAILS))
        )
        assert len(emails_to(mail, ada)) == 1  # the confirmation only, so far
    finally:
        servers.append(Controller(sink, hostname="127.0.0.1", port=servers[-1].port))  # back, on its address
        servers[-1].start()
    link = last_link(mail, ada, 2)
    assert link.startswith("/shop/reset/") and shopper.get(link).status_code == 200


def test_a_sign_up_whose_email_goes_after_the_address_was_claimed_again_sends_its_link_no_more(
    app, shopper, mail, ada, account_stack
):
    """Ada's sign-up email waits (a mail outage, a busy worker) while someone registers her address
    again: her email's link would confirm the other claim, with its password. It is not sent; the
    later claim's own email goes, and only its link confirms."""
    _, _, sink, servers = account_stack
    store = app.extensions["customer_accounts"]._store
    before = {record["workflow_id"] for record in store.list_all(ACCOUNT_EMAILS)}
    servers[-1].stop()  # the mail server is down: Ada's email waits for its retry
    try:
        register(shopper, ada)
        wait_until(
            lambda: any(r["workflow_id"] not in before and r.get("status") == "retrying" for r in store.list_all(ACCOUNT_EMAILS))
        )
        register(app.test_client(), ada, name="Mallory", password="the intruder's password")
    finally:
        servers.append(Controller(sink, hostname="127.0.0.1", port=servers[-1].port))
        servers[-1].start()
    link = last_link(mail, ada)  # Mallory's claim's email: the only one
    wait_until(
        lambda: (
            sum(r.get("status") in ("sent", "nothing") for r in store.list_all(ACCOUNT_EMAILS) if r["workflow_id"] not in before)
            == 2
        )
    )
    assert len(emails_to(mail, ada)) == 1 and "Hello Mallory" in nth_email(mail, ada).get_payload(decode=True).decode()
    assert shopper.get(link).status_code == 303  # it confirms Mallory's claim: Ada never asked for that link


def test_signing_up_or_asking_for_the_link_while_temporal_is_down_says_so_and_keeps_the_account(account_stack, monkeypatch, ada):
    settings, _, _, _ = account_stack
    offline = make_app(settings, NO_TEMPORAL, monkeypatch).test_client()
    answer = register(offline, ada)
    page = answer.get_data(as_text=True)
    assert answer.status_code == 503 and "The request was not confirmed" in page and "your account is kept" in page
    assert offline.application.extensions["customer_accounts"].get(account_key(ada)) is not None
    again = offline.post("/shop/verify", data={"email": ada})
    assert again.status_code == 503 and "The request was not confirmed" in again.get_data(as_text=True)


def test_the_link_asked_for_again_from_the_sign_in_page_arrives_and_confirms(app, shopper, mail, ada):
    register(shopper, ada)
    last_link(mail, ada)  # the sign-up's
    assert shopper.post("/shop/verify", data={"email": ada}).status_code == 200
    second = last_link(mail, ada, 2)
    assert second.startswith("/shop/verify/") and shopper.get(second).status_code == 303  # (the same token within a second)
    assert shopper.post("/shop/signin", data={"email": ada, "password": PASSWORD}).status_code == 303
    store = app.extensions["customer_accounts"]._store
    before = {record["workflow_id"] for record in store.list_all(ACCOUNT_EMAILS)}
    assert shopper.post("/shop/verify", data={"email": ada}).status_code == 200  # confirmed now: nothing to send
    [done] = wait_until(lambda: [r for r in store.list_all(ACCOUNT_EMAILS) if r["workflow_id"] not in before] or None)
    assert done["status"] == "nothing" and len(emails_to(mail, ada)) == 2


def test_the_activity_run_again_after_it_sent_sends_nothing_more(account_stack, ada):
    """A retry after the email went (its answer lost) finds the record and sends nothing."""
    settings, _, sink, _ = account_stack
    store = JsonStore(settings.data_dir)
    accounts = CustomerAccounts(store, links_key(settings.secret_key), signs_in=False)
    accounts.register("Ada Lovelace", ada, PASSWORD)
    texts = load_messages(settings.messages_file).shop
    activities = AccountEmailActivities(
        store, settings, texts, Mailer(SmtpSettings.from_url(settings.smtp_url), settings.order_mail_from)
    )
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=f"account-email-{uuid.uuid4().hex}")
    request = AccountEmailRequest("register", ada, "2026-12-05T10:00:00+00:00", 1)
    assert env.run(activities.send_account_email, request) == "verify"
    assert env.run(activities.send_account_email, request) == "verify"
    assert len(emails_to(sink, ada)) == 1
