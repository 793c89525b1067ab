"""How long a list page and the counts take as a collection grows: prints a table.

    .venv/bin/python store_bench.py                        # JSON files, 100 / 10,000 / 100,000 records
    DATABASE_URL=postgresql://... .venv/bin/python store_bench.py   # the same on PostgreSQL, beside JSON

Each size is filled once into a temporary folder (or a fresh PostgreSQL schema
namespace: a collection name per run) through the store's own `put`; fsync is
turned off while filling the JSON folder only, to fill 100,000 records in
minutes (the pages are measured with it on, and reading never fsyncs). Then the
first page, a page in the middle and `count_by` are timed, median of 50 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from contextlib import contextmanager
from unittest import mock

from store import JsonStore

DECISIONS = ("pre_approved", "conditional", "denied", "denied_compliance")


@contextmanager
def no_fsync():
    with mock.patch("os.fsync", lambda _fd: None):
        yield


def fill(store, collection: str, start: int, stop: int) -> None:
    for n in range(start, stop):
        store.put(collection, f"rec-{n:07d}", {"n": n, "decision": DECISIONS[n % 4], "pad": "x" * 200},
                  sort_key=f"{n:010d}")


def median_ms(action, runs: int = 50) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def measure(name: str, store, collection: str, sizes: list[int], fast_fill) -> list[tuple]:
    rows, filled = [], 0
    for size in sizes:
        with fast_fill():
            fill(store, collection, filled, size)
        filled = size
        first = median_ms(lambda: store.list_recent(collection, 0, 20))
        middle = median_ms(lambda: store.list_recent(collection, size // 2, 20))
        counts = median_ms(lambda: store.count_by(collection, "decision"))
        page, total = store.list_recent(collection, 0, 20)
        assert total == size and page[0]["n"] == size - 1, (total, page[0]["n"])
        assert sum(store.count_by(collection, "decision").values()) == size
        rows.append((name, size, first, middle, counts))
        print(f"{name:10} {size:>8,} records: first page {first:7.3f} ms, middle page {middle:7.3f} ms, "
              f"count_by {counts:7.3f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,10000,100000", help="record counts to measure at, ascending")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        json_store = JsonStore(folder, counted_fields={"bench": ("decision",)})
        rows = measure("json", json_store, "bench", sizes, no_fsync)
    if os.environ.get("DATABASE_URL"):
        from pg_store import PostgresStore

        collection = f"bench-{uuid.uuid4().hex[:8]}"
        pg = PostgresStore(os.environ["DATABASE_URL"], counted_fields={collection: ("decision",)})
        try:
            rows += measure("postgresql", pg, collection, sizes, contextmanager(lambda: (yield)))
            pg.delete_collection(collection)
        finally:
            pg.close()
    for name in {row[0] for row in rows}:
        mine = [row for row in rows if row[0] == name]
        print(f"{name}: first page at {mine[-1][1]:,} / at {mine[0][1]:,} records = {mine[-1][2] / mine[0][2]:.2f}x")


if __name__ == "__main__":
    main()
