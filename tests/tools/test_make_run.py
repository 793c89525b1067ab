"""`make run` as a person runs it: every process up on the ports asked for, a decision, Ctrl+C stops all.

The dev server is started on free ports (TEMPORAL_DEV_PORT, TEMPORAL_UI_PORT),
so the test also proves the worker and the web app dial the port the dev
server was started on, not the default 7233. It scrapes both metrics
endpoints of the run: the worker's SDK metrics and the web app's /metrics.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from tests.fixtures import HERE, free_port, wait_until, web_is_ready


def sample(scraped: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric `name` whose labels include `labels` (0 when there are none)."""
    total = 0.0
    for line in scraped.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match and match[1] == name:
            found = dict(re.findall(r'(\w+)="([^"]*)"', match[2] or ""))
            if all(found.get(key) == value for key, value in labels.items()):
                total += float(match[3])
    return total


def scrape(url: str) -> httpx.Response | None:
    """The endpoint's answer, or None while nothing listens on its port yet."""
    try:
        return httpx.get(url, timeout=10)
    except httpx.ConnectError:
        return None


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def start_make_run(tmp_path: Path, **settings: str) -> tuple[subprocess.Popen, Path]:
    """`make run` as a person starts it, in its own process group, with a data folder under
    `tmp_path`, the local mail sink and `settings` (ports) over this environment; it and its log."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEMPORAL_")}
    env.update(DATA_DIR=str(tmp_path / "data"), WEB_WORKERS="1", **settings)
    env.pop("SMTP_URL", None)
    env.pop("OPERATOR_TOKEN", None)  # the token is generated into the data folder, as on a first run
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "run"],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return make, log


def stop_make_run(make: subprocess.Popen) -> None:
    """Ctrl+C, as a terminal sends it to the whole foreground process group; then every process gone."""
    os.killpg(make.pid, signal.SIGINT)
    make.wait(30)
    wait_until(lambda: not group_alive(make.pid), timeout=30, what="every process of make run to stop")


@pytest.mark.timeout(120)
def test_make_run_starts_everything_on_the_ports_asked_for_and_ctrl_c_stops_it(tmp_path):
    dev_port, ui_port, web_port, smtp_port, metrics_port = (free_port() for _ in range(5))
    make, log = start_make_run(
        tmp_path,
        TEMPORAL_DEV_PORT=str(dev_port),
        TEMPORAL_UI_PORT=str(ui_port),
        WEB_PORT=str(web_port),
        SMTP_SINK_PORT=str(smtp_port),
        WORKER_METRICS_PORT=str(metrics_port),
    )
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: web_is_ready(base) or make.poll() is not None, timeout=60, what="make run to be ready")
        assert make.poll() is None, log.read_text()
        output = log.read_text()
        assert f"Temporal UI: http://localhost:{ui_port}" in output
        assert f"Loan form: http://localhost:{web_port}/" in output
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        assert f"Worker metrics (Prometheus): {worker_metrics}" in output
        # The web app can be ready before the worker has imported its workflows and bound the port.
        before = wait_until(lambda: scrape(worker_metrics), timeout=60, what="the worker's metrics endpoint").text
        loans = {"task_queue": "loan-applications", "workflow_type": "LoanApplicationWorkflow"}

        applicant = {
            "name": "Run Person",
            "email": f"run-{uuid.uuid4().hex[:8]}@example.com",
            "loan_amount": 50000,
            "credit_score": 750,
            "annual_income": 150000,
            "has_bankruptcy": False,
        }
        decided = httpx.post(f"{base}/api/evaluate", json=applicant, timeout=30)
        assert decided.status_code == 200, (decided.text, log.read_text())
        assert decided.json()["decision"] == "pre_approved"
        assert (tmp_path / "data" / "temporal.db").exists()
        # No SMTP_URL: the local sink received the applicant's email into the data folder's Maildir.
        maildir = tmp_path / "data" / "mail" / "new"
        message = wait_until(
            lambda: maildir.exists() and next(iter(maildir.iterdir()), None),
            timeout=30,
            what="the decision email in the local Maildir",
        )
        assert applicant["email"] in message.read_text()

        # No OPERATOR_TOKEN: one was generated into the data folder, private, and make run says where.
        token_file = tmp_path / "data" / "secrets" / "operator.token"
        assert f"Operator sign-in:      http://localhost:{web_port}/signin  (token: cat {token_file})" in log.read_text()
        # The dev server's UI decrypts through this web app's codec endpoint.
        ui_settings = httpx.get(f"http://localhost:{ui_port}/api/v1/settings", timeout=10).json()
        assert ui_settings["Codec"]["Endpoint"] == f"http://localhost:{web_port}/codec", ui_settings
        assert token_file.stat().st_mode & 0o777 == 0o600
        result_url = f"{base}/applications/{decided.json()['workflow_id']}"
        ui_link = f"http://localhost:{ui_port}/namespaces/default/workflows/"
        assert ui_link not in httpx.get(result_url, timeout=10).text
        operator = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert ui_link in httpx.get(result_url, headers=operator, timeout=10).text

        # The worker's SDK metrics moved with that one application: its workflow
        # tasks, the decision (a local activity) and the email (an activity).
        moving = [
            ("temporal_workflow_task_execution_latency_seconds_count", loans),
            ("temporal_workflow_task_schedule_to_start_latency_seconds_count", {"task_queue": "loan-applications"}),
            ("temporal_local_activity_total", {**loans, "activity_type": "decide"}),
            ("temporal_activity_execution_latency_seconds_count", {**loans, "activity_type": "send_decision_email"}),
        ]

        def still(scraped: str) -> list[str]:
            return [name for name, labels in moving if sample(scraped, name, **labels) <= sample(before, name, **labels)]

        # The email's activity is counted when it completes, just after the sink has the message.
        wait_until(
            lambda: not still(httpx.get(worker_metrics, timeout=10).text),
            timeout=20,
            what=f"the worker's metrics to move ({', '.join(name for name, _ in moving)})",
        )
        # The web app counts each route it answered, by its rule, not the raw path; operators only.
        assert httpx.get(f"{base}/metrics", timeout=10).status_code == 401
        web = httpx.get(f"{base}/metrics", headers=operator, timeout=10).text
        for method, route in [("POST", "/api/evaluate"), ("GET", "/readyz"), ("GET", "/applications/<workflow_id>")]:
            assert sample(web, "web_requests_total", method=method, route=route) >= 1, (route, web)
        assert sample(web, "web_requests_total", route="/applications/<workflow_id>") == 2
    finally:
        stop_make_run(make)


def test_the_worker_metrics_port_is_off_unless_set_and_a_taken_one_is_refused(monkeypatch):
    import socket

    from core.settings import Settings
    from worker import metrics_address, metrics_runtime

    monkeypatch.delenv("WORKER_METRICS_PORT", raising=False)
    monkeypatch.delenv("WORKER_METRICS_HOST", raising=False)
    assert metrics_address(Settings.from_env()) is None and metrics_runtime(None) is None
    monkeypatch.setenv("WORKER_METRICS_PORT", "9464")
    assert metrics_address(Settings.from_env()) == "127.0.0.1:9464"  # loopback unless WORKER_METRICS_HOST says otherwise
    for wrong in ("0", "70000", "nine"):
        monkeypatch.setenv("WORKER_METRICS_PORT", wrong)
        with pytest.raises(SystemExit, match="WORKER_METRICS_PORT"):
            metrics_address(Settings.from_env())
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(SystemExit, match="set WORKER_METRICS_PORT to a free port"):
            metrics_runtime(f"127.0.0.1:{taken.getsockname()[1]}")
