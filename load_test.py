"""Load test and benchmark of the loan app's JSON API.

Load test (the default): sends --count applications to POST /api/evaluate with
--concurrency requests in flight, waits for each decision and prints successes,
errors, decisions, latency percentiles, throughput and which worker decided
each application (`processed_by`, which the app shows operators only: the
load test sends the operator token when it finds one, see --token), so adding a
worker shows in the table. The token also exempts its requests from the public
endpoints' abuse limits; without one, start the stack with PUBLIC_RATE_LIMIT=off
(docs/security.md), or the limits answer most of the applications with 429.

Benchmark (--benchmark): for each --levels concurrency, first measures the
floor, a bare workflow with one no-op activity started and awaited with
`client.execute_workflow` on an in-process worker with default settings, on
the same Temporal server; then the app at the same concurrency. The floor (and
the breakdown's histories) reach Temporal directly, at TEMPORAL_ADDRESS
(default localhost:7233, with the app's TEMPORAL_* settings and payload key),
not through --url: point both at the same stack. It prints both
and their ratios next to the targets (printed, never asserted).

--breakdown N sends N applications one at a time and prints where their time
goes (medians), from the client's clock and each history's timestamps; the
decision's workflow task is split by its local activities' markers (when each
completed, on the worker's clock), decrypted with the client's codec.

Orders (--orders N): places N auto-approved orders through the API (with the
operator's token) at --concurrency, follows each by polling its status once a
second until it ends, and prints orders/s, p50/p99 from placing to the end and
the step retries seen, beside the one-activity floor measured in the same run
(on TEMPORAL_ADDRESS, as for --benchmark). Run the app with short shipping
times for it (a copy of rules.json, RULES_FILE).

Soak (--soak TOTAL --every BLOCK): sends TOTAL applications in blocks and
prints, per block, the throughput, p50/p99, and the resident memory and the CPU
per application of the dev server, the worker, the web and the mail sink
processes (those of the `make run` serving --url, by their command lines), so a
decline, unbounded memory or a growing cost shows as applications accumulate.

Latency is the time from sending the POST to having the decision: when the app
answers 202 (decision not ready yet), the status URL is polled every 0.2 s and
the request counts as "completed after pending". Percentiles use the nearest
rank: p95 is the smallest latency that at least 95% of requests do not exceed.
Throughput is decisions per second of wall time.

The app refuses a second application from the same email for 7 days, so every
run sends new applicants (load-<run id>-<n>@example.com, the run id random);
--seed fixes the mix of profiles and names, which covers all four decisions.

    python load_test.py --count 500 --concurrency 32
    python load_test.py --benchmark --levels 1,32 --repeat 3 --json
    python load_test.py --soak 50000 --every 1000 --concurrency 32
    python load_test.py --orders 200 --concurrency 32

Exit status 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Sequence

from tools.loadtest.bench import BENCH_COUNT, BENCH_COUNT_SEQUENTIAL, benchmark, format_benchmark
from tools.loadtest.loans import DEFAULT_URL, Applicants, Progress, apply, http_client, run_concurrently, workflows_of_refused
from tools.loadtest.orders import format_orders, operator_token, run_orders
from tools.loadtest.soak import soak
from tools.loadtest.stats import Summary, format_summary, summarize

# --- command line --------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def level_list(text: str) -> list[int]:
    try:
        levels = [positive_int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels:
        raise argparse.ArgumentTypeError(f"expected concurrency levels like 1,32, got {text!r}")
    return levels


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=positive_int, default=100, help="applications to send (default 100)")
    parser.add_argument("--concurrency", type=positive_int, default=16, help="requests in flight (default 16)")
    parser.add_argument(
        "--url",
        default=os.environ.get("LOAD_TEST_URL", DEFAULT_URL),
        help=f"the app's base URL (default $LOAD_TEST_URL or {DEFAULT_URL}); --benchmark's and --orders'"
        " floors reach Temporal at $TEMPORAL_ADDRESS (default localhost:7233), not through it",
    )
    parser.add_argument("--seed", type=int, default=1, help="fixes the mix of applicant profiles (default 1)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per application, polling included (default 30)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="compare the app with a bare Temporal workflow on the same server: the floor connects to"
        " $TEMPORAL_ADDRESS (default localhost:7233), the app's server, not --url",
    )
    parser.add_argument("--levels", type=level_list, default="1,32", help="benchmark concurrency levels (default 1,32)")
    parser.add_argument(
        "--bench-count",
        type=positive_int,
        help=f"benchmark requests per level and run ({BENCH_COUNT_SEQUENTIAL} at concurrency 1, else {BENCH_COUNT})",
    )
    parser.add_argument(
        "--repeat", type=positive_int, default=1, help="benchmark runs per level; figures are their median (default 1)"
    )
    parser.add_argument(
        "--orders",
        type=positive_int,
        metavar="N",
        help="place N auto-approved orders and follow each to the end; compare with the floor"
        " (on $TEMPORAL_ADDRESS, default localhost:7233, not --url)",
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="with --orders: seconds between status reads of one order (default 1, a tracker page's pace)",
    )
    parser.add_argument(
        "--token",
        help="the operator token (default $OPERATOR_TOKEN or the data folder's): needed with"
        " --orders; for applications it shows which worker decided each",
    )
    parser.add_argument(
        "--soak",
        type=positive_int,
        metavar="TOTAL",
        help="send TOTAL applications in blocks; print throughput, latency and memory per block",
    )
    parser.add_argument(
        "--every", type=positive_int, default=1000, metavar="BLOCK", help="with --soak: applications per block (default 1000)"
    )
    parser.add_argument(
        "--breakdown",
        type=int,
        default=20,
        metavar="N",
        help="after the benchmark, where the time of N sequential applications goes (default 20; 0 for none)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run_id = uuid.uuid4().hex[:8]
    if args.orders:
        report = asyncio.run(run_orders(args, run_id))
        print(json.dumps(report, indent=2) if args.json else format_orders(report, args.concurrency))
        return 1 if report["orders"]["failed"] else 0
    if args.soak:
        rows = asyncio.run(soak(args, run_id))
        if args.json:
            print(json.dumps({"run_id": run_id, "blocks": rows}, indent=2))
        return 1 if any(row["failed"] for row in rows) else 0
    if args.benchmark:
        report = asyncio.run(benchmark(args, run_id))
        print(json.dumps(report, indent=2) if args.json else format_benchmark(report))
        return 1 if report["failed"] else 0

    async def load_test() -> tuple[Summary, int, int | None]:
        applicants = Applicants(args.seed, run_id).batch(args.count)
        token = operator_token(args.token, required=False)
        refused: list[str] = []  # the emails of applications answered 5xx ("not submitted")

        async def one(payload):
            result = await apply(http, payload, args.timeout)
            if result.error and result.error.startswith("HTTP 5"):
                refused.append(payload["email"])
            return result

        async with http_client(args.url, args.concurrency, args.timeout, token) as http:
            progress = Progress("applications", args.count)
            results, wall = await run_concurrently(applicants, args.concurrency, one, progress)
        return summarize(results, wall), len(refused), await workflows_of_refused(refused)

    summary, refused, false_refusals = asyncio.run(load_test())
    if args.json:
        settings = {"url": args.url, "run_id": run_id, "seed": args.seed, "concurrency": args.concurrency}
        checks = {"refused_5xx": refused, "false_refusals": false_refusals}
        print(json.dumps({**settings, **summary._asdict(), **checks}, indent=2))
    else:
        title = (
            f"Load test: {args.count} applications, concurrency {args.concurrency}, {args.url} (run {run_id}, seed {args.seed})"
        )
        print(format_summary(summary, title))
        checked = "not checked: set APP_SECRET_KEY or DATA_DIR" if false_refusals is None else f"{false_refusals} had a workflow"
        print(f"  answered 5xx      {refused}  ({checked})")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    status = main()
    # Skip the interpreter's teardown: the Temporal client's Rust threads can
    # crash it now and then (segfault or abort), which would replace the status.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
