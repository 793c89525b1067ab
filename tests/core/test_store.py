"""The JSON store: atomic, idempotent, O(1) writes, safe for several processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import pytest

from core.store.file_lists import head_name
from core.store.files import LOCK_STRIPES, JsonStore

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
    with pytest.raises(ValueError, match=re.escape(f"invalid key {key!r}")):
        JsonStore(tmp_path).put("things", key, {}, sort_key="1")


def test_bad_collection_names_and_sort_keys_are_refused_by_name(tmp_path):
    store = JsonStore(tmp_path)
    with pytest.raises(ValueError, match=re.escape("invalid collection name '../up'")):
        store.put("../up", "k", {})
    with pytest.raises(ValueError, match=re.escape("invalid sort key 'a/b'")):
        store.put("things", "k", {}, sort_key="a/b")


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


def test_every_file_is_fsynced_before_its_rename_and_durable_before_the_write_returns(tmp_path, monkeypatch):
    """A record is reported written only once it is on disk: each file's content is fsynced
    before the rename that makes it visible, and each rename's folder is fsynced after it.
    The renames keep their order (document, journal, index files), each durable before the
    next, so a crash at any point leaves a record its index can be redone from."""
    store = JsonStore(tmp_path, counted_fields={"applications": ("decision",)}, listed_by={"applications": ("decision",)})
    store.put("applications", "a0", {"decision": "denied"}, sort_key="2025")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: real_fsync(fd) or events.append(("fsync", os.fstat(fd).st_ino)))
    monkeypatch.setattr(
        os, "replace", lambda src, dst: events.append(("rename", os.stat(src).st_ino, Path(dst))) or real_replace(src, dst)
    )
    store.put("applications", "a1", {"decision": "pre_approved"}, sort_key="2026")
    monkeypatch.undo()

    folder, index = tmp_path / "applications", tmp_path / "applications" / "_index"
    renames = [(n, event[1], event[2]) for n, event in enumerate(events) if event[0] == "rename"]
    renamed = [target.relative_to(folder).as_posix() for _n, _ino, target in renames]
    assert renamed[:2] == ["a1.json", "_index/journal.json"] and renamed[-1] == "_index/state.json"
    # The entry, its number, and the head of its list by decision (a new value: no neighbour to relink).
    assert sorted(renamed[2:-1]) == sorted(["_index/2.seq", "_index/a1.key", f"_index/{head_name('decision', 'pre_approved')}"])
    synced = (
        lambda inode, after=-1, before=len(events): any(  # noqa: E731
            event == ("fsync", inode) for event in events[after + 1 : before]
        )
    )
    for n, inode, target in renames:
        assert synced(inode, before=n), f"{target.name} renamed before its content was fsynced"
    folder_synced_at = lambda folder_path, after: next(  # noqa: E731
        m for m in range(after + 1, len(events)) if events[m] == ("fsync", os.stat(folder_path).st_ino)
    )
    document, journal, *index_files = renames
    assert folder_synced_at(folder, document[0]) < journal[0], "the journal became visible before the document was durable"
    assert folder_synced_at(index, journal[0]) < index_files[0][0], "the index changed before its journal was durable"
    assert folder_synced_at(index, index_files[-1][0]) < len(events)  # and the index files, before put returned
    assert store.count_by("applications", "decision") == {"denied": 1, "pre_approved": 1}
    assert not (index / "journal.json").exists() and not list(folder.glob("**/.*.tmp"))


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
        context.Process(target=_read_while_writing, args=(str(tmp_path), start, writers_done, results)) for _ in range(READERS)
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


def test_default_page_is_twenty_newest_records(tmp_path):
    store = JsonStore(tmp_path)
    for n in range(25):
        store.put("things", f"k{n}", {"n": n}, sort_key=f"{n:05d}")
    page, total = store.list_recent("things")
    assert total == 25
    assert [doc["n"] for doc in page] == list(range(24, 4, -1))


def test_list_all_returns_every_document_by_key_and_skips_temporary_files(tmp_path):
    store = JsonStore(tmp_path)
    assert store.list_all("events") == []
    for key in ("b", "a", "c"):
        store.put("events", key, {"key": key}, sort_key="1")
    (tmp_path / "events" / ".a.json.x1.tmp").write_text("{torn")  # a write in progress elsewhere
    (tmp_path / "events" / ".hidden.json").write_text("{torn")
    assert store.list_all("events") == [{"key": "a"}, {"key": "b"}, {"key": "c"}]


def test_documents_are_stored_indented_with_sorted_keys(tmp_path):
    """Readable files, and the same content gives the same bytes whatever the key order."""
    store = JsonStore(tmp_path)
    store.put("things", "one", {"b": 1, "a": {"d": 2, "c": 3}})
    store.put("things", "two", {"a": {"c": 3, "d": 2}, "b": 1})
    first, second = ((tmp_path / "things" / f"{key}.json").read_text() for key in ("one", "two"))
    assert first == second == '{\n  "a": {\n    "c": 3,\n    "d": 2\n  },\n  "b": 1\n}'


def test_the_temporary_file_is_hidden_next_to_the_record(tmp_path, monkeypatch):
    """os.replace is atomic only within one file system, so the temporary file sits in the record's folder."""
    store = JsonStore(tmp_path)
    renames = []

    def record_and_fail(source, target):
        renames.append((Path(source), Path(target)))
        raise OSError("stop before the rename")

    monkeypatch.setattr(os, "replace", record_and_fail)
    with pytest.raises(OSError):
        store.put("things", "k", {"v": 1})
    [(source, target)] = renames
    assert target == tmp_path / "things" / "k.json"
    assert source.parent == target.parent
    assert source.name.startswith(".k.json.") and source.name.endswith(".tmp")


def test_locks_are_a_fixed_set_of_numbered_files_under_locks(tmp_path):
    store = JsonStore(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["_locks"]
    for n in range(300):
        store.put("things", f"k{n}", {"n": n})
    names = sorted(p.name for p in (tmp_path / "_locks").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["_locks", "things"]
    assert all(re.fullmatch(r"\d+\.lock", name) and int(name.split(".")[0]) < LOCK_STRIPES for name in names), names
    assert LOCK_STRIPES // 2 < len(names) <= LOCK_STRIPES  # striped by key: 300 keys spread over the stripes


def test_no_file_or_folder_of_the_store_is_open_to_other_users(tmp_path):
    """Under the umask `make run` sets (077) nothing is readable by others; the lock files, whose mode
    filelock sets itself, are the store's own to keep private whatever the umask."""
    old = os.umask(0o022)
    try:
        store = JsonStore(tmp_path / "store")
        store.put("applications", "a.1", {"status": "decided"})
        store.update("orders", "o1", lambda doc: {**(doc or {}), "status": "placed"})
        locks = [path for path in (tmp_path / "store").rglob("*") if path.name.endswith(".lock")]
        assert len(locks) >= 2  # a record's stripe and an index
        assert {oct(path.stat().st_mode & 0o777) for path in locks} == {oct(0o600)}
    finally:
        os.umask(old)
    os.umask(0o077)
    try:
        store = JsonStore(tmp_path / "private")
        store.put("applications", "a.1", {"status": "decided"})
        store.update("orders", "o1", lambda doc: {**(doc or {}), "status": "placed"})
        opened = [path for path in (tmp_path / "private").rglob("*") if path.stat().st_mode & 0o077]
        assert not opened, opened
    finally:
        os.umask(old)


def test_update_waits_for_the_documents_lock(tmp_path):
    """`update` and `locked` take the same lock for the same document, so a change
    spanning several documents (inventory) never interleaves with an update."""
    store = JsonStore(tmp_path)
    store.put("things", "k", {"n": 0})
    with ThreadPoolExecutor(max_workers=1) as pool:
        with store.locked("things", "k"):
            pending = pool.submit(store.update, "things", "k", lambda doc: {"n": doc["n"] + 1})
            with pytest.raises(FutureTimeout):
                pending.result(timeout=0.5)  # still waiting: the lock is held
            store.write_locked("things", "k", {"n": 10})
        assert pending.result(timeout=10) == {"n": 11}


def test_a_lock_taken_in_one_thread_can_be_released_in_another(tmp_path):
    """The worker runs activities on a thread pool; a lock object may change threads."""
    store = JsonStore(tmp_path)
    lock = store.locked("things", "k")
    with ThreadPoolExecutor(max_workers=1) as first, ThreadPoolExecutor(max_workers=1) as second:
        first.submit(lock.acquire).result(timeout=10)
        second.submit(lock.release).result(timeout=10)
    assert not lock.is_locked
    assert store.update("things", "k", lambda doc: {"free": True}) == {"free": True}


# --- listing and counts that do not grow with the collection (issue 10) ---------


def test_counts_by_field_move_with_a_documents_status(tmp_path):
    store = JsonStore(tmp_path, counted_fields={"orders": ("status",)})
    store.put("orders", "o1", {"status": "pending"}, sort_key="1")
    store.put("orders", "o2", {"status": "pending"}, sort_key="2")
    assert store.count_by("orders", "status") == {"pending": 2}
    store.put("orders", "o1", {"status": "shipped"}, sort_key="1")
    store.update("orders", "o2", lambda doc: {**doc, "status": "cancelled"})  # no sort key: still counted
    assert store.count_by("orders", "status") == {"shipped": 1, "cancelled": 1}
    assert store.list_recent("orders") == ([{"status": "cancelled"}, {"status": "shipped"}], 2)


def test_a_retried_put_counts_once(tmp_path):
    store = JsonStore(tmp_path, counted_fields={"applications": ("decision",)})
    for _attempt in range(3):
        store.put("applications", "a1", {"decision": "denied"}, sort_key="2026")
    assert store.count_by("applications", "decision") == {"denied": 1}
    assert store.list_recent("applications") == ([{"decision": "denied"}], 1)


def test_uncounted_fields_are_refused_by_name(tmp_path):
    store = JsonStore(tmp_path, counted_fields={"orders": ("status",)})
    with pytest.raises(ValueError, match="'orders' is not counted by 'total'"):
        store.count_by("orders", "total")


def test_a_crash_in_the_middle_of_an_index_change_is_redone_once(tmp_path, monkeypatch):
    """Killed after the journal and the index entry, before the totals: the next reader
    finishes the change; the activity's retry then counts nothing twice."""
    store = JsonStore(tmp_path, counted_fields={"orders": ("status",)})
    store.put("orders", "o1", {"status": "pending"}, sort_key="1")
    store.put("orders", "o2", {"status": "pending"}, sort_key="2")
    real_replace = os.replace

    def crash_at_the_commit(src, dst):
        if Path(dst).name == "state.json":
            raise OSError("killed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_at_the_commit)
    with pytest.raises(OSError):
        store.put("orders", "o1", {"status": "shipped"}, sort_key="1")
    monkeypatch.setattr(os, "replace", real_replace)
    index = tmp_path / "orders" / "_index"
    assert (index / "journal.json").exists() and not list(index.glob(".*.tmp"))  # journaled; no stray temporary file
    fresh = JsonStore(tmp_path, counted_fields={"orders": ("status",)})  # another process: it redoes the change
    assert fresh.count_by("orders", "status") == {"shipped": 1, "pending": 1}
    monkeypatch.setattr(os, "replace", crash_at_the_commit)
    with pytest.raises(OSError):
        store.put("orders", "o3", {"status": "pending"}, sort_key="3")  # a new record, crashed too
    monkeypatch.setattr(os, "replace", real_replace)
    for _attempt in range(2):  # the retries
        store.put("orders", "o1", {"status": "shipped"}, sort_key="1")
        store.put("orders", "o3", {"status": "pending"}, sort_key="3")
    assert store.count_by("orders", "status") == {"shipped": 1, "pending": 2}
    assert store.list_recent("orders") == ([{"status": "pending"}, {"status": "pending"}, {"status": "shipped"}], 3)
    # The lists by status were in the same journal: redone with it, each record in one list once.
    assert store.list_by("orders", "status", "pending") == [{"status": "pending"}, {"status": "pending"}]
    assert store.list_by("orders", "status", "shipped") == [{"status": "shipped"}]


def test_a_journal_an_older_version_left_is_redone(tmp_path):
    """Before the lists by value, a journal named the key, its entry and the totals; one left by a
    crash just before an upgrade is still applied."""
    store = JsonStore(tmp_path, counted_fields={"orders": ("status",)}, listed_by={"orders": ("status",)})
    store.put("orders", "o1", {"status": "pending"}, sort_key="1")
    index = tmp_path / "orders" / "_index"
    (tmp_path / "orders" / "o2.json").write_text(json.dumps({"status": "pending"}))
    journal = {
        "key": "o2",
        "entry": {"seq": 2, "counted": {"status": "pending"}},
        "state": {"total": 2, "counts": {"status": {"pending": 2}}},
    }
    (index / "journal.json").write_text(json.dumps(journal))
    assert store.list_recent("orders") == ([{"status": "pending"}, {"status": "pending"}], 2)
    assert store.count_by("orders", "status") == {"pending": 2} and not (index / "journal.json").exists()


def test_a_page_of_a_list_by_value_reads_its_own_entries_only(tmp_path, monkeypatch):
    """A page of one status walks the list from its head: its entries and documents, never the folder."""
    store = JsonStore(tmp_path, listed_by={"things": ("colour",)})
    for n in range(300):
        store.put("things", f"k{n}", {"n": n, "colour": "red" if n % 3 else "blue"}, sort_key=f"{n:05d}")
    opened = []
    real_read_text = Path.read_text
    monkeypatch.setattr(os, "listdir", lambda *_a: pytest.fail("a page listed a folder"))
    monkeypatch.setattr(os, "scandir", lambda *_a: pytest.fail("a page scanned a folder"))
    monkeypatch.setattr(Path, "read_text", lambda path, *a, **k: opened.append(path.name) or real_read_text(path, *a, **k))
    page = store.list_by("things", "colour", "BLUE", offset=20, limit=10)
    monkeypatch.undo()
    assert [d["n"] for d in page] == list(range(237, 207, -3))
    assert len(opened) <= 3 + 30 + 10, opened  # the marker, the head; 30 entries; 10 documents


def test_a_page_reads_only_its_own_entries(tmp_path, monkeypatch):
    """A page never lists a folder and opens a bounded number of files, however many records exist."""
    store = JsonStore(tmp_path)
    for n in range(300):
        store.put("things", f"k{n}", {"n": n}, sort_key=f"{n:05d}")
    opened = []
    real_read_text = Path.read_text
    monkeypatch.setattr(os, "listdir", lambda *_a: pytest.fail("a page listed a folder"))
    monkeypatch.setattr(os, "scandir", lambda *_a: pytest.fail("a page scanned a folder"))
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: opened.append(self.name) or real_read_text(self, *a, **k))
    page, total = store.list_recent("things", offset=100, limit=20)
    assert total == 300 and [d["n"] for d in page] == list(range(199, 179, -1))
    assert len(opened) <= 1 + 2 * 20, opened  # the totals, then a number and a document per record


def _count_racer(root: str, worker: int, start) -> None:
    store = JsonStore(root, counted_fields={"orders": ("status",)})
    start.wait()
    for n in range(25):
        key = f"o{n}"  # every process writes the same 25 orders: retries from several hosts
        store.put("orders", key, {"status": "placed"}, sort_key=f"{n:03d}")
        store.put("orders", key, {"status": f"done-{n % 2}"}, sort_key=f"{n:03d}")


def test_several_processes_writing_the_same_orders_count_each_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    workers = [context.Process(target=_count_racer, args=(str(tmp_path), w, start)) for w in range(3)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    store = JsonStore(tmp_path, counted_fields={"orders": ("status",)})
    counts = store.count_by("orders", "status")
    assert sum(counts.values()) == 25 and store.list_recent("orders", limit=100)[1] == 25, counts
    assert sorted(int(p.stem) for p in (tmp_path / "orders" / "_index").glob("*.seq")) == list(range(1, 26))


def test_newest_in_group_reads_a_pointer_never_the_folder(tmp_path, monkeypatch):
    store = JsonStore(tmp_path)
    for n in range(50):
        store.put("applications", f"loan-{n:02d}.run-a", {"n": n, "run": "a"}, sort_key=f"{n:05d}")
    store.put("applications", "loan-07.run-b", {"n": 7, "run": "b"}, sort_key="00100")
    assert store.newest_in_group("applications", "loan-07") == {"n": 7, "run": "b"}  # the first call: pointers exist
    monkeypatch.setattr(os, "listdir", lambda *_a: pytest.fail("newest_in_group listed a folder"))
    monkeypatch.setattr(os, "scandir", lambda *_a: pytest.fail("newest_in_group listed a folder"))
    assert store.newest_in_group("applications", "loan-07") == {"n": 7, "run": "b"}
    assert store.newest_in_group("applications", "loan-49") == {"n": 49, "run": "a"}
    assert store.newest_in_group("applications", "loan-99") is None


def test_a_group_is_the_key_before_its_last_dot_and_only_grouped_collections_have_one(tmp_path):
    store = JsonStore(tmp_path)
    store.put("applications", "loan-a.run-1", {"run": 1}, sort_key="1")
    store.put("applications", "loan-a.run-1.note", {"note": 1}, sort_key="2")  # group "loan-a.run-1"
    store.put("applications", "loan-b", {"no": "dot"}, sort_key="3")  # no group
    assert store.newest_in_group("applications", "loan-a") == {"run": 1}
    assert store.newest_in_group("applications", "loan-a.run-1") == {"note": 1}
    assert store.newest_in_group("applications", "loan-b") is None
    with pytest.raises(ValueError, match="'orders' is not grouped"):
        store.newest_in_group("orders", "o1")
    with pytest.raises(ValueError, match="invalid key"):
        store.newest_in_group("applications", "../loan-a")


def test_a_folder_written_before_the_group_pointers_gets_them_once(tmp_path, monkeypatch):
    old = JsonStore(tmp_path, grouped=())  # what the store wrote before it kept the pointers
    old.put("applications", "loan-x.run-1", {"run": 1}, sort_key="1")
    old.put("applications", "loan-y.run-1", {"run": "y"}, sort_key="2")
    old.put("applications", "loan-x.run-2", {"run": 2}, sort_key="3")
    assert not list((tmp_path / "applications" / "_index").glob("*.newest"))
    store = JsonStore(tmp_path)
    store.put("applications", "loan-z.run-1", {"run": "z"}, sort_key="4")  # written after the upgrade, before a read
    assert store.newest_in_group("applications", "loan-x") == {"run": 2}
    assert store.newest_in_group("applications", "loan-z") == {"run": "z"}
    listings = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path: listings.append(path) or real_listdir(path))
    assert JsonStore(tmp_path).newest_in_group("applications", "loan-y") == {"run": "y"}
    assert listings == []  # done once for the folder, not per process or per call


def test_a_crash_before_the_group_pointer_is_redone_with_the_index_change(tmp_path, monkeypatch):
    store = JsonStore(tmp_path)
    store.put("applications", "loan-x.run-1", {"run": 1}, sort_key="1")
    assert store.newest_in_group("applications", "loan-x") == {"run": 1}
    real_replace = os.replace

    def crash_at_the_pointer(tmp, path):
        if str(path).endswith(".newest"):
            raise OSError("killed before the pointer")
        real_replace(tmp, path)

    monkeypatch.setattr(os, "replace", crash_at_the_pointer)
    with pytest.raises(OSError):
        store.put("applications", "loan-x.run-2", {"run": 2}, sort_key="2")
    monkeypatch.setattr(os, "replace", real_replace)
    # The journal is still there: the next reader redoes the whole change, the pointer included.
    assert JsonStore(tmp_path).newest_in_group("applications", "loan-x") == {"run": 2}


def test_a_record_moving_between_lists_rewrites_its_entry_the_one_pointing_at_it_and_the_heads(tmp_path, monkeypatch):
    """The cost of a status change does not grow with the lists: o3 leaves the middle of
    "processing" (o4 pointed at it, and now points past it) and becomes the head of "shipping"."""
    store = JsonStore(tmp_path, counted_fields={"orders": ("status",)}, listed_by={"orders": ("status",)})
    for n in range(1, 6):
        store.put("orders", f"o{n}", {"id": n, "status": "processing"}, sort_key=str(n))
    store.put("orders", "o0", {"id": 0, "status": "shipping"}, sort_key="0")
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: renamed.append(Path(dst).name) or real_replace(src, dst))
    store.update("orders", "o3", lambda doc: {**doc, "status": "shipping"})
    monkeypatch.undo()
    entries = sorted(name for name in renamed if name.endswith(".key"))
    heads = [name for name in renamed if name.endswith(".head")]
    assert entries == ["o3.key", "o4.key"] and heads == [head_name("status", "shipping")], renamed
    assert [d["id"] for d in store.list_by("orders", "status", "processing")] == [5, 4, 2, 1]
    assert [d["id"] for d in store.list_by("orders", "status", "shipping")] == [3, 0]
