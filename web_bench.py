"""The web app's own time per `POST /api/evaluate`, the Temporal call left out: prints a table.

    .venv/bin/python web_bench.py                 # 500 requests per round, 3 rounds
    .venv/bin/python web_bench.py --requests 200 --rounds 5

The app is built as gunicorn builds it (`create_app()`, a temporary data folder)
and driven through Flask's test client; `LoanService.submit` answers at once, so
what is timed is parsing, validation, the view, the event loop it runs on and
the answer. Each round times the app's views on a loop kept per thread
(`starter.WebApp`) and then on Flask's default (asgiref: a new thread and event
loop per request), so both see the same spell of a busy machine. Medians in ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import types
import uuid
from typing import Any
from unittest import mock

from flask import Flask

import loan_service
from loan_service import Decided


async def _decided_at_once(self, application) -> Decided:
    record = {"workflow_id": "loan-bench", "run_id": "run", "decision": "pre_approved", "reason": "bench",
              "message": {"title": "t", "message": "m", "next_steps": []}, "application": {"name": application.name},
              "submitted_at": "2026-01-01T00:00:00+00:00", "loan_to_income_ratio": 0.3, "decided_by": "bench"}
    return Decided(record, persisted=False)


def applicant() -> dict[str, Any]:
    return {"name": "Bench Person", "email": f"bench-{uuid.uuid4().hex[:8]}@example.com", "loan_amount": 50000,
            "credit_score": 750, "annual_income": 150000, "has_bankruptcy": False}


def time_requests(app, count: int) -> float:
    client = app.test_client()
    times = []
    for _ in range(count):
        began = time.perf_counter()
        response = client.post("/api/evaluate", json=applicant())
        times.append(time.perf_counter() - began)
        assert response.status_code == 200, response.data
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> dict[str, list[float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with (tempfile.TemporaryDirectory() as folder, mock.patch.dict(os.environ, {"DATA_DIR": folder}),
          mock.patch.object(loan_service.LoanService, "submit", _decided_at_once)):
        from starter import create_app

        kept = create_app()
        per_request = create_app()
        per_request.async_to_sync = types.MethodType(Flask.async_to_sync, per_request)
        time_requests(kept, 50)  # warm-up: imports, templates, first loop
        time_requests(per_request, 50)
        figures: dict[str, list[float]] = {"loop kept per thread (WebApp)": [], "a loop per request (asgiref)": []}
        for _ in range(args.rounds):
            figures["loop kept per thread (WebApp)"].append(time_requests(kept, args.requests))
            figures["a loop per request (asgiref)"].append(time_requests(per_request, args.requests))
    print(f"POST /api/evaluate, the Temporal call answered at once; median ms of {args.requests} requests per round")
    for label, values in figures.items():
        rounds = "  ".join(f"{value:6.3f}" for value in values)
        print(f"  {label:32} {rounds}   median {statistics.median(values):6.3f}")
    return figures


if __name__ == "__main__":
    main()
