"""The loan half of the load test: applicants of every decision, sent to /api/evaluate at a given concurrency."""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import httpx

from tools.loadtest.stats import Result, Summary, summarize

DEFAULT_URL = "http://127.0.0.1:5001"
POLL_INTERVAL = 0.2
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


async def workflows_of_refused(emails: Sequence[str]) -> int | None:
    """How many of the applications answered 5xx ("not submitted") have a workflow after all: each one
    a false answer. None when the app's secret (APP_SECRET_KEY, or the data folder's) is unknown here."""
    secret = os.environ.get("APP_SECRET_KEY", "").strip()
    path = os.path.join(os.environ.get("DATA_DIR", "data"), "secrets", "app_secret.key")
    if not secret and os.path.exists(path):
        with open(path) as file:
            secret = file.read().strip()
    if not secret:
        return None
    if not emails:
        return 0
    from temporalio.service import RPCError, RPCStatusCode

    from core.settings import connect_temporal
    from loans.model import loan_workflow_id

    client = await connect_temporal()
    found = 0
    for email in emails:
        try:
            await client.get_workflow_handle(loan_workflow_id(email, secret.encode())).describe()
            found += 1
        except RPCError as err:
            if err.status != RPCStatusCode.NOT_FOUND:
                raise
    return found


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
