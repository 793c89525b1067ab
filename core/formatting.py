"""Small formatting rules both halves share: amounts for people, timestamps as sort keys."""


def format_amount(amount: float) -> str:
    return f"${amount:,.0f}" if amount == int(amount) else f"${amount:,.2f}"


def sort_key_for(timestamp: str) -> str:
    """A file-name-safe, sortable form of an ISO timestamp."""
    return timestamp.replace(":", "").replace("+0000", "Z")
