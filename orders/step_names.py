"""How people read an order's steps: their names on the order pages, in the process's order."""

# The order's steps as people read them, in the process's order: OrderStatus.step, and the keys of
# OrderStatus.attempts (the steps that count their attempts).
STEP_NAMES = {
    "received": "Received",
    "validate": "Validation",
    "reserve_inventory": "Inventory",
    "review": "Review",
    "charge_payment": "Payment",
    "ship": "Shipping",
    "complete": "Complete",
}
ATTEMPT_NAMES = {
    "validate": "Validate",
    "reserve_inventory": "Reserve inventory",
    "charge_payment": "Charge payment",
    "prepared": "Prepare package",
    "dispatched": "Dispatch",
    "delivered": "Deliver",
}
