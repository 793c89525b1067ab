"""Unit tests of load_test.py: statistics, applicant generation, aggregation and the HTTP client.

No server needed: the HTTP client runs against `httpx.MockTransport`.
"""

from __future__ import annotations

import json
import os
import types
import uuid

import httpx
import pytest
from temporalio.api.enums.v1 import EventType

import load_test
from core.codec import EncryptionCodec
from tools.loadtest import bench, loans, soak
from tools.loadtest.bench import check_targets, compare, headline
from tools.loadtest.loans import PROFILES, Applicants, Progress, apply, make_applicants, run_app
from tools.loadtest.stats import Result, latency_stats, percentile, summarize

BASE_URL = "http://app.test"


# --- statistics ----------------------------------------------------------------


def test_percentile_of_empty_is_none():
    assert percentile([], 50) is None


def test_percentile_of_one_value_is_that_value():
    assert [percentile([7.0], pct) for pct in (1, 50, 99, 100)] == [7.0] * 4


def test_percentile_uses_nearest_rank():
    values = list(range(20, 0, -1))  # 1..20, unsorted on purpose
    assert percentile(values, 50) == 10
    assert percentile(values, 95) == 19  # rank ceil(0.95 * 20) = 19, exactly
    assert percentile(values, 99) == 20
    assert percentile(values, 100) == 20
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([15, 20, 35, 40, 50], 30) == 20


def test_latency_stats_in_milliseconds():
    stats = latency_stats([0.001 * n for n in range(1, 101)])
    assert stats == pytest.approx({"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0})
    assert latency_stats([]) == {"p50": None, "p95": None, "p99": None, "max": None}


# --- applicants ----------------------------------------------------------------


def test_applicants_are_reproducible_for_a_seed():
    first = make_applicants(40, seed=1, run_id="aaaa1111")
    again = make_applicants(40, seed=1, run_id="bbbb2222")
    without_email = lambda applicants: [{k: v for k, v in a.items() if k != "email"} for a in applicants]  # noqa: E731
    assert without_email(first) == without_email(again)
    assert without_email(make_applicants(40, seed=2, run_id="aaaa1111")) != without_email(first)


def test_applicant_emails_are_unique_within_and_across_runs():
    run_a = make_applicants(50, seed=1, run_id="aaaa1111")
    run_b = make_applicants(50, seed=1, run_id="bbbb2222")
    emails = [a["email"] for a in run_a + run_b]
    assert len(set(emails)) == 100
    assert run_a[0]["email"] == "load-aaaa1111-0@example.com"


def test_batches_of_one_run_share_the_mix_but_not_emails():
    applicants = Applicants(seed=1, run_id="aaaa1111")
    first, second = applicants.batch(8), applicants.batch(8)
    assert [a["credit_score"] for a in first] == [a["credit_score"] for a in second]
    assert not {a["email"] for a in first} & {a["email"] for a in second}
    assert second[0]["email"] == "load-aaaa1111-8@example.com"


def test_any_four_applicants_cover_every_decision():
    scores = {profile["credit_score"] for profile in PROFILES.values()}
    for count in (4, 5, 100):
        assert {a["credit_score"] for a in make_applicants(count, seed=3, run_id="x")} == scores
    assert set(PROFILES) == {"pre_approved", "conditional", "denied", "denied_compliance"}


def test_applicants_are_valid_api_payloads():
    for applicant in make_applicants(8, seed=1, run_id="abcd1234"):
        assert set(applicant) == {"name", "email", "loan_amount", "credit_score", "annual_income", "has_bankruptcy"}
        assert applicant["name"] and applicant["has_bankruptcy"] is False
        json.dumps(applicant)


# --- aggregation ---------------------------------------------------------------


def test_summary_counts_statuses_decisions_and_workers():
    results = [
        Result(0.010, "pre_approved", "worker-1"),
        Result(0.020, "pre_approved", "worker-2"),
        Result(0.030, "denied", "worker-1"),
        Result(1.500, "conditional", "worker-1", was_pending=True),
        Result(0.005, error="HTTP 409"),
        Result(0.006, error="HTTP 409"),
        Result(0.001, error="ConnectError"),
    ]
    summary = summarize(results, wall_seconds=2.0)
    assert summary.requests == 7
    assert summary.succeeded == 4
    assert summary.completed_after_pending == 1
    assert summary.failed == 3
    assert summary.errors == {"HTTP 409": 2, "ConnectError": 1}
    assert summary.decisions == {"pre_approved": 2, "denied": 1, "conditional": 1}
    assert summary.workers == {"worker-1": 3, "worker-2": 1}
    assert summary.throughput == 2.0
    # Failed requests do not count in the latency: their time says nothing about decisions.
    assert summary.latency_ms["max"] == pytest.approx(1500.0)
    assert summary.latency_ms["p50"] == pytest.approx(20.0)


def test_summary_of_nothing():
    summary = summarize([], wall_seconds=0.0)
    assert (summary.requests, summary.failed, summary.throughput) == (0, 0, 0.0)
    assert summary.latency_ms["p50"] is None


def test_benchmark_figures_are_medians_and_ratios():
    floor_runs = [summarize([Result(s)] * 10, wall) for s, wall in ((0.10, 1.0), (0.30, 2.0), (0.20, 4.0))]
    app_runs = [summarize([Result(0.05)] * 10, 0.5)]
    floor, app = headline(floor_runs), headline(app_runs)
    assert floor == pytest.approx({"throughput": 5.0, "p50_ms": 200.0, "p99_ms": 200.0})
    ratios = compare(floor, app)
    assert ratios == pytest.approx({"app_over_floor_throughput": 4.0, "app_over_floor_p50": 0.25, "app_p99_over_p50": 1.0})
    assert [check["met"] for check in check_targets(32, ratios)] == [True, True]
    floor0 = headline([summarize([Result(0.04)] * 10, 0.4)])
    with_floor0 = compare(floor, app, floor0)
    assert with_floor0["app_over_floor0_p50"] == pytest.approx(1.25)
    assert [check["met"] for check in check_targets(1, with_floor0)] == [True, False]  # 1.25x met; 50 ms > 20 ms
    assert check_targets(8, ratios) == []


def test_bench_count_defaults_depend_on_concurrency():
    assert bench.bench_count_for(1, None) == bench.BENCH_COUNT_SEQUENTIAL
    assert bench.bench_count_for(32, None) == bench.BENCH_COUNT
    assert bench.bench_count_for(1, 7) == 7


def test_levels_argument():
    assert load_test.parse_args(["--levels", "1, 8,32"]).levels == [1, 8, 32]
    assert load_test.parse_args([]).levels == [1, 32]
    with pytest.raises(SystemExit):
        load_test.parse_args(["--levels", "0"])


# --- the HTTP client against a mock app ----------------------------------------


def decided_body(request: httpx.Request, workflow_id: str, worker: str) -> dict:
    application = json.loads(request.content) if request.method == "POST" else {}
    return {
        "status": "decided",
        "workflow_id": workflow_id,
        "decision": "pre_approved",
        "message": {"title": "t", "message": "m", "next_steps": []},
        "application": application,
        "loan_to_income_ratio": 0.33,
        "processed_by": worker,
    }


def mock_client(handler) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler), base_url=BASE_URL)


async def test_decision_in_the_first_answer(monkeypatch):
    clock = [1000.0]  # a clock that moves only while the app "works" on the request
    monkeypatch.setattr(loans.time, "perf_counter", lambda: clock[0])

    def handler(request: httpx.Request) -> httpx.Response:
        assert (request.method, request.url.path) == ("POST", "/api/evaluate")
        clock[0] += 0.25
        return httpx.Response(200, json=decided_body(request, "loan-1", "worker-a"))

    async with mock_client(handler) as client:
        result = await apply(client, make_applicants(1, 1, "t")[0], timeout=5)
    assert result.error is None
    assert (result.decision, result.worker, result.was_pending) == ("pre_approved", "worker-a", False)
    assert result.latency == pytest.approx(0.25)  # the time from sending to the decision, no more, no less


async def test_pending_answer_is_polled_until_decided():
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"workflow_id": "loan-2", "status_url": "/api/applications/loan-2"})
        assert request.url.path == "/api/applications/loan-2"
        polls.append(request)
        if len(polls) < 3:
            return httpx.Response(202, json={"status": "pending"})
        return httpx.Response(200, json=decided_body(request, "loan-2", "worker-b"))

    async with mock_client(handler) as client:
        result = await apply(client, make_applicants(1, 1, "t")[0], timeout=5, poll_interval=0.01)
    assert len(polls) == 3
    assert result.error is None
    assert (result.decision, result.worker, result.was_pending) == ("pre_approved", "worker-b", True)


async def test_pending_past_the_timeout_is_an_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"workflow_id": "loan-3", "status_url": "/api/applications/loan-3"})
        return httpx.Response(202, json={"status": "pending"})

    async with mock_client(handler) as client:
        result = await apply(client, make_applicants(1, 1, "t")[0], timeout=0.1, poll_interval=0.01)
    assert result.error == "TimeoutError while pending"
    assert result.was_pending


async def test_connection_error_is_counted_by_class():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with mock_client(handler) as client:
        result = await apply(client, make_applicants(1, 1, "t")[0], timeout=5)
    assert result.error == "ConnectError"


async def test_run_counts_duplicates_as_errors():
    seen_emails = set()

    def handler(request: httpx.Request) -> httpx.Response:
        email = json.loads(request.content)["email"]
        if email in seen_emails:
            return httpx.Response(409, json={"error": "already applied"})
        seen_emails.add(email)
        worker = "worker-a" if len(seen_emails) % 2 else "worker-b"
        return httpx.Response(200, json=decided_body(request, f"loan-{email}", worker))

    applicants = make_applicants(6, 1, "dup")
    # The first two applicants apply twice: those second attempts are refused.
    async with mock_client(handler) as client:
        summary = await run_app(client, applicants + applicants[:2], 3, 5, Progress("test", 8, enabled=False))
    assert (summary.requests, summary.succeeded, summary.failed) == (8, 6, 2)
    assert summary.errors == {"HTTP 409": 2}
    assert summary.workers == {"worker-a": 3, "worker-b": 3}
    assert summary.decisions == {"pre_approved": 6}


def test_soak_rows_and_the_memory_of_the_watched_processes():
    import psutil

    usage = soak.process_usage({"tests": "pytest", "nothing": "no-such-command-line"}, [psutil.Process()])
    assert usage["tests"].rss_mb > 10 and usage["tests"].cpu_seconds > 0 and usage["nothing"] is None
    assert soak.cpu_ms_per_app(soak.Usage(100, 2.0), soak.Usage(100, 5.0), 1000) == 3.0
    assert soak.cpu_ms_per_app(soak.Usage(100, 2.0), soak.Usage(100, 1.0), 1000) is None  # restarted
    row = {
        "sent": 2000,
        "throughput": 55.25,
        "p50_ms": 500.0,
        "p99_ms": 900.5,
        "failed": 0,
        "rss_mb": {"temporal": 300.4, "worker": 120.0, "web": None, "mail": 40.2},
        "cpu_ms_per_app": {"temporal": 20.04, "worker": 25.0, "web": None, "mail": 2.75},
    }
    units, header, line = soak.format_soak_row(row, header=True).splitlines()
    assert units.split() == ["resident", "memory,", "MB", "CPU", "per", "application,", "ms"]
    assert header.split() == ["sent", "apps/s", "p50", "ms", "p99", "ms", "failed", *["temporal", "worker", "web", "mail"] * 2]
    assert line.split() == ["2000", "55.2", "500.0", "900.5", "0", "300", "120", "-", "40", "20.0", "25.0", "-", "2.8"]
    failing = soak.format_soak_row({**row, "failed": 2, "errors": {"HTTP 503": 1, "timeout": 1}}, header=False)
    assert failing.endswith("2.8  HTTP 503: 1  timeout: 1")  # what failed is on the block's line


def test_the_soak_watches_the_stack_behind_its_url_only(tmp_path):
    """With two `make run`s on the machine, the soak's memory is the one serving --url's:
    the processes under the supervisor (supervisord) of whatever listens on its port."""
    import subprocess
    import sys

    import psutil

    from tests.fixtures import wait_until
    from tools.chaos import free_port

    port = free_port()
    listener = f"import socket, time; s = socket.socket(); s.bind(('127.0.0.1', {port})); s.listen(); time.sleep(60)"
    # A stand-in supervisor: "supervisord" on its command line, the listener its child.
    supervisor = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {listener!r}])", "supervisord"]
    )
    try:
        watched = wait_until(
            lambda: soak.stack_processes(f"http://127.0.0.1:{port}"), timeout=10, what="the listener under its supervisor"
        )
        assert len(watched) == 1 and watched[0].ppid() == supervisor.pid  # the listener
        assert soak.stack_processes(f"http://127.0.0.1:{free_port()}") is None  # nobody listens there
    finally:
        for child in psutil.Process(supervisor.pid).children(recursive=True):
            child.kill()
        supervisor.kill()
        supervisor.wait(10)


def _event(kind, at: float, **fields):
    from google.protobuf.timestamp_pb2 import Timestamp
    from temporalio.api.history.v1 import HistoryEvent

    stamp = Timestamp()
    stamp.FromNanoseconds(int(round(at * 1e9)))
    return HistoryEvent(event_type=kind, event_time=stamp, **fields)


def _marker(at: float, data: dict):
    from temporalio.api.common.v1 import Payload, Payloads
    from temporalio.api.history.v1 import MarkerRecordedEventAttributes

    attributes = MarkerRecordedEventAttributes(marker_name="core_local_activity")
    attributes.details["data"].CopyFrom(Payloads(payloads=[Payload(data=json.dumps(data).encode())]))
    return _event(EventType.EVENT_TYPE_MARKER_RECORDED, at, marker_recorded_event_attributes=attributes)


def _stamp(at: float) -> dict:
    return {"seconds": int(at), "nanos": int(round((at - int(at)) * 1e9))}


async def test_the_breakdown_splits_the_first_task_by_its_local_activities():
    """The decision's task, split by its local activities' markers; the split is not added to the total."""
    t = 1_800_000_000.0
    steps = [
        ("validate_application", 0.0125, 0.0140),
        ("decide", 0.0126, 0.0150),
        ("persist_application", 0.0160, 0.0260),
        ("record_contact_preference", 0.5, 0.6),
    ]  # a later task's: not the decision's
    events = [
        _event(EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED, t + 0.010),
        _event(EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, t + 0.0101),
        _event(EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED, t + 0.012),
        _event(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, t + 0.030),
        *[
            _marker(
                t + 0.030, {"activity_type": kind, "original_schedule_time": _stamp(t + at), "complete_time": _stamp(t + done)}
            )
            for kind, at, done in steps[:3]
        ],
        _event(EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED, t + 0.4),
        _event(EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED, t + 0.7),
        _marker(
            t + 0.7, {"activity_type": steps[3][0], "original_schedule_time": _stamp(t + 0.5), "complete_time": _stamp(t + 0.6)}
        ),
    ]
    # The app's codec, which refuses plain payloads: the markers' details are the SDK's own, in plain JSON.
    client = types.SimpleNamespace(data_converter=types.SimpleNamespace(payload_codec=EncryptionCodec(os.urandom(32))))
    markers = await bench.first_task_markers(client, events)
    assert [m["activity_type"] for m in markers] == ["validate_application", "decide", "persist_application"]

    sample = bench.breakdown_of(t + 0.005, t + 0.035, events, markers)
    expected = {
        "task started -> validate and decide done": 3.0,
        "-> persist done (the record fsynced)": 11.0,
        "persist done -> task completed": 4.0,
        "task started -> task completed (local activities)": 18.0,
    }
    for label, ms in expected.items():
        assert sample[label] == pytest.approx(ms, abs=0.01), label  # event times are whole microseconds
    summary = bench.summarize_breakdown([sample])
    assert summary["total_ms"] == pytest.approx(30.0, abs=0.01)  # sent -> answered, the split not counted twice
    text = bench.format_benchmark(
        {"url": "http://app", "run_id": "r", "seed": 1, "repeat": 1, "levels": [], "breakdown": summary}
    )
    lines = text.splitlines()
    task_line = next(n for n, line in enumerate(lines) if "task started -> task completed" in line)
    assert lines[task_line + 2].startswith("    -> persist done (the record fsynced)")
    assert lines[task_line + 2].split()[-1] == "11.0"


# --- the order floor: the same steps done plainly -------------------------------------


async def test_the_order_floor_runs_each_step_once_and_counts_its_tasks(dev_server, tmp_path, monkeypatch):
    from tools.loadtest.order_floor import FloorWorkerProcess, run_plain_orders
    from tools.loadtest.order_floor_workflows import ORDER_STEPS, SHIPPING_STEPS
    from tools.loadtest.orders import tasks_per_order

    monkeypatch.setenv("TEMPORAL_ADDRESS", dev_server.client.service_client.config.target_host)
    task_queue = f"order-floor-test-{uuid.uuid4().hex[:8]}"
    worker = FloorWorkerProcess(task_queue, tmp_path)
    try:
        summary, workflow_ids = await run_plain_orders(dev_server.client, task_queue, count=3, concurrency=2)
    finally:
        worker.stop()
    assert (summary.succeeded, summary.failed) == (3, 0)
    steps = (*ORDER_STEPS, *SHIPPING_STEPS, "complete")
    assert sorted(path.name for path in tmp_path.glob("*.json")) == sorted(f"{w}.{s}.json" for w in workflow_ids for s in steps)
    counts = await tasks_per_order(dev_server.client, [(w, f"{w}-shipping") for w in workflow_ids])
    assert counts is not None and counts["activities"] == len(steps) and counts["markers"] == 0


def test_the_order_report_divides_every_process_and_the_server_and_workers_alone():
    from tools.loadtest.orders import cpu_over_plain, format_plain

    app = {"temporal": 100.0, "worker": 110.0, "web": 8.0, "mail": 6.0, "total": 224.0}
    plain = {"temporal": 80.0, "floor worker": 60.0, "total": 140.0}
    every_process, server_and_worker = cpu_over_plain(app, plain)
    assert every_process == pytest.approx(1.6) and server_and_worker == pytest.approx(1.5)
    assert cpu_over_plain(None, plain) == (None, None)  # no `make run` behind --url: nothing to divide
    report = {"orders": {"throughput": 10.0}, "cpu_ms_per_order": plain, "per_order": None}
    lines = format_plain(report, every_process, server_and_worker)
    assert any("app CPU/plain" in line and "1.60x" in line for line in lines)
    assert any("server+worker" in line and "1.50x" in line for line in lines)


def test_the_floors_bytecode_is_cached_even_where_python_writes_none(tmp_path, monkeypatch):
    """PYTHONDONTWRITEBYTECODE on this kind of machine: the sandboxed floor would compile its module
    for every workflow run, so the benchmark writes the cache itself."""
    import importlib.util
    import sys

    from tools.loadtest.bytecode import cache_bytecode

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    source = tmp_path / "floor_like.py"
    source.write_text("VALUE = 1\n")
    cache_bytecode(types.SimpleNamespace(__file__=str(source)))  # type: ignore[arg-type]
    assert os.path.getsize(importlib.util.cache_from_source(str(source))) > 0
