"""Load test and benchmark of the loan app's JSON API.

Load test (the default): sends --count applications to POST /api/evaluate with
--concurrency requests in flight, waits for each decision and prints successes,
errors, decisions, latency percentiles, throughput and which worker decided
each application (`processed_by`, which the app shows operators only: the
load test sends the operator token when it finds one, see --token), so adding a
worker shows in the table.

Benchmark (--benchmark): for each --levels concurrency, first measures the
floor, a bare workflow with one no-op activity started and awaited with
`client.execute_workflow` on an in-process worker with default settings, on
the same Temporal server; then the app at the same concurrency. The floor (and
the breakdown's histories) reach Temporal directly, at TEMPORAL_ADDRESS
(default localhost:7233, with the app's TEMPORAL_* settings and payload key),
not through --url: point both at the same stack. It prints both
and their ratios next to the targets (printed, never asserted).

--breakdown N sends N applications one at a time and prints where their time
goes (medians), from the client's clock and each history's timestamps; the
decision's workflow task is split by its local activities' markers (when each
completed, on the worker's clock), decrypted with the client's codec.

Orders (--orders N): places N auto-approved orders through the API (with the
operator's token) at --concurrency, follows each by polling its status once a
second until it ends, and prints orders/s, p50/p99 from placing to the end and
the step retries seen, beside the one-activity floor measured in the same run
(on TEMPORAL_ADDRESS, as for --benchmark). Run the app with short shipping
times for it (a copy of rules.json, RULES_FILE).

Soak (--soak TOTAL --every BLOCK): sends TOTAL applications in blocks and
prints, per block, the throughput, p50/p99, and the resident memory and the CPU
per application of the dev server, the worker, the web and the mail sink
processes (those of the `make run` serving --url, by their command lines), so a
decline, unbounded memory or a growing cost shows as applications accumulate.

Latency is the time from sending the POST to having the decision: when the app
answers 202 (decision not ready yet), the status URL is polled every 0.2 s and
the request counts as "completed after pending". Percentiles use the nearest
rank: p95 is the smallest latency that at least 95% of requests do not exceed.
Throughput is decisions per second of wall time.

The app refuses a second application from the same email for 7 days, so every
run sends new applicants (load-<run id>-<n>@example.com, the run id random);
--seed fixes the mix of profiles and names, which covers all four decisions.

    python load_test.py --count 500 --concurrency 32
    python load_test.py --benchmark --levels 1,32 --repeat 3 --json
    python load_test.py --soak 50000 --every 1000 --concurrency 32
    python load_test.py --orders 200 --concurrency 32

Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import operator
import os
import random
import statistics
import sys
import time
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from core.settings import connect_temporal
from tools.loadtest import floor as floor_workflow
from tools.loadtest.floor import EmptyWorkflow, FloorWorkflow, floor_activity

DEFAULT_URL = "http://127.0.0.1:5001"
POLL_INTERVAL = 0.2
PERCENTILES = (50, 95, 99)
# Unmeasured requests before each benchmark level; at least one per lane, so
# every connection and poller is open before the clock starts.
WARMUP = 10
# Enough samples for a stable p99 at high concurrency; at concurrency 1 each
# request waits for the previous one, so fewer keep the run short.
BENCH_COUNT = 200
BENCH_COUNT_SEQUENTIAL = 50
PROGRESS_RATE_WINDOW = 2.0

# One profile per decision under rules.json (credit score and loan-to-income decide).
PROFILES = {
    "pre_approved": {"loan_amount": 50000, "credit_score": 750, "annual_income": 150000},
    "conditional": {"loan_amount": 45000, "credit_score": 700, "annual_income": 100000},
    "denied": {"loan_amount": 30000, "credit_score": 650, "annual_income": 80000},
    "denied_compliance": {"loan_amount": 30000, "credit_score": 550, "annual_income": 80000},
}
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
LAST_NAMES = ("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lee")

# (level, figure, comparison, limit, description): what the app is tuned for.
TARGETS = (
    (32, "app_over_floor_throughput", operator.ge, 1.0, "app throughput >= 1.0x floor 1"),
    (32, "app_p99_over_p50", operator.le, 2.0, "app p99 <= 2x app p50"),
    (1, "app_over_floor0_p50", operator.le, 1.3, "app p50 <= 1.3x floor 0 p50"),
    (1, "app_p50_ms", operator.le, 20.0, "app p50 <= 20 ms"),
)


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


def make_applicants(count: int, seed: int, run_id: str, first: int = 0) -> list[dict[str, Any]]:
    """Application payloads: the seed fixes profiles and names, the run id makes emails unique.

    Profiles are dealt in turn and then shuffled, so any four or more
    applicants cover every decision. Emails are numbered from `first`.
    """
    rng = random.Random(seed)
    profiles = [list(PROFILES.values())[n % len(PROFILES)] for n in range(count)]
    rng.shuffle(profiles)
    return [
        {
            "name": f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}",
            "email": f"load-{run_id}-{first + n}@example.com",
            **profile,
            "has_bankruptcy": False,
        }
        for n, profile in enumerate(profiles)
    ]


class Applicants:
    """Batches of new applicants for one run: each has the seed's mix, no email repeats."""

    def __init__(self, seed: int, run_id: str):
        self.seed = seed
        self.run_id = run_id
        self.issued = 0

    def batch(self, count: int) -> list[dict[str, Any]]:
        applicants = make_applicants(count, self.seed, self.run_id, first=self.issued)
        self.issued += count
        return applicants


# --- driving requests ----------------------------------------------------------


class Progress:
    """One status line on stderr, redrawn in place; silent unless stderr is a terminal."""

    def __init__(self, label: str, total: int, enabled: bool | None = None):
        self.label = label
        self.total = total
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.errors = 0
        self.started = time.monotonic()
        self.recent: deque[float] = deque()  # completion times within the rate window
        self.last_drawn = 0.0

    def record(self, result: Result) -> None:
        self.done += 1
        self.errors += result.error is not None
        now = time.monotonic()
        self.recent.append(now)
        while self.recent[0] < now - PROGRESS_RATE_WINDOW:
            self.recent.popleft()
        # Redraw at most 10 times a second: the terminal must not slow the run.
        if self.enabled and (now - self.last_drawn >= 0.1 or self.done == self.total):
            self.last_drawn = now
            rate = len(self.recent) / min(PROGRESS_RATE_WINDOW, max(now - self.started, 1e-3))
            sys.stderr.write(f"\r{self.label}: {self.done}/{self.total}  errors {self.errors}  {rate:.1f}/s\033[K")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()


async def run_concurrently(
    items: Iterable[Any], concurrency: int, call: Callable[[Any], Awaitable[Result]], progress: Progress
) -> tuple[list[Result], float]:
    """`call` on every item, at most `concurrency` at a time; the results and the wall seconds."""
    remaining = iter(items)
    results: list[Result] = []

    async def lane() -> None:
        # The lanes share one iterator: each takes the next item as soon as it is free.
        for item in remaining:
            result = await call(item)
            results.append(result)
            progress.record(result)

    started = time.perf_counter()
    try:
        await asyncio.gather(*(lane() for _ in range(concurrency)))
    finally:
        progress.close()
    return results, time.perf_counter() - started


def http_client(url: str, concurrency: int, timeout: float, token: str | None = None) -> httpx.AsyncClient:
    """A client whose pool holds one connection per lane, so none waits for a connection; with the
    operator's `token`, the app's answers name the worker that decided (`processed_by`)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout, headers=headers)


async def apply(
    client: httpx.AsyncClient, payload: dict[str, Any], timeout: float, poll_interval: float = POLL_INTERVAL
) -> Result:
    """Submit one application and wait for its decision, polling while the app answers 202."""
    started = time.perf_counter()
    was_pending = False
    try:
        async with asyncio.timeout(timeout):
            response = await client.post("/api/evaluate", json=payload)
            if response.status_code == 202:
                was_pending = True
                status_url = response.json()["status_url"]
                while response.status_code == 202:
                    await asyncio.sleep(poll_interval)
                    response = await client.get(status_url)
            latency = time.perf_counter() - started
            if response.status_code != 200:
                return Result(latency, was_pending=was_pending, error=f"HTTP {response.status_code}")
            body = response.json()
            return Result(latency, body["decision"], body.get("processed_by"), was_pending)
    except TimeoutError:
        error = "TimeoutError while pending" if was_pending else "TimeoutError"
        return Result(time.perf_counter() - started, was_pending=was_pending, error=error)
    except Exception as err:
        # One refused connection or malformed answer must not end the run: count it by class.
        return Result(time.perf_counter() - started, was_pending=was_pending, error=type(err).__name__)


async def run_app(
    client: httpx.AsyncClient,
    applicants: Sequence[dict[str, Any]],
    concurrency: int,
    timeout: float,
    progress: Progress,
) -> Summary:
    results, wall_seconds = await run_concurrently(
        applicants, concurrency, lambda payload: apply(client, payload, timeout), progress
    )
    return summarize(results, wall_seconds)


# --- the floor: a bare workflow with one activity ------------------------------


def floor_worker(client: Client, task_queue: str) -> Worker:
    """A worker with every setting at its default, as a first Temporal app would have."""
    return Worker(client, task_queue=task_queue, workflows=[FloorWorkflow, EmptyWorkflow], activities=[floor_activity])


async def run_floor(client: Client, task_queue: str, count: int, concurrency: int, progress: Progress,
                    workflow_run=FloorWorkflow.run) -> Summary:
    """`count` floor workflows (floor 1 by default; `EmptyWorkflow.run` for floor 0), started and awaited."""

    async def execute(n: int) -> Result:
        started = time.perf_counter()
        try:
            await client.execute_workflow(
                workflow_run, n, id=f"{task_queue}-{uuid.uuid4().hex[:12]}", task_queue=task_queue
            )
        except Exception as err:
            return Result(time.perf_counter() - started, error=type(err).__name__)
        return Result(time.perf_counter() - started)

    results, wall_seconds = await run_concurrently(range(count), concurrency, execute, progress)
    return summarize(results, wall_seconds)


# --- where one request's time goes -------------------------------------------------

BREAKDOWN_SEGMENTS = (
    ("http in -> workflow started", "sent", "started"),
    ("started -> task scheduled", "started", "scheduled"),
    ("task scheduled -> task started (dispatch)", "scheduled", "task_started"),
    ("task started -> task completed (local activities)", "task_started", "task_completed"),
    ("task completed -> answer at the client", "task_completed", "answered"),
)


# Inside the first workflow task, from its local activities' markers (when each completed,
# on the worker's clock, on the same machine; the markers' schedule times are not wall-clock
# times one can subtract); they split the segment above, so they are not added to the total.
LOCAL_ACTIVITY_SEGMENTS = (
    ("task started -> validate and decide done", "task_started", "decided"),
    ("-> persist done (the record fsynced)", "decided", "persisted"),
    ("persist done -> task completed", "persisted", "task_completed"),
)
LOCAL_ACTIVITY_MARKER = "core_local_activity"


def local_activity_marks(markers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """When the decision's local activities were done, from their markers' data
    (`activity_type`, `complete_time`), in seconds."""
    done: dict[str, float] = {}
    for marker in markers:
        stamp = marker.get("complete_time")
        if stamp:
            at = stamp.get("seconds", 0) + stamp.get("nanos", 0) / 1e9
            done[marker["activity_type"]] = max(done.get(marker["activity_type"], at), at)
    marks = {}
    if "validate_application" in done and "decide" in done:
        marks["decided"] = max(done["validate_application"], done["decide"])
    if "persist_application" in done:
        marks["persisted"] = done["persist_application"]
    return marks


async def first_task_markers(client: Client, events) -> list[dict[str, Any]]:
    """The local activity markers of the first workflow task, decrypted with the client's codec."""
    payloads = []
    completed = 0
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            completed += 1
        elif completed > 1:
            break
        elif event.HasField("marker_recorded_event_attributes"):
            marker = event.marker_recorded_event_attributes
            if marker.marker_name == LOCAL_ACTIVITY_MARKER and marker.details["data"].payloads:
                payloads.append(marker.details["data"].payloads[0])
    codec = client.data_converter.payload_codec
    if codec and payloads:
        payloads = await codec.decode(payloads)
    return [json.loads(payload.data) for payload in payloads]


def breakdown_of(sent: float, answered: float, events, markers: Sequence[dict[str, Any]] = ()) -> dict[str, float]:
    """Segment times in ms of one application, from the client's clock and its history's timestamps.

    `events` is the history; the first workflow task is the one that decides (update-with-start).
    `markers` (its local activities' marker data) split that task's time (LOCAL_ACTIVITY_SEGMENTS).
    """
    marks = {"sent": sent, "answered": answered, **local_activity_marks(markers)}
    names = {EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "started",
             EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "scheduled",
             EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "task_started",
             EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "task_completed"}
    for event in events:
        name = names.get(event.event_type)
        if name and name not in marks:
            marks[name] = event.event_time.ToDatetime().timestamp()
    return {label: (marks[end] - marks[start]) * 1000 for label, start, end in BREAKDOWN_SEGMENTS
            + LOCAL_ACTIVITY_SEGMENTS if start in marks and end in marks}


async def breakdown(client: Client, http: httpx.AsyncClient, applicants: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Send the applications one at a time; the median of each segment of their time."""
    samples = []
    for payload in applicants:
        sent = time.time()
        response = await http.post("/api/evaluate", json=payload)
        answered = time.time()
        if response.status_code != 200:
            continue
        handle = client.get_workflow_handle(response.json()["workflow_id"])
        events = [event async for event in handle.fetch_history_events()]
        samples.append(breakdown_of(sent, answered, events, await first_task_markers(client, events)))
    return summarize_breakdown(samples)


def summarize_breakdown(samples: Sequence[dict[str, float]]) -> dict[str, Any]:
    main = [label for label, _, _ in BREAKDOWN_SEGMENTS]
    return {
        "samples": len(samples),
        "segments_ms": {label: median_or_none(sample.get(label) for sample in samples) for label in main},
        "local_activities_ms": {label: median_or_none(sample.get(label) for sample in samples)
                                for label, _, _ in LOCAL_ACTIVITY_SEGMENTS},
        "total_ms": median_or_none(sum(sample[label] for label in main if label in sample) if sample else None
                                   for sample in samples),
    }


# --- benchmark -----------------------------------------------------------------


def bench_count_for(level: int, requested: int | None) -> int:
    if requested is not None:
        return requested
    return BENCH_COUNT_SEQUENTIAL if level == 1 else BENCH_COUNT


def headline(runs: Sequence[Summary]) -> dict[str, float | None]:
    """Throughput, p50 and p99 of repeated runs, each the median over the runs."""
    return {
        "throughput": median_or_none(run.throughput for run in runs),
        "p50_ms": median_or_none(run.latency_ms["p50"] for run in runs),
        "p99_ms": median_or_none(run.latency_ms["p99"] for run in runs),
    }


def compare(floor: dict[str, float | None], app: dict[str, float | None],
            floor0: dict[str, float | None] | None = None) -> dict[str, float | None]:
    """The app against floor 1 (one activity) and, when measured, floor 0 (an empty workflow)."""
    ratios = {
        "app_over_floor_throughput": ratio(app["throughput"], floor["throughput"]),
        "app_over_floor_p50": ratio(app["p50_ms"], floor["p50_ms"]),
        "app_p99_over_p50": ratio(app["p99_ms"], app["p50_ms"]),
    }
    if floor0 is not None:
        ratios["app_over_floor0_throughput"] = ratio(app["throughput"], floor0["throughput"])
        ratios["app_over_floor0_p50"] = ratio(app["p50_ms"], floor0["p50_ms"])
        ratios["app_p50_ms"] = app["p50_ms"]
    return ratios


def check_targets(level: int, ratios: dict[str, float | None]) -> list[dict[str, Any]]:
    checks = []
    for target_level, figure, holds, limit, description in TARGETS:
        if target_level != level:
            continue
        value = ratios.get(figure)
        checks.append({"target": description, "value": value, "met": value is not None and holds(value, limit)})
    return checks


async def benchmark(args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    # The app's client, payload encryption included: the floor pays the same codec cost, so the ratio is fair.
    client = await connect_temporal()
    task_queue = f"bench-floor-{uuid.uuid4()}"
    applicants = Applicants(args.seed, run_id)
    levels = []
    token = operator_token(args.token, required=False)
    async with floor_worker(client, task_queue):
        # Creating the worker imported the floor's module in the sandbox, which caches its bytecode if it may.
        if not os.path.exists(importlib.util.cache_from_source(floor_workflow.__file__)):
            print(
                "warning: no bytecode cache for floor_workflow.py (PYTHONDONTWRITEBYTECODE?): the sandbox"
                " compiles it for every floor workflow, so the floor comes out lower than it is",
                file=sys.stderr,
            )
        for level in args.levels:
            count = bench_count_for(level, args.bench_count)
            warmup = max(WARMUP, level)
            floor0_runs: list[Summary] = []
            floor_runs: list[Summary] = []
            app_runs: list[Summary] = []
            async with http_client(args.url, level, args.timeout, token) as http:
                await run_floor(client, task_queue, warmup, level, Progress(f"c={level} floor warm-up", warmup))
                await run_floor(client, task_queue, warmup, level, Progress(f"c={level} floor 0 warm-up", warmup),
                                EmptyWorkflow.run)
                await run_app(
                    http, applicants.batch(warmup), level, args.timeout, Progress(f"c={level} app warm-up", warmup)
                )
                # Floors and app alternate, so a slow spell of the machine hits all three.
                for run in range(1, args.repeat + 1):
                    label = f"c={level} run {run}/{args.repeat}"
                    floor0_runs.append(await run_floor(client, task_queue, count, level,
                                                       Progress(f"{label} floor 0", count), EmptyWorkflow.run))
                    floor_runs.append(
                        await run_floor(client, task_queue, count, level, Progress(f"{label} floor", count))
                    )
                    app_runs.append(
                        await run_app(
                            http, applicants.batch(count), level, args.timeout, Progress(f"{label} app", count)
                        )
                    )
            floor0, floor, app = headline(floor0_runs), headline(floor_runs), headline(app_runs)
            ratios = compare(floor, app, floor0)
            levels.append(
                {
                    "concurrency": level,
                    "requests": count,
                    "floor0": floor0,
                    "floor": floor,
                    "app": app,
                    "ratios": ratios,
                    "targets": check_targets(level, ratios),
                    "floor0_runs": [run._asdict() for run in floor0_runs],
                    "floor_runs": [run._asdict() for run in floor_runs],
                    "app_runs": [run._asdict() for run in app_runs],
                }
            )
        split = None
        if args.breakdown:
            async with http_client(args.url, 1, args.timeout, token) as http:
                split = await breakdown(client, http, applicants.batch(args.breakdown))
    return {
        "run_id": run_id,
        "url": args.url,
        "seed": args.seed,
        "repeat": args.repeat,
        "breakdown": split,
        "floor_task_queue": task_queue,
        "levels": levels,
        "failed": sum(run["failed"] for level in levels
                      for run in level["floor0_runs"] + level["floor_runs"] + level["app_runs"]),
    }


# --- orders: placed through the API and followed to the end ------------------------

FINAL_ORDER = ("completed", "cancelled", "rejected", "failed")


def operator_token(explicit: str | None, required: bool = True) -> str | None:
    """--token, else OPERATOR_TOKEN, else the token make run generated into the data folder.

    Orders need it; applications go without (None), and their answers then name no worker."""
    if explicit:
        return explicit
    if os.environ.get("OPERATOR_TOKEN"):
        return os.environ["OPERATOR_TOKEN"]
    path = os.path.join(os.environ.get("DATA_DIR", "data"), "secrets", "operator.token")
    try:
        with open(path) as file:
            return file.read().strip()
    except FileNotFoundError:
        if not required:
            return None
        raise SystemExit(f"orders need the operator token: --token, OPERATOR_TOKEN or {path}") from None


async def place_and_follow(client: httpx.AsyncClient, body: dict[str, Any], timeout: float,
                           poll_interval: float) -> tuple[Result, int]:
    """One order from placing to a final status, polling like a tracker page; the result and its retries."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            placed = await client.post("/api/orders", json=body)
            if placed.status_code != 201:
                return Result(time.perf_counter() - started, error=f"HTTP {placed.status_code}"), 0
            status_url = placed.json()["status_url"]
            while True:
                await asyncio.sleep(poll_interval)
                order = (await client.get(status_url)).json()
                if order["status"] in FINAL_ORDER:
                    retries = sum(max(0, n - 1) for n in order["attempts"].values())
                    return Result(time.perf_counter() - started, decision=order["status"]), retries
    except TimeoutError:
        return Result(time.perf_counter() - started, error="TimeoutError"), 0
    except Exception as err:
        return Result(time.perf_counter() - started, error=type(err).__name__), 0


async def run_orders(args: argparse.Namespace, run_id: str) -> dict[str, Any]:
    """Auto-approved orders (one cable each) at --concurrency, each followed to delivery; the floor in the same run."""
    retries = 0

    async def one(n: int) -> Result:
        nonlocal retries
        body = {"customer_id": f"load-{run_id}-{n % 50}", "customer_email": "load@example.com", "items": [{"sku": "CB-010", "quantity": 1}],
                "address": {"name": "Load Test", "street": "1 Bench Road", "city": "Testville", "postal_code": "T1",
                            "country": "UK"}}
        result, seen = await place_and_follow(http, body, args.timeout, args.poll_interval)
        retries += seen
        return result

    headers = {"Authorization": f"Bearer {operator_token(args.token)}"}  # orders are for operators only
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=args.timeout, headers=headers) as http:
        results, wall = await run_concurrently(range(args.orders), args.concurrency, one,
                                               Progress("orders", args.orders))
    orders = summarize(results, wall)
    client = await connect_temporal()
    task_queue = f"bench-floor-{uuid.uuid4()}"
    async with floor_worker(client, task_queue):
        floor = await run_floor(client, task_queue, BENCH_COUNT, args.concurrency, Progress("floor 1", BENCH_COUNT))
    return {"orders": orders._asdict(), "retries": retries, "floor": floor._asdict(),
            "orders_over_floor": ratio(orders.throughput, floor.throughput)}


def format_orders(report: dict[str, Any], concurrency: int) -> str:
    orders, floor = report["orders"], report["floor"]
    return "\n".join([
        f"Orders: {orders['requests']} auto-approved orders at concurrency {concurrency}, placed through the API"
        " and followed to the end",
        "",
        f"  final         {orders['succeeded']:>7}  {dict(orders['decisions'])}",
        f"  failed        {orders['failed']:>7}  {dict(orders['errors'])}",
        f"  throughput    {orders['throughput']:>7.2f} orders/s",
        "  to the end ms " + "  ".join(f"{name} {number(value)}" for name, value in orders["latency_ms"].items()),
        f"  step retries  {report['retries']:>7}",
        f"  floor 1       {floor['throughput']:>7.1f} workflows/s (same server, same run)",
        f"  orders/floor  {number(report['orders_over_floor'], 2, 'x'):>8}   (target >= 0.5x)",
    ])


# --- soak: does throughput hold and memory stay bounded as applications accumulate? ---

# Which processes to watch, by a piece of their command line (all of `make run`'s).
SOAK_PROCESSES = {"temporal": "server start-dev", "worker": "worker.py", "web": "gunicorn", "mail": "tools.mail_sink"}


def stack_processes(url: str) -> list | None:
    """The processes of the `make run` that serves `url`: the supervisor (honcho) above the
    process listening on its port, and all it started; None when no such supervisor is found."""
    import psutil

    port = urlsplit(url).port or (443 if url.startswith("https:") else 80)
    try:
        listening = {c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN
                     and c.laddr and c.laddr.port == port and c.pid}
    except psutil.Error:
        return None
    for pid in listening:
        with contextlib.suppress(psutil.Error):
            # honcho runs each process under a fork of its own: the outermost honcho is the supervisor.
            supervisors = [parent for parent in psutil.Process(pid).parents() if "honcho" in " ".join(parent.cmdline())]
            if supervisors:
                return supervisors[-1].children(recursive=True)
    return None


class Usage(NamedTuple):
    rss_mb: float
    cpu_seconds: float  # user + system since the process started


def process_usage(roles: dict[str, str] = SOAK_PROCESSES, processes: list | None = None) -> dict[str, Usage | None]:
    """Resident memory and CPU time of each role's processes, summed (gunicorn's master and workers).

    Pass the processes of the stack under test (`stack_processes`); without them,
    those of every `make run` (honcho's descendants) on the machine, else all.
    """
    import psutil

    if processes is None:
        supervisors = [p for p in psutil.process_iter(["cmdline"]) if "honcho" in " ".join(p.info["cmdline"] or [])]
        # honcho's forks are supervisors' descendants too: each process once.
        processes = list({child.pid: child for p in supervisors for child in p.children(recursive=True)}.values()) or [
            p for p in psutil.process_iter() if p.pid != os.getpid()]
    totals: dict[str, Usage | None] = dict.fromkeys(roles)
    for process in processes:
        try:
            command, rss, cpu = " ".join(process.cmdline()), process.memory_info().rss, process.cpu_times()
        except psutil.Error:
            continue  # ended meanwhile
        for role, needle in roles.items():
            if needle in command:
                before = totals[role] or Usage(0.0, 0.0)
                totals[role] = Usage(before.rss_mb + rss / 2**20, before.cpu_seconds + cpu.user + cpu.system)
    return totals


async def soak(args: argparse.Namespace, run_id: str) -> list[dict[str, Any]]:
    """`args.soak` applications in blocks of `args.every`; one row per block, printed as it ends."""
    applicants = Applicants(args.seed, run_id)
    rows = []
    token = operator_token(args.token, required=False)
    async with http_client(args.url, args.concurrency, args.timeout, token) as http:
        usage = process_usage(processes=stack_processes(args.url))
        for first in range(0, args.soak, args.every):
            count = min(args.every, args.soak - first)
            summary = await run_app(http, applicants.batch(count), args.concurrency, args.timeout,
                                    Progress(f"block {first // args.every + 1}", count))
            before, usage = usage, process_usage(processes=stack_processes(args.url))
            row = {"sent": first + count, "throughput": summary.throughput, "p50_ms": summary.latency_ms["p50"],
                   "p99_ms": summary.latency_ms["p99"], "failed": summary.failed, "errors": dict(summary.errors),
                   "rss_mb": {role: now and now.rss_mb for role, now in usage.items()},
                   "cpu_ms_per_app": {role: cpu_ms_per_app(before[role], now, count) for role, now in usage.items()}}
            rows.append(row)
            if not args.json:
                print(format_soak_row(row, header=first == 0), flush=True)
    return rows


def cpu_ms_per_app(before: Usage | None, now: Usage | None, count: int) -> float | None:
    """CPU milliseconds per application of one role over a block (None when a process restarted)."""
    if before is None or now is None or now.cpu_seconds < before.cpu_seconds:
        return None
    return (now.cpu_seconds - before.cpu_seconds) * 1000 / count


def format_soak_row(row: dict[str, Any], header: bool) -> str:
    line = (f"{row['sent']:>9}  {number(row['throughput']):>8}  {number(row['p50_ms']):>8}  "
            f"{number(row['p99_ms']):>8}  {row['failed']:>6}  "
            + "  ".join(f"{number(row['rss_mb'][role], 0):>8}" for role in SOAK_PROCESSES) + "  "
            + "  ".join(f"{number(row['cpu_ms_per_app'][role]):>8}" for role in SOAK_PROCESSES)
            + "".join(f"  {error}: {count}" for error, count in row.get("errors", {}).items()))
    if not header:
        return line
    roles = "  ".join(f"{role:>8}" for role in SOAK_PROCESSES)
    return (f"{'':>47}  {'resident memory, MB':<{len(roles)}}  CPU per application, ms\n"
            f"{'sent':>9}  {'apps/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'failed':>6}  {roles}  {roles}\n{line}")


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


def format_benchmark(report: dict[str, Any]) -> str:
    header = (
        f"{'level':>5}  {'requests':>8}  {'floor0/s':>8}  {'floor1/s':>8}  {'app/s':>8}  {'app/floor1':>10}  "
        f"{'floor0 p50':>10}  {'floor1 p50':>10}  {'app p50':>8}  {'app p99':>8}  {'p50 vs f0':>9}  "
        f"{'p50 vs f1':>9}  {'app p99/p50':>11}"
    )
    lines = [
        "Benchmark: floor 0 (empty workflow), floor 1 (workflow + 1 activity), both on a default worker,"
        f" vs the app at {report['url']}",
        f"run {report['run_id']}, seed {report['seed']}, median of {report['repeat']} run(s); latencies in ms",
        "",
        header,
    ]
    for level in report["levels"]:
        floor0, floor, app, ratios = level["floor0"], level["floor"], level["app"], level["ratios"]
        lines.append(
            f"{level['concurrency']:>5}  {level['requests']:>8}  {number(floor0['throughput']):>8}  "
            f"{number(floor['throughput']):>8}  {number(app['throughput']):>8}  "
            f"{number(ratios['app_over_floor_throughput'], 2, 'x'):>10}  {number(floor0['p50_ms']):>10}  "
            f"{number(floor['p50_ms']):>10}  {number(app['p50_ms']):>8}  {number(app['p99_ms']):>8}  "
            f"{number(ratios.get('app_over_floor0_p50'), 2, 'x'):>9}  "
            f"{number(ratios['app_over_floor_p50'], 2, 'x'):>9}  {number(ratios['app_p99_over_p50'], 2, 'x'):>11}"
        )
    split = report.get("breakdown")
    if split:
        lines += ["", f"Where a c=1 request's time goes (median of {split['samples']}, ms; client clock and the"
                      " workflow history's timestamps):"]
        for label, value in split["segments_ms"].items():
            lines.append(f"  {label:<52} {number(value):>7}")
            if label.startswith("task started -> task completed"):
                for inner, inner_value in split.get("local_activities_ms", {}).items():
                    if inner_value is not None:
                        lines.append(f"    {inner:<50} {number(inner_value):>7}")
        lines.append(f"  {'total':<52} {number(split['total_ms']):>7}")
    checks = [(level["concurrency"], check) for level in report["levels"] for check in level["targets"]]
    if checks:
        lines += ["", "Targets (reported, not asserted):"]
        for level, check in checks:
            verdict = "met" if check["met"] else "MISSED"
            suffix = " ms" if check["target"].endswith(" ms") else "x"
            lines.append(f"  c={level:<3} {check['target']:<32} {number(check['value'], 2, suffix):>8}  {verdict}")
    for level in report["levels"]:
        for name in ("floor0", "floor", "app"):
            errors = Counter()
            for run in level[f"{name}_runs"]:
                errors.update(run["errors"])
            if errors:
                lines.append(f"  c={level['concurrency']} {name} errors: {dict(errors.most_common())}")
    return "\n".join(lines)


# --- command line --------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def level_list(text: str) -> list[int]:
    try:
        levels = [positive_int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels:
        raise argparse.ArgumentTypeError(f"expected concurrency levels like 1,32, got {text!r}")
    return levels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=positive_int, default=100, help="applications to send (default 100)")
    parser.add_argument("--concurrency", type=positive_int, default=16, help="requests in flight (default 16)")
    parser.add_argument(
        "--url",
        default=os.environ.get("LOAD_TEST_URL", DEFAULT_URL),
        help=f"the app's base URL (default $LOAD_TEST_URL or {DEFAULT_URL}); --benchmark's and --orders'"
             " floors reach Temporal at $TEMPORAL_ADDRESS (default localhost:7233), not through it",
    )
    parser.add_argument("--seed", type=int, default=1, help="fixes the mix of applicant profiles (default 1)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per application, polling included (default 30)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--benchmark", action="store_true",
        help="compare the app with a bare Temporal workflow on the same server: the floor connects to"
             " $TEMPORAL_ADDRESS (default localhost:7233), the app's server, not --url",
    )
    parser.add_argument(
        "--levels", type=level_list, default="1,32", help="benchmark concurrency levels (default 1,32)"
    )
    parser.add_argument(
        "--bench-count",
        type=positive_int,
        help=f"benchmark requests per level and run ({BENCH_COUNT_SEQUENTIAL} at concurrency 1, else {BENCH_COUNT})",
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=1, help="benchmark runs per level; figures are their median (default 1)"
    )
    parser.add_argument("--orders", type=positive_int, metavar="N",
                        help="place N auto-approved orders and follow each to the end; compare with the floor"
                             " (on $TEMPORAL_ADDRESS, default localhost:7233, not --url)")
    parser.add_argument("--poll-interval", type=float, default=1.0,
                        help="with --orders: seconds between status reads of one order (default 1, a tracker page's pace)")
    parser.add_argument("--token", help="the operator token (default $OPERATOR_TOKEN or the data folder's): needed with"
                                        " --orders; for applications it shows which worker decided each")
    parser.add_argument("--soak", type=positive_int, metavar="TOTAL",
                        help="send TOTAL applications in blocks; print throughput, latency and memory per block")
    parser.add_argument("--every", type=positive_int, default=1000, metavar="BLOCK",
                        help="with --soak: applications per block (default 1000)")
    parser.add_argument(
        "--breakdown", type=int, default=20, metavar="N",
        help="after the benchmark, where the time of N sequential applications goes (default 20; 0 for none)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    if args.orders:
        report = asyncio.run(run_orders(args, run_id))
        print(json.dumps(report, indent=2) if args.json else format_orders(report, args.concurrency))
        return 1 if report["orders"]["failed"] else 0
    if args.soak:
        rows = asyncio.run(soak(args, run_id))
        if args.json:
            print(json.dumps({"run_id": run_id, "blocks": rows}, indent=2))
        return 1 if any(row["failed"] for row in rows) else 0
    if args.benchmark:
        report = asyncio.run(benchmark(args, run_id))
        print(json.dumps(report, indent=2) if args.json else format_benchmark(report))
        return 1 if report["failed"] else 0

    async def load_test() -> Summary:
        applicants = Applicants(args.seed, run_id).batch(args.count)
        token = operator_token(args.token, required=False)
        async with http_client(args.url, args.concurrency, args.timeout, token) as http:
            progress = Progress("applications", args.count)
            return await run_app(http, applicants, args.concurrency, args.timeout, progress)

    summary = asyncio.run(load_test())
    if args.json:
        settings = {"url": args.url, "run_id": run_id, "seed": args.seed, "concurrency": args.concurrency}
        print(json.dumps({**settings, **summary._asdict()}, indent=2))
    else:
        title = (
            f"Load test: {args.count} applications, concurrency {args.concurrency}, {args.url}"
            f" (run {run_id}, seed {args.seed})"
        )
        print(format_summary(summary, title))
    return 1 if summary.failed else 0


if __name__ == "__main__":
    status = main()
    # Skip the interpreter's teardown: the Temporal client's Rust threads can
    # crash it now and then (segfault or abort), which would replace the status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
