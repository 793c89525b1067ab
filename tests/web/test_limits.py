"""Abuse limits (issue 26): public endpoints answer 429 with Retry-After past their limits, PUBLIC_RATE_LIMIT=off
lifts them, operators are not limited; names carrying addresses, unbounded contact answers and unknown hosts are refused.

The session runs with PUBLIC_RATE_LIMIT=off (tests/fixtures.py); these tests turn the limits on for their app.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest
from temporalio.testing import ActivityEnvironment

from core.formatting import sort_key_for
from core.rules import load_messages, load_rules
from core.settings import Settings
from core.store.files import JsonStore
from loans.activities import LoanActivities
from loans.model import APPLICATIONS, ContactPreferenceRequest
from loans.service import MAX_CONTACT_ANSWERS
from loans.validation import InvalidApplication, parse_json_application
from shop.accounts import account_key
from tests.fixtures import HERE, NO_TEMPORAL, applicant_link, fresh_settings, make_app, new_operator
from web.limits import (
    ACCOUNT_EMAIL_PER_ADDRESS,
    APPLY_PER_CLIENT,
    APPLY_PER_EMAIL,
    CHECKOUT_PAGE_PER_CLIENT,
    SIGNIN_FAILURES_PER_ACCOUNT,
)

MESSAGES = load_messages(HERE / "messages.json")


def per_minute(limit: str) -> int:
    return int(limit.split(";")[0].split()[0])


@pytest.fixture
def limited(tmp_path, monkeypatch):
    settings = dataclasses.replace(fresh_settings(tmp_path / "data"), public_rate_limit=True)
    return settings, make_app(settings, NO_TEMPORAL, monkeypatch)


def client_at(app, address: str):
    """A test client calling from `address`."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def application(email: str, name: str = "Ada Lovelace") -> dict:
    # Refused by validation (no income): counted by the limits, never sent to Temporal.
    return {"name": name, "email": email, "loan_amount": 5000, "credit_score": 700, "has_bankruptcy": False}


def test_applying_past_the_limit_answers_429_with_retry_after(limited):
    _, app = limited
    client = app.test_client()
    allowed = per_minute(APPLY_PER_CLIENT)
    answers = [client.post("/api/evaluate", json=application(f"a{n}@example.com")).status_code for n in range(allowed)]
    assert answers == [400] * allowed
    refused = client.post("/api/evaluate", json=application("late@example.com"))
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 61  # the minute's window, rounded up
    assert refused.json["retry_after"] == int(refused.headers["Retry-After"])
    assert "Try again in" in refused.json["error"]
    # Another client is not affected.
    assert client_at(app, "192.0.2.7").post("/api/evaluate", json=application("b@example.com")).status_code == 400


def test_the_form_past_the_limit_comes_back_with_what_was_typed(limited):
    _, app = limited
    client = app.test_client()
    form = {"name": "Grace Hopper", "email": "grace@example.com", "loan_amount": "", "credit_score": "700"}
    for n in range(per_minute(APPLY_PER_CLIENT)):
        client.post("/apply", data={**form, "email": f"g{n}@example.com"})
    page = client.post("/apply", data=form)
    assert page.status_code == 429 and page.headers["Retry-After"]
    text = page.get_data(as_text=True)
    assert 'value="Grace Hopper"' in text and "Try again in" in text


def test_one_email_address_is_limited_whoever_sends_it(limited):
    _, app = limited
    for n in range(per_minute(APPLY_PER_EMAIL)):
        assert (
            client_at(app, f"192.0.2.{n + 10}").post("/api/evaluate", json=application("Target@Example.com")).status_code == 400
        )
    assert client_at(app, "192.0.2.99").post("/api/evaluate", json=application("target@example.com")).status_code == 429


def test_operators_are_not_limited(limited):
    settings, app = limited
    client = app.test_client()
    bearer = {"Authorization": f"Bearer {settings.operator_token}"}
    answers = {
        client.post("/api/evaluate", json=application(f"o{n}@example.com"), headers=bearer).status_code
        for n in range(per_minute(APPLY_PER_CLIENT) + 5)
    }
    assert answers == {400}


def test_sign_in_guesses_are_limited_and_logged(limited, caplog):
    settings, app = limited
    client = app.test_client()
    guesses = [{"name": f"guess-{n}", "password": f"secret-guess-{n}", "next": "/orders"} for n in range(11)]
    answers = [client.post("/signin", data=guess).status_code for guess in guesses]
    assert answers == [401] * 10 + [429]
    assert sum("Operator sign-in refused" in r.getMessage() for r in caplog.records) == 10
    assert "'guess-3'" in caplog.text and "secret-guess" not in caplog.text  # the name, never the password


def test_one_accounts_password_guessed_from_many_addresses_is_locked_for_a_while(limited):
    """Issue 26: guesses had no limit per account. Five refused sign-ins a minute per account, from
    whichever clients, then 429 even for the right password; other accounts sign in as before."""
    settings, app = limited
    name, password = new_operator(app, "admin")
    other, other_password = new_operator(app, "viewer")
    refused = [
        client_at(app, f"198.51.100.{n}").post("/signin", data={"name": name, "password": "wrong guess"}).status_code
        for n in range(per_minute(SIGNIN_FAILURES_PER_ACCOUNT))
    ]
    assert refused == [401] * per_minute(SIGNIN_FAILURES_PER_ACCOUNT)
    locked = client_at(app, "198.51.100.200").post("/signin", data={"name": name.upper(), "password": password})
    assert locked.status_code == 429 and int(locked.headers["Retry-After"]) > 0
    assert client_at(app, "198.51.100.201").post("/signin", data={"name": other, "password": other_password}).status_code == 303


def test_public_rate_limit_off_lifts_every_limit(tmp_path, monkeypatch):
    settings = fresh_settings(tmp_path / "data")
    assert settings.public_rate_limit is False  # the session's PUBLIC_RATE_LIMIT=off
    client = make_app(settings, NO_TEMPORAL, monkeypatch).test_client()
    answers = {client.post("/api/evaluate", json=application(f"x{n}@example.com")).status_code for n in range(30)}
    assert answers == {400}


def test_limits_are_on_unless_switched_off(monkeypatch):
    monkeypatch.delenv("PUBLIC_RATE_LIMIT")
    assert Settings.from_env().public_rate_limit is True
    monkeypatch.setenv("PUBLIC_RATE_LIMIT", "sometimes")
    with pytest.raises(SystemExit, match="PUBLIC_RATE_LIMIT must be on or off"):
        Settings.from_env()


@pytest.mark.parametrize(
    "name", ["Visit https://evil.example", "www.bit-ly.example", "mail eve@evil.example", "Claim at evil.com now", "see BIT.LY/x"]
)
def test_names_carrying_a_web_or_email_address_are_refused(name):
    with pytest.raises(InvalidApplication) as refused:
        parse_json_application({**application("a@example.com", name), "annual_income": 50000}, MESSAGES)
    assert refused.value.fields == {"name": MESSAGES.validation["name_link"]}


@pytest.mark.parametrize("name", ["St.John Smith", "J. R. R. Tolkien", "Mary-Jane O'Neil", "Dr. Zoë Comm"])
def test_names_with_dots_are_still_names(name):
    assert parse_json_application({**application("a@example.com", name), "annual_income": 50000}, MESSAGES).name == name


def test_contact_answers_are_counted_once_each_and_refused_past_the_bound(limited):
    settings, app = limited
    store = JsonStore(settings.data_dir)
    workflow_id = f"loan-{uuid.uuid4().hex}"
    key = f"{workflow_id}.run-1"
    store.put(APPLICATIONS, key, {"workflow_id": workflow_id, "run_id": "run-1"}, sort_key=sort_key_for("2026-12-05T00:00:00"))
    activities = LoanActivities(store=store, rules=load_rules(HERE / "rules.json"), messages=MESSAGES, identity="test")
    env = ActivityEnvironment()
    first = ContactPreferenceRequest(workflow_id, "run-1", "yes", "2026-12-05T00:01:00")
    env.run(activities.record_contact_preference, first)
    env.run(activities.record_contact_preference, first)  # a retry of the same answer
    assert store.get(APPLICATIONS, key)["contact_answers"] == 1
    env.run(activities.record_contact_preference, dataclasses.replace(first, answer="not_yet", answered_at="2026-12-05T00:02:00"))
    assert store.get(APPLICATIONS, key)["contact_answers"] == 2

    store.update(APPLICATIONS, key, lambda record: {**record, "contact_answers": MAX_CONTACT_ANSWERS})
    refused = app.test_client().post(applicant_link(app, workflow_id, "/contact", api=True), json={"answer": "yes"})
    assert refused.status_code == 409
    assert refused.json["error"] == MESSAGES.errors["contact_too_often"].format(count=MAX_CONTACT_ANSWERS)


def test_only_allowed_host_names_are_served(tmp_path, monkeypatch):
    settings = fresh_settings(tmp_path / "data")
    client = make_app(settings, NO_TEMPORAL, monkeypatch).test_client()
    assert client.get("/healthz", headers={"Host": "localhost:5001"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "127.0.0.1:5001"}).status_code == 200
    refused = client.get("/healthz", headers={"Host": "evil.example"})
    assert refused.status_code == 400 and "host name" in refused.get_data(as_text=True)
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 400
    shop = dataclasses.replace(fresh_settings(tmp_path / "other"), allowed_hosts=("shop.example.com",))
    client = make_app(shop, NO_TEMPORAL, monkeypatch).test_client()
    assert client.get("/healthz", headers={"Host": "shop.example.com"}).status_code == 200
    assert client.get("/healthz", headers={"Host": "localhost"}).status_code == 400


def test_the_shops_account_emails_are_limited_per_address_from_any_client(limited):
    """Asking for reset links for one address from many clients stops after ACCOUNT_EMAIL_PER_ADDRESS
    an hour: nobody fills a customer's inbox (issue 29)."""
    _, app = limited
    allowed = int(ACCOUNT_EMAIL_PER_ADDRESS.split()[0])
    answers = [
        client_at(app, f"10.0.0.{n}").post("/shop/reset", data={"email": "ada@example.com"}).status_code
        for n in range(allowed + 1)
    ]
    # 503 until the limit: this app has no Temporal to take the email's workflow; the limit counts the requests.
    assert answers == [503] * allowed + [429]
    assert client_at(app, "10.0.1.1").post("/shop/reset", data={"email": "grace@example.com"}).status_code == 503


def test_a_customer_opening_the_checkout_again_and_again_is_limited(limited):
    """Each view of the checkout creates a SetupIntent at Stripe (shop/card.py): a signed-in customer
    reloading it in a loop stops at CHECKOUT_PAGE_PER_CLIENT, not at our Stripe account's limits."""
    _, app = limited
    accounts = app.extensions["customer_accounts"]
    accounts.register("Ada Lovelace", "ada-checkout@example.com", "correct horse battery")
    accounts.change(account_key("ada-checkout@example.com"), lambda record: {**record, "verified": True})
    client = client_at(app, "10.0.2.1")
    signin = {"email": "ada-checkout@example.com", "password": "correct horse battery"}
    assert client.post("/shop/signin", data=signin).status_code == 303
    assert client.post("/shop/cart", data={"sku": "CB-010", "action": "add", "quantity": "1"}).status_code == 303
    allowed = per_minute(CHECKOUT_PAGE_PER_CLIENT)
    answers = [client.get("/shop/checkout").status_code for _ in range(allowed + 1)]
    assert answers == [200] * allowed + [429]
