"""`make run` as a person runs it: every process up on the ports asked for, a decision, Ctrl+C stops all.

The dev server is started on free ports (TEMPORAL_DEV_PORT, TEMPORAL_UI_PORT),
so the test also proves the worker and the web app dial the port the dev
server was started on, not the default 7233.
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid

import httpx
import pytest

from conftest import HERE, free_port, wait_until, web_is_ready


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(120)
def test_make_run_starts_everything_on_the_ports_asked_for_and_ctrl_c_stops_it(tmp_path):
    dev_port, ui_port, web_port, smtp_port = free_port(), free_port(), free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("TEMPORAL_")}
    env.update(DATA_DIR=str(tmp_path / "data"), TEMPORAL_DEV_PORT=str(dev_port), TEMPORAL_UI_PORT=str(ui_port),
               WEB_PORT=str(web_port), WEB_WORKERS="1", SMTP_SINK_PORT=str(smtp_port))
    env.pop("SMTP_URL", None)
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        make = subprocess.Popen(["make", "--no-print-directory", "run"], cwd=HERE, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{web_port}"
    try:
        wait_until(lambda: web_is_ready(base) or make.poll() is not None, timeout=60, what="make run to be ready")
        assert make.poll() is None, log.read_text()
        output = log.read_text()
        assert f"Temporal UI: http://localhost:{ui_port}" in output
        assert f"Loan form: http://localhost:{web_port}/" in output

        applicant = {"name": "Run Person", "email": f"run-{uuid.uuid4().hex[:8]}@example.com", "loan_amount": 50000,
                     "credit_score": 750, "annual_income": 150000, "has_bankruptcy": False}
        decided = httpx.post(f"{base}/api/evaluate", json=applicant, timeout=30)
        assert decided.status_code == 200, (decided.text, log.read_text())
        assert decided.json()["decision"] == "pre_approved"
        assert (tmp_path / "data" / "temporal.db").exists()
        # No SMTP_URL: the local sink received the applicant's email into the data folder's Maildir.
        maildir = tmp_path / "data" / "mail" / "new"
        message = wait_until(lambda: maildir.exists() and next(iter(maildir.iterdir()), None), timeout=30,
                             what="the decision email in the local Maildir")
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
    finally:
        # Ctrl+C in a terminal signals the whole foreground process group.
        os.killpg(make.pid, signal.SIGINT)
        make.wait(30)
        wait_until(lambda: not group_alive(make.pid), timeout=30, what="every process of make run to stop")
