"""The loan routes and service end to end: Flask app -> real Temporal dev server -> real worker process.

Covers the original loan app's scenarios, duplicate refusal under a 20-way
race, the worker-down path (202, then completed once a worker starts), input
errors, the pages, and Temporal being unreachable.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from markupsafe import escape
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest
from temporalio.service import RPCError, RPCStatusCode

from core.rules import load_messages
from core.store.files import JsonStore
from loans.model import APPLICATIONS
from loans.service import LoanService
from tests.fixtures import (
    ADDRESS,
    HERE,
    JOHN,
    WorkerProcess,
    applicant_link,
    free_port,
    make_app,
    signed_in,
    wait_until,
)

MESSAGES = load_messages(HERE / "messages.json")
SARAH = {**JOHN, "name": "Sarah Test", "email": "sarah@example.com", "loan_amount": 100000, "annual_income": 80000}


@pytest.fixture
def app(loan_stack, monkeypatch):
    settings, address = loan_stack
    app = make_app(replace(settings, secret_key=uuid.uuid4().hex), address, monkeypatch)
    yield app
    app.extensions["temporal"].reset()


@pytest.fixture
def client(app):
    return app.test_client()


def store_of(app) -> JsonStore:
    return app.extensions["loan_service"].store


def records_for(app, workflow_id: str) -> list[dict]:
    records, _ = store_of(app).list_recent(APPLICATIONS, limit=10_000)
    return [r for r in records if r["workflow_id"] == workflow_id]


def test_john_doe_is_pre_approved(client, app):
    response = client.post("/api/evaluate", json=JOHN)
    assert response.status_code == 200, response.json
    body = response.json
    assert body["decision"] == "pre_approved"
    assert body["message"]["title"] == "You're pre-approved!"
    assert "$50,000" in body["message"]["message"]
    assert body["application"]["email"] == "john.doe@example.com"
    assert "loan_to_income_ratio" not in body and "annual_income" not in body["application"]  # operators only
    assert "processed_by" not in body  # a worker's host name: operators only
    assert body["workflow_id"].startswith("loan-") and "john" not in body["workflow_id"]

    status = wait_until(
        lambda: (r := client.get(body["status_url"])).json.get("persisted") and r,
        what="the record to be persisted",
    )
    assert status.status_code == 200
    assert status.json["decision"] == "pre_approved"
    assert len(records_for(app, body["workflow_id"])) == 1


def test_sarah_test_is_conditional(client, app):
    response = client.post("/api/evaluate", json=SARAH, headers=bearer(app))  # an operator sees the ratio
    assert response.status_code == 200, response.json
    assert response.json["decision"] == "conditional"
    assert response.json["loan_to_income_ratio"] == pytest.approx(1.25)


def test_same_email_twice_is_refused_with_days_remaining_and_nothing_else(client):
    first = client.post("/api/evaluate", json=JOHN)
    assert first.status_code == 200
    # Case and spaces do not make it a different applicant.
    second = client.post("/api/evaluate", json={**JOHN, "email": "  JOHN.DOE@example.com", "loan_amount": 1000})
    assert second.status_code == 409
    # Anyone who knows an email may ask: the answer tells that an application
    # exists and when a new one is possible, not its decision, date or ID.
    assert second.json == {"error": MESSAGES.errors["duplicate"].format(days="7 days"), "days_remaining": 7}


def test_twenty_simultaneous_submissions_give_one_application(app):
    barrier = threading.Barrier(20)

    def submit(_):
        client = app.test_client()
        barrier.wait()
        return client.post("/api/evaluate", json=SARAH)

    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(submit, range(20)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [409] * 19
    workflow_id = next(r.json["workflow_id"] for r in responses if r.status_code == 200)
    wait_until(lambda: records_for(app, workflow_id), what="the record")
    assert len(records_for(app, workflow_id)) == 1
    assert all(r.json["days_remaining"] == 7 for r in responses if r.status_code == 409)


@pytest.mark.timeout(60)
def test_no_worker_gives_202_then_completes_once_a_worker_starts(loan_stack, monkeypatch, tmp_path):
    settings, address = loan_stack
    settings = replace(
        settings,
        task_queue=f"no-worker-{uuid.uuid4().hex[:8]}",
        data_dir=tmp_path / "data",
        secret_key=uuid.uuid4().hex,
        decision_wait_seconds=1.0,
    )
    app = make_app(settings, address, monkeypatch)
    client = app.test_client()

    response = client.post("/api/evaluate", json=JOHN)
    assert response.status_code == 202, response.json
    status_url = response.json["status_url"]
    assert client.get(status_url).status_code == 202
    assert client.post("/api/evaluate", json=JOHN).status_code == 409  # still one application

    worker = WorkerProcess(settings, address, tmp_path / "late-worker.log")
    try:
        done = wait_until(lambda: (r := client.get(status_url)).status_code == 200 and r, timeout=30)
        assert done.json["decision"] == "pre_approved"
        wait_until(lambda: records_for(app, response.json["workflow_id"]), what="the record")
        assert len(records_for(app, response.json["workflow_id"])) == 1
    finally:
        worker.kill()
        app.extensions["temporal"].reset()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"has_bankruptcy": "no"}, "has_bankruptcy"),
        ({"credit_score": "750"}, "credit_score"),
        ({"email": "nobody"}, "email"),
        ({"loan_amount": 0}, "loan_amount"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(client, change, field):
    response = client.post("/api/evaluate", json={**JOHN, **change})
    assert response.status_code == 400
    assert response.json["fields"] == {field: MESSAGES.validation[field]}


def test_bodies_that_are_not_a_json_object_get_clear_4xx(client):
    form = client.post("/api/evaluate", data={"name": "x"})
    assert form.status_code == 415 and form.json["error"] == MESSAGES.errors["not_json"]
    broken = client.post("/api/evaluate", data="{not json", content_type="application/json")
    assert broken.status_code == 400 and broken.json["error"] == MESSAGES.errors["invalid_json"]
    array = client.post("/api/evaluate", json=[JOHN])
    assert array.status_code == 400 and array.json["fields"] == {"application": MESSAGES.errors["not_object"]}
    huge = client.post("/api/evaluate", json={**JOHN, "name": "x" * 20_000})
    assert huge.status_code == 413 and huge.json["error"] == MESSAGES.errors["too_large"]
    assert client.get("/api/evaluate").status_code == 405
    assert client.get("/api/applications/loan-unknown").status_code == 404


def test_form_submission_shows_the_decision_and_records_the_contact_answer(client, app):
    form = {**{k: str(v) for k, v in SARAH.items()}, "has_bankruptcy": "no"}
    response = client.post("/apply", data=form)
    assert response.status_code == 303
    page_url = response.headers["Location"]
    workflow_id = page_url.rsplit("/", 1)[1].split("?")[0]
    assert "?key=" in page_url  # the applicant's link

    page = wait_until(lambda: (r := client.get(page_url)).status_code == 200 and b'id="decision"' in r.data and r)
    html = page.get_data(as_text=True)
    assert "Conditionally approved" in html
    assert "Would you like an agent to contact you?" in html
    assert f"/workflows/{workflow_id}/" not in html  # the Temporal UI is for operators
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    assert f"/workflows/{workflow_id}/" in operator.get(page_url).get_data(as_text=True)

    answered = client.post(page_url.replace("?", "/contact?"), data={"answer": "yes"})
    assert answered.status_code == 303
    wait_until(
        lambda: (records_for(app, workflow_id) or [{}])[0].get("contact_preference") == "yes",
        what="the contact answer to be recorded",
    )
    assert client.post(page_url.replace("?", "/contact?"), data={"answer": "maybe"}).status_code == 400


def test_form_errors_rerender_with_the_values_kept(client):
    form = {**{k: str(v) for k, v in JOHN.items()}, "has_bankruptcy": "no", "credit_score": "9000"}
    response = client.post("/apply", data=form)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert MESSAGES.validation["credit_score"] in html
    assert 'value="John Doe"' in html and 'value="9000"' in html


def test_duplicate_form_submission_explains_when_to_apply_again(client):
    form = {**{k: str(v) for k, v in JOHN.items()}, "has_bankruptcy": "no"}
    assert client.post("/apply", data=form).status_code == 303
    again = client.post("/apply", data=form)
    assert again.status_code == 409
    assert MESSAGES.errors["duplicate"].format(days="7 days") in again.get_data(as_text=True)


def test_list_page_and_api_show_recent_applications_to_operators(client, app, loan_stack):
    response = client.post("/api/evaluate", json={**JOHN, "name": "Listed Person"})
    workflow_id = response.json["workflow_id"]
    wait_until(lambda: records_for(app, workflow_id), what="the record")
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    assert "Listed Person" in operator.get("/applications").get_data(as_text=True)
    listing = operator.get("/api/applications").json
    assert any(a["workflow_id"] == workflow_id for a in listing["applications"])
    assert sum(listing["counts"].values()) == listing["total"] and listing["counts"]["pre_approved"] >= 1
    assert listing["page"] == 1 and listing["total"] >= 1
    for bad in ["0", "²", "1.5", "-1", "100001", "x"]:
        assert operator.get(f"/applications?page={bad}").status_code == 400, bad
        refused = operator.get(f"/api/applications?page={bad}")
        assert refused.status_code == 400 and set(refused.json["fields"]) == {"page"}, bad


def test_temporal_down_is_503_and_keeps_the_form_values(loan_stack, monkeypatch):
    settings, _ = loan_stack
    closed_port = free_port()
    app = make_app(replace(settings, decision_wait_seconds=2.0), f"127.0.0.1:{closed_port}", monkeypatch)
    client = app.test_client()
    try:
        api = client.post("/api/evaluate", json=JOHN)
        assert api.status_code == 503 and api.json["error"] == MESSAGES.errors["unavailable"]
        form = client.post("/apply", data={**{k: str(v) for k, v in JOHN.items()}, "has_bankruptcy": "no"})
        assert form.status_code == 503
        assert 'value="john.doe@example.com"' in form.get_data(as_text=True)
    finally:
        app.extensions["temporal"].reset()


def test_ids_of_other_kinds_are_unknown_applications(client, loan_stack):
    order = signed_in(client.application.test_client(), loan_stack[0]).post(
        "/api/orders",
        json={
            "customer_id": "kind-check",
            "customer_email": "kind@example.com",
            "items": [{"sku": "CB-010", "quantity": 1}],
            "address": ADDRESS,
        },
    )
    assert order.status_code == 201, order.json
    for other in [
        order.json["workflow_id"],
        f"{order.json['workflow_id']}-shipping",
        "rewards-kind-check",
        "loan-" + "0" * 32,
        "loan-..",
        "x" * 300,
    ]:
        assert client.get(applicant_link(client.application, other, api=True)).status_code == 404, other
        assert client.get(applicant_link(client.application, other)).status_code == 404, other
        contact = client.post(applicant_link(client.application, other, "/contact", api=True), json={"answer": "yes"})
        assert contact.status_code == 404, other


def test_deeply_nested_json_is_a_400(client):
    nested = "[" * 5000 + "]" * 5000
    response = client.post("/api/evaluate", data=nested, content_type="application/json")
    assert response.status_code == 400 and response.json["error"] == MESSAGES.errors["invalid_json"]
    unknown = applicant_link(client.application, "loan-" + "0" * 32, "/contact", api=True)
    contact = client.post(unknown, data=nested, content_type="application/json")
    assert contact.status_code == 400


def test_responses_are_strict_json(app):
    with pytest.raises(ValueError):
        app.json.dumps({"loan_to_income_ratio": float("inf")})
    assert app.json.dumps({"b": 1, "a": 2}) == '{"b": 1, "a": 2}'


def shown(text: str) -> str:
    """`text` as a page shows it (HTML-escaped: "application's" is "application&#39;s")."""
    return str(escape(text))


def bearer(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.config['SETTINGS'].operator_token}"}


def decided(client, app, body: dict) -> str:
    """Submit, wait for the stored record; its workflow ID."""
    response = client.post("/api/evaluate", json=body)
    assert response.status_code == 200, response.json
    workflow_id = response.json["workflow_id"]
    wait_until(lambda: records_for(app, workflow_id), what="the record")
    return workflow_id


async def delete_workflow(app, workflow_id: str) -> None:
    """What the server does on its own once the namespace's retention has passed after the window."""
    client = await app.extensions["temporal"].get()
    await client.workflow_service.delete_workflow_execution(
        DeleteWorkflowExecutionRequest(namespace=client.namespace, workflow_execution=WorkflowExecution(workflow_id=workflow_id))
    )


async def workflow_is_gone(app, workflow_id: str) -> bool:
    client = await app.extensions["temporal"].get()
    try:
        await client.get_workflow_handle(workflow_id).describe()
    except RPCError as err:
        return err.status == RPCStatusCode.NOT_FOUND
    return False


def test_a_result_link_outlives_its_workflow(client, app):
    workflow_id = decided(client, app, {**SARAH, "email": f"gone-{uuid.uuid4().hex[:8]}@example.com"})
    asyncio.run(delete_workflow(app, workflow_id))
    wait_until(lambda: asyncio.run(workflow_is_gone(app, workflow_id)), what="the workflow to be deleted")

    api = client.get(applicant_link(app, workflow_id, api=True))
    assert api.status_code == 200, api.json
    assert api.json["decision"] == "conditional" and api.json["persisted"] is True
    page = client.get(applicant_link(app, workflow_id))
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Conditionally approved" in html and shown(MESSAGES.contact["closed"]) in html
    assert shown(MESSAGES.contact["question"]) not in html  # its window is over: nothing would record an answer
    # The operator's list links to it, and the link works.
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    assert f'href="/applications/{workflow_id}"' in operator.get("/applications?page=1").get_data(as_text=True)
    assert operator.get(f"/applications/{workflow_id}").status_code == 200
    # An answer now is refused as too late, not as an unknown application.
    late = client.post(applicant_link(app, workflow_id, "/contact", api=True), json={"answer": "yes"})
    assert late.status_code == 409 and late.json["error"] == MESSAGES.errors["contact_closed"]
    page_url = applicant_link(app, workflow_id)
    form = client.post(page_url.replace("?", "/contact?"), data={"answer": "yes"})
    assert form.status_code == 303 and form.headers["Location"] == page_url
    assert shown(MESSAGES.errors["contact_closed"]) in client.get(form.headers["Location"]).get_data(as_text=True)
    # An ID nothing is known of stays unknown.
    unknown = "loan-" + uuid.uuid4().hex
    assert client.get(applicant_link(app, unknown, api=True)).status_code == 404
    assert client.post(applicant_link(app, unknown, "/contact", api=True), json={"answer": "yes"}).status_code == 404


def test_with_temporal_down_a_result_link_shows_the_stored_decision(client, app, loan_stack, monkeypatch):
    workflow_id = decided(client, app, {**JOHN, "email": f"down-{uuid.uuid4().hex[:8]}@example.com"})
    down = make_app(app.config["SETTINGS"], f"127.0.0.1:{free_port()}", monkeypatch)  # the same data folder
    browser = down.test_client()
    try:
        api = browser.get(applicant_link(down, workflow_id, api=True))
        assert api.status_code == 200, api.json
        assert api.json["decision"] == "pre_approved"
        page = browser.get(applicant_link(down, workflow_id))
        assert page.status_code == 200 and shown("You're pre-approved!") in page.get_data(as_text=True)
        # Nothing stored yet (a pending application, or any ID): the read-time wording, not the submit-time one.
        unknown = "loan-" + uuid.uuid4().hex
        refused = browser.get(applicant_link(down, unknown, api=True))
        assert refused.status_code == 503 and refused.json["error"] == MESSAGES.errors["unavailable_read"]
        unknown_page = browser.get(applicant_link(down, unknown))
        assert unknown_page.status_code == 503
        assert shown(MESSAGES.errors["unavailable_read"]) in unknown_page.get_data(as_text=True)
        assert "not submitted" not in MESSAGES.errors["unavailable_read"]
        answer = browser.post(applicant_link(down, workflow_id, "/contact", api=True), json={"answer": "yes"})
        assert answer.status_code == 503 and answer.json["error"] == MESSAGES.errors["contact_unavailable"]
    finally:
        down.extensions["temporal"].reset()


@pytest.mark.timeout(60)
def test_right_after_an_answer_the_page_shows_it_and_the_url_cannot_fake_it(loan_stack, monkeypatch, tmp_path):
    settings, address = loan_stack
    settings = replace(
        settings, task_queue=f"answer-{uuid.uuid4().hex[:8]}", data_dir=tmp_path / "data", secret_key=uuid.uuid4().hex
    )
    app = make_app(settings, address, monkeypatch)
    client = app.test_client()
    worker = WorkerProcess(settings, address, tmp_path / "worker.log")
    try:
        workflow_id = decided(client, app, SARAH)
    finally:
        worker.kill()  # from here nothing records the answer: the page must not depend on the record
    try:
        page_url = applicant_link(app, workflow_id)
        # A banner in the URL is not believed.
        faked = client.get(f"{page_url}&contact=recorded").get_data(as_text=True)
        assert shown(MESSAGES.contact["recorded"]) not in faked and shown(MESSAGES.contact["question"]) in faked

        answered = client.post(page_url.replace("?", "/contact?"), data={"answer": "yes"})
        assert answered.status_code == 303 and answered.headers["Location"] == page_url  # the key, nothing else
        html = client.get(page_url).get_data(as_text=True)
        assert shown(MESSAGES.contact["recorded"]) in html
        assert shown(MESSAGES.contact["yes"].format(email=SARAH["email"])) in html
        assert shown(MESSAGES.contact["question"]) not in html and 'value="not_yet"' in html  # only "changed your mind?"
        assert records_for(app, workflow_id)[0].get("contact_preference") is None  # the record has not caught up
        # Said once: the next visit shows no banner.
        assert shown(MESSAGES.contact["recorded"]) not in client.get(page_url).get_data(as_text=True)
        # Another browser (no session) is told nothing about this one's answer.
        assert shown(MESSAGES.contact["recorded"]) not in app.test_client().get(page_url).get_data(as_text=True)
    finally:
        app.extensions["temporal"].reset()


def test_the_answer_recorded_by_the_workflow_shows_after_the_redirect(client, app):
    workflow_id = decided(client, app, {**SARAH, "email": f"answer-{uuid.uuid4().hex[:8]}@example.com"})
    page_url = applicant_link(app, workflow_id)
    client.post(page_url.replace("?", "/contact?"), data={"answer": "not_yet"})
    html = client.get(page_url).get_data(as_text=True)
    assert shown(MESSAGES.contact["recorded"]) in html and shown(MESSAGES.contact["not_yet"]) in html
    assert shown(MESSAGES.contact["question"]) not in html
    wait_until(lambda: records_for(app, workflow_id)[0].get("contact_preference") == "not_yet", what="recorded")
    later = client.get(page_url).get_data(as_text=True)
    assert shown(MESSAGES.contact["not_yet"]) in later and shown(MESSAGES.contact["recorded"]) not in later


def test_the_worker_that_decided_is_shown_to_operators_only(client, app):
    email = f"who-{uuid.uuid4().hex[:8]}@example.com"
    workflow_id = decided(client, app, {**JOHN, "email": email})
    assert "processed_by" not in client.get(applicant_link(app, workflow_id, api=True)).json
    page = client.get(applicant_link(app, workflow_id)).get_data(as_text=True)
    assert "Decided by" not in page and "worker-" not in page
    as_operator = client.get(f"/api/applications/{workflow_id}", headers=bearer(app)).json
    assert as_operator["processed_by"].startswith("worker-")
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    assert "Decided by" in operator.get(f"/applications/{workflow_id}").get_data(as_text=True)
    assert operator.get("/api/applications").json["applications"][0]["processed_by"].startswith("worker-")
    evaluated = client.post(
        "/api/evaluate", headers=bearer(app), json={**JOHN, "email": f"who-{uuid.uuid4().hex[:8]}@example.com"}
    ).json
    assert evaluated["processed_by"].startswith("worker-")


def test_the_page_gives_the_applicant_the_reason_in_their_words_and_operators_the_rule(client, app):
    workflow_id = decided(client, app, {**SARAH, "email": f"why-{uuid.uuid4().hex[:8]}@example.com"})
    record = records_for(app, workflow_id)[0]
    assert record["email_text"]["explanation"].startswith("The loan is more than")  # SARAH's loan-to-income
    page = client.get(applicant_link(app, workflow_id)).get_data(as_text=True)
    assert shown(record["email_text"]["explanation"]) in page
    assert "<dt>Rule</dt>" not in page and shown(record["reason"]) not in page
    operator = signed_in(app.test_client(), app.config["SETTINGS"])
    as_operator = operator.get(f"/applications/{workflow_id}").get_data(as_text=True)
    assert "<dt>Rule</dt>" in as_operator and shown(record["reason"]) in as_operator


def test_the_contact_api_names_the_values_it_takes(client, app):
    workflow_id = decided(client, app, {**SARAH, "email": f"values-{uuid.uuid4().hex[:8]}@example.com"})
    refused = client.post(applicant_link(app, workflow_id, "/contact", api=True), json={"answer": "not yet"})
    assert refused.status_code == 400
    assert refused.json["fields"] == {"answer": 'The field "answer" must be "yes" or "not_yet".'}
    assert client.post(applicant_link(app, workflow_id, "/contact", api=True), json={"answer": "not_yet"}).status_code == 202


def test_a_json_key_sent_twice_is_a_400_naming_it_on_every_json_route(client, app):
    email = f"twice-{uuid.uuid4().hex[:8]}@example.com"
    body = (
        '{"name": "A", "email": "%s", "loan_amount": 50000, "credit_score": 750, "annual_income": 150000,'
        ' "has_bankruptcy": false, "name": "B"}' % email
    )
    refused = client.post("/api/evaluate", data=body, content_type="application/json")
    assert refused.status_code == 400
    assert refused.json == {
        "error": MESSAGES.errors["duplicate_key"].format(field="name"),
        "fields": {"name": MESSAGES.validation["duplicate_key"]},
    }
    assert records_for(app, "loan-" + "0" * 32) == []
    assert client.post("/api/evaluate", json={**JOHN, "email": email}).status_code == 200  # nothing was started
    contact = client.post(
        applicant_link(client.application, "loan-" + "0" * 32, "/contact", api=True),
        data='{"answer": "yes", "answer": "no"}',
        content_type="application/json",
    )
    assert contact.status_code == 400 and contact.json["fields"] == {"answer": MESSAGES.validation["duplicate_key"]}
    order = (
        '{"customer_id": "twice", "customer_email": "twice@example.com", "items": [{"sku": "CB-010", "quantity": 1}],'
        ' "address": {"name": "A", "street": "S", "city": "London", "city": "Paris", "postal_code": "P",'
        ' "country": "UK"}}'
    )
    placed = client.post("/api/orders", data=order, content_type="application/json", headers=bearer(app))
    assert placed.status_code == 400
    assert placed.json["fields"] == {"address.city": MESSAGES.validation["duplicate_key"]}


def test_a_form_posted_without_a_session_comes_back_filled_in_and_starts_nothing(client, app):
    email = f"expired-{uuid.uuid4().hex[:8]}@example.com"
    form = {**{k: str(v) for k, v in JOHN.items()}, "email": email, "has_bankruptcy": "no"}
    expired = client.post("/apply", data=form, raw=True)  # no CSRF token: a session that expired, or none
    assert expired.status_code == 400
    html = expired.get_data(as_text=True)
    assert shown(MESSAGES.errors["session_expired"]) in html
    assert f'value="{email}"' in html and 'value="John Doe"' in html and 'value="no" checked' in html
    assert 'name="csrf_token"' in html  # a fresh token: submitting again works
    assert client.post("/api/evaluate", json={**JOHN, "email": email}).status_code == 200  # nothing was started


# --- true answers after errors, and retries (issue 25) ---------------------------------


def lose_answers(monkeypatch, start: bool, describe_fails: bool = False) -> None:
    """The start call fails with a deadline, as it did under load: after starting the workflow
    (`start`: the answer was lost on the way back) or before it reached the server."""
    original = LoanService._execute

    async def execute(self, operation):
        if start:
            await original(self, operation)
        raise RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")

    monkeypatch.setattr(LoanService, "_execute", execute)
    if describe_fails:

        async def describe(self, workflow_id):
            raise RPCError("unavailable", RPCStatusCode.UNAVAILABLE, b"")

        monkeypatch.setattr(LoanService, "_describe", describe)


def test_an_application_started_before_its_answer_was_lost_is_never_called_not_submitted(client, app, monkeypatch):
    lose_answers(monkeypatch, start=True)
    response = client.post("/api/evaluate", json=JOHN)
    # Its workflow exists and is this submission's: the decision (or 202 with the link), never 503.
    assert response.status_code in (200, 202), response.json
    workflow_id = response.json["workflow_id"]
    status = client.get(response.json["status_url"])
    assert status.status_code in (200, 202) and status.json["workflow_id"] == workflow_id
    wait_until(lambda: records_for(app, workflow_id), what="the record")
    assert len(records_for(app, workflow_id)) == 1


def test_not_submitted_only_when_known_and_unknown_says_so(client, monkeypatch):
    lose_answers(monkeypatch, start=False)
    refused = client.post("/api/evaluate", json=JOHN)
    assert refused.status_code == 503 and refused.json["error"] == MESSAGES.errors["unavailable"]  # no workflow: known
    lose_answers(monkeypatch, start=False, describe_fails=True)
    unknown = client.post("/api/evaluate", json=JOHN)
    assert unknown.status_code == 503 and unknown.json["error"] == MESSAGES.errors["submission_unknown"]
    monkeypatch.undo()
    assert client.post("/api/evaluate", json=JOHN).status_code == 200  # nothing had started


def test_the_same_idempotency_key_gets_the_first_decision_and_another_application_a_422(client):
    key = {"Idempotency-Key": f"retry-{uuid.uuid4().hex}"}
    first = client.post("/api/evaluate", json=JOHN, headers=key)
    assert first.status_code == 200
    again = client.post("/api/evaluate", json={**JOHN, "email": " JOHN.DOE@example.com"}, headers=key)
    assert again.status_code == 200, again.json
    assert (again.json["workflow_id"], again.json["decision"]) == (first.json["workflow_id"], first.json["decision"])
    other = client.post("/api/evaluate", json={**JOHN, "annual_income": 90000}, headers=key)
    assert other.status_code == 422 and other.json["fields"] == {"Idempotency-Key": MESSAGES.errors["idempotency_key_reused"]}
    assert client.post("/api/evaluate", json=JOHN).status_code == 409  # without the key: a new application
    bad = client.post("/api/evaluate", json=JOHN, headers={"Idempotency-Key": "no spaces allowed"})
    assert bad.status_code == 400 and set(bad.json["fields"]) == {"Idempotency-Key"}


def test_a_form_sent_twice_shows_its_decision_both_times(client):
    page = client.get("/").get_data(as_text=True)
    key = page.split('name="submission_key" value="', 1)[1].split('"', 1)[0]
    assert len(key) == 32
    form = {**{k: str(v) for k, v in JOHN.items()}, "has_bankruptcy": "no", "submission_key": key}
    first = client.post("/apply", data=form)
    second = client.post("/apply", data=form)  # a second press, or a reload after a lost answer
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    changed = client.post("/apply", data={**form, "annual_income": "95000"})
    assert changed.status_code == 409
    assert shown(MESSAGES.errors["form_changed_after_submit"]) in changed.get_data(as_text=True)
