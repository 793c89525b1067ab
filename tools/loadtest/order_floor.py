"""The order floor: the same order steps done plainly, run beside this app's orders in one load test.

    .venv/bin/python -m tools.loadtest.order_floor worker --task-queue Q --data DIR   # the floor's worker process

`load_test.py --orders` starts the worker as a process of its own (so its CPU
is measured apart from the load test's), then starts and awaits the plain
orders (order_floor_workflows.py) at the same concurrency on the same server,
and reads the server's and the worker's CPU per order and the tasks per order
from their histories, as it does for the app's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.worker import Worker

from core.settings import connect_temporal
from tools.loadtest import order_floor_workflows
from tools.loadtest.bytecode import cache_bytecode
from tools.loadtest.loans import Progress, run_concurrently
from tools.loadtest.order_floor_workflows import PlainOrder, PlainOrderWorkflow, PlainShippingWorkflow, StepWrite
from tools.loadtest.stats import Result, Summary, summarize


class StepWriter:
    """The floor's one activity: a step's record, one JSON file, written atomically and fsynced."""

    def __init__(self, folder: Path):
        self.folder = folder

    @activity.defn(name="write_step")
    def write_step(self, request: StepWrite) -> None:
        path = self.folder / f"{request.order_id}.{request.step}.json"
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            file.write(json.dumps({"order_id": request.order_id, "step": request.step, "at": time.time()}).encode())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)


async def serve(task_queue: str, folder: Path) -> None:
    """The floor's worker: orders on `task_queue`, shipments on `task_queue`-shipping, defaults elsewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    client = await connect_temporal()
    writer = StepWriter(folder)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(max_workers=32) as executor:
        common: dict[str, Any] = {"activities": [writer.write_step], "activity_executor": executor}
        async with (
            Worker(client, task_queue=task_queue, workflows=[PlainOrderWorkflow], **common),
            Worker(client, task_queue=f"{task_queue}-shipping", workflows=[PlainShippingWorkflow], **common),
        ):
            print("ready", flush=True)
            await stop.wait()


class FloorWorkerProcess:
    """The floor's worker as a process of its own, started and stopped by the load test."""

    def __init__(self, task_queue: str, folder: Path):
        cache_bytecode(order_floor_workflows)
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tools.loadtest.order_floor", "worker", "--task-queue", task_queue, "--data", str(folder)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.popen.stdout is not None
        if self.popen.stdout.readline().strip() != "ready":
            raise SystemExit("the order floor's worker did not start (is TEMPORAL_ADDRESS the app's server?)")

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        self.popen.wait(30)


async def run_plain_orders(client: Client, task_queue: str, count: int, concurrency: int) -> tuple[Summary, list[str]]:
    """`count` plain orders started and awaited at `concurrency`; the summary and their workflow IDs."""
    workflow_ids: list[str] = []

    async def one(n: int) -> Result:
        workflow_id = f"{task_queue}-{uuid.uuid4().hex[:12]}"
        workflow_ids.append(workflow_id)
        started = time.perf_counter()
        try:
            order = PlainOrder(workflow_id, f"{task_queue}-shipping")
            await client.execute_workflow(PlainOrderWorkflow.run, order, id=workflow_id, task_queue=task_queue)
        except Exception as err:
            return Result(time.perf_counter() - started, error=type(err).__name__)
        return Result(time.perf_counter() - started, decision="completed")

    results, wall = await run_concurrently(range(count), concurrency, one, Progress("plain orders", count))
    return summarize(results, wall), workflow_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("role", choices=["worker"])
    parser.add_argument("--task-queue", required=True)
    parser.add_argument("--data", required=True, type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.task_queue, args.data))


if __name__ == "__main__":
    main()
