"""Filters and searches on the operators' lists (issue 28): the counts' badges show only their
decision or status, a search box finds an applicant's or a customer's records by name, customer
ID or email, and each page reads its own rows from the store's lists by value."""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from core.formatting import day_value, sort_key_for
from loans.model import APPLICATIONS
from orders.activities import write_progress
from orders.model import Address, OrderStatus, ProgressRecord


def application(store, n: int, decision: str, name: str, email: str) -> str:
    workflow_id = f"loan-{uuid.uuid4().hex}"
    submitted_at = (datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=n)).isoformat(timespec="microseconds")
    document = {
        "workflow_id": workflow_id,
        "run_id": "run",
        "submitted_at": submitted_at,
        "application": {"name": name, "email": email, "loan_amount": 1000 + n, "credit_score": 700},
        "decision": decision,
        "reason": "Test",
        "message": {"title": "Test", "body": "Test"},
        "loan_to_income_ratio": 0.5,
        "decided_by": "test",
        "day_decision": day_value(submitted_at, decision),
    }
    store.put(APPLICATIONS, f"{workflow_id}.run", document, sort_key=sort_key_for(submitted_at))
    return workflow_id


def listed_ids(page: str) -> list[str]:
    return [line.split("/applications/")[1].split('"')[0] for line in page.split("\n") if 'href="/applications/loan-' in line]


def test_a_decision_badge_shows_only_that_decision_and_the_search_finds_by_name_or_email(store_app, store_viewer):
    store = store_app.extensions["loan_service"].store
    ada = [application(store, n, "denied", "Ada Lovelace", "ada@example.com") for n in range(3)]
    grace = application(store, 10, "pre_approved", "Grace Hopper", "grace@example.com")
    page = store_viewer.get("/applications").get_data(as_text=True)
    assert 'href="/applications?decision=denied"' in page and 'href="/applications?decision=pre_approved"' in page
    denied = store_viewer.get("/applications?decision=denied").get_data(as_text=True)
    assert listed_ids(denied) == ada[::-1] and "3 applications decided “Denied”" in html.unescape(denied)
    assert 'aria-current="true"' in denied and "Show all 4 applications" in denied
    assert listed_ids(store_viewer.get("/applications?q=GRACE%20%20hopper").get_data(as_text=True)) == [grace]
    found = store_viewer.get("/applications?q=Ada@Example.com").get_data(as_text=True)
    assert listed_ids(found) == ada[::-1] and 'value="Ada@Example.com"' in found
    nothing = store_viewer.get("/applications?q=nobody").get_data(as_text=True)
    assert "No applications match" in nothing and listed_ids(nothing) == []
    listing = store_viewer.get("/api/applications?email=grace@example.com").json
    assert [a["workflow_id"] for a in listing["applications"]] == [grace]
    assert listing["filter"] == {"email": "grace@example.com"} and listing["pages"] is None and listing["more"] is False
    assert store_viewer.get("/api/applications?decision=denied").json["pages"] == 1


@pytest.mark.parametrize(
    ("query", "field"),
    [("decision=maybe", "decision"), ("decision=denied&q=ada", "q"), ("q=" + "x" * 201, "q"), ("name=a%0Ab", "name")],
)
def test_a_bad_filter_is_refused_naming_its_parameter(store_viewer, query, field):
    refused = store_viewer.get(f"/api/applications?{query}")
    assert refused.status_code == 400 and set(refused.json["fields"]) == {field}, refused.json
    assert store_viewer.get(f"/applications?{query}").status_code == 400


def order(store, order_id: str, status: str, revision: int, customer: str, email: str) -> None:
    placed = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=int(order_id, 16) % 1000)
    status_ = OrderStatus(
        order_id=order_id,
        customer_id=customer,
        status=status,
        step="validate",
        address=Address("A", "1 Street", "Town", "12345", "US"),
        expedited=False,
        placed_at=placed.isoformat(),
        updated_at=placed.isoformat(),
        customer_email=email,
        revision=revision,
    )
    write_progress(store, ProgressRecord(status_, []))


def tracked_ids(page: str) -> list[str]:
    return re.findall(r'href="/orders/([0-9a-f]{12})"', page)


def test_a_status_badge_shows_the_orders_there_now_and_the_search_finds_a_customers_orders(store_app, store_viewer):
    store = store_app.extensions["order_service"].store
    ids = [f"{n:012x}" for n in range(1, 6)]
    for n, order_id in enumerate(ids):
        order(store, order_id, "processing", 1, "cust-a" if n < 3 else "cust-b", "a@example.com" if n < 3 else "b@example.com")
    for order_id in (ids[3], ids[0]):  # completed in this order
        order(store, order_id, "completed", 2, "cust-a" if order_id == ids[0] else "cust-b", "x@example.com")
    dashboard = store_viewer.get("/orders").get_data(as_text=True)
    assert 'href="/orders?status=completed"' in dashboard and 'href="/orders?status=processing"' in dashboard
    completed = store_viewer.get("/orders?status=completed").get_data(as_text=True)
    assert tracked_ids(completed) == [ids[0], ids[3]] and "2 orders “Delivered”, the latest to get there first." in html.unescape(
        completed
    )
    assert tracked_ids(store_viewer.get("/orders?status=processing").get_data(as_text=True)) == [ids[4], ids[2], ids[1]]
    assert tracked_ids(store_viewer.get("/orders?q=CUST-A").get_data(as_text=True)) == [ids[2], ids[1], ids[0]]
    found = store_viewer.get("/orders/find", query_string={"q": " B@Example.com "})
    assert found.status_code == 303
    assert tracked_ids(store_viewer.get(found.headers["Location"]).get_data(as_text=True)) == [ids[4]]  # ids[3] changed its email
    listing = store_viewer.get("/api/orders?customer=cust-b").json
    assert [o["order_id"] for o in listing["orders"]] == [ids[4], ids[3]] and listing["filter"] == {"customer": "cust-b"}
    refused = store_viewer.get("/api/orders?status=lost")
    assert refused.status_code == 400 and set(refused.json["fields"]) == {"status"}


def test_a_filtered_list_pages_by_twenty(store_app, store_viewer):
    store = store_app.extensions["order_service"].store
    ids = [f"{n:012x}" for n in range(100, 145)]
    for order_id in ids:
        order(store, order_id, "cancelled", 1, "many", "many@example.com")
    first = store_viewer.get("/orders?status=cancelled").get_data(as_text=True)
    assert tracked_ids(first) == ids[::-1][:20] and "Page 1 of 3" in first
    # The Older link names the record the next page starts after: the same page as by its number.
    older = html.unescape(re.search(r'href="([^"]+)" rel="next"', first).group(1))
    assert older == f"/orders?page=2&status=cancelled&after={ids[::-1][19]}"
    assert tracked_ids(store_viewer.get(older).get_data(as_text=True)) == ids[::-1][20:40]
    assert store_viewer.get("/api/orders?status=cancelled").json["after"] == ids[::-1][19]
    assert set(store_viewer.get("/api/orders?status=cancelled&after=../x").json["fields"]) == {"after"}
    third = store_viewer.get("/orders?status=cancelled&page=3").get_data(as_text=True)
    assert tracked_ids(third) == ids[::-1][40:] and 'rel="next"' not in third
    searched = store_viewer.get("/orders?q=many&page=2").get_data(as_text=True)
    assert tracked_ids(searched) == ids[::-1][20:40] and ">Page 2</span>" in searched and 'rel="next"' in searched
    assert 'rel="next"' not in store_viewer.get("/orders?q=many&page=3").get_data(as_text=True)
