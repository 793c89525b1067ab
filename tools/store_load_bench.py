"""Loans at concurrency 32 on PostgreSQL against the JSON files, in the same run.

    .venv/bin/python -m tools.store_load_bench                  # 3 rounds of 300 applications per store
    .venv/bin/python -m tools.store_load_bench --count 500 --rounds 5

Starts, on free ports in a temporary folder: one Temporal dev server (as
`make run` does), one PostgreSQL (`tools/pg_server.py`, fsync on), and for each store
a worker process and the web app under gunicorn with its own data folder and
task queue (DATABASE_URL set for one of them only). Then `load_test.py` runs
against each in turn, alternating, so that both see the same machine load;
it prints decisions/s and p50/p99 per round and the medians, and the ratio.
Everything it started is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from tools import dev_server, pg_server
from tools.net import free_port

HERE = Path(__file__).resolve().parent.parent  # the repository root
BIN = Path(sys.executable).parent


def wait_for(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def start_dev_server(folder: Path, port: int, processes: list) -> str:
    log = open(folder / "temporal.log", "wb")
    processes.append(
        subprocess.Popen(
            dev_server.command(folder / "temporal.db", port, ui_port=free_port()),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    )
    return f"127.0.0.1:{port}"


def start_stack(name: str, folder: Path, temporal: str, env: dict, processes: list) -> str:
    """A worker and the web app for one store; the app's URL."""
    web_port = free_port()
    env = {
        **env,
        "DATA_DIR": str(folder / name),
        "TEMPORAL_ADDRESS": temporal,
        "WEB_PORT": str(web_port),
        "LOAN_TASK_QUEUE": f"bench-{name}-{uuid.uuid4().hex[:8]}",
        "ORDER_TASK_QUEUE": f"bench-orders-{name}",
        "SHIPPING_TASK_QUEUE": f"bench-shipping-{name}",
    }
    for command in (
        [sys.executable, "worker.py"],
        [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "starter:create_app()"],
    ):
        log = open(folder / f"{name}-{Path(command[1]).stem}.log", "wb")
        processes.append(
            subprocess.Popen(command, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    url = f"http://127.0.0.1:{web_port}"
    wait_for(lambda: ready(url), 60, f"the {name} web app")
    return url


def load(url: str, count: int, concurrency: int) -> dict:
    done = subprocess.run(
        [sys.executable, "load_test.py", "--url", url, "--count", str(count), "--concurrency", str(concurrency), "--json"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = json.loads(done.stdout)
    if report["failed"]:
        print(f"  {report['failed']} failed requests: {report['errors']}", flush=True)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=300, help="applications per store and round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if pg_server.bin_dir() is None:
        raise SystemExit(f"No PostgreSQL: {pg_server.INSTALL_HINT}")
    folder = Path(tempfile.mkdtemp(prefix="store-bench-", dir="/tmp"))
    folder.chmod(0o755)
    processes: list[subprocess.Popen] = []
    pg_data, pg_port = folder / "postgres", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "DATABASE_URL"))}
    env.update(
        PAYLOAD_KEY=base64.b64encode(os.urandom(32)).decode(),
        APP_SECRET_KEY=uuid.uuid4().hex,
        OPERATOR_TOKEN=uuid.uuid4().hex,
        WEB_WORKERS="2",
    )
    try:
        temporal = start_dev_server(folder, free_port(), processes)
        pg_server.init(pg_data)
        pg_server.start(pg_data, pg_port)
        urls = {
            "json": start_stack("json", folder, temporal, env, processes),
            "postgresql": start_stack(
                "postgresql", folder, temporal, {**env, "DATABASE_URL": pg_server.url(pg_data, pg_port)}, processes
            ),
        }
        for url in urls.values():
            load(url, 50, args.concurrency)  # warm up: connections, caches, the sandbox
        figures: dict[str, list[dict]] = {name: [] for name in urls}
        for round_number in range(1, args.rounds + 1):
            for name, url in urls.items() if round_number % 2 else reversed(urls.items()):
                report = load(url, args.count, args.concurrency)
                figures[name].append(report)
                print(
                    f"round {round_number} {name:10}: {report['throughput']:6.1f} decisions/s, "
                    f"p50 {report['latency_ms']['p50']:6.0f} ms, p99 {report['latency_ms']['p99']:6.0f} ms",
                    flush=True,
                )
        medians = {name: statistics.median(r["throughput"] for r in reports) for name, reports in figures.items()}
        for name, reports in figures.items():
            print(
                f"median {name:10}: {medians[name]:6.1f} decisions/s, "
                f"p50 {statistics.median(r['latency_ms']['p50'] for r in reports):6.0f} ms, "
                f"p99 {statistics.median(r['latency_ms']['p99'] for r in reports):6.0f} ms"
            )
        print(f"postgresql / json throughput: {medians['postgresql'] / medians['json']:.2f} (target: at least 0.90)")
    finally:
        for process in reversed(processes):
            try:
                os.killpg(process.pid, signal.SIGINT)
                process.wait(20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
        try:
            pg_server.stop(pg_data, "fast")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
