"""The process's Temporal client: one connection serves every event loop; a failed connect is retried."""

from __future__ import annotations

import asyncio
import threading

import pytest

from core.settings import connect_temporal
from core.temporal_client import ProcessClient, TemporalUnavailable
from tests.fixtures import free_port


def run_in_threads(count: int, work) -> list[BaseException]:
    """Run `work()` in `count` threads at once, each with its own event loop (as Flask[async] does)."""
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def thread_main():
        barrier.wait()
        try:
            asyncio.run(work())
        except BaseException as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=thread_main) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def test_one_client_serves_requests_on_many_event_loops(dev_server):
    address = dev_server.client.service_client.config.target_host
    temporal = ProcessClient(lambda: connect_temporal(target_host=address))
    clients = []

    async def requests():
        for _ in range(10):
            client = await temporal.get()
            clients.append(client)
            assert await client.service_client.check_health()
            await client.count_workflows()

    assert run_in_threads(8, requests) == []
    assert len(clients) == 80
    assert len({id(client) for client in clients}) == 1
    assert temporal.connections == 1


def test_an_unreachable_server_is_unavailable_and_the_next_call_connects_again(dev_server):
    closed_port = free_port()
    targets = [f"127.0.0.1:{closed_port}", dev_server.client.service_client.config.target_host]
    temporal = ProcessClient(lambda: connect_temporal(target_host=targets.pop(0)))

    with pytest.raises(TemporalUnavailable):
        asyncio.run(temporal.get())
    assert temporal.connections == 0
    client = asyncio.run(temporal.get())
    assert asyncio.run(client.service_client.check_health())
    assert temporal.connections == 1
