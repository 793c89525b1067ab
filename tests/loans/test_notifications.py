"""The decision email: a real aiosmtpd server on loopback, a real dev server, worker process and Flask app.

Each decision sends one email (subject, its own text with the reason, link;
no income or score; a Date), a duplicate sends none, SMTP down delays the email
but not the decision, a 550 is one attempt recorded on the application, a retry
re-sends the same message byte for byte, and a crafted name or address cannot
add a header or a recipient, nor show one.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.utils import parsedate_to_datetime

import pytest
from aiosmtpd.controller import Controller
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from core.mail import Mailer, SmtpSettings, message_id
from core.rules import load_messages
from core.store.files import JsonStore
from loans.emails import LoanEmailActivities, decision_email
from loans.model import (
    APPLICATIONS,
    DecisionEmail,
    DecisionMessage,
    LoanApplication,
    LoanOutcome,
)
from tests.fixtures import (
    HERE,
    JOHN,
    WorkerProcess,
    free_port,
    fresh_settings,
    make_app,
    wait_until,
)
from tools.mail_sink import MaildirHandler

MESSAGES = load_messages(HERE / "messages.json")

CASES = {
    "pre_approved": {},
    "conditional": {"loan_amount": 100000, "annual_income": 80000},
    "denied": {"credit_score": 650},
    "denied_compliance": {"credit_score": 550},
}


def worker_env(smtp_sink) -> dict[str, str]:
    return {
        "SMTP_URL": smtp_sink.url,
        "EMAIL_RETRY_INITIAL_SECONDS": "0.2",
        "EMAIL_ATTEMPT_TIMEOUT_SECONDS": "3",
        "MAIL_FROM": "Loans <no-reply@loans.test>",
    }


@pytest.fixture
def stack(dev_server, smtp_sink, tmp_path, monkeypatch):
    settings = fresh_settings(tmp_path / "data")
    address = dev_server.client.service_client.config.target_host
    worker = WorkerProcess(settings, address, tmp_path / "worker.log", extra_env=worker_env(smtp_sink))
    app = make_app(settings, address, monkeypatch)
    yield app, settings, worker
    app.extensions["temporal"].reset()
    worker.kill()


def mails(sink) -> list:
    return [message_from_bytes(bytes(m), policy=policy.default) for m in sink.mail.maildir]


def stored(settings, workflow_id: str) -> dict:
    return JsonStore(settings.data_dir).newest_in_group(APPLICATIONS, workflow_id) or {}


def email_record(settings, workflow_id: str) -> dict:
    return stored(settings, workflow_id).get("email") or {}


def applicant(decision: str) -> dict:
    return {**JOHN, **CASES[decision], "email": f"{decision}-{uuid.uuid4().hex[:8]}@example.com"}


def test_each_decision_sends_one_email_and_the_duplicate_none(stack, smtp_sink):
    app, settings, _ = stack
    client = app.test_client()
    for count, decision in enumerate(CASES, start=1):
        body = applicant(decision)
        response = client.post("/api/evaluate", json=body)
        assert response.status_code == 200, response.get_json()
        outcome = response.get_json()
        assert outcome["decision"] == decision
        # The persist step sent it before the answer left, and the answer says so.
        assert outcome["email"]["status"] == "sent" and email_record(settings, outcome["workflow_id"])["status"] == "sent"
        wait_until(lambda: len(mails(smtp_sink)) == count, what=f"the {decision} email")
        mail = next(m for m in mails(smtp_sink) if body["email"] in m["To"])
        text = mail.get_body(("plain",)).get_content()
        assert mail["Subject"] == MESSAGES.decisions[decision].title
        # The email's own wording, fixed with the decision: the message, the reason explained, the next steps.
        own = stored(settings, outcome["workflow_id"])["email_text"]
        assert own["message"] in text and own["explanation"] in text
        assert all(step in text for step in own["next_steps"])
        # It is the message: it promises no other (the page's "We are emailing…" is the page's).
        assert "emailing" not in text and "letter" not in text
        # The link opens the applicant's page with its key, which nothing sent through Temporal carried.
        link = re.search(rf"{re.escape(settings.public_url)}(/applications/{outcome['workflow_id']}\?key=\S+)", text)
        assert link is not None, text
        assert client.get(link.group(1)).status_code == 200 and client.get(link.group(1).split("?")[0]).status_code == 404
        assert mail.get_body(("html",)) is not None
        # As whole numbers: the link's random hex ID may hold the same digits ("…d4f7508c…").
        for secret in (body["annual_income"], body["credit_score"]):
            assert not re.search(rf"\b{secret}\b", text), text
        assert mail["Message-ID"] == f"<{outcome['workflow_id']}.decision@loans.test>"  # no "loan-loan-"
        # RFC 5322 requires a Date: when the workflow, having decided, asked for the email.
        sent_at = parsedate_to_datetime(mail["Date"])
        assert abs(datetime.now(UTC) - sent_at) < timedelta(minutes=1)
        wait_until(lambda: email_record(settings, outcome["workflow_id"]).get("status") == "sent", what="recorded")
    duplicate = client.post("/api/evaluate", json={**body, "loan_amount": 1000})
    assert duplicate.status_code == 409
    wait_until(lambda: email_record(settings, outcome["workflow_id"]).get("status") == "sent", what="still sent")
    assert len(mails(smtp_sink)) == len(CASES)


def test_smtp_down_the_decision_is_shown_at_once_and_the_email_follows(stack, smtp_sink):
    app, settings, _ = stack
    port = smtp_sink.port
    smtp_sink.stop()
    body = applicant("pre_approved")
    response = app.test_client().post("/api/evaluate", json=body)
    assert response.status_code == 200 and response.get_json()["decision"] == "pre_approved"
    workflow_id = response.get_json()["workflow_id"]
    assert email_record(settings, workflow_id).get("status") in (None, "retrying")
    wait_until(lambda: email_record(settings, workflow_id).get("attempt", 0) >= 2, what="a retry against the closed port")
    assert mails(smtp_sink) == []
    revived = Controller(smtp_sink.mail, hostname="127.0.0.1", port=port)
    revived.start()
    try:
        wait_until(lambda: len(mails(smtp_sink)) == 1, timeout=30, what="the email after SMTP came back")
        wait_until(lambda: email_record(settings, workflow_id).get("status") == "sent", what="recorded as sent")
    finally:
        revived.stop()
    assert body["email"] in mails(smtp_sink)[0]["To"]


def test_a_550_is_one_attempt_recorded_as_refused(stack, smtp_sink):
    app, settings, _ = stack
    body = applicant("denied")
    smtp_sink.mail.refused.add(body["email"])
    response = app.test_client().post("/api/evaluate", json=body)
    assert response.status_code == 200
    workflow_id = response.get_json()["workflow_id"]
    wait_until(lambda: email_record(settings, workflow_id).get("status") == "refused", what="the refusal recorded")
    assert "550" in email_record(settings, workflow_id)["reason"]
    assert smtp_sink.mail.attempts.count(body["email"]) == 1
    assert mails(smtp_sink) == []


def test_kill_9_while_sending_delivers_once_or_twice_with_one_message_id(stack, smtp_sink, dev_server, tmp_path):
    """The persist step sends the email before the answer: killed mid-send, its workflow task never
    completes, and the next worker decides, persists and sends again, under the same Message-ID."""
    app, settings, worker = stack
    smtp_sink.mail.data_delay = 2.0  # the worker is inside send_message while the sink holds the DATA
    body = applicant("pre_approved")
    with ThreadPoolExecutor(1) as pool:
        answering = pool.submit(app.test_client().post, "/api/evaluate", json=body)
        wait_until(lambda: body["email"] in smtp_sink.mail.attempts, what="the worker to be sending")
        worker.process.kill()  # SIGKILL mid-send: the step never reports
        worker.process.wait(10)
        smtp_sink.mail.data_delay = 0.0
        address = dev_server.client.service_client.config.target_host
        second = WorkerProcess(settings, address, tmp_path / "worker-2.log", extra_env=worker_env(smtp_sink))
        try:
            response = answering.result(timeout=60)
            # Decided by the second worker in time, or "pending" with the status link (the web's wait is over).
            assert response.status_code in (200, 202), response.get_json()
            workflow_id = response.get_json()["workflow_id"]
            wait_until(lambda: email_record(settings, workflow_id).get("status") == "sent", timeout=30, what="sent")
        finally:
            second.kill()
    delivered = mails(smtp_sink)
    assert len(delivered) in (1, 2), [m["Message-ID"] for m in delivered]  # the README's at-least-once promise
    assert {m["Message-ID"].strip() for m in delivered} == {f"<{workflow_id}.decision@loans.test>"}
    assert len(set(smtp_sink.mail.contents)) == 1  # twice or once, one message byte for byte


def outcome_for(name: str, email: str) -> LoanOutcome:
    application = LoanApplication(
        name=name, email=email, loan_amount=1000, credit_score=700, annual_income=50000, has_bankruptcy=False
    )
    return LoanOutcome(
        workflow_id="loan-abc",
        run_id="r",
        submitted_at="2026-01-01T00:00:00",
        application=application,
        decision="denied",
        reason="r",
        loan_to_income_ratio=0.1,
        message=DecisionMessage(title="Not approved", message="m", next_steps=["s"]),
        decided_by="t",
        email_text=DecisionEmail(message="em", explanation="because", next_steps=["es"]),
    )


DECIDED_AT = datetime(2026, 1, 1, 0, 0, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    "name, email",
    [
        ("Eve\r\nBcc: victim@example.com", "eve@example.com"),
        ("Eve", "eve@example.com\r\nBcc: victim@example.com"),
        ("Eve", "eve@example.com>, victim@example.com"),
    ],
)
def test_header_injection_through_the_name_or_address_is_refused(name, email):
    try:
        message = decision_email(outcome_for(name, email), "http://localhost:5001", "Loans <no-reply@loans.test>", DECIDED_AT)
    except ValueError:
        return  # refused
    rendered = message.as_string()
    assert "\nBcc:" not in rendered and "victim@example.com" not in str(message["To"]), rendered


def test_the_message_id_is_stable_per_application_and_kind():
    assert message_id("loan-1", "decision", "Loans <x@a.test>") == message_id("loan-1", "decision", "Loans <x@a.test>")
    assert message_id("loan-1", "decision", "x@a.test") != message_id("loan-2", "decision", "x@a.test")
    assert message_id("loan-1", "decision", "Loans <x@a.test>") == "<loan-1.decision@a.test>"


def test_an_encoded_word_in_the_name_never_reaches_the_to_header_as_a_name():
    """A record validated elsewhere (validation refuses the name): mail clients would show the decoded
    "Bcc: x@evil.com" as the recipient's name, so the email goes out without one."""
    name = "=?utf-8?q?Bcc=3A_x=40evil.com?="
    message = decision_email(outcome_for(name, "eve@example.com"), "http://localhost:5001", "Loans <x@l.test>", DECIDED_AT)
    received = message_from_bytes(message.as_bytes(), policy=policy.default)
    addresses = received["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in addresses] == [("", "eve@example.com")]
    assert "Bcc" not in str(received["To"]) and "evil" not in str(received["To"])
    named = decision_email(outcome_for("Zoë O'Neil", "zoe@example.com"), "http://h", "Loans <x@l.test>", DECIDED_AT)
    assert message_from_bytes(named.as_bytes(), policy=policy.default)["To"].addresses[0].display_name == "Zoë O'Neil"


def test_a_retry_re_sends_the_same_message_byte_for_byte_with_its_date(tmp_path):
    """The server kept the first attempt but its answer was lost (451): the retry's message is the same
    bytes, Date included (when the application was decided, not when the attempt ran)."""
    from aiosmtpd.controller import Controller

    handler = MaildirHandler(tmp_path / "mail")
    handler.lost_answers = 1
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        store = JsonStore(tmp_path / "data")
        emails = LoanEmailActivities(
            store,
            Mailer(SmtpSettings.from_url(f"smtp://127.0.0.1:{port}"), "Loans <x@l.test>"),
            "http://localhost:5001",
            b"secret",
            7,
        )
        outcome = outcome_for("Eve", "eve@example.com")
        first = ActivityEnvironment()
        first.info = dataclasses.replace(
            first.info, attempt=1, scheduled_time=DECIDED_AT, current_attempt_scheduled_time=DECIDED_AT
        )
        with pytest.raises(ApplicationError, match="not sent yet"):
            first.run(emails.send_decision_email, outcome)
        retry = ActivityEnvironment()
        retry.info = dataclasses.replace(first.info, attempt=2, current_attempt_scheduled_time=DECIDED_AT + timedelta(minutes=3))
        assert retry.run(emails.send_decision_email, outcome) == "sent"
    finally:
        controller.stop()
    assert len(handler.contents) == 2 and handler.contents[0] == handler.contents[1]
    received = message_from_bytes(handler.contents[1], policy=policy.default)
    # The application's submission (its decision, milliseconds later), not when an attempt ran.
    assert parsedate_to_datetime(received["Date"]) == datetime.fromisoformat(outcome.submitted_at).replace(tzinfo=UTC)
    text = received.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "em\n\nbecause\n\nNext steps:\n- es" in text


def test_the_persist_step_sends_the_email_on_its_first_attempt_only(tmp_path, smtp_sink):
    """A retry of the persist step writes the record again but sends nothing: whether the first
    attempt's email went is for the email's own activity to find out (under the record's lock)."""
    from core.rules import load_rules
    from loans.activities import LoanActivities
    from loans.model import PersistRequest, record_key

    store = JsonStore(tmp_path / "data")
    emails = LoanEmailActivities(store, Mailer(SmtpSettings.from_url(smtp_sink.url), "Loans <x@l.test>"), "http://h", b"k", 7)
    steps = LoanActivities(store, load_rules(HERE / "rules.json"), MESSAGES, "worker-test", emails=emails)
    first, retried = (
        dataclasses.replace(outcome_for(name, f"{name.lower()}@example.com"), workflow_id=f"loan-{name.lower()}")
        for name in ("Ann", "Bob")
    )
    assert ActivityEnvironment().run(steps.persist_application, PersistRequest(first, send_email=True)) == "sent"
    again = ActivityEnvironment()
    again.info = dataclasses.replace(again.info, attempt=2)
    assert again.run(steps.persist_application, PersistRequest(retried, send_email=True)) is None
    assert [mail["To"] for mail in mails(smtp_sink)] == ["Ann <ann@example.com>"]
    assert store.get(APPLICATIONS, record_key(first.workflow_id, first.run_id))["email"]["status"] == "sent"
    bob = store.get(APPLICATIONS, record_key(retried.workflow_id, retried.run_id))
    assert bob["decision"] == "denied" and "email" not in bob
    # Not carried (an application started before the persist step sent it): its own activity sends it.
    assert ActivityEnvironment().run(steps.persist_application, PersistRequest(retried)) is None
    assert ActivityEnvironment().run(emails.send_decision_email, retried) == "sent"
    assert len(mails(smtp_sink)) == 2
