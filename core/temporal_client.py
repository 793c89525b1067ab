"""One Temporal client per process, shared by every request of the web app and by the CLI.

Flask[async] runs each `async def` view in an event loop of its own. A
temporalio `Client` is not bound to the loop that created it (each call's
future is resolved on the caller's loop), so one client serves every request
of a process: `test_one_client_serves_requests_on_many_event_loops` shows it.

It connects lazily, on first use: gunicorn forks its workers before any
request, so each worker process creates its own client. A process that forks
again (its pid changes) connects anew rather than share the parent's
connection. If the server is down, calls fail fast with `TemporalUnavailable`
and the next call tries to connect again.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from temporalio.client import Client

from core.settings import connect_temporal

log = logging.getLogger("temporal_client")


class TemporalUnavailable(Exception):
    """The Temporal server could not be reached."""


class OutcomeUnknown(Exception):
    """A request failed after it was sent (a deadline, a dropped connection), and Temporal could
    not say afterwards whether it took effect. Sending it again is safe where the request is
    idempotent (a loan's email, an order's Idempotency-Key): it never takes effect twice."""


class ProcessClient:
    """The process's Temporal client, created on first use (after any fork)."""

    def __init__(self, connect: Callable[[], Awaitable[Client]] = connect_temporal):
        self._connect = connect
        self._client: Client | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self.connections = 0  # how many clients this process has created (tests read it)

    async def get(self) -> Client:
        pid = os.getpid()
        with self._lock:
            if self._client is not None and self._pid == pid:
                return self._client
        try:
            client = await self._connect()
        except Exception as err:  # noqa: BLE001 - any connection error means "unavailable"
            raise TemporalUnavailable(str(err) or type(err).__name__) from err
        with self._lock:
            # Two requests may connect at once on a cold process: the first to
            # finish is kept, so every later call shares one connection.
            if self._client is None or self._pid != pid:
                self._client, self._pid = client, pid
                self.connections += 1
                log.info("Temporal client connected in process %d", pid)
            return self._client

    def reset(self) -> None:
        """Forget the client (tests build many apps in one process)."""
        with self._lock:
            self._client = None
            self._pid = None


def workflow_ui_url(ui_base: str, namespace: str, workflow_id: str, run_id: str | None = None) -> str:
    """A workflow's page in the Temporal Web UI (its run's history when `run_id` is given)."""
    path = f"{ui_base}/namespaces/{quote(namespace)}/workflows/{quote(workflow_id)}"
    return f"{path}/{quote(run_id)}/history" if run_id else path
