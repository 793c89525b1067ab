"""Figures of a load-test run: nearest-rank percentiles, latency summaries and the tables that print them."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

PERCENTILES = (50, 95, 99)


# --- statistics: pure functions ------------------------------------------------


def percentile(values: Sequence[float], pct: float) -> float | None:
    """Nearest-rank percentile (an actual sample, no interpolation); None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct * len(ordered) / 100))
    return ordered[rank - 1]


def latency_stats(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max in milliseconds; None when there is no sample."""
    stats = {f"p{pct}": percentile(seconds, pct) for pct in PERCENTILES}
    stats["max"] = max(seconds, default=None)
    return {name: None if value is None else value * 1000 for name, value in stats.items()}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def median_or_none(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


class Result(NamedTuple):
    """One request: the decision it got, or the error that prevented one."""

    latency: float  # seconds
    decision: str | None = None
    worker: str | None = None
    was_pending: bool = False
    error: str | None = None  # "HTTP 409", or an exception class such as "ConnectError"


class Summary(NamedTuple):
    requests: int
    succeeded: int
    completed_after_pending: int
    failed: int
    errors: dict[str, int]
    decisions: dict[str, int]
    workers: dict[str, int]
    wall_seconds: float
    throughput: float  # successes per second
    latency_ms: dict[str, float | None]  # of successes only


def summarize(results: Sequence[Result], wall_seconds: float) -> Summary:
    succeeded = [r for r in results if r.error is None]
    errors = Counter(r.error for r in results if r.error is not None)
    return Summary(
        requests=len(results),
        succeeded=len(succeeded),
        completed_after_pending=sum(r.was_pending for r in succeeded),
        failed=len(results) - len(succeeded),
        errors=dict(errors.most_common()),
        decisions=dict(Counter(r.decision for r in succeeded if r.decision).most_common()),
        workers=dict(Counter(r.worker for r in succeeded if r.worker).most_common()),
        wall_seconds=wall_seconds,
        throughput=len(succeeded) / wall_seconds if wall_seconds > 0 else 0.0,
        latency_ms=latency_stats([r.latency for r in succeeded]),
    )


# --- output --------------------------------------------------------------------


def number(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{digits}f}{suffix}"


def count_table(heading: str, counts: dict[str, int]) -> list[str]:
    if not counts:
        return []
    width = max(len(heading), *(len(name) for name in counts))
    return ["", f"  {heading:<{width}}  count", *(f"  {name:<{width}}  {n:>5}" for name, n in counts.items())]


def format_summary(summary: Summary, title: str) -> str:
    latency = summary.latency_ms
    lines = [
        title,
        "",
        f"  succeeded     {summary.succeeded:>7}  ({summary.completed_after_pending} completed after pending)",
        f"  failed        {summary.failed:>7}",
        f"  wall time     {summary.wall_seconds:>7.2f} s",
        f"  throughput    {summary.throughput:>7.1f} decisions/s",
        "  latency ms    " + "  ".join(f"{name} {number(value)}" for name, value in latency.items()),
        *count_table("decision", summary.decisions),
        *count_table("worker (processed_by)", summary.workers),
        *count_table("error", summary.errors),
    ]
    return "\n".join(lines)
