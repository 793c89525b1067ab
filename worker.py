"""The worker process: runs the loan and order workflows and their activities.

One process polls three task queues: loans, orders (with the customers'
rewards) and shipping — each a `Worker` sharing one client. Loans have their own
thread pool, the order process another; each worker's activity slots fit its
pool's threads (WORKER_ACTIVITY_THREADS per pool).

Start as many as you like (`python worker.py` in several terminals, or on
several machines sharing the data folder): they poll the same task queue and
share the work. Each prints its identity, which the load test reports per
application. Ctrl+C or SIGTERM finishes in-flight activities, then exits.

With WORKER_METRICS_PORT set, the worker serves the Temporal SDK's metrics
(workflow and activity counts, task latencies, slots, polls) in Prometheus
format at http://WORKER_METRICS_HOST:WORKER_METRICS_PORT/metrics (loopback by
default). Unset, none are served: `make run` sets 9464; a second worker on the
same host needs a port of its own, and one whose port is taken refuses to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypedDict

from temporalio.client import Client
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig
from temporalio.worker import PollerBehaviorSimpleMaximum, Worker

from activities import Activities, build_activities
from core import email_policy
from core.search_attributes import missing_search_attributes, registration_command
from core.settings import Settings, connect_temporal
from core.store import Store
from loans.model import SEARCH_ATTRIBUTES
from workflows import LOAN_WORKFLOWS, ORDER_WORKFLOWS, SHIPPING_WORKFLOWS

log = logging.getLogger("worker")


def worker_identity(settings: Settings) -> str:
    return settings.worker_identity or f"worker-{os.getpid()}@{socket.gethostname()}"


def build_worker(
    client: Client,
    settings: Settings,
    executor: ThreadPoolExecutor,
    identity: str,
    concurrency: int = 32,
    pollers: int = 8,
    store: Store | None = None,
    activities: Activities | None = None,
) -> Worker:
    """A worker with the loan workflow and activities, tuned for a burst of applications.

    `concurrency` is the executor's thread count, and the worker's activity
    slots plus local activity slots add up to it: activities are sync, so a slot
    without a thread would be a job waiting in the executor's queue while its
    timeout runs (the loan's local activities have 5 s). Most go to local
    activities: validate, decide, persist and notify are all local.
    """
    activities = activities or build_activities(settings, identity, store)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=LOAN_WORKFLOWS,
        activities=activities.for_loans(),
        activity_executor=executor,
        identity=identity,
        **slots(concurrency, activity_share=0.25),
        # The default 5 pollers leave tasks waiting in the queue under a burst;
        # more open polls let the worker pick up new work as soon as it exists.
        workflow_task_poller_behavior=PollerBehaviorSimpleMaximum(pollers),
        activity_task_poller_behavior=PollerBehaviorSimpleMaximum(pollers),
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


def build_order_workers(
    client: Client,
    settings: Settings,
    executor: ThreadPoolExecutor,
    identity: str,
    concurrency: int = 32,
    store: Store | None = None,
    activities: Activities | None = None,
) -> list[Worker]:
    """Workers for the order process: orders and rewards on one queue, shipping on its own.

    Both share the executor of `concurrency` threads, and their slots add up to
    it (see `build_worker`). The orders queue gets three quarters, half of them
    for local activities: an order records its progress (a local activity) about
    ten times and runs six activities, and a workflow task waits for its local
    activity to get a slot (with a quarter of the half, 4 slots at 78 ms a record
    held 32 orders in flight to about 5 orders/s). Shipping has three short
    steps per order: preparing is an activity, dispatch and delivery (since
    `shipping-carrier-steps-local`) local activities, so its slots are split in half.
    """
    activities = activities or build_activities(settings, identity, store)
    order_threads = max(2, min(concurrency - 2, concurrency * 3 // 4))  # shipping keeps at least 2
    return [
        Worker(
            client,
            task_queue=settings.order_task_queue,
            workflows=ORDER_WORKFLOWS,
            activities=activities.for_orders(),
            **slots(order_threads, activity_share=0.5),
            activity_executor=executor,
            identity=identity,
            graceful_shutdown_timeout=timedelta(seconds=10),
        ),
        Worker(
            client,
            task_queue=settings.shipping_task_queue,
            workflows=SHIPPING_WORKFLOWS,
            activities=activities.for_shipping(),
            **slots(max(2, concurrency - order_threads), activity_share=0.5),
            activity_executor=executor,
            identity=identity,
            graceful_shutdown_timeout=timedelta(seconds=10),
        ),
    ]


class Slots(TypedDict):
    max_concurrent_activities: int
    max_concurrent_local_activities: int


def slots(threads: int, activity_share: float) -> Slots:
    """Activity and local activity slots that add up to `threads` (at least one of each)."""
    activities = min(threads - 1, max(1, round(threads * activity_share)))
    return {"max_concurrent_activities": activities, "max_concurrent_local_activities": threads - activities}


def build_all_workers(
    client: Client, settings: Settings, identity: str, threads: int, pollers: int, stack: contextlib.ExitStack
) -> list[Worker]:
    """The process's workers: loans with a pool of `threads`, the order process with another."""
    loans = stack.enter_context(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loan-activity"))
    orders = stack.enter_context(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="order-activity"))
    activities = build_activities(settings, identity)
    return [
        build_worker(client, settings, loans, identity, concurrency=threads, pollers=pollers, activities=activities),
        *build_order_workers(client, settings, orders, identity, concurrency=threads, activities=activities),
    ]


def metrics_address(settings: Settings) -> str | None:
    """Where the SDK's Prometheus endpoint listens (WORKER_METRICS_HOST:WORKER_METRICS_PORT), or None when unset."""
    port = settings.worker_metrics_port
    if not port:
        return None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise SystemExit(f"WORKER_METRICS_PORT={port!r} is not a port number (1-65535; unset serves no metrics)")
    return f"{settings.worker_metrics_host}:{port}"


def metrics_runtime(address: str | None) -> Runtime | None:
    """An SDK runtime whose metrics are served in Prometheus format at `address`, or None for the default runtime.

    Counters keep the names Temporal's documentation gives them
    (`temporal_workflow_completed`, `temporal_activity_task_received`); durations
    are histograms in seconds named so (`temporal_workflow_task_execution_latency_seconds`),
    as the web app's are, instead of the SDK's default integer milliseconds.
    """
    if address is None:
        return None
    try:
        return Runtime(
            telemetry=TelemetryConfig(metrics=PrometheusConfig(bind_address=address, unit_suffix=True, durations_as_seconds=True))
        )
    except ValueError as err:  # the port is taken: say which variable to change
        raise SystemExit(
            f"Cannot serve the worker's metrics on {address} ({err}); set WORKER_METRICS_PORT to a free port, or unset it"
        ) from err


async def connect_with_retry(deadline_seconds: float, runtime: Runtime | None = None) -> Client:
    """Wait for the server: under `make run` the worker may start before it is up."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + deadline_seconds
    while True:
        try:
            return await connect_temporal(**({"runtime": runtime} if runtime else {}))
        except Exception as err:  # noqa: BLE001 - any connection failure is retried until the deadline
            if loop.time() > deadline:
                raise SystemExit(f"Temporal server not reachable: {err}") from err
            log.info("Waiting for the Temporal server (%s)", err)
            await asyncio.sleep(1)


async def main() -> None:
    settings = Settings.from_env()
    email_policy.configure(settings.email_retry_initial_seconds, settings.email_attempt_timeout_seconds)
    address = metrics_address(settings)
    runtime = metrics_runtime(address)
    if address:
        log.info("Worker metrics (Prometheus): http://%s/metrics", address)
    client = await connect_with_retry(settings.worker_connect_timeout, runtime)
    missing = await missing_search_attributes(client, SEARCH_ATTRIBUTES)
    if missing:
        names = ", ".join(key.name for key in missing)
        raise SystemExit(
            f"Namespace {client.namespace} lacks the search attributes {names}, and the server did not let this worker "
            f"register them. Register them, then start the worker again: {registration_command(client.namespace, missing)}"
        )
    identity = worker_identity(settings)
    threads, pollers = settings.worker_activity_threads, settings.worker_pollers
    with contextlib.ExitStack() as pools:
        workers = build_all_workers(client, settings, identity, threads, pollers, pools)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        async with contextlib.AsyncExitStack() as running:
            for worker in workers:
                await running.enter_async_context(worker)
            queues = ", ".join(repr(w.task_queue) for w in workers)
            log.info("Worker %s polling task queue %s (data in %s)", identity, queues, settings.data_dir)
            await stop.wait()
            log.info("Shutting down: finishing in-flight tasks")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(main())
        status = 0
    except SystemExit as refused:
        if isinstance(refused.code, str):  # why this worker will not start
            print(refused.code, file=sys.stderr)
        status = refused.code if isinstance(refused.code, int) else 0 if refused.code is None else 1
    # The SDK's native threads can call into Python while the interpreter finalizes and abort
    # a worker that stopped cleanly (PyGILState_Release, SIGABRT): leave without finalizing.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
