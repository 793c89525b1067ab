"""The Temporal Web UI through the app's origin (web/temporal_ui.py), against the dev server's real UI server.

Who may reach it and do what: nobody signed out; viewers read; admins act, from
this origin and with the UI's own CSRF header. What an operator reads there is
decrypted through the same origin's codec endpoint. The browser's view of it is
in tests/tools/test_make_run.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from dataclasses import replace

import pytest
from temporalio.client import Client, WorkflowExecutionStatus

from core.codec import ENCODING
from core.settings import payload_data_converter
from tests.fixtures import fresh_settings, make_app, signed_in
from tools.net import free_port
from web.temporal_ui import UI_COOKIE


@pytest.fixture
def settings(tmp_path, temporal_ui_upstream):
    return replace(fresh_settings(tmp_path / "data"), temporal_ui_upstream=temporal_ui_upstream)


@pytest.fixture
def app(settings, dev_server, monkeypatch):
    return make_app(settings, dev_server.client.service_client.config.target_host, monkeypatch)


def on_temporal(dev_server, payload_codec, action):
    """`action(client)` on a client of its own: the tests here are synchronous, like the Flask client's views."""

    async def run():
        client = await Client.connect(
            dev_server.client.service_client.config.target_host, data_converter=payload_data_converter(payload_codec)
        )
        return await action(client)

    return asyncio.run(run())


def status_of(dev_server, payload_codec, workflow_id: str) -> WorkflowExecutionStatus | None:
    async def describe(client):
        return (await client.get_workflow_handle(workflow_id).describe()).status

    return on_temporal(dev_server, payload_codec, describe)


@pytest.fixture
def waiting_workflow(dev_server, payload_codec):
    """A workflow no worker runs (its task queue has none), started with an applicant's data as input."""
    workflow_id = f"ui-{uuid.uuid4().hex[:12]}"
    applicant = {"name": "Grace Hopper", "annual_income": 91000}

    async def start(client):
        await client.start_workflow("NobodyRunsThis", applicant, id=workflow_id, task_queue=f"none-{workflow_id}")

    async def end(client):
        handle = client.get_workflow_handle(workflow_id)
        if (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
            await handle.terminate("test over")

    on_temporal(dev_server, payload_codec, start)
    yield workflow_id
    on_temporal(dev_server, payload_codec, end)


def workflow_path(workflow_id: str, action: str = "") -> str:
    return f"/temporal/api/v1/namespaces/default/workflows/{workflow_id}{action}"


def test_signed_out_nobody_reaches_the_ui(app):
    client = app.test_client()
    page = client.get("/temporal/namespaces/default/workflows")
    assert page.status_code == 303 and page.headers["Location"] == "/signin?next=/temporal/namespaces/default/workflows"
    api = client.get("/temporal/api/v1/settings")
    assert api.status_code == 401 and "error" in api.json


def test_a_viewer_reads_the_ui_and_its_payloads_decrypt_on_this_origin(app, settings, waiting_workflow):
    viewer = signed_in(app.test_client(), settings, "viewer")
    page = viewer.get("/temporal/")
    assert page.status_code == 200 and "<!doctype html>" in page.get_data(as_text=True).lower()
    policy = page.headers["Content-Security-Policy"]
    assert "connect-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert page.headers["Cache-Control"] == "no-store"
    # The UI server was started as make run starts it: it decrypts through this origin's /codec.
    assert viewer.get("/temporal/api/v1/settings").json["Codec"]["Endpoint"] == "/codec"

    described = viewer.get(workflow_path(waiting_workflow, "/history"))
    assert described.status_code == 200, described.get_data(as_text=True)[:500]
    started = described.json["history"]["events"][0]["workflowExecutionStartedEventAttributes"]
    [payload] = started["input"]["payloads"]
    assert base64.b64decode(payload["metadata"]["encoding"]) == ENCODING  # Temporal holds ciphertext
    assert "Grace" not in json.dumps(described.json)
    # What the UI does next: the page's own origin asks the codec endpoint, with the viewer's cookie.
    decoded = viewer.post("/codec/decode", json={"payloads": [payload]}, headers={"Origin": "http://localhost"})
    assert decoded.status_code == 200, decoded.json
    [plain] = decoded.json["payloads"]
    assert json.loads(base64.b64decode(plain["data"])) == {"name": "Grace Hopper", "annual_income": 91000}


def test_only_an_admin_acts_through_the_ui_from_this_origin_with_the_uis_csrf_header(
    app, settings, dev_server, payload_codec, waiting_workflow
):
    terminate = workflow_path(waiting_workflow, "/terminate")

    def ui_token(client) -> str:
        client.get("/temporal/")  # the UI server's page sets its CSRF cookie, for the UI's path only
        cookie = client.get_cookie(UI_COOKIE, path="/temporal")
        assert cookie is not None
        return cookie.value

    viewer = signed_in(app.test_client(), settings, "viewer")
    refused = viewer.post(terminate, json={"reason": "viewer"}, headers={"X-CSRF-TOKEN": ui_token(viewer)})
    assert refused.status_code == 403 and "admin" in refused.json["error"]

    admin = signed_in(app.test_client(), settings, "admin")
    token = ui_token(admin)
    other_site = admin.post(terminate, json={"reason": "x"}, headers={"X-CSRF-TOKEN": token, "Origin": "http://evil.example"})
    assert other_site.status_code == 403
    no_header = admin.post(terminate, json={"reason": "no csrf header"})
    assert no_header.status_code == 400 and "csrf" in no_header.get_data(as_text=True)  # the UI server's own check
    assert status_of(dev_server, payload_codec, waiting_workflow) == WorkflowExecutionStatus.RUNNING

    done = admin.post(terminate, json={"reason": "admin"}, headers={"X-CSRF-TOKEN": token, "Origin": "http://localhost"})
    assert done.status_code == 200, done.get_data(as_text=True)
    assert status_of(dev_server, payload_codec, waiting_workflow) == WorkflowExecutionStatus.TERMINATED


def test_without_an_upstream_the_ui_is_not_served_and_a_dead_one_is_a_502(settings, dev_server, monkeypatch):
    address = dev_server.client.service_client.config.target_host
    for upstream, status in ((None, 404), (f"http://127.0.0.1:{free_port()}", 502)):
        app = make_app(replace(settings, temporal_ui_upstream=upstream), address, monkeypatch)
        answer = signed_in(app.test_client(), settings, "viewer").get("/temporal/")
        assert answer.status_code == status
