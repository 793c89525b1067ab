"""Small formatting rules both halves share: amounts and counts for people, timestamps now and as sort keys."""

from datetime import UTC, date, datetime, timedelta, timezone

CHART_DAYS = 14  # the dashboards' charts: the last two weeks, today included


def format_amount(amount: float) -> str:
    return f"${amount:,.0f}" if amount == int(amount) else f"${amount:,.2f}"


def sort_key_for(timestamp: str) -> str:
    """A file-name-safe, sortable form of an ISO timestamp."""
    return timestamp.replace(":", "").replace("+0000", "Z")


def day_value(timestamp: str, value: str) -> str:
    """What a record is counted under for the charts: its day (UTC, from an ISO timestamp) and a value,
    "2026-12-05/pre_approved"; the store counts these (`count_by`) as it counts the value alone."""
    return f"{timestamp[:10]}/{value}"


def last_days(count: int, today: str | None = None) -> list[str]:
    """The `count` days up to today (UTC), oldest first, as "2026-12-05"."""
    end = date.fromisoformat(today) if today else datetime.now(UTC).date()
    return [(end - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]


def counts_by_day(counts: dict[str, int], days: list[str]) -> dict[str, dict[str, int]]:
    """`count_by` of a `day_*` field as {day: {value: count}} for `days`, every day present."""
    by_day: dict[str, dict[str, int]] = {day: {} for day in days}
    for key, count in counts.items():
        day, _, value = key.partition("/")
        if day in by_day and value:
            by_day[day][value] = count
    return by_day


def day_chart(by_day: dict[str, dict[str, int]], series: tuple[str, ...]) -> dict:
    """What templates/charts.html draws: each day with its total and its counts in `series` order
    (values outside `series` count in the total only), the tallest day, the sum."""
    days = [
        (day, sum(counts.values()), [(value, counts[value]) for value in series if counts.get(value)])
        for day, counts in by_day.items()
    ]
    totals = [total for _, total, _ in days]
    return {"days": days, "top": max([*totals, 1]), "total": sum(totals), "today": totals[-1] if totals else 0}


def count_of(count: int, noun: str) -> str:
    """`1 day`, `7 days`: a count with its noun in the right number (English: the plural adds "s")."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def utc_now(timespec: str = "auto") -> str:
    """Now in UTC, ISO 8601 (the order steps' records write it to the millisecond)."""
    return datetime.now(timezone.utc).isoformat(timespec=timespec)
