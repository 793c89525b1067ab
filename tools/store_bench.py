"""How long a list page and the counts take as a collection grows: prints a table.

    .venv/bin/python -m tools.store_bench                        # JSON files, 100 / 10,000 / 100,000 records
    DATABASE_URL=postgresql://... .venv/bin/python -m tools.store_bench   # the same on PostgreSQL, beside JSON
    .venv/bin/python -m tools.store_bench --writes 300           # what one write of a listed record costs on this disk

--writes N times N `put`s of new listed records and N rewrites of them (fsync
on, in a temporary folder under DATA_DIR), counts the fsync calls per put, and
times five small files fsynced one after another against all at once, and
creating a file against fsyncing it, so the
store's write can be judged on the disk it runs on (medians; the machine's
other work shows as noise).

Each size is filled once into a temporary folder (or a fresh PostgreSQL schema
namespace: a collection name per run) through the store's own `put`; fsync is
turned off while filling the JSON folder only, to fill 100,000 records in
minutes (the pages are measured with it on, and reading never fsyncs). Then the
first page, a page in the middle, `count_by`, and the first and tenth pages of
one decision's list (`list_by`) are timed, median of 50 runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from unittest import mock

from core.store.files import JsonStore

DECISIONS = ("pre_approved", "conditional", "denied", "denied_compliance")


@contextmanager
def no_fsync():
    with mock.patch("os.fsync", lambda _fd: None):
        yield


def fill(store, collection: str, start: int, stop: int) -> None:
    for n in range(start, stop):
        store.put(collection, f"rec-{n:07d}", {"n": n, "decision": DECISIONS[n % 4], "pad": "x" * 200}, sort_key=f"{n:010d}")


def median_ms(action, runs: int = 50) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        action()
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


@contextmanager
def nothing_to_change() -> Iterator[None]:
    yield


def measure(name: str, store, collection: str, sizes: list[int], fast_fill) -> list[tuple]:
    rows, filled = [], 0
    for size in sizes:
        with fast_fill():
            fill(store, collection, filled, size)
        filled = size
        first = median_ms(lambda: store.list_recent(collection, 0, 20))
        middle = median_ms(lambda: store.list_recent(collection, size // 2, 20))
        counts = median_ms(lambda: store.count_by(collection, "decision"))
        # A filter's page (the list of one value, a quarter of the records): the first, and the tenth.
        by_value = median_ms(lambda: store.list_by(collection, "decision", "denied", 0, 20))
        by_value_10 = median_ms(lambda: store.list_by(collection, "decision", "denied", 180, 20))
        assert [d["decision"] for d in store.list_by(collection, "decision", "denied", 0, 20)] == ["denied"] * min(20, size // 4)
        page, total = store.list_recent(collection, 0, 20)
        assert total == size and page[0]["n"] == size - 1, (total, page[0]["n"])
        assert sum(store.count_by(collection, "decision").values()) == size
        rows.append((name, size, first, middle, counts))
        print(
            f"{name:10} {size:>8,} records: first page {first:7.3f} ms, middle page {middle:7.3f} ms, count_by {counts:7.3f} ms,"
            f" one decision's first page {by_value:7.3f} ms, its tenth page {by_value_10:7.3f} ms",
            flush=True,
        )
    return rows


def percentile_ms(times: list[float], pct: int) -> float:
    return sorted(times)[min(len(times) - 1, len(times) * pct // 100)] * 1000


def measure_writes(count: int, folder: str) -> None:
    store = JsonStore(folder, counted_fields={"bench": ("decision",)}, listed_by={"bench": ("decision",)})  # as an order's status
    fsyncs = []
    real_fsync = os.fsync

    def counting_fsync(fd):
        fsyncs.append(fd)
        real_fsync(fd)

    for label in ("new listed record", "rewrite, nothing counted changes"):  # the same keys, twice
        times = []
        with mock.patch("os.fsync", counting_fsync):
            fsyncs.clear()
            for n in range(count):
                began = time.perf_counter()
                store.put(
                    "bench", f"rec-{n:07d}", {"n": n, "decision": DECISIONS[n % 4], "pad": "x" * 1200}, sort_key=f"{n:010d}"
                )
                times.append(time.perf_counter() - began)
        print(
            f"put, {label:34} p50 {statistics.median(times) * 1000:6.2f} ms  p95 {percentile_ms(times, 95):6.2f} ms"
            f"  fsync calls per put {len(fsyncs) / count:.1f}",
            flush=True,
        )
    files = os.path.join(folder, "fsync-test")
    os.makedirs(files)
    with ThreadPoolExecutor(max_workers=4) as pool:
        for label, sync in (
            ("one after another", lambda fds: list(map(os.fsync, fds))),
            ("all at once (threads)", lambda fds: list(pool.map(os.fsync, fds))),
        ):
            times = []
            for n in range(count):
                fds = [os.open(os.path.join(files, f"{label[:3]}-{n}-{i}"), os.O_WRONLY | os.O_CREAT, 0o600) for i in range(5)]
                for fd in fds:
                    os.write(fd, b"x" * 300)
                began = time.perf_counter()
                sync(fds)
                times.append(time.perf_counter() - began)
                for fd in fds:
                    os.close(fd)
            print(
                f"5 new files fsynced {label:23} p50 {statistics.median(times) * 1000:6.2f} ms"
                f"  p95 {percentile_ms(times, 95):6.2f} ms",
                flush=True,
            )
    creates, syncs = [], []
    for n in range(count):
        began = time.perf_counter()
        fd = os.open(os.path.join(files, f"new-{n}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        creates.append(time.perf_counter() - began)
        os.write(fd, b"x" * 300)
        began = time.perf_counter()
        os.fsync(fd)
        syncs.append(time.perf_counter() - began)
        os.close(fd)
    print(
        f"creating one new file                       p50 {statistics.median(creates) * 1000:6.2f} ms;"
        f" fsyncing it p50 {statistics.median(syncs) * 1000:6.2f} ms",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,10000,100000", help="record counts to measure at, ascending")
    parser.add_argument("--writes", type=int, metavar="N", help="time N writes instead of the pages (see above)")
    args = parser.parse_args()
    if args.writes:
        with tempfile.TemporaryDirectory(dir=os.environ.get("DATA_DIR")) as folder:
            measure_writes(args.writes, folder)
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        json_store = JsonStore(folder, counted_fields={"bench": ("decision",)}, listed_by={"bench": ("decision",)})
        rows = measure("json", json_store, "bench", sizes, no_fsync)
    if os.environ.get("DATABASE_URL"):
        from core.store.postgres import PostgresStore

        collection = f"bench-{uuid.uuid4().hex[:8]}"
        pg = PostgresStore(
            os.environ["DATABASE_URL"], counted_fields={collection: ("decision",)}, listed_by={collection: ("decision",)}
        )
        try:
            rows += measure("postgresql", pg, collection, sizes, nothing_to_change)
            pg.delete_collection(collection)
        finally:
            pg.close()
    for name in {row[0] for row in rows}:
        mine = [row for row in rows if row[0] == name]
        print(f"{name}: first page at {mine[-1][1]:,} / at {mine[0][1]:,} records = {mine[-1][2] / mine[0][2]:.2f}x")


if __name__ == "__main__":
    main()
