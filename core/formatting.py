"""Small formatting rules both halves share: amounts and counts for people, timestamps now and as sort keys."""

from datetime import datetime, timezone


def format_amount(amount: float) -> str:
    return f"${amount:,.0f}" if amount == int(amount) else f"${amount:,.2f}"


def sort_key_for(timestamp: str) -> str:
    """A file-name-safe, sortable form of an ISO timestamp."""
    return timestamp.replace(":", "").replace("+0000", "Z")


def count_of(count: int, noun: str) -> str:
    """`1 day`, `7 days`: a count with its noun in the right number (English: the plural adds "s")."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def utc_now(timespec: str = "auto") -> str:
    """Now in UTC, ISO 8601 (the order steps' records write it to the millisecond)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)
