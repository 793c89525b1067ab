"""Finding orders: the review queue at /orders/review, and an order by its ID at /orders/find.

The queue lists the orders waiting for approval, the nearest deadline first; it
reads one document (orders/review_queue.py), and each order links to its page,
where an approver approves or cancels it. The dashboard's search box sends an ID
(or the workflow ID, `order-<id>`) to /orders/find, which opens the order's page
or comes back to the dashboard saying none has it. Viewers and up (web/auth.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for

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
    """The order whose ID was typed (spaces and case aside), or the dashboard saying none is."""
    typed = request.args.get("order", "").strip().lower()
    order_id = typed.removeprefix("order-")
    service = current_app.extensions["order_service"]
    if ORDER_ID.match(order_id) and service.store.get(ORDERS, order_id) is not None:
        return redirect(url_for("orders_pages.tracker", order_id=order_id), code=303)
    shown = typed[:40] + ("…" if len(typed) > 40 else "")
    flash(f"No order has the ID “{shown}”. An order's ID is the 12 characters on its page, like 4a016090d174.", "invalid")
    return redirect(url_for("orders_pages.dashboard"), code=303)
