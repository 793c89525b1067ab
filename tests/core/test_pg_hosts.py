"""Several hosts on one PostgreSQL, simulated on this machine: two worker processes and the
web app, each with its own data folder (no shared file system), one dev server.

200 loans and 20 orders go in through the web app; every record must come out
exactly once, the web app's lists complete, the stock and the payments
consistent. Then PostgreSQL is stopped in the middle of a load and started
again: the activities retry, nothing is lost or duplicated, and the pages that
need the store answer 503 (never 500) while it is down.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psycopg
import pytest

from orders.model import FINAL_ORDER_STATUSES
from tests.fixtures import (
    ADDRESS,
    HERE,
    WorkerProcess,
    fresh_settings,
    make_app,
    signed_in,
    wait_until,
)
from tests.pg import (
    database_url,  # noqa: F401 - a fixture
    postgres_server,  # noqa: F401 - a fixture
)

STOCK = 15  # of CB-010, for 20 orders of one each: five must be refused, none oversold


def applicant(n: int, run: str) -> dict:
    return {
        "name": f"Host Person {n}",
        "email": f"hosts-{run}-{n}@example.com",
        "loan_amount": 20000 + n,
        "credit_score": 600 + n % 250,
        "annual_income": 90000,
        "has_bankruptcy": False,
    }


@pytest.fixture
def hosts(dev_server, postgres_server, tmp_path, monkeypatch):
    """(settings, operator client, [worker processes], database URL): three 'hosts' on one database."""
    url = postgres_server.new_database()
    monkeypatch.setenv("DATABASE_URL", url)  # the worker processes inherit it
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["shipping"] = {"prepare_seconds": 0, "transit_seconds": 0, "expedited_transit_seconds": 0}
    for item in rules["orders"]["catalog"]:
        if item["sku"] == "CB-010":
            item["stock"] = STOCK
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    web = fresh_settings(tmp_path / "web-host", rules_file=rules_file, database_url=url, decision_wait_seconds=5.0)
    address = dev_server.client.service_client.config.target_host
    workers = [
        WorkerProcess(replace(web, data_dir=tmp_path / f"worker-host-{n}"), address, tmp_path / f"worker-{n}.log") for n in (1, 2)
    ]
    app = make_app(web, address, monkeypatch)
    try:
        yield web, signed_in(app.test_client(), web), workers, url
    finally:
        app.extensions["temporal"].reset()
        for worker in workers:
            worker.kill()


def submit_loans(app_client_factory, run: str, count: int, threads: int = 16) -> list[int]:
    def submit(n: int) -> int:
        return app_client_factory().post("/api/evaluate", json=applicant(n, run)).status_code

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(submit, range(count)))


def all_pages(client, path: str, field: str) -> list[dict]:
    items, page = [], 1
    while True:
        body = client.get(f"{path}?page={page}").json
        items += body[field]
        if page >= body["pages"]:
            return items
        page += 1


def sql(url: str, query: str, *params):
    with psycopg.connect(url) as connection:
        return connection.execute(query, params).fetchall()


@pytest.mark.timeout(120)
def test_two_worker_hosts_and_a_web_host_on_one_postgresql_keep_every_record_once(hosts):
    settings, client, workers, url = hosts
    run = uuid.uuid4().hex[:8]
    statuses = submit_loans(lambda: client.application.test_client(), run, 200)
    assert set(statuses) <= {200, 202}, statuses

    order_ids = []
    for n in range(20):
        body = {
            "customer_id": f"host-{run}-{n % 4}",
            "customer_email": "host@example.com",
            "items": [{"sku": "CB-010", "quantity": 1}],
            "address": ADDRESS,
            "expedited": True,
        }
        placed = client.post("/api/orders", json=body)
        assert placed.status_code == 201, placed.json
        order_ids.append(placed.json["order_id"])

    def settled():
        return (
            sql(url, "SELECT total FROM collection_totals WHERE collection = 'applications'") == [(200,)]
            and sum(
                n
                for status, n in sql(url, "SELECT value, n FROM field_counts WHERE collection = 'orders' AND field = 'status'")
                if status in FINAL_ORDER_STATUSES
            )
            == 20
        )

    wait_until(settled, timeout=90, interval=0.5, what="200 applications and 20 finished orders in PostgreSQL")

    # Every record exactly once, and the web host's lists complete.
    emails = [row[0] for row in sql(url, "SELECT doc->'application'->>'email' FROM documents WHERE collection = 'applications'")]
    assert sorted(emails) == sorted(applicant(n, run)["email"] for n in range(200))
    listed = all_pages(client, "/api/applications", "applications")
    assert len(listed) == 200 and len({a["workflow_id"] for a in listed}) == 200
    orders = all_pages(client, "/api/orders", "orders")
    assert sorted(o["order_id"] for o in orders) == sorted(order_ids)
    # Both worker hosts did the work (no shared folder between them).
    persisted_by = {row[0] for row in sql(url, "SELECT doc->>'persisted_by' FROM documents WHERE collection = 'applications'")}
    assert len(persisted_by) == 2, persisted_by

    # Stock and payments consistent: 15 sold, 5 refused, one charge per sold order, none below zero.
    stock = sql(url, "SELECT doc FROM documents WHERE collection = 'inventory' AND key = 'stock'")[0][0]
    reserved = {
        row[0] for row in sql(url, "SELECT key FROM documents WHERE collection = 'reservations' AND doc->>'status' = 'reserved'")
    }
    charged = {
        row[0]
        for row in sql(url, "SELECT doc->>'order_id' FROM documents WHERE collection = 'payments' AND doc->>'status' = 'charged'")
    }
    assert stock["levels"]["CB-010"] == 0 and len(reserved) == STOCK and charged == reserved
    finished = {o["order_id"]: o["status"] for o in orders}
    assert sorted(finished.values()).count("completed") == STOCK and set(reserved) <= set(order_ids)
    assert all(finished[order_id] == "completed" for order_id in reserved)


@pytest.mark.timeout(150)
def test_postgresql_stopped_in_the_middle_of_a_load_loses_and_duplicates_nothing(hosts, postgres_server):
    settings, client, workers, url = hosts
    run = uuid.uuid4().hex[:8]
    total = 60

    def persisted() -> int:
        rows = sql(url, "SELECT total FROM collection_totals WHERE collection = 'applications'")
        return rows[0][0] if rows else 0

    with ThreadPoolExecutor(max_workers=1) as background:
        load = background.submit(submit_loans, lambda: client.application.test_client(), run, total, 8)
        wait_until(lambda: persisted() >= 10, timeout=60, what="the load to be under way")
        postgres_server.stop("immediate")
        try:
            # While it is down, the pages that need the store say so: 503, never 500.
            listing = client.get("/api/applications?page=1")
            assert listing.status_code == 503 and "database is unreachable" in listing.json["error"]
            page = client.get("/applications")
            assert page.status_code == 503 and b"database is unreachable" in page.data
            orders = client.get("/orders")
            assert orders.status_code == 503, orders.status_code
        finally:
            postgres_server.start()
        statuses = load.result(timeout=120)
    assert set(statuses) <= {200, 202}, statuses
    # The persist activities retried through the outage: every application once, counted once.
    wait_until(lambda: persisted() == total, timeout=90, interval=0.5, what=f"all {total} applications persisted")
    emails = [row[0] for row in sql(url, "SELECT doc->'application'->>'email' FROM documents WHERE collection = 'applications'")]
    assert sorted(emails) == sorted(applicant(n, run)["email"] for n in range(total))
    counts = dict(
        sql(url, "SELECT value, n FROM field_counts WHERE collection = 'applications' AND field = 'decision' AND n > 0")
    )
    assert sum(counts.values()) == total, counts
    assert client.get("/api/applications?page=1").status_code == 200
