"""The review queue: the orders waiting for an operator's approval, with their deadlines, in one document.

An order's record (`write_progress`, orders/activities.py) keeps it: an order that
enters or leaves "awaiting review" puts itself in or takes itself out, so the
operators' queue (orders/review_page.py) reads one document, not every order. The
document holds only the orders waiting now, a handful at a time, so a write stays
small. Membership follows the order's stored record at the moment of the change,
read under the queue's lock: whichever write comes last, late or retried, leaves
the queue as the records say. Orders that waited before the queue existed are not
in it (they are in the dashboard's list and counts).
"""

from __future__ import annotations

from typing import Any

from core.store import Store
from orders.model import ORDERS

REVIEW_QUEUE = "review_queue"
AWAITING = "awaiting"


def sync_review_queue(store: Store, order_id: str) -> None:
    """Put the order in the queue or take it out, as its stored record says now."""

    def change(queue: dict[str, Any] | None) -> dict[str, Any]:
        orders = dict((queue or {}).get("orders", {}))
        record = store.get(ORDERS, order_id)
        if record is not None and record.get("status") == "awaiting_review":
            orders[order_id] = {
                "order_id": order_id,
                "customer_id": record.get("customer_id"),
                "total": record.get("total"),
                "expedited": record.get("expedited", False),
                "placed_at": record.get("placed_at"),
                "review_deadline": record.get("review_deadline"),
            }
        else:
            orders.pop(order_id, None)
        return {"orders": orders}

    store.update(REVIEW_QUEUE, AWAITING, change)


def in_review_queue(store: Store, order_id: str) -> bool:
    return order_id in ((store.get(REVIEW_QUEUE, AWAITING) or {}).get("orders") or {})


def awaiting_review(store: Store) -> list[dict[str, Any]]:
    """The orders waiting for review, the nearest deadline first."""
    orders = list(((store.get(REVIEW_QUEUE, AWAITING) or {}).get("orders") or {}).values())
    return sorted(orders, key=lambda order: (order.get("review_deadline") or "", order["order_id"]))
