"""The orders mode (--orders): auto-approved orders placed through the API and followed to their end."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
import uuid
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client

from core.settings import connect_temporal
from tools.loadtest.bench import BENCH_COUNT, floor_worker, run_floor
from tools.loadtest.loans import Progress, operator_token, run_concurrently
from tools.loadtest.soak import Usage, process_usage, stack_processes
from tools.loadtest.stats import Result, number, ratio, summarize

# --- orders: placed through the API and followed to the end ------------------------

FINAL_ORDER = ("completed", "cancelled", "rejected", "failed")


async def place_and_follow(
    client: httpx.AsyncClient, body: dict[str, Any], timeout: float, poll_interval: float, placed_ids: list[str] | None = None
) -> tuple[Result, int]:
    """One order from placing to a final status, polling like a tracker page; the result and its retries."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            placed = await client.post("/api/orders", json=body)
            if placed.status_code != 201:
                return Result(time.perf_counter() - started, error=f"HTTP {placed.status_code}"), 0
            if placed_ids is not None:
                placed_ids.append(placed.json()["order_id"])
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
    placed_ids: list[str] = []

    async def one(n: int) -> Result:
        nonlocal retries
        body = {
            "customer_id": f"load-{run_id}-{n % 50}",
            "customer_email": "load@example.com",
            "items": [{"sku": "CB-010", "quantity": 1}],
            "address": {"name": "Load Test", "street": "1 Bench Road", "city": "Testville", "postal_code": "T1", "country": "UK"},
        }
        result, seen = await place_and_follow(http, body, args.timeout, args.poll_interval, placed_ids)
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
    tasks = await tasks_per_order(client, placed_ids[:HISTORY_SAMPLE])
    task_queue = f"bench-floor-{uuid.uuid4()}"
    async with floor_worker(client, task_queue):
        floor = await run_floor(client, task_queue, BENCH_COUNT, args.concurrency, Progress("floor 1", BENCH_COUNT))
    return {
        "orders": orders._asdict(),
        "retries": retries,
        "floor": floor._asdict(),
        "orders_over_floor": ratio(orders.throughput, floor.throughput),
        "cpu_ms_per_order": cpu,
        "per_order": tasks,
    }


# Orders whose histories (the order's and its shipment's) are read for the counts per order.
HISTORY_SAMPLE = 20
COUNTED_EVENTS = {
    "workflow tasks": EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
    "activities": EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED,
    "markers": EventType.EVENT_TYPE_MARKER_RECORDED,  # local activities and patch markers
    "events": None,
}


async def tasks_per_order(client: Client, order_ids: list[str]) -> dict[str, float] | None:
    """Median workflow tasks, activities, markers and history events of an order with its shipment."""
    counts: dict[str, list[int]] = {name: [] for name in COUNTED_EVENTS}
    for order_id in order_ids:
        events: list = []
        for workflow_id in (f"order-{order_id}", f"order-{order_id}-shipping"):
            with contextlib.suppress(Exception):  # an order stopped before its shipment has none
                events += (await client.get_workflow_handle(workflow_id).fetch_history()).events
        for name, event_type in COUNTED_EVENTS.items():
            counts[name].append(len(events) if event_type is None else sum(e.event_type == event_type for e in events))
    return {name: statistics.median(values) for name, values in counts.items()} if order_ids else None


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
        ]
    )
