"""The operators' lists (issue 28): a chart of the last 14 days above each (applications by decision,
orders by status now), drawn from counts the store keeps, and the applications' contact answers."""

from __future__ import annotations

import html
import re
import uuid
from datetime import UTC, datetime, timedelta

from core.formatting import counts_by_day, day_chart, day_value, last_days, sort_key_for
from loans.model import APPLICATIONS
from orders.activities import write_progress
from orders.model import Address, OrderStatus, ProgressRecord


def store_of(store_app):
    return store_app.extensions["loan_service"].store


def day(back: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=back)


def application(store, when: datetime, decision: str, contact: str | None = None) -> None:
    workflow_id = f"loan-{uuid.uuid4().hex}"
    submitted_at = when.isoformat(timespec="microseconds")
    document = {
        "workflow_id": workflow_id,
        "run_id": "run",
        "submitted_at": submitted_at,
        "application": {"name": f"Chart {decision}", "loan_amount": 1000, "credit_score": 700},
        "decision": decision,
        "day_decision": day_value(submitted_at, decision),  # as persist_application writes it
        "contact_preference": contact,
    }
    store.put(APPLICATIONS, f"{workflow_id}.run", document, sort_key=sort_key_for(submitted_at))


def chart_days(page: str, chart_id: str) -> dict[str, int]:
    chart = page[page.index(f'id="{chart_id}"') :]
    chart = chart[: chart.index("</figure>")]
    return {day_: int(total) for day_, total in re.findall(r'data-day="([0-9-]+)" data-total="(\d+)"', chart)}


def test_the_applications_chart_counts_the_last_14_days_by_decision(store_app, store_viewer):
    store = store_of(store_app)
    for decision in ("pre_approved", "pre_approved", "denied"):
        application(store, day(0), decision)
    application(store, day(2), "conditional", contact="yes")
    application(store, day(20), "denied")  # older than the chart
    page = store_viewer.get("/applications").get_data(as_text=True)
    days = chart_days(page, "applications-chart")
    assert list(days) == last_days(14) and sum(days.values()) == 4
    assert days[last_days(1)[0]] == 3 and days[last_days(3)[0]] == 1
    assert 'aria-label="Applications in the last 14 days, by decision: 4 applications in 14 days, 3 today"' in page
    today = html.unescape(page)
    assert f"{last_days(1)[0]}: 3 applications, 2 pre-approved, 1 denied" in today
    # The list says who asked to be contacted.
    assert "Asked to be contacted" in page and "No answer" in page


def order_status(order_id: str, status: str, revision: int, placed: datetime) -> OrderStatus:
    return OrderStatus(
        order_id=order_id,
        customer_id="chart",
        status=status,
        step="complete" if status == "completed" else "validate",
        address=Address("Ada Lovelace", "12 Analytical Way", "London", "N1 9GU", "UK"),
        expedited=False,
        total=10.0,
        placed_at=placed.isoformat(),
        updated_at=placed.isoformat(),
        revision=revision,
    )


def test_the_orders_chart_counts_each_order_once_under_its_status_now(store_app, store_viewer):
    store = store_of(store_app)
    order_id = uuid.uuid4().hex[:12]
    write_progress(store, ProgressRecord(order_status(order_id, "processing", 1, day(1)), []))
    write_progress(store, ProgressRecord(order_status(uuid.uuid4().hex[:12], "cancelled", 1, day(0)), []))
    before = html.unescape(store_viewer.get("/orders").get_data(as_text=True))
    assert f"{last_days(2)[0]}: 1 order, 1 processing" in before
    write_progress(store, ProgressRecord(order_status(order_id, "completed", 2, day(1)), []))  # the same order, moved on
    page = store_viewer.get("/orders").get_data(as_text=True)
    days = chart_days(page, "orders-chart")
    assert sum(days.values()) == 2 and days[last_days(2)[0]] == 1 and days[last_days(1)[0]] == 1
    assert f"{last_days(2)[0]}: 1 order, 1 delivered" in html.unescape(page)  # the status as the page names it
    # The count is the store's; the order's own record and the API show the order only.
    assert "day_status" not in store_viewer.get(f"/api/orders/{order_id}").json
    assert all("day_status" not in order for order in store_viewer.get("/api/orders").json["orders"])


def test_days_and_their_counts():
    assert last_days(3, today="2026-03-01") == ["2026-02-27", "2026-02-28", "2026-03-01"]
    counts = {"2026-02-28/denied": 2, "2026-03-01/pre_approved": 1, "2026-03-01/denied": 1, "2025-01-01/denied": 9}
    by_day = counts_by_day(counts, last_days(3, today="2026-03-01"))
    assert by_day == {"2026-02-27": {}, "2026-02-28": {"denied": 2}, "2026-03-01": {"pre_approved": 1, "denied": 1}}
    chart = day_chart(by_day, ("pre_approved", "denied"))
    assert chart["total"] == 4 and chart["top"] == 2 and chart["today"] == 2
    assert chart["days"][2] == ("2026-03-01", 2, [("pre_approved", 1), ("denied", 1)])
    assert day_chart(counts_by_day({}, last_days(2)), ("denied",))["top"] == 1  # an empty chart still has a scale


# --- the review queue ----------------------------------------------------------------------


def for_review(order_id: str, status: str, revision: int, deadline_in: timedelta | None) -> OrderStatus:
    order = order_status(order_id, status, revision, day(0))
    order.needs_review = True
    order.total = 2498.0
    order.review_deadline = (datetime.now(UTC) + deadline_in).isoformat() if deadline_in is not None else None
    return order


def test_an_order_is_in_the_review_queue_exactly_while_it_waits(store_app):
    from orders.review_queue import awaiting_review, in_review_queue

    store = store_of(store_app)
    order_id = uuid.uuid4().hex[:12]
    write_progress(store, ProgressRecord(for_review(order_id, "processing", 1, None), []))
    assert not in_review_queue(store, order_id)
    waiting = for_review(order_id, "awaiting_review", 2, timedelta(minutes=30))
    write_progress(store, ProgressRecord(waiting, []))
    [queued] = [order for order in awaiting_review(store) if order["order_id"] == order_id]
    assert queued["review_deadline"] == waiting.review_deadline and queued["total"] == 2498.0
    write_progress(store, ProgressRecord(for_review(order_id, "shipping", 3, timedelta(minutes=30)), []))
    assert not in_review_queue(store, order_id)
    write_progress(store, ProgressRecord(waiting, []))  # the waiting record again, late: the order has moved on
    assert not in_review_queue(store, order_id)


def test_a_record_retried_after_a_crash_between_its_two_writes_puts_the_queue_right(store_app):
    """The order's record was written, then the worker died before the queue was: the retry finds the
    record stored (it writes nothing) and still brings the queue in line with it."""
    import dataclasses

    from orders.model import ORDERS
    from orders.review_queue import in_review_queue

    store = store_of(store_app)
    order_id = uuid.uuid4().hex[:12]
    waiting = for_review(order_id, "awaiting_review", 1, timedelta(minutes=10))
    store.put(ORDERS, order_id, dataclasses.asdict(waiting), sort_key=sort_key_for(waiting.placed_at))  # the first write only
    assert not in_review_queue(store, order_id)
    write_progress(store, ProgressRecord(waiting, []))  # the retry
    assert in_review_queue(store, order_id)


def test_the_review_queue_shows_the_nearest_deadline_first_and_the_dashboard_links_to_it(store_app, store_viewer):
    store = store_of(store_app)
    later, sooner, late = (uuid.uuid4().hex[:12] for _ in range(3))
    write_progress(store, ProgressRecord(for_review(later, "awaiting_review", 1, timedelta(minutes=45)), []))
    write_progress(store, ProgressRecord(for_review(sooner, "awaiting_review", 1, timedelta(minutes=3, seconds=30)), []))
    write_progress(store, ProgressRecord(for_review(late, "awaiting_review", 1, timedelta(minutes=-2)), []))
    page = store_viewer.get("/orders/review").get_data(as_text=True)
    assert page.index(late) < page.index(sooner) < page.index(later)
    assert "overdue" in page and "3 min left" in page and "44 min left" in page
    assert "3 orders waiting for an approver" in page
    assert f'href="/orders/{sooner}"' in page
    assert 'href="/orders/review"' in store_viewer.get("/orders").get_data(as_text=True)  # the badge with the count
    signed_out = store_app.test_client().get("/orders/review")
    assert signed_out.status_code in (302, 303) and "/signin" in signed_out.headers["Location"]


def test_an_order_is_found_by_its_id_or_its_workflow_id_and_an_unknown_one_is_said_so(store_app, store_viewer):
    store = store_of(store_app)
    order_id = uuid.uuid4().hex[:12]
    write_progress(store, ProgressRecord(order_status(order_id, "processing", 1, day(0)), []))
    for typed in (order_id, f"  {order_id.upper()} ", f"order-{order_id}"):
        found = store_viewer.get("/orders/find", query_string={"q": typed})
        assert found.status_code == 303 and found.headers["Location"] == f"/orders/{order_id}", typed
    for typed in ("0123456789ab", "<b>nope</b>"):  # not an order's ID: the dashboard's search for the text
        missing = store_viewer.get("/orders/find", query_string={"q": typed})
        assert missing.status_code == 303 and missing.headers["Location"].startswith("/orders?q="), typed
        page = store_viewer.get(missing.headers["Location"]).get_data(as_text=True)
        assert "No order has this ID, customer ID or email address" in page and html.escape(typed) in page, typed
        assert "<b>nope</b>" not in page
    assert store_viewer.get("/orders/find", query_string={"q": " "}).headers["Location"] == "/orders"
    assert 'role="search"' in store_viewer.get("/orders").get_data(as_text=True)
    signed_out = store_app.test_client().get("/orders/find", query_string={"order": order_id})
    assert signed_out.status_code in (302, 303) and "/signin" in signed_out.headers["Location"]
