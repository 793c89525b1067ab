"""Crash tests under load: kill -9 the worker, the Temporal dev server and the web app mid-flight.

Real processes on loopback, started here: the dev server with its SQLite file,
three `worker.py` processes on one data folder, the web app under gunicorn, and
a local Stripe (tools/stripe_server.py; never killed: it is the provider, not
ours). Clients send loan applications and orders over HTTP, retrying each
with the same payload (orders with the same Idempotency-Key) whenever an
answer is lost; meanwhile faults are injected on a schedule. Afterwards,
checked from outside: every accepted application has exactly one record and
one decision; every order is in a final state with money and stock right
(tools/order_invariants.py); at the provider, read through Stripe's API, each
order has at most one payment that took money, refunded in full exactly when
the order did not complete; the stock equals the starting stock minus what was
delivered; no JSON file under the data folder is unreadable.

    python -m tools.chaos                       # make chaos: a longer run, prints its figures
    python -m tools.chaos --loans 200 --orders 20 --worker-kills 5 --duration 40

`test_chaos.py` runs a short one inside `make test`. Loopback only; every loop
is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import httpx

from tools import dev_server
from tools.net import free_port

HERE = Path(__file__).resolve().parent.parent  # the repository root
BIN = Path(sys.executable).parent
RETRYABLE = {502, 503, 504}


@dataclass
class Figures:
    accepted: int = 0
    decided: int = 0
    lost: int = 0
    duplicated: int = 0
    torn: int = 0
    orders: int = 0
    orders_final: int = 0
    charges_killed: int = 0  # charges running on a worker when it was killed
    charges_retried: int = 0  # orders whose charge took more attempts than its injected failures
    provider_charges: int = 0
    provider_refunds: int = 0
    order_problems: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    slowest_recovery: float = 0.0
    client_retries: int = 0

    def lines(self) -> list[str]:
        return [
            f"applications accepted   {self.accepted}",
            f"  decided, one record   {self.decided}",
            f"  lost                  {self.lost}",
            f"  duplicated            {self.duplicated}",
            f"orders placed           {self.orders}",
            f"  final, money and stock right  {self.orders_final}",
            f"  problems              {len(self.order_problems)}",
            f"  charges in flight at a kill    {self.charges_killed}",
            f"  charges retried after a fault  {self.charges_retried}",
            f"  at the provider       {self.provider_charges} payments taken, {self.provider_refunds} refunded in full",
            f"unreadable JSON files   {self.torn}",
            f"faults injected         {len(self.faults)} ({', '.join(sorted(set(self.faults)))})",
            f"client retries          {self.client_retries}",
            f"slowest recovery        {self.slowest_recovery:.1f} s (from a kill to the next answer that worked)",
        ]

    @property
    def ok(self) -> bool:
        return (
            self.accepted > 0
            and self.lost == 0
            and self.duplicated == 0
            and self.torn == 0
            and self.decided == self.accepted
            and not self.order_problems
            and self.orders_final == self.orders
        )


class Process:
    """One supervised process, started in its own process group so kill -9 takes its children too."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name, self.command, self.env = name, command, env
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen | None = None
        self.started_at = 0.0  # wall clock, seconds: Temporal's times are wall-clock times

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.popen = subprocess.Popen(
            self.command, env=self.env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started_at = time.time()

    def kill(self) -> None:
        """kill -9, the whole group (gunicorn's workers too)."""
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def stop(self) -> None:
        self.signal_stop()
        self.wait_stopped()

    def signal_stop(self) -> None:
        if self.popen and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)

    def wait_stopped(self) -> None:
        if self.popen and self.popen.poll() is None:
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


class Stack:
    """The dev server, the workers and the web app, on free loopback ports and one data folder."""

    def __init__(self, root: Path, workers: int = 3):
        self.root = root
        self.data_dir = root / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.temporal_port, self.web_port, self.stripe_port = free_port(), free_port(), free_port()
        self.operator_token = secrets.token_urlsafe(24)
        rules = json.loads((HERE / "rules.json").read_text())
        # Quick shipping, with a pickup wait in which a cancel can still win.
        rules["orders"]["shipping"] = {"prepare_seconds": 1, "transit_seconds": 0.5, "expedited_transit_seconds": 0.2}
        (root / "rules.json").write_text(json.dumps(rules))
        self.rules = rules
        env = {key: value for key, value in os.environ.items() if not key.startswith("TEMPORAL_")}
        self.env = {
            **env,
            "DATA_DIR": str(self.data_dir),
            "TEMPORAL_ADDRESS": f"127.0.0.1:{self.temporal_port}",
            "TEMPORAL_NAMESPACE": "default",
            "RULES_FILE": str(root / "rules.json"),
            "OPERATOR_TOKEN": self.operator_token,
            "APP_SECRET_KEY": secrets.token_hex(16),
            "PAYLOAD_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
            "WEB_PORT": str(self.web_port),
            "WEB_WORKERS": "2",
            "WORKER_CONNECT_TIMEOUT": "120",
            "PUBLIC_RATE_LIMIT": "off",  # one client sends hundreds of applications: a load test
            "STRIPE_API_KEY": "sk_test_chaos",
            "STRIPE_API_BASE": f"http://127.0.0.1:{self.stripe_port}",
        }
        logs = root / "logs"
        logs.mkdir(exist_ok=True)
        self.temporal = Process(
            "temporal",
            dev_server.command(self.data_dir / "temporal.db", self.temporal_port),
            self.env,
            logs,
        )
        self.workers = [
            Process(
                f"worker-{n}",
                [sys.executable, str(HERE / "worker.py")],
                {**self.env, "WORKER_IDENTITY": f"chaos-worker-{n}"},
                logs,
            )
            for n in range(workers)
        ]
        self.stripe = Process(
            "stripe",
            # A slow provider: each confirm answers a second after the money is taken, so a worker
            # killed while charging loses the answer of a charge that happened.
            [sys.executable, "-m", "tools.stripe_server", "--port", str(self.stripe_port), "--confirm-delay", "1"],
            self.env,
            logs,
        )
        self.web = Process("web", [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "starter:create_app()"], self.env, logs)
        self.base_url = f"http://127.0.0.1:{self.web_port}"

    def start(self) -> None:
        self.stripe.start()
        self.temporal.start()
        for worker in self.workers:
            worker.start()
        self.web.start()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200
                if ready and httpx.get(f"{self.env['STRIPE_API_BASE']}/v1/balance", timeout=2).status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the stack did not become ready; logs in {self.root / 'logs'}")

    def stop(self) -> None:
        """Every process asked to stop at once (a worker takes up to its graceful shutdown to finish), then waited for."""
        processes = [self.web, *self.workers, self.temporal, self.stripe]
        for process in processes:
            process.signal_stop()
        for process in processes:
            process.wait_stopped()


class Clients:
    """Loan applicants and order operators over HTTP; every request retried with the same payload."""

    def __init__(self, stack: Stack, figures: Figures, seed: int, deadline: float):
        self.stack, self.figures, self.deadline = stack, figures, deadline
        self.random = random.Random(seed)
        self.operator = {"Authorization": f"Bearer {stack.operator_token}"}
        self.run_id = secrets.token_hex(4)
        self.last_success = time.monotonic()
        self.emails: list[str] = []
        self.order_ids: list[str] = []
        self.injected: dict[str, int] = {}  # order ID -> the payment failures it asked for

    async def request(self, http: httpx.AsyncClient, method: str, path: str, **kwargs) -> httpx.Response | None:
        """The answer that worked; None when the run's deadline passed first."""
        while time.monotonic() < self.deadline:
            try:
                response = await http.request(method, path, timeout=15, **kwargs)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code not in RETRYABLE:
                self.last_success = time.monotonic()
                return response
            self.figures.client_retries += 1
            await asyncio.sleep(0.2)
        return None

    async def apply(self, http: httpx.AsyncClient, n: int) -> None:
        email = f"chaos-{self.run_id}-{n}@example.com"
        profile = self.random.choice(
            [(50_000, 750, 150_000), (45_000, 700, 100_000), (30_000, 650, 80_000), (30_000, 550, 80_000)]
        )
        body = {
            "name": f"Chaos Applicant {n}",
            "email": email,
            "loan_amount": profile[0],
            "credit_score": profile[1],
            "annual_income": profile[2],
            "has_bankruptcy": False,
        }
        response = await self.request(http, "POST", "/api/evaluate", json=body)
        if response is not None and response.status_code in (200, 202, 409):
            self.emails.append(email)  # accepted now, or by an earlier try whose answer was lost
        elif response is not None:
            raise AssertionError(f"application {n}: {response.status_code} {response.text}")

    async def order(self, http: httpx.AsyncClient, n: int) -> None:
        kind = n % 4  # auto-approved; needs review (approved); payment fails twice; cancelled once charged
        sku, quantity = ("LP-140", 1) if kind == 1 else ("CB-010", 1)
        body = {
            "customer_id": f"chaos-{self.run_id}",
            "customer_email": "chaos@example.com",
            "items": [{"sku": sku, "quantity": quantity}],
            "address": {"name": "Chaos", "street": "1 Fault Line", "city": "Crashville", "postal_code": "C9", "country": "UK"},
            "failures": [{"step": "payment", "times": 2}] if kind == 2 else [],
        }
        headers = {**self.operator, "Idempotency-Key": f"chaos-{self.run_id}-{n}"}
        response = await self.request(http, "POST", "/api/orders", json=body, headers=headers)
        if response is None:
            return
        assert response.status_code in (200, 201), (response.status_code, response.text)
        order_id = response.json()["order_id"]
        self.order_ids.append(order_id)
        self.injected[order_id] = 2 if kind == 2 else 0
        action = {1: ("approve", None, "awaiting_review"), 3: ("cancel", {"reason": "chaos"}, "charged")}.get(kind)
        while action and time.monotonic() < self.deadline:
            status = await self.request(http, "GET", f"/api/orders/{order_id}", headers=self.operator)
            if status is None or status.status_code != 200:
                await asyncio.sleep(0.2)
                continue
            order = status.json()
            if order["status"] in ("completed", "cancelled", "rejected", "failed"):
                return
            ready = order["status"] == "awaiting_review" if action[2] == "awaiting_review" else ("charged" in order["milestones"])
            if ready:
                done = await self.request(
                    http, "POST", f"/api/orders/{order_id}/{action[0]}", json=action[1], headers=self.operator
                )
                if done is not None and (done.status_code == 200 or (done.status_code == 409 and action[0] == "cancel")):
                    return  # a cancel's 409: too late (the parcel left), or done by a lost try
                # An approve's 409: done by a lost try, or not yet: the order's record can be ahead of its
                # workflow after a worker died mid-task (the task that wrote it runs again). Read it again:
                # the loop ends when the order is final, and asks again while it still says it waits.
            await asyncio.sleep(0.2)

    async def run(self, loans: int, orders: int, concurrency: int, duration: float) -> None:
        """Start the jobs evenly over `duration` seconds, so the faults land in the middle of the load."""
        limit = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def paced(index: int, work):
            await asyncio.sleep(max(0.0, started + index * duration / total - time.monotonic()))
            async with limit:
                await work

        async with httpx.AsyncClient(base_url=self.stack.base_url) as http:
            jobs = [self.apply(http, n) for n in range(loans)] + [self.order(http, n) for n in range(orders)]
            self.random.shuffle(jobs)
            total = len(jobs)
            await asyncio.gather(*(paced(index, job) for index, job in enumerate(jobs)))


async def stack_client(stack: Stack):
    """A Temporal client of the stack's, with its payload key (this process's environment is not the stack's)."""
    from core.codec import EncryptionCodec
    from core.settings import connect_temporal, parse_payload_key, payload_data_converter

    codec = EncryptionCodec(parse_payload_key(stack.env["PAYLOAD_KEY"], "PAYLOAD_KEY"))
    return await connect_temporal(target_host=stack.env["TEMPORAL_ADDRESS"], data_converter=payload_data_converter(codec))


async def charges_in_flight(stack: Stack, client, clients: Clients, closed: set[str]) -> dict[int, int]:
    """Which workers are running an order's charge now: worker index -> charges (from Temporal's pending
    activities). A killed worker's charge stays "started" until its timeout, under the identity its
    restarted process has again: only charges started since the worker's last start count."""
    from temporalio.api.enums.v1 import PendingActivityState

    from orders.model import order_workflow_id

    running: dict[int, int] = {}
    try:
        for order_id in [order_id for order_id in clients.order_ids if order_id not in closed]:
            described = await client.get_workflow_handle(order_workflow_id(order_id)).describe()
            if described.close_time is not None:
                closed.add(order_id)
            for pending in described.raw_description.pending_activities:
                identity = pending.last_worker_identity
                started = pending.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED  # not waiting to retry
                if started and pending.activity_type.name == "charge_payment" and identity.startswith("chaos-worker-"):
                    worker = int(identity.removeprefix("chaos-worker-"))
                    if pending.last_started_time.ToDatetime(tzinfo=UTC).timestamp() > stack.workers[worker].started_at:
                        running[worker] = running.get(worker, 0) + 1
    except Exception:  # noqa: BLE001 - the dev server may be down a moment (it is killed too): no answer this time
        return {}
    return running


async def worker_to_kill(stack: Stack, client, clients: Clients, closed: set[str], scheduled: int) -> tuple[int, int]:
    """The worker to kill and how many charges it is running: one running a charge when one is
    found within 3 s (the crash that matters most: money taken, the answer lost), else `scheduled`."""
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        running = await charges_in_flight(stack, client, clients, closed)
        if running:
            worker = max(running, key=running.__getitem__)
            popen = stack.workers[worker].popen
            if popen is not None and popen.poll() is None:
                return worker, running[worker]
        await asyncio.sleep(0.1)
    return scheduled, 0


async def inject_faults(
    stack: Stack,
    clients: Clients,
    figures: Figures,
    worker_kills: int,
    stop: asyncio.Event,
    duration: float,
    aimed_kills: int | None = None,
    fault_window: float = 1.0,
) -> None:
    """kill -9 evenly over the first `fault_window` of the load (default: all of it): the workers (one at
    a time), the dev server and the web app among them. The first `aimed_kills` worker kills (default:
    all) aim at a worker running a charge, if one is; each such charge then waits out its 12 s heartbeat
    timeout before its retry, and any other step a kill interrupts its 30 s attempt timeout, so the last
    kill sets when the run ends."""
    aimed_kills = worker_kills if aimed_kills is None else aimed_kills
    closed: set[str] = set()
    client = await stack_client(stack)
    plan = [("worker", n % len(stack.workers)) for n in range(worker_kills)]
    plan.insert(len(plan) // 2, ("temporal", 0))
    plan.insert(len(plan) // 2 + 1, ("web", 0))
    interval, started = duration * fault_window / (len(plan) + 1), time.monotonic()
    for number, (kind, index) in enumerate(plan, start=1):
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, started + number * interval - time.monotonic()))
            return  # the load finished first
        except TimeoutError:
            pass
        if kind == "worker" and stack.workers and aimed_kills > 0:
            aimed_kills -= 1
            index, charging = await worker_to_kill(stack, client, clients, closed, index)
            figures.charges_killed += charging
        process = {"worker": stack.workers[index] if stack.workers else None, "temporal": stack.temporal, "web": stack.web}[kind]
        if process is None:
            continue
        killed_at = time.monotonic()
        process.kill()
        figures.faults.append(kind)
        await asyncio.sleep(0.5 if kind == "worker" else 1.0)  # down for a moment
        process.start()
        # Recovery: the next answer that worked after the kill.
        while clients.last_success < killed_at and time.monotonic() < clients.deadline and not stop.is_set():
            await asyncio.sleep(0.1)
        if clients.last_success >= killed_at:
            figures.slowest_recovery = max(figures.slowest_recovery, clients.last_success - killed_at)


def unreadable_json_files(data_dir: Path) -> list[Path]:
    broken = []
    for path in data_dir.rglob("*.json"):
        try:
            json.loads(path.read_text())
        except FileNotFoundError:
            continue  # gone since the listing: an index's journal is removed once applied (core/store/files.py)
        except (ValueError, UnicodeDecodeError):
            broken.append(path)
    return broken


async def check(stack: Stack, clients: Clients, figures: Figures, settle_seconds: float) -> None:
    """From outside, after the load: records, orders, stock, files."""
    from temporalio.client import WorkflowExecutionStatus

    from core.store.files import JsonStore
    from loans.model import APPLICATIONS
    from orders.model import OrderStatus, order_workflow_id

    store = JsonStore(stack.data_dir)
    figures.accepted = len(clients.emails)
    figures.orders = len(clients.order_ids)
    deadline = time.monotonic() + settle_seconds
    while True:
        by_email: dict[str, int] = {}
        for record in store.list_all(APPLICATIONS):
            if record.get("decision"):
                email = record["application"]["email"]
                by_email[email] = by_email.get(email, 0) + 1
        missing = [email for email in clients.emails if email not in by_email]
        if not missing or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    figures.lost = len(missing)
    figures.duplicated = sum(1 for email in clients.emails if by_email.get(email, 0) > 1)
    figures.decided = sum(1 for email in clients.emails if by_email.get(email) == 1)

    figures.torn = len(unreadable_json_files(stack.data_dir))
    if not clients.order_ids:
        return
    from tools.order_invariants import order_problems, provider_payments, stock_problems

    client = await stack_client(stack)
    problems: list[str] = []
    for order_id in clients.order_ids:  # until each has closed, or the deadline (then it is a problem below)
        handle = client.get_workflow_handle(order_workflow_id(order_id))
        while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
    # Every order is closed now (or counted as a problem): the provider's records are final.
    at_provider = provider_payments(stack.env["STRIPE_API_KEY"], stack.env["STRIPE_API_BASE"])
    for order_id in clients.order_ids:
        found = await order_problems(client, store, order_id, provider=at_provider.get(order_id, []))
        problems += found
        figures.orders_final += not found
        taken = [payment for payment in at_provider.get(order_id, []) if payment[0] == "succeeded"]
        figures.provider_charges += len(taken)
        figures.provider_refunds += sum(1 for _, amount, refunded in taken if refunded == amount)
        if not found:
            status = await client.get_workflow_handle(order_workflow_id(order_id), result_type=OrderStatus).result()
            figures.charges_retried += status.attempts.get("charge_payment", 1) > clients.injected[order_id] + 1
    problems += stock_problems(store, {item["sku"]: item["stock"] for item in stack.rules["orders"]["catalog"]})
    figures.order_problems = problems


async def run(
    root: Path,
    loans: int,
    orders: int,
    worker_kills: int,
    concurrency: int,
    seed: int,
    time_limit: float,
    duration: float,
    aimed_kills: int | None = None,
    fault_window: float = 1.0,
) -> Figures:
    figures = Figures()
    stack = Stack(root)
    stack.start()
    try:
        clients = Clients(stack, figures, seed, deadline=time.monotonic() + time_limit)
        stop = asyncio.Event()
        faults = asyncio.create_task(
            inject_faults(stack, clients, figures, worker_kills, stop, duration, aimed_kills, fault_window)
        )
        await clients.run(loans, orders, concurrency, duration)
        stop.set()
        await faults
        await check(stack, clients, figures, settle_seconds=min(90.0, time_limit))
    finally:
        stack.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loans", type=int, default=1000)
    parser.add_argument("--orders", type=int, default=60)
    parser.add_argument("--worker-kills", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds over which the load and faults spread")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=600.0, help="the run stops trying after this")
    parser.add_argument("--root", type=Path, help="where the data folder and logs go (default: a new temp folder)")
    args = parser.parse_args()
    import tempfile

    root = args.root or Path(tempfile.mkdtemp(prefix="chaos-"))
    started = time.monotonic()
    figures = asyncio.run(
        run(root, args.loans, args.orders, args.worker_kills, args.concurrency, args.seed, args.time_limit, args.duration)
    )
    print(f"chaos run in {root} ({time.monotonic() - started:.0f} s)")
    for line in figures.lines():
        print("  " + line)
    for problem in figures.order_problems[:20]:
        print("  problem: " + problem)
    print("OK: nothing lost, nothing duplicated, nothing torn" if figures.ok else "FAILED")
    sys.exit(0 if figures.ok else 1)


if __name__ == "__main__":
    main()
