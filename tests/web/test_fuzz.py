"""The JSON API fuzzed from its own OpenAPI document, against a real dev server and worker.

schemathesis generates requests for every operation of `/openapi.json`, valid
ones and invalid ones (over a thousand in all, derandomized so a run is
repeatable). Every answer must be below 500, strict JSON, and a 4xx must carry
`error`; afterwards, exactly the requests the API accepted have started
workflows and written records: bad input never does. Then the cases a
generator does not make: bodies that are not JSON, wrong content types,
invalid UTF-8, huge bodies, IDs with path characters. Last, hypothesis over
the HTML forms and over every route that takes an ID: no 5xx, and a form
starts exactly one workflow when it is accepted and none when it is refused.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse

import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from core.rules import load_rules
from loans.model import APPLICATIONS
from orders.model import ORDERS
from tests.fixtures import (
    HERE,
    applicant_link,
    fresh_settings,
    make_app,
    signed_in,
    wait_until,
    worker_stack,
)
from web.openapi import build_openapi

CATALOG = [item.sku for item in load_rules(HERE / "rules.json").orders.catalog]
SCHEMA = schemathesis.openapi.from_dict(build_openapi(CATALOG))
EXAMPLES_PER_MODE = 28  # 14 operations x 2 modes x 28 = 784 requests


@pytest.fixture(scope="module")
def fuzz_stack(dev_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["shipping"] = {"prepare_seconds": 0, "transit_seconds": 0, "expedited_transit_seconds": 0}
    (root / "rules.json").write_text(json.dumps(rules))
    yield from worker_stack(
        dev_server, root, fresh_settings(root / "data", rules_file=root / "rules.json", decision_wait_seconds=10.0)
    )


@pytest.fixture(scope="module")
def fuzz_app(fuzz_stack):
    with pytest.MonkeyPatch.context() as monkeypatch:
        app = make_app(*fuzz_stack, monkeypatch)
        yield app
        app.extensions["temporal"].reset()


def strict_json(text: str):
    """The body parsed as standard JSON: NaN and Infinity are not JSON."""

    def refuse(constant: str):
        raise AssertionError(f"non-standard JSON constant {constant} in {text[:200]}")

    return json.loads(text, parse_constant=refuse)


async def workflow_ids(app, query: str) -> set[str]:
    client = await app.extensions["temporal"].get()
    return {execution.id async for execution in client.list_workflows(query)}


@pytest.mark.timeout(300)
def test_generated_requests_never_fail_the_server_and_bad_input_starts_nothing(fuzz_app, fuzz_stack):
    settings_ = fuzz_stack[0]
    operator = {"Authorization": f"Bearer {settings_.operator_token}"}
    accepted_loans: set[str] = set()
    accepted_orders: set[str] = set()
    sent = 0

    for result in SCHEMA.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis_settings(
                max_examples=EXAMPLES_PER_MODE,
                derandomize=True,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def exchange(case):
                nonlocal sent
                response = case.call(app=fuzz_app, headers=operator)
                sent += 1
                where = f"{case.method} {case.formatted_path} {case.body!r:.300}"
                assert response.status_code < 500, (where, response.status_code, response.text[:500])
                body = strict_json(response.text) if response.text else None
                if 400 <= response.status_code < 500:
                    assert isinstance(body, dict) and isinstance(body.get("error"), str), (where, response.text)
                if case.path == "/api/evaluate" and response.status_code in (200, 202):
                    accepted_loans.add(body["workflow_id"])
                if case.path == "/api/orders" and case.method == "POST" and response.status_code == 201:
                    accepted_orders.add(body["order_id"])

            exchange()

    assert sent >= 700  # 14 operations x 2 modes x 28, less what an operation cannot vary
    assert accepted_loans and accepted_orders  # the generator made valid requests too

    # Exactly what was accepted started workflows and wrote records.
    loans = f"WorkflowType='LoanApplicationWorkflow' AND TaskQueue='{settings_.task_queue}'"
    orders = f"WorkflowType='OrderWorkflow' AND TaskQueue='{settings_.order_task_queue}'"
    wait_until(
        lambda: asyncio.run(workflow_ids(fuzz_app, loans)) == accepted_loans,
        timeout=30,
        what="one loan workflow per accepted application, no other",
    )
    assert asyncio.run(workflow_ids(fuzz_app, orders)) == {f"order-{order_id}" for order_id in accepted_orders}
    store = fuzz_app.extensions["loan_service"].store
    wait_until(
        lambda: {r["workflow_id"] for r in store.list_all(APPLICATIONS)} == accepted_loans,
        timeout=30,
        what="one record per accepted application, no other",
    )
    assert {o["order_id"] for o in store.list_all(ORDERS)} <= accepted_orders


@pytest.fixture
def client(fuzz_app, fuzz_stack):
    client = fuzz_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {fuzz_stack[0].operator_token}"
    return client


BODY_ROUTES = [
    "/api/evaluate",
    "/api/orders",
    "/api/orders/0123456789ab/cancel",
    "/api/applications/loan-" + "0" * 32 + "/contact",
]


@pytest.mark.parametrize("path", BODY_ROUTES)
def test_bodies_a_generator_does_not_make_get_clear_4xx(client, path):
    cases = [
        ({"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"data": "<xml/>", "content_type": "text/xml"}, 415),
        ({"data": b'{"name": "\xff\xfe"}', "content_type": "application/json"}, 400),
        ({"data": "[" * 5_000 + "]" * 5_000, "content_type": "application/json"}, 400),
        ({"data": '{"a": NaN}', "content_type": "application/json"}, 400),
        ({"data": json.dumps({"name": "x" * 20_000}), "content_type": "application/json"}, 413),
    ]
    if path.endswith("/contact"):  # the applicant's answer: their link's key, whoever sends it
        path = applicant_link(client.application, path.split("/")[3], "/contact", api=True)
    for request, status in cases:
        response = client.post(path, **request, raw=True)
        assert response.status_code == status, (path, request["data"][:40], response.status_code, response.text)
        assert isinstance(strict_json(response.text)["error"], str)


@pytest.mark.parametrize(
    "template",
    [
        "/api/applications/{id}",
        "/applications/{id}",
        "/api/orders/{id}",
        "/api/orders/{id}/events",
        "/orders/{id}",
        "/api/customers/{id}/rewards",
    ],
)
def test_ids_with_path_characters_are_refused_before_the_file_system(client, fuzz_app, template, monkeypatch):
    store = fuzz_app.extensions["loan_service"].store
    reached = []
    original = store._path
    monkeypatch.setattr(store, "_path", lambda collection, key: reached.append(key) or original(collection, key))
    bad_ids = ["..", "%2F", "%2e%2e", "..%2f..%2fetc%2fpasswd", "a%2fb", "%00", "x" * 5000, "_hidden", "-dash", "%c0%ae"]
    for bad in bad_ids:
        response = client.get(template.format(id=bad))
        assert response.status_code in (400, 404), (template, bad, response.status_code)
        if template.startswith("/api/"):
            assert isinstance(strict_json(response.text)["error"], str)
    assert not [key for key in reached if "." in key or "/" in key or "\0" in key or len(key) > 200], reached


# --- property-based tests of the HTML forms and of every route that takes an ID -------------------

FORM_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


def mostly(valid, junk=FORM_TEXT):
    """`valid` seven times in eight, else `junk`: so whole forms are sometimes entirely valid."""
    return st.integers(0, 7).flatmap(lambda n: junk if n == 0 else valid)


async def count(app, query: str) -> int:
    client = await app.extensions["temporal"].get()
    return (await client.count_workflows(query)).count


@pytest.mark.timeout(120)
def test_the_loan_form_never_fails_and_only_what_it_accepts_starts_an_application(fuzz_app, fuzz_stack):
    settings_ = fuzz_stack[0]
    browser = fuzz_app.test_client()
    query = f"WorkflowType='LoanApplicationWorkflow' AND TaskQueue='{settings_.task_queue}'"
    before = asyncio.run(count(fuzz_app, query))
    started = 0
    form = st.fixed_dictionaries(
        {
            "name": mostly(st.sampled_from(["Ada Lovelace", "Grace Hopper"])),
            "email": mostly(st.integers(0, 10**9).map(lambda n: f"form-{n}@example.com")),
            "loan_amount": mostly(st.integers(1_000, 600_000).map(str), st.sampled_from(["²", "1e5", "-5", "$1,000.50"])),
            "credit_score": mostly(st.integers(300, 850).map(str), st.sampled_from(["٣٠٠", "7½", "900"])),
            "annual_income": mostly(st.integers(0, 10**6).map(str)),
            "has_bankruptcy": mostly(st.sampled_from(["yes", "no"]), st.sampled_from(["", "maybe", "on"])),
        },
        optional={"extra": FORM_TEXT},
    )

    @given(data=form)
    @hypothesis_settings(
        max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def submit(data):
        nonlocal started
        response = browser.post("/apply", data=data)
        assert response.status_code in (303, 400, 409), (data, response.status_code)
        started += response.status_code == 303

    submit()
    assert started > 0  # valid forms were generated too
    wait_until(
        lambda: asyncio.run(count(fuzz_app, query)) - before == started,
        timeout=30,
        what="one application per accepted form and none for a refused one",
    )


@pytest.mark.timeout(120)
def test_the_order_form_never_fails_and_only_what_it_accepts_starts_an_order(fuzz_app, fuzz_stack):
    settings_ = fuzz_stack[0]
    operator = signed_in(fuzz_app.test_client(), settings_)
    query = f"WorkflowType='OrderWorkflow' AND TaskQueue='{settings_.order_task_queue}'"
    before = asyncio.run(count(fuzz_app, query))
    started = 0
    fields = {f"address.{part}": mostly(st.just("Somewhere 1")) for part in ("name", "street", "city", "postal_code", "country")}
    fields |= {
        f"sku_{sku}": mostly(st.sampled_from(["", "0", "1", "2"]), st.sampled_from(["²", "-1", "99999", "x"])) for sku in CATALOG
    }
    fields |= {
        "customer_id": mostly(st.just("fuzz-customer")),
        "customer_email": mostly(st.just("fuzz@example.com"), st.sampled_from(["", "not-an-address"])),
        "expedited": mostly(st.sampled_from(["", "yes"]), st.just("on")),
        "failure_step": mostly(st.sampled_from(["", "payment"]), st.just("nowhere")),
        "failure_times": mostly(st.sampled_from(["1", "2"]), st.sampled_from(["11", "²"])),
    }

    @given(data=st.fixed_dictionaries(fields))
    @hypothesis_settings(
        max_examples=150, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def place(data):
        nonlocal started
        response = operator.post("/orders", data=data)
        assert response.status_code in (303, 400), (data, response.status_code)
        started += response.status_code == 303

    place()
    assert started > 0  # valid forms were generated too
    wait_until(
        lambda: asyncio.run(count(fuzz_app, query)) - before == started,
        timeout=30,
        what="one order per accepted form and none for a refused one",
    )


@pytest.mark.timeout(120)
def test_any_id_in_any_route_is_a_clean_4xx(fuzz_app, fuzz_stack):
    operator = signed_in(fuzz_app.test_client(), fuzz_stack[0])
    routes = [
        ("GET", "/api/applications/{}"),
        ("GET", "/applications/{}"),
        ("GET", "/api/orders/{}"),
        ("GET", "/api/orders/{}/events"),
        ("GET", "/orders/{}"),
        ("GET", "/api/customers/{}/rewards"),
        ("POST", "/api/applications/{}/contact"),
        ("POST", "/api/orders/{}/expedite"),
        ("POST", "/orders/{}/approve"),
    ]

    @given(raw=st.text(st.characters(codec="utf-8"), min_size=1, max_size=300), route=st.sampled_from(routes))
    @hypothesis_settings(
        max_examples=300, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def visit(raw, route):
        method, template = route
        path = template.format(urllib.parse.quote(raw, safe=""))
        response = operator.open(path, method=method, json={"answer": "yes"} if "contact" in path else None)
        assert response.status_code in (400, 404, 405), (method, path, response.status_code)
        if path.startswith("/api/"):
            assert isinstance(strict_json(response.text)["error"], str)

    visit()
