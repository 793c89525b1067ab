"""PostgreSQL specifics: migrations applied once by whichever process comes first, the copy
command JSON -> PostgreSQL -> JSON, and StoreUnavailable while the server is down."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import psycopg
import pytest

from core.store import StoreUnavailable
from core.store import postgres as pg_store
from core.store.files import JsonStore
from tests import pg as pg_testing
from tests.fixtures import HERE, wait_until
from tests.pg import (
    database_url,  # noqa: F401 - a fixture
    postgres_server,  # noqa: F401 - a fixture
)
from tools import pg_server


def _migrate(url: str, start, results) -> None:
    with psycopg.connect(url) as connection:
        start.wait()
        results.put(pg_store.migrate(connection))


def test_two_processes_starting_at_once_apply_each_migration_once(database_url):
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_migrate, args=(database_url, start, results)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0
    applied = sorted(results.get(timeout=5) for _ in processes)
    everything = [number for number, _ in pg_store.migration_files()]
    assert applied == [[], [], [], everything]  # one process applied them, the others found nothing to do
    with psycopg.connect(database_url) as connection:
        assert [r[0] for r in connection.execute("SELECT version FROM schema_version ORDER BY version")] == everything
        assert pg_store.migrate(connection) == []  # and again at the next start


def test_migration_files_are_numbered_without_gaps():
    numbers = [number for number, _ in pg_store.migration_files()]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers


def _fill_json(root) -> JsonStore:
    store = JsonStore(root)
    for n in range(30):
        store.put(
            "orders",
            f"o{n:02d}",
            {"order_id": f"o{n:02d}", "status": ["placed", "delivered"][n % 2]},
            sort_key=f"2026-11-{n:02d}",
        )
    store.put("orders", "o03", {"order_id": "o03", "status": "cancelled"}, sort_key="2026-11-03")
    for key in ("e2", "e1"):
        store.put("order-o01-events", key, {"key": key})
    return store


def _run_copy(source, target) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tools.store_copy", str(source), str(target)],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_copy_json_to_postgresql_and_back_keeps_every_record_the_order_and_the_counts(tmp_path, database_url):
    original = _fill_json(tmp_path / "before")
    assert _run_copy(tmp_path / "before", database_url) == "order-o01-events: 2\norders: 30\n"
    _run_copy(tmp_path / "before", database_url)  # again: idempotent
    pg = pg_store.PostgresStore(database_url)
    try:
        assert pg.list_recent("orders", limit=100) == original.list_recent("orders", limit=100)
        assert (
            pg.count_by("orders", "status")
            == original.count_by("orders", "status")
            == {"placed": 15, "delivered": 14, "cancelled": 1}
        )
        assert pg.list_all("order-o01-events") == [{"key": "e1"}, {"key": "e2"}]
    finally:
        pg.close()
    _run_copy(database_url, tmp_path / "after")
    back = JsonStore(tmp_path / "after")
    assert back.list_recent("orders", limit=100) == original.list_recent("orders", limit=100)
    assert back.count_by("orders", "status") == original.count_by("orders", "status")
    assert back.list_all("order-o01-events") == [{"key": "e1"}, {"key": "e2"}]


def test_copy_reads_a_json_folder_written_before_the_numbered_index(tmp_path, database_url):
    """The old layout: one empty marker `<sort key>_<key>` per listed record."""
    for n, key in enumerate(["b", "a", "c"]):
        (tmp_path / "applications" / "_index").mkdir(parents=True, exist_ok=True)
        (tmp_path / "applications" / f"{key}.json").write_text(f'{{"n": {n}, "decision": "denied"}}')
        (tmp_path / "applications" / "_index" / f"2026-11-0{n}_{key}").touch()
    _run_copy(tmp_path, database_url)
    pg = pg_store.PostgresStore(database_url)
    try:
        assert [d["n"] for d in pg.list_recent("applications")[0]] == [2, 1, 0]
        assert pg.count_by("applications", "decision") == {"denied": 3}
    finally:
        pg.close()


def test_a_stopped_server_raises_store_unavailable_and_a_restarted_one_serves_again(postgres_server, database_url):
    store = pg_store.PostgresStore(database_url)
    try:
        store.put("orders", "o1", {"status": "placed"}, sort_key="1")
        postgres_server.stop("immediate")
        try:
            with pytest.raises(StoreUnavailable, match="PostgreSQL is unreachable"):
                store.get("orders", "o1")
            with pytest.raises(StoreUnavailable):
                store.put("orders", "o2", {"status": "placed"}, sort_key="2")
        finally:
            postgres_server.start()

        def served_again():
            try:
                return store.get("orders", "o1")
            except StoreUnavailable:
                return None

        # The pool replaces its broken connections within seconds.
        assert wait_until(served_again, timeout=30, what="the store to serve again") == {"status": "placed"}
        assert store.count_by("orders", "status") == {"placed": 1}
    finally:
        store.close()


def test_without_postgresql_the_tests_skip_loudly_and_ci_fails(monkeypatch):
    monkeypatch.setattr(pg_server, "bin_dir", lambda: None)
    monkeypatch.delenv("REQUIRE_POSTGRES", raising=False)
    with (
        pytest.warns(UserWarning, match="apt-get install -y postgresql"),
        pytest.raises(pytest.skip.Exception, match=r"\*\*\* SKIPPED: .*apt-get install -y postgresql"),
    ):
        pg_testing.require_server_binaries()
    monkeypatch.setenv("REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_POSTGRES=1 and no server"):
        pg_testing.require_server_binaries()
