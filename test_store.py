"""The JSON store: atomic, idempotent, O(1) writes, safe for several processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest

from store import JsonStore

PROCESSES = 4
WRITES_PER_PROCESS = 50
READERS = 2
HOT_RECORDS = 3
HOT_PADDING = 200_000  # big enough that writing one takes several system calls


def test_put_get_and_newest_first_listing(tmp_path):
    store = JsonStore(tmp_path)
    for n in range(5):
        store.put("things", f"key-{n}", {"n": n}, sort_key=f"2026-11-23T0{n}0000Z")
    page, total = store.list_recent("things", offset=1, limit=2)
    assert total == 5
    assert [doc["n"] for doc in page] == [3, 2]
    assert store.get("things", "key-0") == {"n": 0}
    assert store.get("things", "missing") is None
    assert store.list_recent("nothing-here") == ([], 0)


def test_repeated_put_is_one_record(tmp_path):
    store = JsonStore(tmp_path)
    for _ in range(3):
        store.put("things", "same", {"v": 1}, sort_key="2026-11-23T000000Z")
    assert store.list_recent("things") == ([{"v": 1}], 1)


@pytest.mark.parametrize("key", ["../escape", "a/b", "", ".hidden", "x" * 300])
def test_keys_cannot_escape_the_folder(tmp_path, key):
    with pytest.raises(ValueError):
        JsonStore(tmp_path).put("things", key, {}, sort_key="1")


def test_a_failed_write_leaves_the_old_document_and_no_temp_file(tmp_path, monkeypatch):
    store = JsonStore(tmp_path)
    store.put("things", "k", {"v": "old"}, sort_key="1")

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.put("things", "k", {"v": "new"}, sort_key="1")
    monkeypatch.undo()
    assert store.get("things", "k") == {"v": "old"}
    assert [p.name for p in (tmp_path / "things").iterdir() if p.name.endswith(".tmp")] == []


def test_a_write_never_enumerates_other_records(tmp_path, monkeypatch):
    store = JsonStore(tmp_path)
    for n in range(200):
        store.put("things", f"k{n}", {"n": n}, sort_key=f"{n:05d}")

    def forbidden(*_args, **_kwargs):
        raise AssertionError("a write listed the folder: cost would grow with the number of records")

    monkeypatch.setattr(os, "listdir", forbidden)
    monkeypatch.setattr(os, "scandir", forbidden)
    store.put("things", "k-new", {"n": -1}, sort_key="99999")
    store.update("things", "k7", lambda doc: {**doc, "seen": True})
    monkeypatch.undo()
    assert store.get("things", "k7") == {"n": 7, "seen": True}


def _hammer(root: str, worker: int, start) -> None:
    store = JsonStore(root)
    start.wait(30)
    for n in range(WRITES_PER_PROCESS):
        store.update("counters", "shared", lambda doc: {"count": (doc or {"count": 0})["count"] + 1})
        store.put("records", f"w{worker}-{n}", {"worker": worker, "n": n, "pad": "x" * 2000}, sort_key=f"{worker}-{n:04d}")
        # The same few records, rewritten by every process: the documents a reader is most likely to catch mid-write.
        store.put("hot", f"h{n % HOT_RECORDS}", {"worker": worker, "n": n, "pad": "y" * HOT_PADDING})


def _read_while_writing(root: str, start, writers_done, results) -> None:
    """Parse every document again and again until the writers are done; report what was seen."""
    folder = Path(root)
    start.wait(30)
    reads = torn = 0
    versions = set()
    while not writers_done.is_set():
        for path in folder.rglob("*.json"):
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            reads += 1
            try:
                document = json.loads(text)
            except json.JSONDecodeError:
                torn += 1
                continue
            if path.parent.name == "hot":
                versions.add((document["worker"], document["n"]))
    results.put((reads, torn, len(versions)))


def test_several_processes_lose_no_update_and_readers_never_see_a_torn_write(tmp_path):
    """Writers in four processes, readers in two more parsing every file while they write."""
    context = multiprocessing.get_context("spawn")
    start, writers_done, results = context.Event(), context.Event(), context.Queue()
    writers = [context.Process(target=_hammer, args=(str(tmp_path), w, start)) for w in range(PROCESSES)]
    readers = [
        context.Process(target=_read_while_writing, args=(str(tmp_path), start, writers_done, results))
        for _ in range(READERS)
    ]
    for process in writers + readers:
        process.start()
    start.set()
    for process in writers:
        process.join(60)
        assert process.exitcode == 0
    writers_done.set()
    seen = [results.get(timeout=30) for _ in readers]
    for process in readers:
        process.join(30)
        assert process.exitcode == 0

    for reads, torn, versions in seen:
        assert torn == 0, f"a reader parsed {torn} torn documents out of {reads} reads during the writes"
        # Proof that reading overlapped writing: each reader saw several versions of the hot records.
        assert reads > 0 and versions > HOT_RECORDS, f"{reads} reads saw {versions} versions: no overlap with the writes"
    store = JsonStore(tmp_path)
    assert store.get("counters", "shared") == {"count": PROCESSES * WRITES_PER_PROCESS}
    _, total = store.list_recent("records", limit=0)
    assert total == PROCESSES * WRITES_PER_PROCESS
    for path in Path(tmp_path).rglob("*.json"):
        json.loads(path.read_text())
    assert list(Path(tmp_path).rglob("*.tmp")) == []
