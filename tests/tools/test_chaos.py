"""The crash test inside `make test`: kill -9 of workers, dev server and web app under a load of loans and orders.

A short run of tools/chaos.py (`make chaos` runs a longer one and prints its figures):
90 applications and 10 orders over 18 s, three workers on one data folder,
three worker kills (each worker once), one dev-server kill (restarted on its
SQLite file) and one web-app kill, every client retrying with the same payload.
"""

from __future__ import annotations

import asyncio

import pytest

from tools import chaos


@pytest.mark.timeout(240)
def test_nothing_is_lost_duplicated_or_torn_when_every_process_is_killed(tmp_path):
    figures = asyncio.run(
        chaos.run(tmp_path, loans=90, orders=10, worker_kills=3, concurrency=8, seed=7, time_limit=150, duration=18)
    )
    report = "\n".join(figures.lines() + figures.order_problems)
    assert sorted(set(figures.faults)) == ["temporal", "web", "worker"] and len(figures.faults) == 5, report
    assert figures.accepted == 90 and figures.orders == 10, report
    assert figures.lost == figures.duplicated == figures.torn == 0, report
    assert figures.decided == 90, report
    assert figures.order_problems == [] and figures.orders_final == 10, report
