"""The orders mode (--orders): auto-approved orders placed through the API and followed to their end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from core.settings import connect_temporal
from tools.loadtest.bench import BENCH_COUNT, floor_worker, run_floor
from tools.loadtest.loans import Progress, operator_token, run_concurrently
from tools.loadtest.order_floor import FloorWorkerProcess, run_plain_orders
from tools.loadtest.soak import SOAK_PROCESSES, Usage, process_usage, stack_processes
from tools.loadtest.stats import Result, number, ratio, summarize

# --- orders: placed through the API and followed to the end ------------------------

FINAL_ORDER = ("completed", "cancelled", "rejected", "failed")


TRANSPORT_RETRIES = 3  # a kept-alive connection the server closed just as it was reused: sent again


async def send(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """The request, sent again on a connection lost before an answer; safe for GETs, and for the
    order's POST, which carries an Idempotency-Key (the same order, not a second)."""
    for attempt in range(TRANSPORT_RETRIES):
        try:
            return await client.request(method, url, **kwargs)
        except httpx.TransportError:
            if attempt == TRANSPORT_RETRIES - 1:
                raise
    raise AssertionError("unreachable")


async def place_and_follow(
    client: httpx.AsyncClient,
    body: dict[str, Any],
    timeout: float,
    poll_interval: float,
    placed_ids: list[str] | None = None,
    key: str | None = None,
) -> tuple[Result, int]:
    """One order from placing to a final status, polling like a tracker page; the result and its retries."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            placed = await send(client, "POST", "/api/orders", json=body, headers={"Idempotency-Key": key} if key else None)
            if placed.status_code not in (200, 201):  # 200: placed by the attempt whose answer was lost
                return Result(time.perf_counter() - started, error=f"HTTP {placed.status_code}"), 0
            if placed_ids is not None:
                placed_ids.append(placed.json()["order_id"])
            status_url = placed.json()["status_url"]
            while True:
                await asyncio.sleep(poll_interval)
                order = (await send(client, "GET", status_url)).json()
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
    placed_ids: list[str] = []

    async def one(n: int) -> Result:
        nonlocal retries
        body = {
            "customer_id": f"load-{run_id}-{n % 50}",
            "customer_email": "load@example.com",
            "items": [{"sku": "CB-010", "quantity": 1}],
            "address": {"name": "Load Test", "street": "1 Bench Road", "city": "Testville", "postal_code": "T1", "country": "UK"},
        }
        result, seen = await place_and_follow(http, body, args.timeout, args.poll_interval, placed_ids, key=f"load-{run_id}-{n}")
        retries += seen
        return result

    headers = {"Authorization": f"Bearer {operator_token(args.token)}"}  # orders are for operators only
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    stack = stack_processes(args.url)
    before = process_usage(processes=stack) if stack else None
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=args.timeout, headers=headers) as http:
        results, wall = await run_concurrently(range(args.orders), args.concurrency, one, Progress("orders", args.orders))
    orders = summarize(results, wall)
    cpu = cpu_ms_per_order(before, process_usage(processes=stack), orders.succeeded) if stack and before else None
    client = await connect_temporal()
    tasks = await tasks_per_order(client, [(f"order-{i}", f"order-{i}-shipping") for i in placed_ids[:HISTORY_SAMPLE]])
    plain = await order_floor(client, args.orders, args.concurrency, stack)
    task_queue = f"bench-floor-{uuid.uuid4()}"
    async with floor_worker(client, task_queue):
        floor = await run_floor(client, task_queue, BENCH_COUNT, args.concurrency, Progress("floor 1", BENCH_COUNT))
    every_process, server_and_worker = cpu_over_plain(cpu, plain["cpu_ms_per_order"])
    return {
        "orders": orders._asdict(),
        "retries": retries,
        "floor": floor._asdict(),
        "orders_over_floor": ratio(orders.throughput, floor.throughput),
        "cpu_ms_per_order": cpu,
        "per_order": tasks,
        "plain": plain,
        "cpu_over_plain": every_process,
        "server_and_worker_over_plain": server_and_worker,
    }


def cpu_over_plain(app: dict[str, float] | None, plain: dict[str, float] | None) -> tuple[float | None, float | None]:
    """The app's CPU per order over the plain steps': every process of each, and (issue 30's measure)
    the Temporal server and the workers only, since the plain steps have no web app or mail server."""
    app, plain = app or {}, plain or {}
    app_core = sum(app.get(role, 0.0) for role in ("temporal", "worker")) or None
    plain_core = sum(plain.get(role, 0.0) for role in ("temporal", "floor worker")) or None
    return ratio(app.get("total"), plain.get("total")), ratio(app_core, plain_core)


async def order_floor(client: Client, count: int, concurrency: int, stack: list | None) -> dict[str, Any]:
    """The same steps done plainly (order_floor.py), on the same server at the same concurrency:
    throughput, the server's and the floor worker's CPU per order, and tasks per order."""
    task_queue = f"order-floor-{uuid.uuid4().hex[:8]}"
    # The server's processes (when a `make run` is behind --url) and the floor's worker, by their command lines.
    roles = {"temporal": SOAK_PROCESSES["temporal"], "floor worker": "tools.loadtest.order_floor"}
    with tempfile.TemporaryDirectory() as folder:
        worker = FloorWorkerProcess(task_queue, Path(folder))
        try:
            import psutil

            processes = [*(stack or []), psutil.Process(worker.popen.pid)]
            before = process_usage(roles, processes)
            summary, workflow_ids = await run_plain_orders(client, task_queue, count, concurrency)
            after = process_usage(roles, processes)
        finally:
            worker.stop()
    groups = [(workflow_id, f"{workflow_id}-shipping") for workflow_id in workflow_ids[:HISTORY_SAMPLE]]
    return {
        "orders": summary._asdict(),
        "cpu_ms_per_order": cpu_ms_per_order(before, after, summary.succeeded),
        "per_order": await tasks_per_order(client, groups),
    }


# Orders whose histories (the order's and its shipment's) are read for the counts per order.
HISTORY_SAMPLE = 20
COUNTED_EVENTS = {
    "workflow tasks": EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    "activities": EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    "markers": EventType.EVENT_TYPE_MARKER_RECORDED,  # local activities and patch markers
    "events": None,
    "history bytes": None,  # the histories' size: what the server stores and sends, the worker encodes
}


async def tasks_per_order(client: Client, orders: Sequence[tuple[str, ...]]) -> dict[str, float] | None:
    """Median workflow tasks, activities, markers, history events and history bytes of an order with
    its shipment (each order given by its workflow IDs)."""
    counts: dict[str, list[int]] = {name: [] for name in COUNTED_EVENTS}
    for workflow_ids in orders:
        events: list = []
        for workflow_id in workflow_ids:
            with contextlib.suppress(Exception):  # an order stopped before its shipment has none
                events += (await client.get_workflow_handle(workflow_id).fetch_history()).events
        for name, event_type in COUNTED_EVENTS.items():
            if name == "history bytes":
                counts[name].append(sum(event.ByteSize() for event in events))
            else:
                counts[name].append(len(events) if event_type is None else sum(e.event_type == event_type for e in events))
    return {name: statistics.median(values) for name, values in counts.items()} if orders else None


def cpu_ms_per_order(before: dict[str, Usage | None], after: dict[str, Usage | None], orders: int) -> dict[str, float] | None:
    """CPU milliseconds per completed order, by process of the stack (and in all)."""
    if not orders:
        return None
    per_role = {}
    for role, start in before.items():
        end = after.get(role)
        if start is not None and end is not None:
            per_role[role] = (end.cpu_seconds - start.cpu_seconds) * 1000 / orders
    return {**per_role, "total": sum(per_role.values())}


def format_orders(report: dict[str, Any], concurrency: int) -> str:
    orders, floor = report["orders"], report["floor"]
    return "\n".join(
        [
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
            "  CPU ms/order  "
            + (
                "  ".join(f"{role} {value:.0f}" for role, value in report["cpu_ms_per_order"].items())
                if report.get("cpu_ms_per_order")
                else "(no make run stack found behind --url)"
            ),
            "  per order     "
            + ("  ".join(f"{name} {value:g}" for name, value in report["per_order"].items()) if report.get("per_order") else "-")
            + "  (medians: the order and its shipment)",
            *format_plain(report.get("plain"), report.get("cpu_over_plain"), report.get("server_and_worker_over_plain")),
        ]
    )


def format_plain(plain: dict[str, Any] | None, cpu_over_plain: float | None, core_over_plain: float | None = None) -> list[str]:
    if not plain:
        return []
    cpu, per_order = plain["cpu_ms_per_order"], plain["per_order"]
    return [
        "",
        f"  plain orders  {plain['orders']['throughput']:>7.2f} orders/s  (the same steps done plainly: same server, same run)",
        "  CPU ms/order  " + ("  ".join(f"{role} {value:.0f}" for role, value in cpu.items()) if cpu else "-"),
        "  per order     " + ("  ".join(f"{name} {value:g}" for name, value in per_order.items()) if per_order else "-"),
        f"  app CPU/plain {number(cpu_over_plain, 2, 'x'):>8}   (every process of the app; target <= 1.5x)",
        f"  server+worker {number(core_over_plain, 2, 'x'):>8}   (the Temporal server and the workers only, as issue 30 measures)",
    ]
