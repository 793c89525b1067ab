"""One Temporal client per web process, used from Flask's synchronous views.

The client is asynchronous; Flask views run on the WSGI server's threads. The
bridge owns one event loop on a daemon thread and one client on that loop, and
views submit coroutines to it with a deadline. It connects lazily, on the
first request, so a pre-forking server (gunicorn) creates it after the fork
and every process gets its own. If the server is down, calls fail fast with
`TemporalUnavailable` and the next call tries to connect again.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flask import Flask, current_app
from temporalio.client import Client

from config import connect_temporal

T = TypeVar("T")


class TemporalUnavailable(Exception):
    """The Temporal server could not be reached."""


class TemporalBridge:
    def __init__(self, connect: Callable[[], Awaitable[Client]] = connect_temporal):
        self._connect = connect
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._pid: int | None = None

    def init_app(self, app: Flask) -> None:
        app.extensions["temporal"] = self

    def run(self, make_coroutine: Callable[[Client], Awaitable[T]], timeout: float) -> T:
        """Run `make_coroutine(client)` on the bridge loop; wait at most `timeout` seconds.

        Raises TimeoutError when the deadline passes (the coroutine is cancelled).
        """
        loop = self._ensure_loop()
        future = asyncio.run_coroutine_threadsafe(self._call(make_coroutine, timeout), loop)
        return future.result()

    async def _call(self, make_coroutine: Callable[[Client], Awaitable[T]], timeout: float) -> T:
        async with asyncio.timeout(timeout):
            client = await self._get_client()
            return await make_coroutine(client)

    async def _get_client(self) -> Client:
        if self._client is None:
            try:
                self._client = await self._connect()
            except Exception as err:  # noqa: BLE001 - any connection error means "unavailable"
                raise TemporalUnavailable(str(err)) from err
        return self._client

    def close(self) -> None:
        """Stop the loop thread (tests create many apps in one process)."""
        with self._lock:
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._loop = None
                self._client = None

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                # A fresh loop and client per process: never share them across a fork.
                self._client = None
                self._pid = os.getpid()
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="temporal-bridge", daemon=True).start()
            return self._loop


def bridge() -> TemporalBridge:
    return current_app.extensions["temporal"]
