"""The order routes and service: the JSON API and pages end to end (input rules: test_validation.py; the CLI: test_orders_cli.py).

The end-to-end tests run the Flask app against a real Temporal dev server and a
real worker process (`worker.py`), both reading a copy of rules.json whose
shipping is quick for expedited orders (0.3 s in transit) and slow for the
others (60 s): an expedited order runs to delivery within a test, while a
standard one waits in transit, handed to the carrier, for as long as a test
needs to try the actions that are refused from then on. Every test polls with
a deadline and uses its own customer id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from temporalio.client import WorkflowHandle

from core.rules import load_messages, load_rules
from orders import service as order_service
from orders.model import ORDER_MILESTONES, OrderStatus
from orders.workflow import OrderWorkflow
from tests.fixtures import ADDRESS, HERE, free_port, make_app, signed_in, wait_until

MESSAGES = load_messages(HERE / "messages.json")
TEXTS = MESSAGES.orders
CATALOG = [item.sku for item in load_rules(HERE / "rules.json").orders.catalog]
ORDER = {
    "customer_id": "ada-1",
    "customer_email": "ada@example.com",
    "items": [{"sku": "KB-100", "quantity": 2}],
    "address": ADDRESS,
}


FORM = {
    "customer_id": "ada-1",
    "customer_email": "ada@example.com",
    "sku_KB-100": "2",
    "sku_MS-200": "",
    "sku_CB-010": "0",
    **{f"address.{k}": v for k, v in ADDRESS.items()},
}


# --- end to end: app -> dev server -> worker process ---------------------------------


@pytest.fixture
def app(order_app):
    return order_app


@pytest.fixture
def client(operator):
    """The operator's browser: every order route needs sign-in."""
    return operator


def place(client, customer: str, items: list[tuple[str, int]], expedited: bool = True, **extra) -> str:
    body = {
        "customer_id": customer,
        "customer_email": "ada@example.com",
        "items": [{"sku": sku, "quantity": quantity} for sku, quantity in items],
        "address": ADDRESS,
        "expedited": expedited,
        **extra,
    }
    response = client.post("/api/orders", json=body)
    assert response.status_code == 201, response.json
    return response.json["order_id"]


def wait_for(client, order_id: str, check, what: str, timeout: float = 30.0) -> dict:
    """Poll the order's status until `check(order)` holds; return the order."""

    def current():
        order = client.get(f"/api/orders/{order_id}").json
        return order if check(order) else None

    return wait_until(current, timeout=timeout, interval=0.1, what=what)


def status_is(*statuses: str):
    return lambda order: order["status"] in statuses


def in_transit(order: dict) -> bool:
    return order["shipment"]["stage"] == "dispatched"


@pytest.mark.timeout(60)
def test_a_big_order_waits_for_review_then_is_approved_and_delivered(client, customer):
    response = client.post(
        "/api/orders",
        json={
            "customer_id": customer,
            "customer_email": "ada@example.com",
            "items": [{"sku": "LP-140", "quantity": 2}],
            "address": ADDRESS,
            "expedited": True,
        },
    )
    assert response.status_code == 201, response.json
    order_id = response.json["order_id"]
    assert response.json["workflow_id"] == f"order-{order_id}"
    assert response.headers["Location"] == response.json["status_url"] == f"/api/orders/{order_id}"

    waiting = wait_for(client, order_id, status_is("awaiting_review"), "the order to await review")
    assert waiting["total"] == 2498.0
    assert waiting["needs_review"] is True
    assert waiting["actions"][0] == "approve"
    assert waiting["status_label"] == TEXTS["status_awaiting_review"]

    approved = client.post(f"/api/orders/{order_id}/approve", json={})
    assert approved.status_code == 200, approved.json
    assert approved.json["approved"] is True and approved.json["approved_by"] == client.operator_name

    done = wait_for(client, order_id, status_is("completed"), "the order to be delivered")
    assert set(done["milestones"]) == set(ORDER_MILESTONES)
    assert done["final"] is True and done["actions"] == []
    assert done["payment"]["status"] == "charged" and done["payment"]["amount"] == 2498.0
    assert done["shipment"]["stage"] == "delivered"

    events = client.get(f"/api/orders/{order_id}/events").json["events"]
    assert [e["at"] for e in events] == sorted(e["at"] for e in events)
    assert any(e["kind"] == "operator" and client.operator_name in e["message"] for e in events)

    rewards = wait_until(
        lambda: (r := client.get(f"/api/customers/{customer}/rewards")).status_code == 200 and r.json, what="the rewards"
    )
    assert rewards["customer_id"] == customer and rewards["points"] == 2498


def test_actions_an_order_refuses_are_409_with_the_reason(client, customer):
    order_id = place(client, customer, [("MS-200", 1)], expedited=False)
    wait_for(client, order_id, in_transit, "the parcel to be with the carrier")

    approve = client.post(f"/api/orders/{order_id}/approve")
    assert approve.status_code == 409
    assert approve.json == {"error": TEXTS["not_awaiting_review"].format(status="shipping")}
    cancel = client.post(f"/api/orders/{order_id}/cancel", json={"reason": "too late?"})
    assert cancel.status_code == 409 and cancel.json["error"] == TEXTS["already_dispatched"]
    address = client.post(f"/api/orders/{order_id}/address", json=ADDRESS)
    assert address.status_code == 409 and address.json["error"] == TEXTS["already_dispatched"]

    # Expediting still helps in transit: the express timing applies and the order completes.
    expedite = client.post(f"/api/orders/{order_id}/expedite")
    assert expedite.status_code == 202 and expedite.json["status_url"] == f"/api/orders/{order_id}"
    wait_for(client, order_id, status_is("completed"), "the expedited order to be delivered")


@pytest.mark.timeout(60)
def test_status_reads_the_recorded_projection_never_the_workflow(app, client, customer, monkeypatch):
    """A page or API refresh costs the worker no workflow task: once the order has
    recorded itself, status comes from the store, as fresh as the live query."""
    order_id = place(client, customer, [("LP-140", 2)])  # above the auto-approve limit: waits for review
    # Once it is quiet: awaiting review, and its emails recorded as done (each records itself when done).
    waiting = wait_for(
        client,
        order_id,
        lambda order: (
            order["status"] == "awaiting_review"
            and len(order["emails"]) == 2
            and all(e["status"] != "sending" for e in order["emails"].values())
        ),
        "the order to await review",
    )

    async def live():
        temporal = await app.extensions["temporal"].get()
        return dataclasses.asdict(await temporal.get_workflow_handle(f"order-{order_id}").query(OrderWorkflow.status))

    live_status = asyncio.run(live())
    assert {key: waiting[key] for key in live_status} == live_status  # the record is what the workflow holds

    def no_query(*args, **kwargs):
        raise AssertionError("a status read queried the workflow")

    monkeypatch.setattr(WorkflowHandle, "query", no_query)
    for _ in range(3):
        read = client.get(f"/api/orders/{order_id}")
        assert read.status_code == 200 and read.json["source"] == "store" and read.json["status"] == "awaiting_review"
    tracker = client.get(f"/orders/{order_id}")
    assert tracker.status_code == 200 and TEXTS["status_awaiting_review"] in tracker.get_data(as_text=True)
    # Naming oneself is accepted (anyone else: tests/web/test_operators.py).
    assert client.post(f"/api/orders/{order_id}/approve", json={"operator": client.operator_name}).status_code == 200
    # Every step after is recorded as it happens, the parcel in transit too (expedited: 0.3 s).
    done = wait_for(client, order_id, status_is("completed"), "the order to be delivered")
    assert done["source"] == "store" and done["shipment"]["stage"] == "delivered" and done["shipment"]["tracking_number"]


def workflow_result(app, order_id: str) -> OrderStatus:
    """Wait for the order's workflow to close; its result is the final status."""

    async def result():
        client = await app.extensions["temporal"].get()
        handle = client.get_workflow_handle_for(OrderWorkflow.run, f"order-{order_id}")
        return await asyncio.wait_for(handle.result(), 30)

    return asyncio.run(result())


@pytest.mark.timeout(60)
def test_a_closed_order_refuses_every_action(app, client, customer):
    order_id = place(client, customer, [("LP-140", 9)])  # above the maximum total
    rejected = workflow_result(app, order_id)
    assert rejected.status == "rejected"
    assert rejected.reason == TEXTS["over_maximum"].format(total="$11,241", maximum="$10,000")
    assert client.get(f"/api/orders/{order_id}").json["status"] == "rejected"

    already = TEXTS["already_final"].format(status="rejected")
    for path, body in [
        ("approve", None),
        ("cancel", {"reason": "x"}),
        ("address", ADDRESS),
        ("expedite", None),
        ("simulate-failure", {"step": "payment"}),
    ]:
        response = client.post(f"/api/orders/{order_id}/{path}", json=body)
        assert response.status_code == 409, path
        assert response.json == {"error": already}, path


def shown_stock(client, sku: str) -> int:
    """The stock the order form shows for `sku`."""
    page = client.get("/orders").get_data(as_text=True)
    match = re.search(
        rf'<span class="muted">{sku}</span></th>\s*<td class="num">[^<]*</td>\s*<td class="num stock">(\d+)</td>', page
    )
    assert match, f"no stock shown for {sku}"
    return int(match.group(1))


def test_cancelling_during_review_undoes_the_reservation(client, customer):
    before = shown_stock(client, "LP-140")
    order_id = place(client, customer, [("LP-140", 1)])
    wait_for(client, order_id, status_is("awaiting_review"), "the order to await review")
    # The order form shows the stock as the reservations keep it (issue 28: it showed the starting stock).
    assert shown_stock(client, "LP-140") == before - 1
    changed = client.post(f"/api/orders/{order_id}/address", json={**ADDRESS, "city": "Paris"})
    assert changed.status_code == 200, changed.json
    assert changed.json["address"]["city"] == "Paris"

    cancelled = client.post(f"/api/orders/{order_id}/cancel", json={"reason": "customer called"})
    assert cancelled.status_code == 200, cancelled.json
    assert cancelled.json["status"] == "cancelled"
    assert cancelled.json["cancel_reason"] == "customer called"
    assert cancelled.json["compensations"] == ["release inventory"]
    assert shown_stock(client, "LP-140") == before


def test_simulated_failures_are_retried_or_stop_the_order(client, customer):
    retried = place(client, customer, [("CB-010", 1)], failures=[{"step": "payment", "times": 1}])
    declined = place(client, customer, [("LP-140", 1)])
    wait_for(client, declined, status_is("awaiting_review"), "the order to await review")
    injected = client.post(f"/api/orders/{declined}/simulate-failure", json={"step": "payment", "permanent": True})
    assert injected.status_code == 202
    assert injected.json["failure"] == {"step": "payment", "times": 1, "permanent": True}
    wait_until(
        lambda: any("Failure injected" in e["message"] for e in client.get(f"/api/orders/{declined}/events").json["events"]),
        what="the failure to be recorded",
    )
    assert client.post(f"/api/orders/{declined}/approve").status_code == 200

    done = wait_for(client, retried, lambda o: o["final"], "the retried order to finish")
    assert done["status"] == "completed"
    assert done["attempts"]["charge_payment"] == 2
    events = client.get(f"/api/orders/{retried}/events").json["events"]
    assert any(e["kind"] == "retry" and e["attempt"] == 1 for e in events)

    failed = wait_for(client, declined, lambda o: o["final"], "the declined order to stop")
    assert failed["status"] == "failed"
    assert failed["reason"] == "Your card was declined."  # the provider's own reason (the local Stripe's)
    assert failed["compensations"] == ["release inventory"]


def test_unknown_orders_and_customers_are_404(client):
    unknown = uuid.uuid4().hex[:12]
    for method, path, body in [
        ("get", f"/api/orders/{unknown}", None),
        ("get", f"/api/orders/{unknown}/events", None),
        ("post", f"/api/orders/{unknown}/approve", None),
        ("post", f"/api/orders/{unknown}/cancel", {"reason": "x"}),
        ("post", f"/api/orders/{unknown}/address", ADDRESS),
        ("post", f"/api/orders/{unknown}/expedite", None),
        ("post", f"/api/orders/{unknown}/simulate-failure", {"step": "payment"}),
        ("get", "/api/orders/..hidden", None),
    ]:
        response = getattr(client, method)(path, json=body)
        assert response.status_code == 404, path
        assert response.json["error"] == TEXTS["not_found"], path
    for customer_id in (f"nobody-{unknown}", "not%20an%20id"):
        response = client.get(f"/api/customers/{customer_id}/rewards")
        assert response.status_code == 404 and response.json["error"] == TEXTS["no_rewards"]
    assert client.get(f"/orders/{unknown}").status_code == 404


def test_bad_requests_are_4xx_never_500(client, customer):
    invalid = client.post("/api/orders", json={**ORDER, "customer_id": customer, "items": [{"sku": "NOPE", "quantity": 0}]})
    assert invalid.status_code == 400
    assert invalid.json == {
        "error": TEXTS["invalid_order"],
        "fields": {"items.0.sku": TEXTS["unknown_sku"], "items.0.quantity": TEXTS["quantity"]},
    }
    form = client.post("/api/orders", data={"customer_id": customer})
    assert form.status_code == 415 and form.json["error"] == TEXTS["not_json"]
    broken = client.post("/api/orders", data="{", content_type="application/json")
    assert broken.status_code == 400 and broken.json["error"] == MESSAGES.errors["invalid_json"]
    array = client.post("/api/orders", json=[ORDER])
    assert array.status_code == 400 and array.json["fields"] == {"order": MESSAGES.errors["not_object"]}
    huge = client.post("/api/orders", json={**ORDER, "customer_id": "x" * 20_000})
    assert huge.status_code == 413
    for bad in ["0", "²", "x"]:
        assert client.get(f"/api/orders?page={bad}").json["fields"].keys() == {"page"}, bad
        assert client.get(f"/orders?page={bad}").status_code == 400, bad

    order_id = place(client, customer, [("LP-140", 1)])  # waits for review: every action is possible
    no_reason = client.post(f"/api/orders/{order_id}/cancel", json={})
    assert no_reason.status_code == 400 and no_reason.json["fields"] == {"reason": TEXTS["cancel_reason"]}
    bad_address = client.post(f"/api/orders/{order_id}/address", json={**ADDRESS, "country": ""})
    assert bad_address.status_code == 400 and bad_address.json["fields"] == {"address.country": TEXTS["address_field"]}
    bad_failure = client.post(f"/api/orders/{order_id}/simulate-failure", json={"step": "payment", "times": 99})
    assert bad_failure.status_code == 400 and bad_failure.json["fields"] == {"times": TEXTS["failure_times"]}
    not_json = client.post(
        f"/api/orders/{order_id}/approve", data="operator=grace", content_type="application/x-www-form-urlencoded"
    )
    assert not_json.status_code == 415
    # None of that touched the order.
    assert wait_for(client, order_id, status_is("awaiting_review"), "the order to await review")["cancelled"] is False


def test_the_list_shows_stored_orders_newest_first(client, customer):
    # The list is ordered by when an order was first stored (the store's numbered index),
    # which for two orders placed at once is the worker's order: place them apart.
    first = place(client, customer, [("CB-010", 1)])
    wait_until(
        lambda: first in [o["order_id"] for o in client.get("/api/orders").json["orders"]], what="the first order in the list"
    )
    second = place(client, customer, [("CB-010", 2)])

    def listed():
        orders = client.get("/api/orders").json["orders"]
        ids = [o["order_id"] for o in orders]
        return first in ids and second in ids and ids

    ids = wait_until(listed, what="both orders in the list")
    assert ids.index(second) < ids.index(first)
    listing = client.get("/api/orders?page=1").json
    assert listing["page"] == 1 and listing["pages"] >= 1 and listing["total"] >= 2
    assert sum(listing["counts"].values()) == listing["total"]


def test_pages_place_track_and_act_on_an_order(client, customer):
    form = {**FORM, "customer_id": customer, "sku_KB-100": "", "sku_LP-140": "1"}
    placed = client.post("/orders", data=form)
    assert placed.status_code == 303
    page_url = placed.headers["Location"]
    assert "?" not in page_url  # the banner is flashed in the session: a URL cannot make one up
    order_id = page_url.rsplit("/", 1)[1]

    page = client.get(page_url)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert TEXTS["placed"] in html and TEXTS["placed_emailing"].format(email="ada@example.com") in html
    assert html.count(TEXTS["placed"]) == 1 and "{&#39;order_id&#39;" not in html  # the tracker's banner only
    assert TEXTS["placed"] not in client.get(page_url).get_data(as_text=True)  # once
    assert order_id in html
    for milestone in ORDER_MILESTONES:
        assert f'data-milestone="{milestone}"' in html
    assert f"/workflows/order-{order_id}" in html and "View in Temporal UI" in html
    assert "order_tracker.js" in html

    wait_for(client, order_id, status_is("awaiting_review"), "the order to await review")
    html = client.get(page_url).get_data(as_text=True)
    assert TEXTS["status_awaiting_review"] in html and "Approve the order" in html

    no_reason = client.post(f"{page_url}/cancel", data={"reason": " "})
    assert no_reason.status_code == 400 and TEXTS["cancel_reason"] in no_reason.get_data(as_text=True)
    bad_address = client.post(
        f"{page_url}/address",
        data={**{f"address.{k}": v for k, v in ADDRESS.items()}, "address.city": "", "address.street": "1 Typed Street"},
    )
    assert bad_address.status_code == 400
    assert 'value="1 Typed Street"' in bad_address.get_data(as_text=True)  # what was typed is kept
    bad_failure = client.post(f"{page_url}/simulate-failure", data={"step": "payment", "times": "zz"})
    assert bad_failure.status_code == 400
    assert TEXTS["failure_times"] in bad_failure.get_data(as_text=True)
    assert 'value="zz"' in bad_failure.get_data(as_text=True)

    # A form from before operators signed in by name, naming someone else: refused, nothing done.
    stale = client.post(f"{page_url}/approve", data={"operator": "Grace Hopper"})
    said = TEXTS["operator_is_who_signed_in"].format(name=client.operator_name).replace("'", "&#39;")
    assert stale.status_code == 400 and said in stale.get_data(as_text=True)
    approved = client.post(f"{page_url}/approve", data={})
    assert approved.status_code == 303 and approved.headers["Location"] == page_url
    assert TEXTS["done_approve"] in client.get(page_url).get_data(as_text=True)
    assert TEXTS["done_approve"] not in client.get(page_url).get_data(as_text=True)  # once
    events = client.get(f"/api/orders/{order_id}/events").json["events"]
    assert any(e["message"] == f"Approved by {client.operator_name}" for e in events)
    again = client.post(f"{page_url}/approve")  # processing or in transit now, approved by this operator
    assert again.status_code == 409
    assert TEXTS["already_approved"].format(operator=client.operator_name) in again.get_data(as_text=True)
    expedited = client.post(f"{page_url}/expedite")
    assert expedited.status_code == 303 and expedited.headers["Location"] == page_url
    assert TEXTS["done_expedite"] in client.get(page_url).get_data(as_text=True)
    # A banner written into the URL is not the page's to show, whatever the order's status.
    for made_up in ["cancel", "approve", "placed"]:
        html = client.get(f"{page_url}?done={made_up}").get_data(as_text=True)
        assert 'id="notice"' not in html, made_up

    dashboard = client.get("/orders")
    assert dashboard.status_code == 200
    assert wait_until(lambda: order_id in client.get("/orders").get_data(as_text=True), what="the order on the dashboard")
    assert "Place an order" in dashboard.get_data(as_text=True)


def test_the_tracker_writes_the_town_line_as_the_country_does(client, customer):
    """Issue 28: a US address read "22201 Arlington"; a French one keeps "75001 Paris"."""
    us = {**ADDRESS, "city": "Arlington", "postal_code": "22201", "country": "US"}
    france = {**ADDRESS, "city": "Paris", "postal_code": "75001", "country": "France"}
    for address, (first, second) in ((us, ("Arlington", "22201")), (france, ("75001", "Paris"))):
        order_id = place(client, customer, [("KB-100", 1)], address=address)
        html = client.get(f"/orders/{order_id}").get_data(as_text=True)
        assert re.search(rf">{first}</span> <span data-field=\"address\.\w+\">{second}</span>", html), address


def test_the_order_form_keeps_what_was_typed_on_errors(client):
    form = {**FORM, "customer_id": "ada lovelace", "sku_KB-100": "three", "address.city": "Londres"}
    response = client.post("/orders", data=form)
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert TEXTS["invalid_order"] in html
    assert TEXTS["customer_id"].replace("'", "&#39;") in html and TEXTS["quantity"] in html
    assert 'value="ada lovelace"' in html and 'value="three"' in html and 'value="Londres"' in html


def test_the_order_form_refuses_a_product_not_in_the_catalog(client, customer):
    response = client.post("/orders", data={**FORM, "customer_id": customer, "sku_XX-999": "1"})
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert f"sku_XX-999: {TEXTS['unknown_sku']}" in html
    assert f'value="{customer}"' in html and 'value="2"' in html  # what was typed is kept


@pytest.mark.timeout(60)
def test_without_a_worker_the_order_is_accepted_and_read_from_its_start(order_stack, monkeypatch, tmp_path, customer):
    settings, address = order_stack
    settings = replace(settings, order_task_queue=f"no-worker-{uuid.uuid4().hex[:8]}", data_dir=tmp_path / "data")
    monkeypatch.setattr(order_service, "UPDATE_TIMEOUT", 1.0)
    app = make_app(settings, address, monkeypatch)
    client = signed_in(app.test_client(), settings)
    try:
        order_id = place(client, customer, [("KB-100", 1)])
        status = client.get(f"/api/orders/{order_id}")
        assert status.status_code == 200
        assert status.json["source"] == "start"
        assert status.json["status"] == "processing" and status.json["customer_id"] == customer
        assert TEXTS["waiting_for_worker"] in client.get(f"/orders/{order_id}").get_data(as_text=True)
        assert client.get(f"/api/orders/{order_id}/events").json == {"events": []}
        approve = client.post(f"/api/orders/{order_id}/approve")
        assert approve.status_code == 504 and approve.json["error"] == TEXTS["action_unconfirmed"]
        assert client.post(f"/api/orders/{order_id}/expedite").status_code == 202  # signals need no worker
    finally:
        app.extensions["temporal"].reset()


def test_temporal_down_is_503_and_the_form_keeps_its_values(order_stack, monkeypatch, customer):
    settings, _ = order_stack
    closed_port = free_port()
    app = make_app(settings, f"127.0.0.1:{closed_port}", monkeypatch)
    client = signed_in(app.test_client(), settings)
    try:
        api = client.post("/api/orders", json={**ORDER, "customer_id": customer})
        assert api.status_code == 503 and api.json["error"] == TEXTS["unavailable"]
        assert client.post(f"/api/orders/{uuid.uuid4().hex[:12]}/approve").status_code == 503
        form = client.post("/orders", data={**FORM, "customer_id": customer})
        assert form.status_code == 503
        assert f'value="{customer}"' in form.get_data(as_text=True)
        assert client.get("/orders").status_code == 200  # the dashboard reads the store only
    finally:
        app.extensions["temporal"].reset()


def test_ids_of_other_kinds_are_unknown_orders(client, customer):
    order_id = place(client, customer, [("CB-010", 1)])
    wait_for(client, order_id, status_is("completed"), "the order to be delivered")
    loan = client.post(
        "/api/evaluate",
        json={
            "name": "Kind Check",
            "email": f"{customer}@example.com",
            "loan_amount": 5000,
            "credit_score": 750,
            "annual_income": 90000,
            "has_bankruptcy": False,
        },
    ).json["workflow_id"]
    for other in [f"{order_id}-shipping", loan, loan.removeprefix("loan-"), order_id.upper(), f"order-{order_id}"]:
        assert client.get(f"/api/orders/{other}").status_code == 404, other
        assert client.get(f"/api/orders/{other}/events").status_code == 404, other
        assert client.get(f"/orders/{other}").status_code == 404, other
        for action, body in [
            ("approve", None),
            ("cancel", {"reason": "x"}),
            ("expedite", None),
            ("simulate-failure", {"step": "payment"}),
        ]:
            assert client.post(f"/api/orders/{other}/{action}", json=body).status_code == 404, (other, action)


def test_an_idempotency_key_makes_a_retried_order_the_same_order(client, customer):
    body = {
        "customer_id": customer,
        "customer_email": "ada@example.com",
        "items": [{"sku": "CB-010", "quantity": 1}],
        "address": ADDRESS,
        "expedited": True,
    }
    first = client.post("/api/orders", json=body, headers={"Idempotency-Key": "checkout-1"})
    assert first.status_code == 201, first.json
    again = client.post("/api/orders", json=body, headers={"Idempotency-Key": "checkout-1"})
    assert again.status_code == 200 and again.json == first.json
    wait_for(client, first.json["order_id"], status_is("completed"), "the order to be delivered")
    after_delivery = client.post("/api/orders", json=body, headers={"Idempotency-Key": "checkout-1"})
    assert after_delivery.status_code == 200 and after_delivery.json["order_id"] == first.json["order_id"]
    other = client.post("/api/orders", json=body, headers={"Idempotency-Key": "checkout-2"})
    assert other.status_code == 201 and other.json["order_id"] != first.json["order_id"]
    bad = client.post("/api/orders", json=body, headers={"Idempotency-Key": "white space"})
    assert bad.status_code == 400 and set(bad.json["fields"]) == {"Idempotency-Key"}


def test_an_idempotency_key_reused_for_a_different_order_is_refused(client, customer):
    body = {
        "customer_id": customer,
        "customer_email": "ada@example.com",
        "items": [{"sku": "LP-140", "quantity": 2}],
        "address": ADDRESS,
    }
    first = client.post("/api/orders", json=body, headers={"Idempotency-Key": "checkout-1"})
    assert first.status_code == 201, first.json
    # The same order with its keys in another order and padded text is a retry, not another order.
    shuffled = {key: body[key] for key in reversed(body)} | {"customer_email": " ada@example.com "}
    retry = client.post("/api/orders", json=shuffled, headers={"Idempotency-Key": "checkout-1"})
    assert retry.status_code == 200 and retry.json == first.json
    other = {**body, "items": [{"sku": "CB-010", "quantity": 1}], "address": {**ADDRESS, "city": "Paris"}}
    reused = client.post("/api/orders", json=other, headers={"Idempotency-Key": "checkout-1"})
    assert reused.status_code == 422, reused.json
    assert reused.json == {
        "error": TEXTS["idempotency_key_reused"],
        "fields": {"Idempotency-Key": TEXTS["idempotency_key_reused"]},
    }
    assert "Idempotency-Key" in reused.json["error"]
    assert client.get(f"/api/orders/{first.json['order_id']}").json["address"]["city"] == ADDRESS["city"]  # untouched


def test_two_approves_at_once_approve_once(app, client, customer):
    order_id = place(client, customer, [("LP-140", 1)])
    wait_for(client, order_id, status_is("awaiting_review"), "the order to await review")
    barrier = threading.Barrier(2)

    def approve(_: int):
        browser = signed_in(app.test_client(), app.config["SETTINGS"])
        barrier.wait()
        return browser.post(f"/api/orders/{order_id}/approve", json={})

    with ThreadPoolExecutor(max_workers=2) as pool:
        answers = list(pool.map(approve, [1, 2]))
    assert sorted(answer.status_code for answer in answers) == [200, 409], [a.json for a in answers]
    refused = next(answer for answer in answers if answer.status_code == 409)
    assert "(it is awaiting review)" not in refused.json["error"]
    approvals = [e for e in client.get(f"/api/orders/{order_id}/events").json["events"] if e["message"].startswith("Approved by")]
    assert len(approvals) == 1, approvals


def test_injected_failures_are_bounded(client, customer):
    order_id = place(client, customer, [("LP-140", 1)])  # waits for review: failures can be injected
    wait_for(client, order_id, status_is("awaiting_review"), "the order to await review")
    for _ in range(12):
        assert client.post(f"/api/orders/{order_id}/simulate-failure", json={"step": "payment"}).status_code == 202

    def injected():
        events = client.get(f"/api/orders/{order_id}/events").json["events"]
        messages = [e["message"] for e in events]
        return len(messages) and sum("Failure not injected" in m for m in messages) == 2 and messages

    messages = wait_until(injected, what="two refused injections in the timeline")
    assert sum(m.startswith("Failure injected") for m in messages) == 10


def lose_start_answers(monkeypatch, start: bool, describe_fails: bool = False) -> None:
    """The start call fails with a deadline: after the server started the order (`start`), or before."""
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    original = Client.start_workflow

    async def start_workflow(self, *args, **kwargs):
        if start:
            await original(self, *args, **kwargs)
        raise RPCError("deadline exceeded", RPCStatusCode.DEADLINE_EXCEEDED, b"")

    monkeypatch.setattr(Client, "start_workflow", start_workflow)
    if describe_fails:

        async def exists(self, workflow_id):
            raise order_service.TemporalUnavailable("unavailable")

        monkeypatch.setattr(order_service.OrderService, "_exists", exists)


def test_an_order_started_before_its_answer_was_lost_is_placed_not_refused(client, customer, monkeypatch):
    body = {
        "customer_id": customer,
        "customer_email": "ada@example.com",
        "items": [{"sku": "CB-010", "quantity": 1}],
        "address": ADDRESS,
    }
    lose_start_answers(monkeypatch, start=True)
    placed = client.post("/api/orders", json=body)
    assert placed.status_code == 201, placed.json
    assert client.get(f"/api/orders/{placed.json['order_id']}").status_code == 200
    lose_start_answers(monkeypatch, start=False)
    refused = client.post("/api/orders", json=body)
    assert refused.status_code == 503 and refused.json["error"] == TEXTS["unavailable"]  # known: nothing started
    lose_start_answers(monkeypatch, start=False, describe_fails=True)
    unknown = client.post("/api/orders", json=body, headers={"Idempotency-Key": "lost-1"})
    assert unknown.status_code == 503 and unknown.json["error"] == TEXTS["placement_unknown"]


def test_the_order_form_sent_twice_places_one_order(client, customer):
    page = client.get("/orders").get_data(as_text=True)
    key = page.split('name="submission_key" value="', 1)[1].split('"', 1)[0]
    form = {**FORM, "customer_id": customer, "submission_key": key}
    first = client.post("/orders", data=form)
    second = client.post("/orders", data=form)  # a second press, or sent again after an error
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]  # the same order
    changed = client.post("/orders", data={**form, "sku_CB-010": "3"})
    assert changed.status_code == 409 and TEXTS["form_changed_after_submit"] in changed.get_data(as_text=True)
