"""The JSON API fuzzed from its own OpenAPI document, against a real dev server and worker.

schemathesis generates requests for every operation of `/openapi.json`, valid
ones and invalid ones (over a thousand in all, derandomized so a run is
repeatable). Every answer must be below 500, strict JSON, and a 4xx must carry
`error`; afterwards, exactly the requests the API accepted have started
workflows and written records: bad input never does. Then the cases a
generator does not make: bodies that are not JSON, wrong content types,
invalid UTF-8, huge bodies, IDs with path characters.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hypothesis_settings

from activities import APPLICATIONS
from conftest import HERE, fresh_settings, make_app, wait_until, worker_stack
from config import load_rules
from openapi import build_openapi
from shared import ORDERS

CATALOG = [item.sku for item in load_rules(HERE / "rules.json").orders.catalog]
SCHEMA = schemathesis.openapi.from_dict(build_openapi(CATALOG))
EXAMPLES_PER_MODE = 40  # 14 operations x 2 modes x 40 = 1,120 requests


@pytest.fixture(scope="module")
def fuzz_stack(dev_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["shipping"] = {"prepare_seconds": 0, "transit_seconds": 0, "expedited_transit_seconds": 0}
    (root / "rules.json").write_text(json.dumps(rules))
    yield from worker_stack(dev_server, root, fresh_settings(root / "data", rules_file=root / "rules.json",
                                                             decision_wait_seconds=10.0))


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
            @hypothesis_settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, deadline=None, database=None,
                                 suppress_health_check=list(HealthCheck))
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

    assert sent >= 1000
    assert accepted_loans and accepted_orders  # the generator made valid requests too

    # Exactly what was accepted started workflows and wrote records.
    loans = f"WorkflowType='LoanApplicationWorkflow' AND TaskQueue='{settings_.task_queue}'"
    orders = f"WorkflowType='OrderWorkflow' AND TaskQueue='{settings_.order_task_queue}'"
    wait_until(lambda: asyncio.run(workflow_ids(fuzz_app, loans)) == accepted_loans, timeout=30,
               what="one loan workflow per accepted application, no other")
    assert asyncio.run(workflow_ids(fuzz_app, orders)) == {f"order-{order_id}" for order_id in accepted_orders}
    store = fuzz_app.extensions["loan_service"].store
    wait_until(lambda: {r["workflow_id"] for r in store.list_all(APPLICATIONS)} == accepted_loans, timeout=30,
               what="one record per accepted application, no other")
    assert {o["order_id"] for o in store.list_all(ORDERS)} <= accepted_orders


@pytest.fixture
def client(fuzz_app, fuzz_stack):
    client = fuzz_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {fuzz_stack[0].operator_token}"
    return client


BODY_ROUTES = ["/api/evaluate", "/api/orders", "/api/orders/0123456789ab/cancel",
               "/api/applications/loan-" + "0" * 32 + "/contact"]


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
    for request, status in cases:
        response = client.post(path, **request, raw=True)
        assert response.status_code == status, (path, request["data"][:40], response.status_code, response.text)
        assert isinstance(strict_json(response.text)["error"], str)


@pytest.mark.parametrize("template", [
    "/api/applications/{id}", "/applications/{id}", "/api/orders/{id}", "/api/orders/{id}/events", "/orders/{id}",
    "/api/customers/{id}/rewards",
])
def test_ids_with_path_characters_are_refused_before_the_file_system(client, fuzz_app, template, monkeypatch):
    store = fuzz_app.extensions["loan_service"].store
    reached = []
    original = store._path
    monkeypatch.setattr(store, "_path", lambda collection, key: reached.append(key) or original(collection, key))
    bad_ids = ["..", "%2e%2e", "..%2f..%2fetc%2fpasswd", "a%2fb", "%00", "x" * 5000, "_hidden", "-dash", "%c0%ae"]
    for bad in bad_ids:
        response = client.get(template.format(id=bad))
        assert response.status_code in (400, 404), (template, bad, response.status_code)
        if template.startswith("/api/"):
            assert isinstance(strict_json(response.text)["error"], str)
    assert not [key for key in reached if "." in key or "/" in key or "\0" in key or len(key) > 200], reached
