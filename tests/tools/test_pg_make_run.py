"""`make run-postgres` as a person runs it: PostgreSQL initialised in the data folder, the
product up on it, a decision stored there (not in JSON files), Ctrl+C stops everything.

Runs `make -o .venv/.installed` so that the shared virtualenv is used as it is (tests/tools/make_run.py).
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.fixtures import free_port, wait_until, web_is_ready
from tests.pg import require_server_binaries
from tests.tools.make_run import ready, start_make_run, stop_make_run
from tools import pg_server


@pytest.mark.timeout(150)
def test_make_run_postgres_stores_a_decision_in_postgresql_and_ctrl_c_stops_everything():
    require_server_binaries()
    # Under /tmp with a short path: the server's user must reach it, and a Unix socket path is short.
    folder = Path(tempfile.mkdtemp(prefix="pgrun-", dir="/tmp"))
    folder.chmod(0o755)
    data = folder / "data"
    dev_port, ui_port, web_port, pg_port = free_port(), free_port(), free_port(), free_port()
    settings = {
        "TEMPORAL_DEV_PORT": str(dev_port),
        "TEMPORAL_UI_PORT": str(ui_port),
        "WEB_PORT": str(web_port),
        "PG_PORT": str(pg_port),
        "SMTP_SINK_PORT": str(free_port()),
        "LOCALSTRIPE_PORT": str(free_port()),  # 8420 may be taken (another make run on this machine)
        "WORKER_METRICS_PORT": "",  # no metrics endpoint: 9464 may be taken (test_make_run scrapes one)
    }
    make, log = start_make_run(folder, "run-postgres", data=data, **settings)
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: ready(make, log), timeout=90, what="make run-postgres's ready line")
        assert web_is_ready(base)
        database_url = pg_server.url(data / "postgres", pg_port)
        assert f"PostgreSQL: {database_url}" in log.read_text()

        email = f"pg-{uuid.uuid4().hex[:8]}@example.com"
        applicant = {
            "name": "Pg Person",
            "email": email,
            "loan_amount": 50000,
            "credit_score": 750,
            "annual_income": 150000,
            "has_bankruptcy": False,
        }
        decided = httpx.post(f"{base}/api/evaluate", json=applicant, timeout=30)
        assert decided.status_code == 200, (decided.text, log.read_text())

        def stored():
            with psycopg.connect(database_url) as connection:
                return connection.execute(
                    "SELECT count(*) FROM documents WHERE collection = 'applications' AND doc->'application'->>'email' = %s",
                    (email,),
                ).fetchone()[0]

        assert wait_until(stored, timeout=30, what="the application in PostgreSQL") == 1
        assert not (data / "applications").exists()  # nothing went to the JSON files
    finally:
        stop_make_run(make, log)
        shutil.rmtree(folder, ignore_errors=True)
