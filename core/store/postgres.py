"""The store on PostgreSQL: the JSON store's contract for several hosts.

Chosen by DATABASE_URL (`core.store.open_store`). The callers (activities, the
services) never know which store they have; `tests/core/test_store_contract.py` runs one
suite against both.

- Documents are `jsonb` rows keyed by (collection, key). A listed row (written
  with a sort key) gets a number from its collection's total when first
  written, so a page newest first is a range of the `documents_listing` index
  and the total is one row: the cost does not grow with the table. Counts by
  field (`count_by`) live in `field_counts` and move in the row's transaction.
- `update` and `locked` run in one transaction holding a transaction-level
  advisory lock on (collection, key), taken in the same order as the JSON
  store's lock; `update` also reads the row `FOR UPDATE`. An advisory lock,
  unlike a row lock, also holds for a document not written yet (the first
  reservation of the stock). Everything written inside `with store.locked(...)`
  commits together or not at all.
- In a grouped collection (keys `<group>.<name>`), `newest_in_group` is a range
  of the `documents_listed_by_key` index (002): the group's listed rows, newest
  `seq` first, a handful per group (an application's runs).
- Lists by value (`list_by`, 003): a listed row's value of each listed field is a
  row of `listed_values`, numbered from a sequence when the row takes the value,
  so a page of one value latest first is a range of `listed_values_page`. A
  collection written before them gets them at its first `list_by` (`_cover`).
- The schema comes from numbered SQL files in `migrations/`, applied at start by
  whichever process comes first under a session advisory lock (`migrate`).
- A server that cannot be reached raises `StoreUnavailable`: activities retry,
  the web app answers 503.
"""

from __future__ import annotations

import contextvars
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from core.store.base import (
    DEFAULT_COUNTED_FIELDS,
    DEFAULT_GROUPED,
    DEFAULT_LISTED_BY,
    KEY_PATTERN,
    SORT_KEY_PATTERN,
    StoreUnavailable,
    count_value,
    field_value,
    list_value,
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_MIGRATION_FILE = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")
MIGRATION_LOCK = 7_301_017  # the session advisory lock that serialises migrations across processes
CONNECT_TIMEOUT_SECONDS = 2.0
# After the server was found unreachable, calls fail at once for this long instead of each
# waiting for a connection, then one call tries again: activities free their slots and
# retry, pages answer 503 at once.
FAIL_FAST_SECONDS = 1.0


def migration_files() -> list[tuple[int, Path]]:
    files = sorted((int(m.group(1)), path) for path in MIGRATIONS.iterdir() if (m := _MIGRATION_FILE.match(path.name)))
    numbers = [number for number, _ in files]
    if numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"migrations must be numbered 001, 002, ... without gaps, found {numbers}")
    return files


def migrate(connection: psycopg.Connection) -> list[int]:
    """Apply the migrations this database has not seen, each in its own transaction; the
    versions applied. Two processes starting at once: the second waits on the lock, then finds nothing to do."""
    previous = connection.autocommit
    if not previous:
        connection.commit()  # the session lock and each migration's transaction stand outside any open one
    connection.autocommit = True
    applied = []
    connection.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {row[0] for row in connection.execute("SELECT version FROM schema_version")}
        for number, path in migration_files():
            if number in done:
                continue
            with connection.transaction():
                connection.execute(path.read_text())
                connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
            applied.append(number)
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        connection.autocommit = previous
    return applied


class PostgresStore:
    def __init__(
        self,
        url: str,
        counted_fields: dict[str, tuple[str, ...]] | None = None,
        max_connections: int = 10,
        grouped: tuple[str, ...] | None = None,
        listed_by: dict[str, tuple[str, ...]] | None = None,
    ):
        self.counted_fields = DEFAULT_COUNTED_FIELDS if counted_fields is None else counted_fields
        self.listed_by = DEFAULT_LISTED_BY if listed_by is None else listed_by
        self.grouped = DEFAULT_GROUPED if grouped is None else tuple(grouped)
        self._unreachable_until = 0.0  # a circuit breaker: while the server is down, fail at once
        self._breaker = threading.Lock()
        # The connection of the transaction this thread or task is in (`locked`), if any.
        self._current: contextvars.ContextVar[psycopg.Connection | None] = contextvars.ContextVar(
            f"pg_store_{id(self)}", default=None
        )
        self.pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            timeout=CONNECT_TIMEOUT_SECONDS,
            open=False,
            kwargs={"connect_timeout": int(CONNECT_TIMEOUT_SECONDS)},
            check=ConnectionPool.check_connection,  # a connection broken by a server restart is replaced
            # Give up a reconnection attempt (backoff 1, 2, 4 s) after 10 s, so the next request starts
            # a fresh one: after an outage the pool reconnects within seconds, not after a long backoff.
            reconnect_timeout=10.0,
        )
        try:
            self.pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)
            with self.pool.connection() as connection:
                migrate(connection)
        except (psycopg.OperationalError, PoolTimeout) as err:
            self.pool.close()
            raise StoreUnavailable(f"PostgreSQL is unreachable: {err}") from err

    def close(self) -> None:
        self.pool.close()

    # --- transactions ------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[psycopg.Connection]:
        """The current transaction if there is one, else a new one committed on exit."""
        current = self._current.get()
        if current is not None:
            yield current
            return
        with self._breaker:
            now = time.monotonic()
            if now < self._unreachable_until:
                raise StoreUnavailable("PostgreSQL is unreachable (failed a moment ago; retried shortly)")
            if self._unreachable_until:
                # Down a moment ago: this call probes, the others keep failing at once meanwhile.
                self._unreachable_until = now + CONNECT_TIMEOUT_SECONDS + FAIL_FAST_SECONDS
        try:
            with self.pool.connection() as connection:
                with connection.transaction():
                    token = self._current.set(connection)
                    try:
                        yield connection
                    finally:
                        self._current.reset(token)
        except (psycopg.OperationalError, PoolTimeout) as err:
            self._unreachable_until = time.monotonic() + FAIL_FAST_SECONDS
            raise StoreUnavailable(f"PostgreSQL is unreachable: {err}") from err
        self._unreachable_until = 0.0

    @contextmanager
    def locked(self, collection: str, key: str) -> Iterator[None]:
        """One transaction holding the document's lock: reads and `write_locked`s inside it
        commit together. Take several in a fixed order, as with the JSON store."""
        _check(collection, key)
        with self._transaction() as connection:
            if collection in self.listed_by:
                # Also the collection's lists lock, shared (writes run together), before any row lock:
                # `_cover`, rebuilding the lists, holds it exclusively and so never meets a write.
                connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0)), pg_advisory_xact_lock_shared(hashtextextended(%s, 0))",
                    (f"{collection}/{key}", f"lists/{collection}"),
                )
            else:
                connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{collection}/{key}",))
            yield

    # --- reads -------------------------------------------------------------

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        _check(collection, key)
        with self._transaction() as connection:
            row = connection.execute("SELECT doc FROM documents WHERE collection = %s AND key = %s", (collection, key)).fetchone()
        return None if row is None else row[0]

    def list_recent(self, collection: str, offset: int = 0, limit: int = 20) -> tuple[list[dict], int]:
        _check(collection)
        with self._transaction() as connection:
            row = connection.execute("SELECT total FROM collection_totals WHERE collection = %s", (collection,)).fetchone()
            total = row[0] if row else 0
            newest = total - max(offset, 0)
            rows = connection.execute(
                "SELECT doc FROM documents WHERE collection = %s AND seq <= %s AND seq > %s ORDER BY seq DESC",
                (collection, newest, newest - max(limit, 0)),
            ).fetchall()
        return [r[0] for r in rows], total

    def newest_in_group(self, collection: str, group: str) -> dict[str, Any] | None:
        """The newest listed document whose key is `<group>.<name>` (the JSON store's contract)."""
        if collection not in self.grouped:
            raise ValueError(f"{collection!r} is not grouped")
        _check(collection, group)
        # Keys in C order: every `<group>.…` lies in [`<group>.`, `<group>/`) ('/' follows '.');
        # a key with a further dot after the group's belongs to a longer group.
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT doc FROM documents WHERE collection = %s AND seq IS NOT NULL"
                ' AND key COLLATE "C" >= %s AND key COLLATE "C" < %s AND strpos(substr(key, %s), \'.\') = 0'
                " ORDER BY seq DESC LIMIT 1",
                (collection, f"{group}.", f"{group}/", len(group) + 2),
            ).fetchone()
        return None if row is None else row[0]

    def list_by(
        self, collection: str, field: str, value: str, offset: int = 0, limit: int = 20, after: str | None = None
    ) -> list[dict]:
        """A page of the listed rows whose `field` has `value`, the latest to take it first (after
        the row `after`, while it has the value: a range of the index, however deep)."""
        _check(collection, after)
        fields = list(self.listed_by.get(collection, ()))
        if field not in fields:
            raise ValueError(f"{collection!r} is not listed by {field!r}")
        wanted = list_value(value)
        if wanted is None:
            return []
        with self._transaction() as connection:
            row = connection.execute("SELECT fields FROM list_coverage WHERE collection = %s", (collection,)).fetchone()
        if row is None or row[0] != fields:
            self._cover(collection, fields)
        page = (
            "SELECT d.doc FROM listed_values l JOIN documents d ON d.collection = l.collection AND d.key = l.key"
            " WHERE l.collection = %s AND l.field = %s AND l.value = %s"
        )
        with self._transaction() as connection:
            start = None
            if after is not None:
                start = connection.execute(
                    "SELECT entered FROM listed_values WHERE collection = %s AND field = %s AND key = %s AND value = %s",
                    (collection, field, after, wanted),
                ).fetchone()
            if start is not None:
                rows = connection.execute(
                    page + " AND l.entered < %s ORDER BY l.entered DESC LIMIT %s",
                    (collection, field, wanted, start[0], max(limit, 0)),
                ).fetchall()
            else:
                rows = connection.execute(
                    page + " ORDER BY l.entered DESC OFFSET %s LIMIT %s",
                    (collection, field, wanted, max(offset, 0), max(limit, 0)),
                ).fetchall()
        return [r[0] for r in rows]

    def _cover(self, collection: str, fields: list[str]) -> None:
        """Once per collection written before its lists (or listed by other fields since): every
        listed row's values from scratch, oldest first, holding the collection's lists lock
        exclusively (a listed write holds it shared), so no write runs meanwhile."""
        with self._transaction() as connection:
            connection.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"lists/{collection}",))
            row = connection.execute("SELECT fields FROM list_coverage WHERE collection = %s", (collection,)).fetchone()
            if row is not None and row[0] == fields:
                return
            connection.execute("DELETE FROM listed_values WHERE collection = %s", (collection,))
            rows = connection.execute(
                "SELECT key, doc FROM documents WHERE collection = %s AND seq IS NOT NULL ORDER BY seq", (collection,)
            ).fetchall()
            values = [(key, {f: list_value(field_value(doc, f)) for f in fields}) for key, doc in rows]
            with connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO listed_values (collection, field, key, value, entered)"
                    " VALUES (%s, %s, %s, %s, nextval('listed_values_entered'))",
                    [(collection, f, key, v) for key, listed in values for f, v in listed.items() if v is not None],
                )
                cursor.executemany(
                    "UPDATE documents SET listed = %s WHERE collection = %s AND key = %s",
                    [(Jsonb({f: v for f, v in listed.items() if v is not None}), collection, key) for key, listed in values],
                )
            connection.execute(
                "INSERT INTO list_coverage (collection, fields) VALUES (%s, %s)"
                " ON CONFLICT (collection) DO UPDATE SET fields = EXCLUDED.fields",
                (collection, Jsonb(fields)),
            )

    def list_all(self, collection: str) -> list[dict[str, Any]]:
        _check(collection)
        with self._transaction() as connection:
            rows = connection.execute(
                'SELECT doc FROM documents WHERE collection = %s ORDER BY key COLLATE "C"', (collection,)
            ).fetchall()
        return [r[0] for r in rows]

    def count_by(self, collection: str, field: str) -> dict[str, int]:
        if field not in self.counted_fields.get(collection, ()):
            raise ValueError(f"{collection!r} is not counted by {field!r}")
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT value, n FROM field_counts WHERE collection = %s AND field = %s AND n > 0", (collection, field)
            ).fetchall()
        return {value: n for value, n in rows}

    # --- writes ------------------------------------------------------------

    def put(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        self.update(collection, key, lambda _existing: document, sort_key)

    def update(
        self, collection: str, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any]], sort_key: str | None = None
    ) -> dict[str, Any]:
        _check(collection, key, sort_key)
        with self.locked(collection, key), self._transaction() as connection:
            row = connection.execute(
                "SELECT doc FROM documents WHERE collection = %s AND key = %s FOR UPDATE", (collection, key)
            ).fetchone()
            document = change(None if row is None else row[0])
            self.write_locked(collection, key, document, sort_key)
            return document

    def write_locked(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        """Write a document whose lock the caller holds (inside `locked`), in that transaction."""
        _check(collection, key, sort_key)
        with self._transaction() as connection:
            old = connection.execute(
                "SELECT seq, counted, listed FROM documents WHERE collection = %s AND key = %s FOR UPDATE", (collection, key)
            ).fetchone()
            seq, old_counted, old_values = (old[0], old[1], old[2]) if old else (None, {}, {})
            listed = seq is not None or sort_key is not None
            counted = {f: count_value(document.get(f)) for f in self.counted_fields.get(collection, ())} if listed else {}
            values = {f: list_value(field_value(document, f)) for f in self.listed_by.get(collection, ())} if listed else {}
            if seq is None and sort_key is not None:
                seq = connection.execute(
                    "INSERT INTO collection_totals (collection, total) VALUES (%s, 1) ON CONFLICT (collection)"
                    " DO UPDATE SET total = collection_totals.total + 1 RETURNING total",
                    (collection,),
                ).fetchone()[0]  # type: ignore[index]  # RETURNING gives a row
                if seq == 1:  # a new collection: its lists cover every row from the start
                    connection.execute(
                        "INSERT INTO list_coverage (collection, fields) VALUES (%s, %s) ON CONFLICT (collection) DO NOTHING",
                        (collection, Jsonb(list(values))),
                    )
            self._move_between_lists(connection, collection, key, old_values, values)
            for field in counted:
                before, after = old_counted.get(field), counted[field]
                if before == after:
                    continue
                if before is not None:
                    connection.execute(
                        "UPDATE field_counts SET n = n - 1 WHERE collection = %s AND field = %s AND value = %s",
                        (collection, field, before),
                    )
                if after is not None:
                    connection.execute(
                        "INSERT INTO field_counts (collection, field, value, n) VALUES (%s, %s, %s, 1)"
                        " ON CONFLICT (collection, field, value) DO UPDATE SET n = field_counts.n + 1",
                        (collection, field, after),
                    )
            connection.execute(
                "INSERT INTO documents (collection, key, doc, seq, counted, listed) VALUES (%s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (collection, key) DO UPDATE"
                " SET doc = EXCLUDED.doc, seq = EXCLUDED.seq, counted = EXCLUDED.counted, listed = EXCLUDED.listed",
                (
                    collection,
                    key,
                    Jsonb(document),
                    seq,
                    Jsonb(counted),
                    Jsonb({f: v for f, v in values.items() if v is not None}),
                ),
            )

    @staticmethod
    def _move_between_lists(
        connection: psycopg.Connection, collection: str, key: str, old: dict[str, str], new: dict[str, str | None]
    ) -> None:
        """The row's `listed_values` for the fields whose value changed (the caller's transaction)."""
        changed = [f for f, v in new.items() if old.get(f) != v]
        if not changed:
            return
        for field in changed:
            if new[field] is None:
                connection.execute(
                    "DELETE FROM listed_values WHERE collection = %s AND field = %s AND key = %s", (collection, field, key)
                )
            else:
                connection.execute(
                    "INSERT INTO listed_values (collection, field, key, value, entered)"
                    " VALUES (%s, %s, %s, %s, nextval('listed_values_entered')) ON CONFLICT (collection, field, key)"
                    " DO UPDATE SET value = EXCLUDED.value, entered = EXCLUDED.entered",
                    (collection, field, key, new[field]),
                )

    def delete_collection(self, collection: str) -> None:
        """Remove a collection entirely (the benchmark's scratch collections)."""
        _check(collection)
        with self._transaction() as connection:
            for table in ("documents", "collection_totals", "field_counts", "listed_values", "list_coverage"):
                connection.execute(f"DELETE FROM {table} WHERE collection = %s", (collection,))


def _check(collection: str, key: str | None = None, sort_key: str | None = None) -> None:
    """The JSON store's name rules, so that both stores accept and refuse the same names."""
    if not KEY_PATTERN.match(collection):
        raise ValueError(f"invalid collection name {collection!r}")
    if key is not None and not KEY_PATTERN.match(key):
        raise ValueError(f"invalid key {key!r}")
    if sort_key is not None and not SORT_KEY_PATTERN.match(sort_key):
        raise ValueError(f"invalid sort key {sort_key!r}")
