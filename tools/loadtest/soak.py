"""The soak (--soak): applications in blocks, with the memory and CPU per application of each process of the stack."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from tools.loadtest.loans import Applicants, Progress, http_client, operator_token, run_app
from tools.loadtest.stats import number

# --- soak: does throughput hold and memory stay bounded as applications accumulate? ---

# Which processes to watch, by a piece of their command line (all of `make run`'s).
SOAK_PROCESSES = {"temporal": "server start-dev", "worker": "worker.py", "web": "gunicorn", "mail": "mail_sink"}


def stack_processes(url: str) -> list | None:
    """The processes of the `make run` that serves `url`: all that the supervisor (supervisord)
    above the process listening on its port started; None when no such supervisor is found."""
    import psutil

    port = urlsplit(url).port or (443 if url.startswith("https:") else 80)
    try:
        listening = {
            c.pid
            for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
        }
    except psutil.Error:
        return None
    for pid in listening:
        with contextlib.suppress(psutil.Error):
            supervisors = [parent for parent in psutil.Process(pid).parents() if _is_supervisor(parent.cmdline())]
            if supervisors:
                return supervisors[0].children(recursive=True)
    return None


def _is_supervisor(command: list[str]) -> bool:
    """supervisord, as `make run` starts it (tools/stack.py)."""
    return any(Path(part).name == "supervisord" for part in command)


class Usage(NamedTuple):
    rss_mb: float
    cpu_seconds: float  # user + system since the process started


def process_usage(roles: dict[str, str] = SOAK_PROCESSES, processes: list | None = None) -> dict[str, Usage | None]:
    """Resident memory and CPU time of each role's processes, summed (gunicorn's master and workers).

    Pass the processes of the stack under test (`stack_processes`); without them,
    those of every `make run` (supervisord's descendants) on the machine, else all.
    """
    import psutil

    if processes is None:
        supervisors = [p for p in psutil.process_iter(["cmdline"]) if _is_supervisor(p.info["cmdline"] or [])]
        processes = list({child.pid: child for p in supervisors for child in p.children(recursive=True)}.values()) or [
            p for p in psutil.process_iter() if p.pid != os.getpid()
        ]
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
            summary = await run_app(
                http, applicants.batch(count), args.concurrency, args.timeout, Progress(f"block {first // args.every + 1}", count)
            )
            before, usage = usage, process_usage(processes=stack_processes(args.url))
            row = {
                "sent": first + count,
                "throughput": summary.throughput,
                "p50_ms": summary.latency_ms["p50"],
                "p99_ms": summary.latency_ms["p99"],
                "failed": summary.failed,
                "errors": dict(summary.errors),
                "rss_mb": {role: now and now.rss_mb for role, now in usage.items()},
                "cpu_ms_per_app": {role: cpu_ms_per_app(before[role], now, count) for role, now in usage.items()},
            }
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
    line = (
        f"{row['sent']:>9}  {number(row['throughput']):>8}  {number(row['p50_ms']):>8}  "
        f"{number(row['p99_ms']):>8}  {row['failed']:>6}  "
        + "  ".join(f"{number(row['rss_mb'][role], 0):>8}" for role in SOAK_PROCESSES)
        + "  "
        + "  ".join(f"{number(row['cpu_ms_per_app'][role]):>8}" for role in SOAK_PROCESSES)
        + "".join(f"  {error}: {count}" for error, count in row.get("errors", {}).items())
    )
    if not header:
        return line
    roles = "  ".join(f"{role:>8}" for role in SOAK_PROCESSES)
    return (
        f"{'':>47}  {'resident memory, MB':<{len(roles)}}  CPU per application, ms\n"
        f"{'sent':>9}  {'apps/s':>8}  {'p50 ms':>8}  {'p99 ms':>8}  {'failed':>6}  {roles}  {roles}\n{line}"
    )
