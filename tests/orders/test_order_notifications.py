"""An order's emails to its customer: a real aiosmtpd server on loopback, real Temporal servers and workers.

On the dev server (a `worker.py` process, the Flask app): an auto-approved
order emails placed, shipped, delivered in that order; a review order says it
waits for review; a 550 is one attempt per email, recorded and shown, and the
order completes all the same; an order placed before orders had an email
sends nothing. On the time-skipping server (in-process workers): a cancel
after the charge mentions the refund; the review SLA expiring emails the
customer. And: the email's address, subject and fields cannot add a header
or a recipient; a retry after success sends nothing; the form and the API
refuse a bad address by name.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes, policy
from email.utils import parsedate_to_datetime

import pytest
from aiosmtpd.controller import Controller
from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from core.mail import Mailer, SmtpSettings
from core.rules import load_messages
from core.store.files import JsonStore
from orders.emails import OrderEmailActivities, order_email
from orders.model import (
    ORDER_EMAILS,
    CancelRequest,
    OrderEmailRequest,
    order_workflow_id,
)
from orders.rewards import RewardsWorkflow
from orders.shipping import ShippingWorkflow
from orders.workflow import OrderWorkflow
from tests.fixtures import (
    ADDRESS,
    HERE,
    WorkerProcess,
    free_port,
    fresh_settings,
    make_app,
    plain_history_json,
    signed_in,
    wait_until,
)
from tests.orders.test_order_workflows import (
    LARGE,
    SMALL,
    order_request,
    order_settings,  # noqa: F401 - a fixture
    running_order_workers,
    start,
    update,
    wait_for,
)
from tools.mail_sink import MaildirHandler

TEXTS = load_messages(HERE / "messages.json").orders
MAIL_FROM = "Shop <orders@shop.test>"


def subject(kind: str, order_id: str) -> str:
    return TEXTS[f"email_{kind}_subject"].format(order_id=order_id)


class Sink:
    """The aiosmtpd server and what it received."""

    def __init__(self, root):
        self.port = free_port()
        self.handler = MaildirHandler(root / "mail")
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.url = f"smtp://127.0.0.1:{self.port}"

    def mails_to(self, address: str) -> list:
        """The messages to `address`, in the order the server accepted them."""
        mails = [message_from_bytes(bytes(m), policy=policy.default) for m in self.handler.maildir]
        mine = {str(m["Message-ID"]).strip(): m for m in mails if address in str(m["To"])}
        return [mine[mid.strip()] for mid in self.handler.received if mid.strip() in mine]


def email_env(sink: Sink) -> dict[str, str]:
    return {
        "SMTP_URL": sink.url,
        "MAIL_FROM": MAIL_FROM,
        "EMAIL_RETRY_INITIAL_SECONDS": "0.2",
        "EMAIL_ATTEMPT_TIMEOUT_SECONDS": "3",
    }


@pytest.fixture(scope="module")
def email_stack(dev_server, tmp_path_factory):
    """One SMTP sink and one `worker.py` that mails to it; shipping is quick (prepare 0 s, transit 0.3 s)."""
    root = tmp_path_factory.mktemp("order-emails")
    sink = Sink(root)
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["shipping"] = {"prepare_seconds": 0, "transit_seconds": 0.3, "expedited_transit_seconds": 0.3}
    (root / "rules.json").write_text(json.dumps(rules))
    settings = fresh_settings(root / "data", rules_file=root / "rules.json")
    worker = WorkerProcess(
        settings, dev_server.client.service_client.config.target_host, root / "worker.log", extra_env=email_env(sink)
    )
    yield settings, sink, worker
    worker.kill()
    sink.controller.stop()


@pytest.fixture
def app(email_stack, dev_server, monkeypatch):
    app = make_app(email_stack[0], dev_server.client.service_client.config.target_host, monkeypatch)
    yield app
    app.extensions["temporal"].reset()


@pytest.fixture
def operator(app, email_stack):
    return signed_in(app.test_client(), email_stack[0])


def a_customer_email() -> str:
    return f"ada.{uuid.uuid4().hex[:10]}@example.com"


def place(operator, email: str, items: list[dict]) -> str:
    """Place the order as a careful client does: with an Idempotency-Key, retried on a 503
    (the session's dev server can be slow to answer a start right after a busy module)."""
    body = {"customer_id": "ada", "customer_email": email, "items": items, "address": ADDRESS}
    key = {"Idempotency-Key": f"test-{uuid.uuid4().hex}"}
    answers = []

    def placed():
        answers.append(operator.post("/api/orders", json=body, headers=key))
        return answers[-1].status_code != 503

    wait_until(placed, timeout=20, interval=0.5, what="the order service to answer")
    response = answers[-1]
    assert response.status_code in (200, 201), response.json
    assert sum(a.status_code == 503 for a in answers) <= 2, "more than a slow start: the service was down"
    return response.json["order_id"]


def order_when(operator, order_id: str, check, what: str) -> dict:
    def current():
        order = operator.get(f"/api/orders/{order_id}").json
        return order if check(order) else None

    return wait_until(current, timeout=30, what=what)


def all_emails(kinds: tuple[str, ...], status: str):
    return lambda order: order["final"] and {k: e["status"] for k, e in order["emails"].items()} == dict.fromkeys(kinds, status)


# --- on the dev server, through the API --------------------------------------------------------------


async def test_an_auto_approved_order_emails_placed_shipped_delivered_in_that_order(email_stack, operator, dev_server):
    # In a thread: the app's async views cannot nest in this test's event loop.
    order_id, email = await asyncio.to_thread(check_an_auto_approved_order, email_stack, operator)
    worker = email_stack[2]

    # The address is in no history, ID or search attribute the server keeps, nor in the worker's log;
    # and the new history (with the emails) replays.
    raw = Client(**{**dev_server.client.config(), "data_converter": DataConverter.default})
    history = await raw.get_workflow_handle(order_workflow_id(order_id)).fetch_history()
    assert email not in history.to_json() and email.encode() not in b"".join(e.SerializeToString() for e in history.events)
    assert email not in worker.log_path.read_text()
    assert "send_order_email" not in scheduled_activities(history)  # v12: every email rode with a step
    replayer = Replayer(
        workflows=[OrderWorkflow, ShippingWorkflow, RewardsWorkflow], data_converter=dev_server.client.data_converter
    )
    await replayer.replay_workflow(await dev_server.client.get_workflow_handle(order_workflow_id(order_id)).fetch_history())


def check_an_auto_approved_order(email_stack, operator) -> tuple[str, str]:
    settings, sink, _worker = email_stack
    email = a_customer_email()
    order_id = place(operator, email, [{"sku": "KB-100", "quantity": 2}])  # 214.00: approved automatically
    kinds = ("received", "shipped", "delivered")
    order = order_when(operator, order_id, all_emails(kinds, "sent"), "three emails sent")

    assert order["status"] == "completed" and order["customer_email"] == email
    mails = wait_until(lambda: len(sink.mails_to(email)) == 3 and sink.mails_to(email), what="three emails")
    assert [m["Subject"] for m in mails] == [subject(kind, order_id) for kind in kinds]
    assert [str(m["Message-ID"]).strip() for m in mails] == [f"<order-{order_id}.{kind}@shop.test>" for kind in kinds]
    dates = [parsedate_to_datetime(m["Date"]) for m in mails]
    assert dates == sorted(dates)
    # From the orders' sender (MAIL_FROM's address under the name "Orders"), to the customer by name.
    assert {str(m["From"]) for m in mails} == {"Orders <orders@shop.test>"}
    assert {str(m["To"]) for m in mails} == {f"Ada Lovelace <{email}>"}
    texts = [m.get_body(("plain",)).get_content() for m in mails]
    assert all(text.startswith("Hello Ada Lovelace,\n") for text in texts), texts[0]
    assert "Ada Lovelace, London, UK" in texts[0]
    shipment = order["shipment"]
    assert shipment["carrier"] in texts[1] and shipment["tracking_number"] in texts[1]
    assert f"{order['points_awarded']} reward points" in texts[2]
    assert all(m.get_body(("html",)) is not None for m in mails)
    store = JsonStore(settings.data_dir)
    assert [store.get(ORDER_EMAILS, f"{order_id}.{kind}")["status"] for kind in kinds] == ["sent"] * 3
    page = operator.get(f"/orders/{order_id}").get_data(as_text=True)
    assert email in page and "received: sent" in page and "delivered: sent" in page
    return order_id, email


def test_an_order_for_review_emails_that_it_waits_then_ships(email_stack, operator):
    _settings, sink, _worker = email_stack
    email = a_customer_email()
    order_id = place(operator, email, [{"sku": "LP-140", "quantity": 2}])  # 2,498.00: needs review
    waiting = wait_until(lambda: len(sink.mails_to(email)) == 2 and sink.mails_to(email)[1], what="the review email")
    assert waiting["Subject"] == subject("awaiting_review", order_id)
    assert "$2,498.00" in waiting.get_body(("plain",)).get_content()
    assert operator.get(f"/api/orders/{order_id}").json["status"] == "awaiting_review"  # the email came while it waits

    assert operator.post(f"/api/orders/{order_id}/approve", json={}).status_code == 200
    order_when(
        operator, order_id, all_emails(("received", "awaiting_review", "shipped", "delivered"), "sent"), "four emails sent"
    )
    assert [m["Subject"] for m in sink.mails_to(email)] == [
        subject(kind, order_id) for kind in ("received", "awaiting_review", "shipped", "delivered")
    ]


def test_a_550_is_one_attempt_per_email_recorded_and_shown_and_the_order_completes(email_stack, operator):
    settings, sink, worker = email_stack
    email = a_customer_email()
    sink.handler.refused.add(email)
    order_id = place(operator, email, [{"sku": "CB-010", "quantity": 1}])
    kinds = ("received", "shipped", "delivered")
    order = order_when(operator, order_id, all_emails(kinds, "refused"), "three refusals recorded")

    assert order["status"] == "completed" and order["compensations"] == [] and order["points_awarded"] > 0
    assert sink.handler.attempts.count(email) == 3  # one attempt per email, no retry
    assert sink.mails_to(email) == []
    assert all("550" in e["reason"] and email not in e["reason"] for e in order["emails"].values())
    record = JsonStore(settings.data_dir).get(ORDER_EMAILS, f"{order_id}.shipped")
    assert record["status"] == "refused" and "550" in record["reason"]
    page = operator.get(f"/orders/{order_id}").get_data(as_text=True)
    assert "shipped: refused (550 5.1.1 mailbox unavailable)" in page, page[page.find("order-emails") :][:800]
    events = operator.get(f"/api/orders/{order_id}/events").json["events"]
    assert sum(e["kind"] == "failure" and "refused" in e["message"] for e in events) == 3
    assert email not in worker.log_path.read_text()


async def test_an_order_placed_without_an_email_completes_and_sends_nothing(email_stack, operator, dev_server):
    """As an order placed before orders had an email: its start input has none."""
    settings, sink, _worker = email_stack
    attempts = len(sink.handler.attempts)
    request = dataclasses.replace(order_request(settings, SMALL), customer_email=None)
    assert request.customer_email is None
    handle = await start(dev_server.client, settings, request)
    status = await handle.result()

    assert status.status == "completed" and status.emails == {}
    assert len(sink.handler.attempts) == attempts
    events = (await asyncio.to_thread(operator.get, f"/api/orders/{request.order_id}/events")).json["events"]
    assert any("No customer email" in e["message"] for e in events)
    page = (await asyncio.to_thread(operator.get, f"/orders/{request.order_id}")).get_data(as_text=True)
    assert "No customer email on this order: none are sent." in page


def test_the_order_form_requires_an_email_keeps_what_was_typed_and_says_where_it_emails(email_stack, operator):
    form = {
        "customer_id": "ada",
        "customer_email": "ada@",
        "sku_CB-010": "1",
        **{f"address.{part}": value for part, value in ADDRESS.items()},
    }
    refused = operator.post("/orders", data=form)
    html = refused.get_data(as_text=True)
    assert refused.status_code == 400
    assert TEXTS["customer_email"].replace("'", "&#39;") in html
    assert 'value="ada@"' in html and 'value="Ada Lovelace"' in html and 'value="1"' in html  # nothing typed is lost
    assert operator.post("/orders", data={**form, "customer_email": ""}).status_code == 400

    email = a_customer_email()
    placed = operator.post("/orders", data={**form, "customer_email": email.upper()})
    assert placed.status_code == 303
    page = operator.get(placed.headers["Location"]).get_data(as_text=True)
    assert TEXTS["placed_emailing"].format(email=email) in page  # normalised, as stored


@pytest.mark.parametrize(
    ("change", "text"),
    [
        ({"customer_email": None}, TEXTS["customer_email"]),
        ({"customer_email": "not an address"}, TEXTS["customer_email"]),
        ({"customer_email": "ada@example.com, eve@example.com"}, TEXTS["customer_email"]),
        (
            {"customer_email": "ada@example.com\r\nBcc: eve@example.com"},
            load_messages(HERE / "messages.json").validation["text_characters"],
        ),
    ],
)
def test_the_api_refuses_a_bad_customer_email_by_name(operator, change, text):
    body = {"customer_id": "ada", "items": [{"sku": "CB-010", "quantity": 1}], "address": ADDRESS, **change}
    body = {key: value for key, value in body.items() if value is not None}
    response = operator.post("/api/orders", json=body)
    assert response.status_code == 400 and response.json["fields"] == {"customer_email": text}


# --- on the time-skipping server ------------------------------------------------------------------


@pytest.fixture
def mailing_sink(tmp_path):
    sink = Sink(tmp_path)
    yield sink
    sink.controller.stop()


@pytest.fixture
def mailing_settings(order_settings, mailing_sink):
    """The order settings with the sink as the SMTP server, for the workers the test builds."""
    return dataclasses.replace(order_settings, smtp_url=mailing_sink.url, mail_from=MAIL_FROM)


async def test_a_cancel_after_the_charge_emails_the_cancellation_with_the_refund(
    time_skipping_env, mailing_settings, mailing_sink
):
    sink, order_settings = mailing_sink, mailing_settings
    email = a_customer_email()
    request = dataclasses.replace(order_request(order_settings, SMALL), customer_email=email)
    async with running_order_workers(time_skipping_env.client, order_settings):
        handle = await start(time_skipping_env.client, order_settings, request)
        await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package at the pickup")
        await update(handle, OrderWorkflow.cancel, CancelRequest("customer asked"))
        status = await handle.result()

    assert status.status == "cancelled" and status.payment.status == "refunded"
    assert {kind: e.status for kind, e in status.emails.items()} == {"received": "sent", "cancelled": "sent"}
    cancelled = sink.mails_to(email)[-1]
    assert cancelled["Subject"] == subject("cancelled", request.order_id)
    text = cancelled.get_body(("plain",)).get_content()
    assert "customer asked" in text and TEXTS["email_refunded"].format(amount="$214.00") in text


async def test_the_review_sla_expiring_emails_the_customer(time_skipping_env, mailing_settings, mailing_sink):
    sink, order_settings = mailing_sink, mailing_settings
    email = a_customer_email()
    request = dataclasses.replace(order_request(order_settings, LARGE), customer_email=email)
    async with running_order_workers(time_skipping_env.client, order_settings):
        handle = await start(time_skipping_env.client, order_settings, request)
        status = await handle.result()  # time skips past the 3-minute SLA

    assert status.status == "cancelled" and "cancelled automatically" in status.reason
    kinds = ["received", "awaiting_review", "review_expired"]
    assert {kind: e.status for kind, e in status.emails.items()} == dict.fromkeys(kinds, "sent")
    mails = sink.mails_to(email)
    assert [m["Subject"] for m in mails] == [subject(kind, request.order_id) for kind in kinds]
    text = mails[-1].get_body(("plain",)).get_content()
    assert "3 minute(s)" in text and TEXTS["email_not_charged"] in text


def scheduled_activities(history) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in history.events
        if e.HasField("activity_task_scheduled_event_attributes")
    ]


async def test_version_12_the_dispatch_sends_the_shipped_email_with_its_carrier_and_tracking_number(
    time_skipping_env, mailing_settings, mailing_sink, payload_codec
):
    """The shipment's dispatch step sends the "shipped" email: no email activity of its own in the
    order's history, every email once, the carrier and tracking number the dispatch booked in it.
    RECORD_ORDER_HISTORIES=1 also writes the order's and the shipment's histories to
    histories/{order,shipping}_workflow_v12_completed_emailed.json, which the replay test replays."""
    sink, order_settings = mailing_sink, mailing_settings
    email = a_customer_email()
    request = dataclasses.replace(order_request(order_settings, SMALL), customer_email=email)
    async with running_order_workers(time_skipping_env.client, order_settings):
        handle = await start(time_skipping_env.client, order_settings, request)
        status = await handle.result()

    kinds = ["received", "shipped", "delivered"]
    assert status.status == "completed"
    assert {kind: e.status for kind, e in status.emails.items()} == dict.fromkeys(kinds, "sent")
    history = await handle.fetch_history()
    assert "send_order_email" not in scheduled_activities(history)
    if os.environ.get("RECORD_ORDER_HISTORIES") == "1":
        shipping = await time_skipping_env.client.get_workflow_handle(f"{handle.id}-shipping").fetch_history()
        for kind, recorded in (("order", history), ("shipping", shipping)):
            path = HERE / "tests" / "histories" / f"{kind}_workflow_v12_completed_emailed.json"
            path.write_text(await plain_history_json(recorded, payload_codec))
    mails = sink.mails_to(email)
    assert [m["Subject"] for m in mails] == [subject(kind, request.order_id) for kind in kinds]
    shipped = mails[1].get_body(("plain",)).get_content()
    assert status.shipment.carrier in shipped and status.shipment.tracking_number in shipped
    assert "[[" not in shipped and "[[" not in str(mails[1]["Subject"])
    assert len(sink.handler.received) == len(set(sink.handler.received)) == 3
    record = JsonStore(order_settings.data_dir).get(ORDER_EMAILS, f"{request.order_id}.shipped")
    assert record["status"] == "sent"


async def test_version_12_a_shipped_email_the_dispatch_could_not_send_goes_by_its_own_activity(
    time_skipping_env, mailing_settings, mailing_sink, monkeypatch
):
    """The mail server defers the dispatch's attempt (451): the parcel goes all the same, and the
    order's own email activity sends the "shipped" email, once, with the same carrier and tracking.
    The award, just after, leaves the "delivered" email to its own activity too (the pause after a failure)."""
    sink, order_settings = mailing_sink, mailing_settings
    email = a_customer_email()
    handler, recipients = sink.handler, iter(range(1, 100))
    accept = handler.handle_RCPT

    async def defer_the_second(server, session, envelope, address, rcpt_options):
        if next(recipients) == 2:  # the first is the "received" email, the second the dispatch's "shipped"
            return "451 4.3.0 try again later"
        return await accept(server, session, envelope, address, rcpt_options)

    monkeypatch.setattr(handler, "handle_RCPT", defer_the_second)
    request = dataclasses.replace(order_request(order_settings, SMALL), customer_email=email)
    async with running_order_workers(time_skipping_env.client, order_settings):
        handle = await start(time_skipping_env.client, order_settings, request)
        status = await handle.result()

    assert status.status == "completed" and status.shipment.stage == "delivered"
    assert {kind: e.status for kind, e in status.emails.items()} == dict.fromkeys(("received", "shipped", "delivered"), "sent")
    assert scheduled_activities(await handle.fetch_history()).count("send_order_email") == 2
    subjects = [m["Subject"] for m in sink.mails_to(email)]
    assert sorted(subjects) == sorted(subject(kind, request.order_id) for kind in ("received", "shipped", "delivered"))
    shipped = [m for m in sink.mails_to(email) if m["Subject"] == subject("shipped", request.order_id)]
    assert status.shipment.tracking_number in shipped[0].get_body(("plain",)).get_content()


# --- the message and the activity ----------------------------------------------------------------


def email_request(**change) -> OrderEmailRequest:
    return dataclasses.replace(
        OrderEmailRequest("abc123def456", "received", "ada@example.com", "Order received", "Shipped to Ada Lovelace"), **change
    )


@pytest.mark.parametrize(
    "change",
    [
        {"to": "ada@example.com\r\nBcc: eve@example.com"},
        {"to": "ada@example.com>, eve@example.com"},
        {"to": "Ada <ada@example.com>, eve@example.com"},
        {"subject": "Order received\r\nBcc: eve@example.com"},
        {"text": "Shipped to Ada\r\nBcc: eve@example.com\r\n\r\nhello"},  # any order field, in the body
    ],
)
def test_header_injection_through_the_address_subject_or_an_order_field_is_refused_or_neutralised(change):
    try:
        message = order_email(email_request(**change), MAIL_FROM, parsedate_to_datetime("Thu, 01 Jan 2026 00:00:00 +0000"))
    except ValueError:
        assert "text" not in change  # an address or a subject that would add a header: refused
        return
    assert "text" in change
    rendered = message.as_bytes()
    headers = rendered.split(b"\n\n", 1)[0]
    assert b"Bcc" not in headers and b"eve@example.com" not in headers, headers
    assert str(message["To"]) == "ada@example.com"


def test_a_retry_after_success_sends_nothing(tmp_path):
    sink = Sink(tmp_path)
    try:
        store = JsonStore(tmp_path / "data")
        emails = OrderEmailActivities(store, Mailer(SmtpSettings.from_url(sink.url), MAIL_FROM))
        environment = ActivityEnvironment()
        assert environment.run(emails.send_order_email, email_request()) == "sent"
        assert environment.run(emails.send_order_email, email_request()) == "sent"
        assert len(sink.handler.received) == 1
        assert sink.handler.received[0].strip() == "<order-abc123def456.received@shop.test>"
        assert store.get(ORDER_EMAILS, "abc123def456.received")["status"] == "sent"
    finally:
        sink.controller.stop()


def test_an_email_carried_by_a_step_and_its_own_activity_at_once_goes_once(tmp_path):
    """Version 10: a step's attempt that carries an email may still run when the email's own activity
    starts (the step abandoned by a cancel). Eight senders at once, half of each kind: one message."""
    sink = Sink(tmp_path)
    try:
        emails = OrderEmailActivities(JsonStore(tmp_path / "data"), Mailer(SmtpSettings.from_url(sink.url), MAIL_FROM))
        request = dataclasses.replace(email_request(), requested_at="2026-01-01T00:00:00+00:00")
        start = threading.Barrier(8)

        def send(carried: bool):
            start.wait()
            if carried:
                return emails.send_carried(request).status
            return ActivityEnvironment().run(emails.send_order_email, request)

        with ThreadPoolExecutor(8) as pool:
            outcomes = list(pool.map(send, [True, False] * 4))
        assert outcomes == ["sent"] * 8
        assert len(sink.handler.received) == 1
    finally:
        sink.controller.stop()


def test_after_a_carried_email_fails_steps_leave_theirs_to_the_emails_own_activities_for_a_while(tmp_path, monkeypatch):
    """A deferral (451) of an email a step carried: for CARRIED_PAUSE_AFTER_FAILURE the steps do not
    try the mail server (a slow one would hold each step); the email's own activity still sends."""
    import core.mail

    sink = Sink(tmp_path)
    try:
        emails = OrderEmailActivities(JsonStore(tmp_path / "data"), Mailer(SmtpSettings.from_url(sink.url), MAIL_FROM))
        asked = "2026-01-01T00:00:00+00:00"  # as a step's request carries it
        first, second = (email_request(kind=kind, subject=kind, requested_at=asked) for kind in ("received", "shipped"))
        sink.handler.lost_answers = 1  # kept, but answered 451
        assert emails.send_carried(first) is None and sink.handler.lost_answers == 0  # tried, and deferred
        attempts = len(sink.handler.attempts)
        assert emails.send_carried(second) is None and len(sink.handler.attempts) == attempts  # not tried
        assert ActivityEnvironment().run(emails.send_order_email, second) == "sent"  # its own activity

        now = core.mail.time.monotonic()
        monkeypatch.setattr(core.mail.time, "monotonic", lambda: now + core.mail.CARRIED_PAUSE_AFTER_FAILURE + 1)
        third = email_request(kind="delivered", subject="Delivered", requested_at=asked)
        assert emails.send_carried(third).status == "sent"  # the pause is over
    finally:
        sink.controller.stop()


def test_the_openapi_document_requires_the_customer_email():
    from web.openapi import build_openapi

    order = build_openapi(["KB-100"])["components"]["schemas"]["Order"]
    assert "customer_email" in order["required"] and order["properties"]["customer_email"]["format"] == "email"
