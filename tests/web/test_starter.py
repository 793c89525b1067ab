"""The app factory's own parts: health and readiness, and gunicorn serving the app as `make run` does."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import pytest

from tests.fixtures import JOHN, free_port, gunicorn, make_app


@pytest.fixture
def client(loan_stack, monkeypatch):
    settings, address = loan_stack
    app = make_app(replace(settings, secret_key=uuid.uuid4().hex), address, monkeypatch)
    yield app.test_client()
    app.extensions["temporal"].reset()


def test_readyz_is_503_while_temporal_is_unreachable(loan_stack, monkeypatch):
    settings, _ = loan_stack
    closed_port = free_port()
    app = make_app(settings, f"127.0.0.1:{closed_port}", monkeypatch)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and response.json["status"] == "unavailable"
    # Anyone may ask: a generic reason, never the connection error's text (addresses, ports); that is logged.
    assert response.json["error"] == app.extensions["messages"].errors["not_ready"]
    assert str(closed_port) not in response.get_data(as_text=True)


@pytest.mark.timeout(60)
def test_readyz_names_missing_search_attributes_and_registers_them_where_allowed(loan_stack, monkeypatch, caplog):
    """A namespace without LoanDecision and LoanAmountBand refuses every loan start. Where the
    server does not let the app register them, /readyz is 503 and the log names the command;
    where it does, they are registered and the app is ready."""
    from temporalio.service import OperatorService, RPCError, RPCStatusCode

    from core.search_attributes import registration_command
    from loans.model import SEARCH_ATTRIBUTES
    from tests.fixtures import BIN, wait_until

    settings, address = loan_stack
    namespace = f"bare-{uuid.uuid4().hex[:8]}"
    create = [str(BIN / "temporal"), "operator", "namespace", "create", "--namespace", namespace, "--address", address]
    subprocess.run(create, check=True, capture_output=True, timeout=30)
    app = make_app(settings, address, monkeypatch)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", namespace)  # read when the app first connects
    client = app.test_client()

    async def refused(self, *args, **kwargs):
        raise RPCError("registering search attributes is not allowed", RPCStatusCode.PERMISSION_DENIED, b"")

    with monkeypatch.context() as patch:
        patch.setattr(OperatorService, "add_search_attributes", refused)
        # A new namespace reaches the server's cache within seconds: until then, unreachable.
        response = wait_until(
            lambda: (
                (r := client.get("/readyz")).json.get("error") == app.extensions["messages"].errors["search_attributes_missing"]
                and r
            ),
            what="/readyz to name the missing search attributes",
        )
        assert response.status_code == 503
        assert registration_command(namespace, list(SEARCH_ATTRIBUTES)) in caplog.text
    assert client.get("/readyz").json == {"status": "ready"}  # registered by the app
    app.extensions["temporal"].reset()


def test_health_and_readiness(client):
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").json == {"status": "ready"}


@pytest.mark.timeout(90)
def test_gunicorn_serves_the_app_with_a_client_per_process(loan_stack, tmp_path):
    log = tmp_path / "gunicorn.log"
    with gunicorn(*loan_stack, log) as (base, server):
        with ThreadPoolExecutor(max_workers=8) as pool:
            bodies = [{**JOHN, "email": f"gunicorn-{n}@example.com"} for n in range(24)]
            responses = list(pool.map(lambda b: httpx.post(f"{base}/api/evaluate", json=b, timeout=30), bodies))
        assert [r.status_code for r in responses] == [200] * 24, log.read_text()
        output = log.read_text()
        assert "Loan application form" in output
        # Each worker process connected once, after the fork (never the master),
        # however many requests and event loops it served.
        pids = [int(pid) for pid in re.findall(r"Temporal client connected in process (\d+)", output)]
        assert pids and len(pids) == len(set(pids)) <= 2, output
        assert server.pid not in pids

        # Both processes' request counts add up on /metrics, by route and status; operators only.
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        scraped = httpx.get(
            f"{base}/metrics", headers={"Authorization": f"Bearer {loan_stack[0].operator_token}"}, timeout=10
        ).text
        assert re.search(r'web_requests_total\{method="POST",route="/api/evaluate",status="200"\} 24\.0', scraped), scraped
        assert 'web_request_duration_seconds_count{method="POST",route="/api/evaluate"} 24.0' in scraped


@pytest.mark.timeout(90)
def test_chunked_bodies_are_read_and_held_to_the_size_limit(loan_stack, tmp_path):
    def chunks(*parts: bytes):
        yield from parts

    with gunicorn(*loan_stack, tmp_path / "gunicorn.log", workers=1) as (base, _):
        json_type = {"Content-Type": "application/json"}
        small = json.dumps({**JOHN, "email": f"chunked-{uuid.uuid4().hex[:8]}@example.com"}).encode()
        decided = httpx.post(f"{base}/api/evaluate", content=chunks(small[:20], small[20:]), headers=json_type, timeout=30)
        assert decided.status_code == 200, decided.text
        huge = httpx.post(f"{base}/api/evaluate", content=chunks(*[b"x" * 1024] * 1024), headers=json_type, timeout=30)
        assert huge.status_code == 413 and huge.json()["error"] == "The request body is too large."


def test_invented_methods_are_counted_as_other_so_metrics_stay_small(client, loan_stack):
    """A client may send any word as its HTTP method: each must not become a series of its own."""
    operator = {"Authorization": f"Bearer {loan_stack[0].operator_token}"}

    def other_requests(scraped: str) -> float:
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in scraped.splitlines()
            if line.startswith("web_requests_total{") and 'method="other"' in line
        )

    before = client.get("/metrics", headers=operator).text
    for n in range(40):
        assert client.open("/healthz", method=f"INVENTED{n}").status_code == 405
    after = client.get("/metrics", headers=operator).text
    assert "INVENTED" not in after
    assert other_requests(after) - other_requests(before) == 40
    assert 'web_requests_total{method="GET",route="/metrics",status="200"}' in after  # the standard ones by name


def test_a_client_that_stops_mid_request_loses_its_thread(loan_stack, tmp_path):
    """Issue 26: as many clients as gunicorn has threads, each stopped in the middle of its headers,
    no longer stop the app: after WEB_READ_TIMEOUT their threads are back, and a request is answered
    (on plain gthread it waited for as long as they kept their connections open)."""
    log = tmp_path / "gunicorn.log"
    with gunicorn(*loan_stack, log, workers=1, WEB_THREADS="2", WEB_READ_TIMEOUT="1") as (base, _):
        port = int(base.rsplit(":", 1)[1])
        stalled = []
        for _ in range(2):
            client = socket.create_connection(("127.0.0.1", port))
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Half: ")  # never finished
            stalled.append(client)
        try:
            # Both threads are held; without the read timeout this waits until the stalled clients go
            # (after it: httpx gives up first). With it, their threads come back after 1 s.
            answer = httpx.get(f"{base}/healthz", timeout=15)
            assert answer.status_code == 200
            output = log.read_text()
            assert "sent nothing for 1 s mid-request" in output and "Traceback" not in output, output
        finally:
            for client in stalled:
                client.close()
