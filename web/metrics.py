"""The web app's Prometheus metrics: requests by route and status, and their latency, at /metrics.

gunicorn runs several worker processes, each counting its own requests, so the
counters live in prometheus-client's multiprocess mode: each process writes
its samples to files in `PROMETHEUS_MULTIPROC_DIR` (gunicorn.conf.py makes it
under the data folder and clears it at start), and /metrics adds them up.
Without that variable (tests, `python starter.py`) the process counts alone.
Routes are labelled by their rule (`/api/orders/<order_id>`), never by the
raw path, and methods by their standard name or `other` (a client may send
any word as its method), so the number of series stays fixed. /metrics is
operator-only.
"""

from __future__ import annotations

import os
import time

from flask import Blueprint, Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("web_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "web_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

# RFC 9110's methods; any other word a client sends is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})

metrics = Blueprint("metrics", __name__)


@metrics.get("/metrics")
def exposition():
    # prometheus_client's own switch: gunicorn.conf.py sets it so that every web worker's counts add up.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, mimetype=CONTENT_TYPE_LATEST)


def _started():
    g.request_started = time.perf_counter()


def _answered(response):
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in KNOWN_METHODS else "other"
    REQUESTS.labels(method, route, str(response.status_code)).inc()
    if "request_started" in g:
        LATENCY.labels(method, route).observe(time.perf_counter() - g.request_started)
    return response


def init_app(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_answered)
    app.register_blueprint(metrics)
