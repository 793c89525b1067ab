"""What an order still offers its operators: one pure rule, for the workflow and the pages.

The workflow computes the actions from its live state and records them with the
order (`OrderStatus.actions`); the service uses the same rule for a record
written before the workflow recorded them.
"""

from typing import Any

from orders.model import FINAL_ORDER_STATUSES

# Shipment stages from which an order can no longer be changed or cancelled.
HANDED_TO_CARRIER = ("dispatching", "dispatched", "delivered")


def available_actions(
    status: str,
    shipment_stage: str,
    expedited: bool,
    *,
    ending: bool = False,
    cancel_requested: bool = False,
    released: bool = False,
) -> list[str]:
    """The operator actions that can still take effect (orders.model.ORDER_ACTIONS), in that order.

    `ending`: the order is undoing what it did; `released`: it has handed the
    parcel to the carrier (the shipment stage says so too, a moment later).
    """
    if ending or cancel_requested or status in FINAL_ORDER_STATUSES:
        return []
    actions = []
    if status == "awaiting_review":
        actions.append("approve")
    if not released and shipment_stage not in HANDED_TO_CARRIER:
        actions += ["cancel", "address"]
    if not expedited and shipment_stage != "delivered":
        actions.append("expedite")
    if not released:
        actions.append("simulate-failure")
    return actions


def recorded_actions(status: dict[str, Any]) -> list[str]:
    """The actions of a stored order record, as the workflow recorded them (OrderStatus.actions); pages
    offer only these. Records written before the workflow said so fall back to the same rule."""
    if "actions" in status:
        return list(status["actions"])
    stage = (status.get("shipment") or {}).get("stage") or "not_started"
    return available_actions(status["status"], stage, bool(status.get("expedited")), released=stage in HANDED_TO_CARRIER)
