"""Finding orders: the review queue at /orders/review, and an order by its ID at /orders/find.

The queue lists the orders waiting for approval, the nearest deadline first; it
reads one document (orders/review_queue.py), and each order links to its page,
where an approver approves or cancels it. The dashboard's search box sends its
text to /orders/find: an order's ID (or its workflow ID, `order-<id>`) opens the
order's page; anything else comes back as the dashboard's search (a customer ID,
or an email address). Viewers and up (web/auth.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, redirect, render_template, request, url_for

from core.listing import SEARCH
from orders.model import ORDERS
from orders.review_queue import awaiting_review
from orders.service import ORDER_ID

orders_review = Blueprint("orders_review", __name__)


def minutes_left(deadline: str | None, now: datetime) -> int | None:
    """Whole minutes until the deadline (negative once it has passed); None without one."""
    if not deadline:
        return None
    return int((datetime.fromisoformat(deadline) - now).total_seconds() // 60)


@orders_review.get("/orders/review")
def queue():
    service = current_app.extensions["order_service"]
    now = datetime.now(UTC)
    orders = [
        {**order, "minutes_left": minutes_left(order.get("review_deadline"), now)} for order in awaiting_review(service.store)
    ]
    return render_template("orders/review.html", orders=orders)


@orders_review.get("/orders/find")
def find():
    """The dashboard's search box: the order whose ID was typed (spaces and case aside), else the
    dashboard's search for the text (a customer ID, or an email address)."""
    typed = " ".join(request.args.get(SEARCH, "").split())
    order_id = typed.lower().removeprefix("order-")
    service = current_app.extensions["order_service"]
    if ORDER_ID.match(order_id) and service.store.get(ORDERS, order_id) is not None:
        return redirect(url_for("orders_pages.tracker", order_id=order_id), code=303)
    return redirect(url_for("orders_pages.dashboard", **({SEARCH: typed} if typed else {})), code=303)
