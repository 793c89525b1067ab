"""The operators' review queue at /orders/review: the orders waiting for approval, the nearest deadline first.

Reads one document (orders/review_queue.py); each order links to its page, where
an approver approves or cancels it. Viewers and up may see it (web/auth.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, current_app, render_template

from orders.review_queue import awaiting_review

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
