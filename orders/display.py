"""How people read an order on its pages: its steps' names, in the process's order, and its address's lines."""

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

# Countries whose addresses put the postal code after the town ("Arlington 22201", "London N1 9GU");
# elsewhere it comes first ("75001 Paris"). The country is free text: its usual names and codes.
POSTCODE_AFTER_CITY = frozenset(
    {"US", "USA", "UNITED STATES", "CA", "CANADA", "GB", "UK", "UNITED KINGDOM", "IE", "IRELAND"}
    | {"AU", "AUSTRALIA", "NZ", "NEW ZEALAND"}
)
