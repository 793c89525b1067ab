"""An applicant's link is a secret (issue 26, item 2): the workflow ID alone opens nothing, the key
in the link is stored nowhere and never goes through Temporal, it closes with the application's
window, and what it shows is what the applicant needs, not their financial profile."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.client import Client

from core.rules import load_messages
from core.settings import payload_data_converter
from loans.model import applicant_link_key
from tests.fixtures import HERE, JOHN, make_app, signed_in, wait_until

MESSAGES = load_messages(HERE / "messages.json")
FINANCIAL = ("annual_income", "credit_score", "has_bankruptcy")


@pytest.fixture
def app(loan_stack, monkeypatch):
    app = make_app(*loan_stack, monkeypatch)  # the worker's secret: its email links open here
    yield app
    app.extensions["temporal"].reset()


def test_the_workflow_id_alone_opens_nothing_and_the_link_shows_no_financial_profile(app):
    """Issue 26: with the workflow ID (shown in the Temporal UI and as file names), the public
    GET /api/applications/<id> returned name, email, income, credit score and bankruptcy answer."""
    client = app.test_client()
    answer = client.post("/api/evaluate", json={**JOHN, "email": f"link-{uuid.uuid4().hex[:8]}@example.com"})
    assert answer.status_code == 200, answer.json
    workflow_id, status_url, page_url = answer.json["workflow_id"], answer.json["status_url"], answer.json["page_url"]
    assert status_url.startswith(f"/api/applications/{workflow_id}?key=")
    key = status_url.split("key=")[1]
    for path in (f"/api/applications/{workflow_id}", f"/applications/{workflow_id}"):
        for attempt in (
            "",
            "?key=",
            f"?key={key[:-1]}{'B' if key.endswith('A') else 'A'}",
            f"?key={key.split('.')[0]}.{'A' * 22}",
            f"?key=-{key}",
        ):
            refused = client.get(path + attempt)
            assert refused.status_code == 404, (path, attempt, refused.status_code)
            assert JOHN["name"] not in refused.text and str(JOHN["annual_income"]) not in refused.text
    other = client.post("/api/evaluate", json={**JOHN, "email": f"other-{uuid.uuid4().hex[:8]}@example.com"}).json
    assert client.get(f"/api/applications/{other['workflow_id']}?key={key}").status_code == 404  # not another's
    no_key = client.post(f"/api/applications/{workflow_id}/contact", json={"answer": "yes"})
    assert no_key.status_code == 404

    shown = client.get(status_url).json
    assert shown["decision"] == "pre_approved" and shown["application"]["name"] == JOHN["name"]
    assert not set(FINANCIAL) & shown["application"].keys() and "loan_to_income_ratio" not in shown
    page = client.get(page_url).text
    assert "pre-approved" in page and "Annual income" not in page and "Credit score" not in page
    assert client.post(status_url.replace("?", "/contact?"), json={"answer": "yes"}).status_code == 202
    # Operators need no key and see the whole application.
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    full = operator.get(f"/api/applications/{workflow_id}").json
    assert set(FINANCIAL) <= full["application"].keys() and "Annual income" in operator.get(f"/applications/{workflow_id}").text


def test_the_applicants_page_is_theirs_and_the_operators_view_of_it_only_reads(app):
    """Issue 28: the applicant's page showed an "Audit" card (the workflow ID, "Record: Saved"), and an
    operator opening it got the applicant's own contact buttons, one click from changing their answer."""
    client = app.test_client()
    answer = client.post("/api/evaluate", json={**JOHN, "email": f"page-{uuid.uuid4().hex[:8]}@example.com"}).json
    workflow_id, page_url = answer["workflow_id"], answer["page_url"]
    page = client.get(page_url).text
    assert ">Audit<" not in page and "Workflow ID" not in page, page[page.find("Audit") - 300 : page.find("Audit") + 100]
    assert "Saved" not in page and "Saving" not in page and 'value="yes"' in page  # the question is theirs
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    viewed = operator.get(f"/applications/{workflow_id}").text
    assert ">Audit<" in viewed and "Workflow ID" in viewed and "The applicant's answer" in viewed
    assert 'name="answer"' not in viewed  # no buttons to answer for them
    refused = operator.post(f"/applications/{workflow_id}/contact", data={"answer": "not_yet"})
    assert refused.status_code == 404  # answering needs the applicant's key, operators' sessions included
    assert client.post(page_url.replace("?", "/contact?"), data={"answer": "yes"}).status_code == 303
    wait_until(lambda: "<strong>yes, contact me</strong>" in operator.get(f"/applications/{workflow_id}").text)


def test_a_loan_to_income_ratio_past_a_thousand_percent_says_so(app):
    """Issue 28: an income of a few dollars showed `100000000000.0%`."""
    applicant = {**JOHN, "email": f"ratio-{uuid.uuid4().hex[:8]}@example.com", "annual_income": 1, "loan_amount": 50000}
    answer = app.test_client().post("/api/evaluate", json=applicant)
    assert answer.status_code == 200, answer.json
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    page = operator.get(f"/applications/{answer.json['workflow_id']}").text
    assert "more than 1,000%" in page and "00000.0%" not in page


def test_a_link_closes_with_its_window(app):
    client = app.test_client()
    answer = client.post("/api/evaluate", json={**JOHN, "email": f"late-{uuid.uuid4().hex[:8]}@example.com"}).json
    secret = app.config["SETTINGS"].secret_key.encode()
    closed = applicant_link_key(secret, answer["workflow_id"], datetime.now(timezone.utc) - timedelta(seconds=1))
    expired = client.get(f"/applications/{answer['workflow_id']}?key={closed}")
    assert expired.status_code == 410 and "You can apply again" in expired.text
    api = client.get(f"/api/applications/{answer['workflow_id']}?key={closed}")
    assert api.status_code == 410 and api.json["error"] == MESSAGES.errors["link_expired"].format(days=7)
    # The answer's own key lasts until a minute before the 7-day window closes.
    expiry = datetime.fromtimestamp(int(answer["status_url"].split("key=")[1].split(".")[0], 36), timezone.utc)
    assert timedelta(days=7) - timedelta(minutes=2) < expiry - datetime.now(timezone.utc) <= timedelta(days=7)


def test_the_key_is_in_neither_temporal_nor_the_data_folder(app, loan_stack):
    settings, address = loan_stack
    client = app.test_client()
    answer = client.post("/api/evaluate", json={**JOHN, "email": f"where-{uuid.uuid4().hex[:8]}@example.com"}).json
    key = answer["status_url"].split("key=")[1]
    wait_until(lambda: client.get(answer["status_url"]).json.get("persisted"), what="the record and the email step")

    async def history_text() -> bytes:
        client = await Client.connect(address, data_converter=payload_data_converter())
        history = await client.get_workflow_handle(answer["workflow_id"]).fetch_history()
        payloads = [payload for event in history.events for payload in _payloads(event)]
        decoded = await client.data_converter.payload_codec.decode(payloads)  # type: ignore[union-attr]
        return history.to_json().encode() + b"".join(payload.data for payload in decoded)

    in_temporal = asyncio.run(history_text())
    assert answer["workflow_id"].encode() in in_temporal and b"where-" in in_temporal  # decoded: it would show
    assert key.encode() not in in_temporal and key.split(".")[1].encode() not in in_temporal
    for folder, _, files in os.walk(settings.data_dir):
        for name in files:
            path = os.path.join(folder, name)
            assert key.split(".")[1] not in path
            if "mail" not in path:  # the decision email is the applicant's: it carries the link
                with open(path, "rb") as file:
                    assert key.split(".")[1].encode() not in file.read(), path


def test_the_web_servers_access_log_leaves_the_query_string_out():
    """gunicorn's default access line holds the request line and the Referer: both carry the key."""
    config = (HERE / "gunicorn.conf.py").read_text()
    fields = re.findall(r"%\((\w+)\)s", re.search(r"access_log_format = '([^']+)'", config).group(1))
    assert "U" in fields and not {"r", "q", "f", "u"} & set(fields)


def _payloads(message) -> list[Payload]:
    """Every Payload inside a protobuf message (an event's inputs, results, markers, details)."""
    found: list[Payload] = []
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            values = list(value.values())
        elif hasattr(value, "ListFields"):
            values = [value]
        else:  # a repeated field
            values = list(value)
        for item in values:
            if isinstance(item, Payload):
                found.append(item)
            elif hasattr(item, "ListFields"):
                found.extend(_payloads(item))
    return found
