"""The benchmark (--benchmark, --breakdown): the app beside a one-activity floor on the same server, and where an application's time goes."""

from __future__ import annotations

import argparse
import json
import operator
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from core.codec import ENCODING
from core.settings import connect_temporal
from tools.loadtest import floor as floor_workflow
from tools.loadtest.bytecode import cache_bytecode
from tools.loadtest.floor import EmptyWorkflow, FloorWorkflow, floor_activity
from tools.loadtest.loans import Applicants, Progress, http_client, operator_token, run_app, run_concurrently
from tools.loadtest.stats import Result, Summary, median_or_none, number, ratio, summarize

# Unmeasured requests before each benchmark level; at least one per lane, so
# every connection and poller is open before the clock starts.
WARMUP = 10
# Enough samples for a stable p99 at high concurrency; at concurrency 1 each
# request waits for the previous one, so fewer keep the run short.
BENCH_COUNT = 200
BENCH_COUNT_SEQUENTIAL = 50

# (level, figure, comparison, limit, description): what the app is tuned for.
TARGETS = (
    (32, "app_over_floor_throughput", operator.ge, 1.0, "app throughput >= 1.0x floor 1"),
    (32, "app_p99_over_p50", operator.le, 2.0, "app p99 <= 2x app p50"),
    (1, "app_over_floor0_p50", operator.le, 1.3, "app p50 <= 1.3x floor 0 p50"),
    (1, "app_p50_ms", operator.le, 20.0, "app p50 <= 20 ms"),
)


# --- the floor: a bare workflow with one activity ------------------------------


def floor_worker(client: Client, task_queue: str) -> Worker:
    """A worker with every setting at its default, as a first Temporal app would have."""
    return Worker(client, task_queue=task_queue, workflows=[FloorWorkflow, EmptyWorkflow], activities=[floor_activity])


async def run_floor(
    client: Client, task_queue: str, count: int, concurrency: int, progress: Progress, workflow_run=FloorWorkflow.run
) -> Summary:
    """`count` floor workflows (floor 1 by default; `EmptyWorkflow.run` for floor 0), started and awaited."""

    async def execute(n: int) -> Result:
        started = time.perf_counter()
        try:
            await client.execute_workflow(workflow_run, n, id=f"{task_queue}-{uuid.uuid4().hex[:12]}", task_queue=task_queue)
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
    # A marker's details are written by the SDK itself, in plain JSON; decrypt only what is encrypted
    # (the codec refuses plain payloads: core/codec.py).
    plain = [
        (await codec.decode([payload]))[0] if codec and payload.metadata.get("encoding") == ENCODING else payload
        for payload in payloads
    ]
    return [json.loads(payload.data) for payload in plain]


def breakdown_of(sent: float, answered: float, events, markers: Sequence[dict[str, Any]] = ()) -> dict[str, float]:
    """Segment times in ms of one application, from the client's clock and its history's timestamps.

    `events` is the history; the first workflow task is the one that decides (update-with-start).
    `markers` (its local activities' marker data) split that task's time (LOCAL_ACTIVITY_SEGMENTS).
    """
    marks = {"sent": sent, "answered": answered, **local_activity_marks(markers)}
    names = {
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED: "started",
        EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED: "scheduled",
        EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED: "task_started",
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: "task_completed",
    }
    for event in events:
        name = names.get(event.event_type)
        if name and name not in marks:
            marks[name] = event.event_time.ToDatetime().timestamp()
    return {
        label: (marks[end] - marks[start]) * 1000
        for label, start, end in BREAKDOWN_SEGMENTS + LOCAL_ACTIVITY_SEGMENTS
        if start in marks and end in marks
    }


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
        "local_activities_ms": {
            label: median_or_none(sample.get(label) for sample in samples) for label, _, _ in LOCAL_ACTIVITY_SEGMENTS
        },
        "total_ms": median_or_none(
            sum(sample[label] for label in main if label in sample) if sample else None for sample in samples
        ),
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


def compare(
    floor: dict[str, float | None], app: dict[str, float | None], floor0: dict[str, float | None] | None = None
) -> dict[str, float | None]:
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
    cache_bytecode(floor_workflow)
    async with floor_worker(client, task_queue):
        for level in args.levels:
            count = bench_count_for(level, args.bench_count)
            warmup = max(WARMUP, level)
            floor0_runs: list[Summary] = []
            floor_runs: list[Summary] = []
            app_runs: list[Summary] = []
            async with http_client(args.url, level, args.timeout, token) as http:
                await run_floor(client, task_queue, warmup, level, Progress(f"c={level} floor warm-up", warmup))
                await run_floor(
                    client, task_queue, warmup, level, Progress(f"c={level} floor 0 warm-up", warmup), EmptyWorkflow.run
                )
                await run_app(http, applicants.batch(warmup), level, args.timeout, Progress(f"c={level} app warm-up", warmup))
                # Floors and app alternate, so a slow spell of the machine hits all three.
                for run in range(1, args.repeat + 1):
                    label = f"c={level} run {run}/{args.repeat}"
                    floor0_runs.append(
                        await run_floor(client, task_queue, count, level, Progress(f"{label} floor 0", count), EmptyWorkflow.run)
                    )
                    floor_runs.append(await run_floor(client, task_queue, count, level, Progress(f"{label} floor", count)))
                    app_runs.append(
                        await run_app(http, applicants.batch(count), level, args.timeout, Progress(f"{label} app", count))
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
        "failed": sum(
            run["failed"] for level in levels for run in level["floor0_runs"] + level["floor_runs"] + level["app_runs"]
        ),
    }


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
        lines += [
            "",
            f"Where a c=1 request's time goes (median of {split['samples']}, ms; client clock and the"
            " workflow history's timestamps):",
        ]
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
            errors: Counter[str] = Counter()
            for run in level[f"{name}_runs"]:
                errors.update(run["errors"])
            if errors:
                lines.append(f"  c={level['concurrency']} {name} errors: {dict(errors.most_common())}")
    return "\n".join(lines)
