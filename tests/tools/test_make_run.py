"""`make run` as a person runs it: every process up on the ports asked for, a decision, a process killed
and started again while the others serve, Ctrl+C stops all with status 0.

The dev server is started on free ports (TEMPORAL_DEV_PORT, TEMPORAL_UI_PORT),
so the test also proves the worker and the web app dial the port the dev
server was started on, not the default 7233. It scrapes both metrics
endpoints of the run: the worker's SDK metrics and the web app's /metrics.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
from playwright.sync_api import sync_playwright

from tests.fixtures import BROWSER_ARGS, HERE, browser_executable, wait_until, web_is_ready
from tests.tools.make_run import ready, start_on_free_ports, stop_make_run


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


def temporal_ui_pages(url: str, ui_port: int, admin_password: str, name: str) -> dict[str, bool]:
    """Whether `name` shows decrypted on the workflow's page at `url` (the app's origin), signing in
    as the admin on the way, and on the same page at the UI server's own port."""
    own_port = f"http://127.0.0.1:{ui_port}{urlsplit(url).path}"
    shown = {}
    with sync_playwright() as playwright:
        executable = browser_executable()
        chromium = playwright.chromium.launch(executable_path=str(executable) if executable else None, args=BROWSER_ARGS)
        try:
            page = chromium.new_page()
            page.goto(url)
            page.fill("#name", "admin")
            page.fill("#password", admin_password)
            page.click("button[type=submit]")
            page.wait_for_url(url)
            page.get_by_text(name).first.wait_for(timeout=20_000)
            shown["through the app"] = True
            direct = chromium.new_page()
            with direct.expect_response(lambda answer: "/codec/decode" in answer.url, timeout=20_000) as decode:
                direct.goto(own_port)
            shown["on its own port"] = decode.value.ok or direct.get_by_text(name).count() > 0
        finally:
            chromium.close()
    return shown


def scrape(url: str) -> httpx.Response | None:
    """The endpoint's answer, or None while nothing listens on its port yet."""
    try:
        return httpx.get(url, timeout=10)
    except httpx.ConnectError:
        return None


@pytest.mark.timeout(120)
@pytest.mark.timeout(180)
def test_make_run_starts_everything_on_the_ports_asked_for_restarts_a_killed_process_and_ctrl_c_stops_it(tmp_path):
    make, log, ports = start_on_free_ports(tmp_path, worker_metrics=True)
    web_port, ui_port, metrics_port = ports.web, ports.ui, ports.metrics
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: ready(make, log), timeout=90, what="make run's ready line")
        assert web_is_ready(base)
        lines = log.read_text().splitlines()
        # One line says where everything is.
        [line] = [line for line in lines if line.startswith("Ready in ")]
        token_file = tmp_path / "data" / "secrets" / "operator.token"
        admin_password = tmp_path / "data" / "secrets" / "admin.password"
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        for part in (
            f"Loan form: http://localhost:{web_port}/",
            f"Orders: http://localhost:{web_port}/orders",
            f"Shop: http://localhost:{web_port}/shop",
            f"Operator sign-in: http://localhost:{web_port}/signin (admin, password: cat {admin_password})",
            f"Emails: http://localhost:{web_port}/mail (a local SMTP sink keeps them in {tmp_path / 'data' / 'mail'};",
            f"Payments: a local Stripe at http://127.0.0.1:{ports.stripe} (localstripe; no money moves; test card 4242 4242 4242 4242)",
            f"Temporal UI: http://localhost:{web_port}/temporal",
            f"Worker metrics: {worker_metrics}",
            f"Logs: {tmp_path / 'data' / 'logs'}",
        ):
            assert part in line, (part, line)
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

        # No OPERATOR_TOKEN: one was generated into the data folder, private, and the ready line says where.
        # The dev server's UI is served through the web app and decrypts through its codec endpoint.
        ui_settings = httpx.get(f"http://127.0.0.1:{ui_port}/temporal/api/v1/settings", timeout=10).json()
        assert ui_settings["Codec"]["Endpoint"] == "/codec", ui_settings
        assert token_file.stat().st_mode & 0o777 == admin_password.stat().st_mode & 0o777 == 0o600
        # The ready line's sign-in works, in the browser's way (the form's CSRF token, then the cookie).
        with httpx.Client(base_url=base, timeout=10) as browser:
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', browser.get("/signin").text).group(1)
            form = {"csrf_token": csrf, "name": "admin", "password": admin_password.read_text().strip(), "next": "/orders"}
            signed = browser.post("/signin", data=form, headers={"Referer": f"{base}/signin"})
            assert signed.status_code == 303 and signed.headers["Location"] == "/orders", signed.text
            assert browser.get("/orders").status_code == 200
            # The operator reads the applicant's email in the app, found from the application.
            emails = browser.get("/mail", params={"about": decided.json()["workflow_id"]})
            assert emails.status_code == 200 and f"Run Person &lt;{applicant['email']}&gt;" in emails.text, emails.text
        # The shop answers a visitor, with the catalog and its stock.
        shop = httpx.get(f"{base}/shop", timeout=10)
        assert shop.status_code == 200 and "Wireless mouse" in shop.text and "In stock" in shop.text
        # The checkout's card fields: the local Stripe serves its stand-in for Stripe.js.
        stripe_js = httpx.get(f"http://127.0.0.1:{ports.stripe}/js.stripe.com/v3/", timeout=10)
        assert stripe_js.status_code == 200 and "confirmCardSetup" in stripe_js.text
        result_url = f"{base}{decided.json()['page_url']}"  # the applicant's link, with its key
        ui_link = f"http://localhost:{web_port}/temporal/namespaces/default/workflows/"
        as_applicant = httpx.get(result_url, timeout=10)
        assert as_applicant.status_code == 200 and ui_link not in as_applicant.text
        operator = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert ui_link in httpx.get(result_url, headers=operator, timeout=10).text
        # In a browser: the operator signs in on the way to the workflow and reads the applicant's
        # input decrypted; on the UI server's own port the same page gets no decryption.
        workflow = decided.json()["workflow_id"]
        shown = temporal_ui_pages(ui_link + workflow, ui_port, admin_password.read_text().strip(), applicant["name"])
        assert shown == {"through the app": True, "on its own port": False}, shown

        # The worker's SDK metrics moved with that one application: its workflow tasks, the
        # decision and the persist step that sent the email (local activities).
        moving = [
            ("temporal_workflow_task_execution_latency_seconds_count", loans),
            ("temporal_workflow_task_schedule_to_start_latency_seconds_count", {"task_queue": "loan-applications"}),
            ("temporal_local_activity_total", {**loans, "activity_type": "decide"}),
            ("temporal_local_activity_total", {**loans, "activity_type": "persist_application"}),
        ]

        def still(scraped: str) -> list[str]:
            return [name for name, labels in moving if sample(scraped, name, **labels) <= sample(before, name, **labels)]

        # The persist step is counted when it completes, just after the sink has the message.
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
        # Nothing in the data folder is open to other local users: records, emails, locks,
        # Temporal's history, logs, secrets (the umask supervisord gives every process, and the
        # store's lock files' own mode).
        data = tmp_path / "data"
        assert data.stat().st_mode & 0o777 == 0o700
        opened = [f"{oct(p.stat().st_mode & 0o777)} {p}" for p in data.rglob("*") if p.stat().st_mode & 0o077]
        assert not opened, opened
        # supervisord's control socket and its folder are this user's only; a second make run on the
        # same data folder is refused while this one runs.
        run_dir = tmp_path / "data" / "run"
        assert run_dir.stat().st_mode & 0o777 == 0o700
        assert (run_dir / "supervisor.sock").stat().st_mode & 0o777 == 0o700
        second = subprocess.run(
            [sys.executable, "-m", "tools.stack", "run"],
            cwd=HERE,
            env={**os.environ, "DATA_DIR": str(tmp_path / "data")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 1 and "make run is already running on" in second.stderr, second
        each_killed_process_is_started_again(base, data, log)  # in the same run: one start fewer
    finally:
        stop_make_run(make, log)
    # Every process stopped cleanly: the worker too (no abort in the SDK's native threads at exit).
    for name in ("worker", "web", "mail", "temporal"):
        assert f"stopped: {name} (exit status 0)" in log.read_text(), log.read_text()


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


def supervised(data, name: str) -> psutil.Process:
    """The process supervisord runs as `name` (its pid from supervisord itself)."""
    from tools.stack import control

    info = control(data / "run").supervisor.getProcessInfo(name)
    assert info["statename"] == "RUNNING", info
    return psutil.Process(info["pid"])


def each_killed_process_is_started_again(base: str, data, log) -> None:
    """kill -9 each of make run's processes in turn: supervisord starts it again, the web app answers
    while another is down, and an application is decided and emailed after each."""
    for number, name in enumerate(["worker", "mail", "temporal", "web"]):
        killed = supervised(data, name)
        killed.kill()  # kill -9: no chance to clean up
        killed.wait(10)
        if name != "web":  # the web app answers while another process is down
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
        # supervisord starts it again, under a new pid; the product answers through it.
        wait_until(lambda: supervised_or_none(data, name, killed.pid), timeout=30, what=f"{name} to be started again")
        wait_until(lambda: web_is_ready(base), timeout=60, what=f"the web app to be ready after {name} was killed")
        applicant = {
            "name": "Kill Person",
            "email": f"kill-{number}-{uuid.uuid4().hex[:8]}@example.com",
            "loan_amount": 20000,
            "credit_score": 720,
            "annual_income": 90000,
            "has_bankruptcy": False,
        }
        answer = httpx.post(f"{base}/api/evaluate", json=applicant, timeout=30)
        assert answer.status_code in (200, 202), (name, answer.text)
        status_url = f"{base}{answer.json()['status_url']}"
        decided = wait_until(
            lambda: httpx.get(status_url, timeout=10).json().get("decision"),
            timeout=60,
            what=f"a decision after {name} was killed",
        )
        assert decided == "pre_approved"
        # Its email reached the sink (the sink too may have been started again).
        wait_until(
            lambda: any(applicant["email"] in m.read_text() for m in (data / "mail" / "new").iterdir()),
            timeout=60,
            what=f"the decision email after {name} was killed",
        )
    console = log.read_text()
    for name in ("worker", "mail", "temporal", "web"):
        assert f"exited: {name} (terminated by SIGKILL; not expected)" in console, console


def supervised_or_none(data, name: str, not_pid: int) -> psutil.Process | None:
    try:
        process = supervised(data, name)
    except AssertionError:
        return None
    return process if process.pid != not_pid else None


def test_the_first_make_says_it_is_installing_before_it_goes_quiet(tmp_path):
    """Issue 28: the first `make run` was silent for a minute while pip installed. `make -n` on a
    checkout with no virtualenv prints what it would do, and the first thing is to say so."""
    for name in ("Makefile", "requirements.txt", "requirements-dev.txt"):
        (tmp_path / name).write_bytes((HERE / name).read_bytes())
    env = {key: value for key, value in os.environ.items() if not key.startswith("MAKE") and key != "MFLAGS"}
    planned = subprocess.run(["make", "-n", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert planned.returncode == 0, planned.stderr
    commands = planned.stdout.splitlines()
    assert commands[0].startswith('echo "Setting up .venv: installing the pinned requirements'), commands
    assert any("pip install --quiet" in command for command in commands), commands
