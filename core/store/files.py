"""A JSON document store on the local file system, safe for several worker processes.

Layout under the root folder:
    <collection>/<key>.json                   one document per record
    <collection>/_index/state.json            how many records are listed, and the counts by field
    <collection>/_index/<n>.seq               the key of the n-th listed record (1, 2, ...)
    <collection>/_index/<key>.key             a listed record's number and the values it is counted under
    <collection>/_index/journal.json          an index change in progress (redo log), gone once applied
    <collection>/_index/<group>.newest        a grouped collection's newest listed key of each group
    <collection>/_index/groups.json           present once the group pointers cover every listed record
    <collection>/_index/.lock                 the collection's index lock
    _locks/<n>.lock                           a fixed set of lock files (lock striping)

Why it is built this way:
- One file per record keeps every write O(1), however many records exist.
- Writes go to a temporary file in the same folder, are fsynced, then
  `os.replace`d over the old file, and the folder is fsynced: a killed process
  leaves either the old or the new document, never a torn one.
- Read-modify-write runs under an inter-process file lock (`filelock`). Locks
  live in separate files, striped by key, so the lock never blocks a reader and
  the number of lock files stays fixed.
- `put` with the same content is a no-op in effect, so a retried activity never
  creates a second record.
- Listing and counting cost the same at 100 and at 100,000 records: a listed
  record gets a number when first written (under the collection's index lock),
  so a page newest first reads `limit` small files from the total down, never
  the folder; the counts by field (`count_by`) move on every write of the
  record that changes a counted value. The document is written first (it is
  the truth), then the index change is journaled (entry, number, totals, all
  absolute values) and applied; a crash in between is redone by the next
  writer or reader, and the retry (same key, same document) finds its entry
  and counts nothing twice. A rewrite that changes nothing counted takes no lock.
- A write is durable when it returns, and waits for the disk as few times as
  that order allows: the document (its file fsynced, renamed, its folder
  fsynced); then, under the index lock, the journal's and the index files'
  new versions are written to temporary files and fsynced at once, in
  parallel threads (the file system flushes them in one commit), then the
  journal is renamed and the folder fsynced, then the index files
  (`test_every_file_is_fsynced_before_its_rename_and_durable_before_the_write_returns`):
  five waits instead of eight, three of them under the lock instead of six.
- In a grouped collection (keys `<group>.<name>`, such as an application's
  `<workflow id>.<run id>`), the same index change also points the group at
  its newest listed key, so `newest_in_group` reads two small files, never the
  folder. A folder written before the pointers existed gets them once, at the
  first `newest_in_group` of the collection (one pass over its index entries).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from filelock import FileLock

from core.store.base import (
    DEFAULT_COUNTED_FIELDS,
    DEFAULT_GROUPED,
    KEY_PATTERN,
    SORT_KEY_PATTERN,
    count_value,
)

LOCK_STRIPES = 64
# filelock sets a lock file's mode itself (0644 by default, whatever the umask): another local
# user who could open one could flock it and hold every write of its stripe (issue 26).
LOCK_FILE_MODE = 0o600
POINTER_BATCH = 64  # pointers written at once by the one-time pass over an older folder
GROUPS_DONE = "groups.json"  # in `_index`: every listed record of the collection has its group's pointer


class JsonStore:
    """The `Store` contract on JSON files under one folder (see the module docstring)."""

    def __init__(
        self, root: Path | str, counted_fields: dict[str, tuple[str, ...]] | None = None, grouped: tuple[str, ...] | None = None
    ):
        self.root = Path(root)
        self.counted_fields = DEFAULT_COUNTED_FIELDS if counted_fields is None else counted_fields
        self.grouped = DEFAULT_GROUPED if grouped is None else tuple(grouped)
        self._index_mutexes: dict[Path, threading.Lock] = {}
        self._mutexes_guard = threading.Lock()
        (self.root / "_locks").mkdir(parents=True, exist_ok=True)

    # --- reads -------------------------------------------------------------

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(collection, key).read_text())
        except FileNotFoundError:
            return None

    def list_recent(self, collection: str, offset: int = 0, limit: int = 20) -> tuple[list[dict], int]:
        """One page of listed records (written with a sort key), newest first, and the total.

        Reads the totals and the page's entries only: the cost does not grow with the collection.
        """
        index = self._index(collection)
        self._recover_if_needed(index)
        total = _read_json(index / "state.json", {"total": 0})["total"]
        page = []
        for number in range(total - max(offset, 0), max(total - max(offset, 0) - max(limit, 0), 0), -1):
            try:
                key = (index / f"{number}.seq").read_text()
            except FileNotFoundError:
                continue
            record = self.get(collection, key)
            if record is not None:
                page.append(record)
        return page, total

    def count_by(self, collection: str, field: str) -> dict[str, int]:
        """How many listed records have each value of `field` (one of the collection's
        counted fields), for example {"pre_approved": 12, "denied": 3}."""
        if field not in self.counted_fields.get(collection, ()):
            raise ValueError(f"{collection!r} is not counted by {field!r}")
        index = self._index(collection)
        self._recover_if_needed(index)
        return dict(_read_json(index / "state.json", {"counts": {}}).get("counts", {}).get(field, {}))

    def newest_in_group(self, collection: str, group: str) -> dict[str, Any] | None:
        """The newest listed document (by first write, as the lists) whose key is `<group>.<name>`,
        in a grouped collection; None if the group has none. Reads a pointer, not the folder."""
        if collection not in self.grouped:
            raise ValueError(f"{collection!r} is not grouped")
        _checked_key(group)
        index = self._index(collection)
        self._recover_if_needed(index)
        if not (index / GROUPS_DONE).exists():
            self._point_every_group(index)
        pointer = _read_json(index / f"{group}.newest", None)
        return None if pointer is None else self.get(collection, pointer["key"])

    def list_all(self, collection: str) -> list[dict[str, Any]]:
        """Every document of a small collection (for example one order's events), by key."""
        folder = self._folder(collection)
        try:
            keys = sorted(n[: -len(".json")] for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []
        documents = (self.get(collection, key) for key in keys)
        return [d for d in documents if d is not None]

    # --- writes ------------------------------------------------------------

    def put(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        """Create or replace a document (idempotent)."""
        with self._lock(collection, key):  # as `update`, without reading the document it replaces
            self.write_locked(collection, key, document, sort_key)

    def update(
        self,
        collection: str,
        key: str,
        change: Callable[[dict[str, Any] | None], dict[str, Any]],
        sort_key: str | None = None,
    ) -> dict[str, Any]:
        """Read, change and write one document atomically across processes.

        `sort_key` (for example a submission timestamp) places the document in
        the newest-first listing. It must be the same on every retry, so the
        index marker is the same file.
        """
        if sort_key is not None and not SORT_KEY_PATTERN.match(sort_key):
            raise ValueError(f"invalid sort key {sort_key!r}")
        with self._lock(collection, key):
            document = change(self.get(collection, key))
            self.write_locked(collection, key, document, sort_key)
            return document

    def locked(self, collection: str, key: str) -> FileLock:
        """The inter-process lock of one document, for changes that span several
        documents (take it, then use `write_locked`); hold one at a time, or take
        them in a fixed order, to avoid deadlocks."""
        return self._lock(collection, key)

    def write_locked(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        """Write a document whose lock the caller holds (see `locked`)."""
        if sort_key is not None and not SORT_KEY_PATTERN.match(sort_key):
            raise ValueError(f"invalid sort key {sort_key!r}")
        # The document first, outside the index lock: concurrent writers' documents reach the
        # disk together, and the lock is held for the index change only.
        _atomic_write(self._path(collection, key), json.dumps(document, indent=2, sort_keys=True).encode())
        index = self._index(collection)
        entry_path = index / f"{key}.key"
        if sort_key is None and not entry_path.exists():
            return  # not listed: no index to keep
        counted = {field: count_value(document.get(field)) for field in self.counted_fields.get(collection, ())}
        # Most rewrites (a retry, a contact answer) change nothing counted: no index lock. The
        # entry only changes under this document's lock, which the caller holds.
        entry = _read_json(entry_path, None)
        if entry is not None and entry["counted"] == counted and not (index / "journal.json").exists():
            return
        with self._index_lock(index):
            self._recover(index)
            state = _read_json(index / "state.json", None) or {"total": 0, "counts": {}}
            entry = _read_json(entry_path, None)
            if entry is not None and entry["counted"] == counted:
                return
            new_state = {
                "total": state["total"] + (0 if entry else 1),
                "counts": {f: dict(v) for f, v in state["counts"].items()},
            }
            for field, value in counted.items():
                counts = new_state["counts"].setdefault(field, {})
                old = entry["counted"].get(field) if entry else None
                if old is not None:
                    counts[old] = counts.get(old, 0) - 1
                    if counts[old] <= 0:
                        del counts[old]
                if value is not None:
                    counts[value] = counts.get(value, 0) + 1
            new_entry = {"seq": entry["seq"] if entry else new_state["total"], "counted": counted}
            journal = {"key": key, "entry": new_entry, "state": new_state}
            # The journal and the index files are written and fsynced at once (one wait for the
            # disk, not four); the renames then go in the order that keeps a crash recoverable:
            # the journal, then the index files, each made durable by the folder's fsync.
            staged = _stage([(index / "journal.json", json.dumps(journal).encode()), *self._index_files(index, journal)])
            try:
                _commit(staged[:1])
                self._apply(index, journal, staged[1:])
            finally:
                _discard(staged)

    def _index_files(self, index: Path, journal: dict[str, Any]) -> list[tuple[Path, bytes]]:
        key, entry = journal["key"], journal["entry"]
        return [
            (index / f"{key}.key", json.dumps(entry).encode()),
            (index / f"{entry['seq']}.seq", key.encode()),
            *self._group_pointer(index, key, entry["seq"]),
            (index / "state.json", json.dumps(journal["state"]).encode()),
        ]

    def _apply(self, index: Path, journal: dict[str, Any], staged: list[tuple[Path, str]] | None = None) -> None:
        """Apply a journaled index change (`staged`: its files, already written and fsynced).
        Every file gets absolute values, so redoing it is harmless; the files share one folder,
        so one folder fsync makes them all durable."""
        if staged is None:
            staged = _stage(self._index_files(index, journal))
        try:
            _commit(staged)
        finally:
            _discard(staged)
        os.unlink(index / "journal.json")

    def _group_pointer(self, index: Path, key: str, seq: int) -> list[tuple[Path, bytes]]:
        """The pointer of the key's group at it, unless the group already has a newer one (index
        lock held). Decided from the files alone, so a redo does the same."""
        group = _group_of(key)
        if group is None or index.parent.name not in self.grouped:
            return []
        pointer = _read_json(index / f"{group}.newest", None)
        if pointer is None or pointer["seq"] < seq:
            return [(index / f"{group}.newest", json.dumps({"key": key, "seq": seq}).encode())]
        return []

    def _point_every_group(self, index: Path) -> None:
        """Once per collection written before the group pointers: point each group at its newest
        listed key, from the index entries (index lock held, so no listed write runs meanwhile)."""
        with self._index_lock(index):
            self._recover(index)
            if (index / GROUPS_DONE).exists():
                return  # another thread or process did it meanwhile
            newest: dict[Path, dict[str, Any]] = {}
            for name in os.listdir(index):
                if name.endswith(".key") and not name.startswith("."):
                    entry = _read_json(index / name, None)
                    if entry is None:
                        continue
                    for path, data in self._group_pointer(index, name[: -len(".key")], entry["seq"]):
                        pointer = json.loads(data)
                        if path not in newest or newest[path]["seq"] < pointer["seq"]:
                            newest[path] = pointer
            files = [(path, json.dumps(pointer).encode()) for path, pointer in newest.items()]
            for start in range(0, len(files), POINTER_BATCH):  # a bounded number of open files at once
                _atomic_write_all(files[start : start + POINTER_BATCH])
            _atomic_write(index / GROUPS_DONE, b"{}")  # last: its presence is what counts

    def _recover(self, index: Path) -> None:
        """Redo an index change whose writer crashed after journaling it (index lock held)."""
        journal = _read_json(index / "journal.json", None)
        if journal is not None:
            self._apply(index, journal)

    def _recover_if_needed(self, index: Path) -> None:
        if (index / "journal.json").exists():
            with self._index_lock(index):
                self._recover(index)

    # --- helpers -----------------------------------------------------------

    def _folder(self, collection: str) -> Path:
        if not KEY_PATTERN.match(collection):
            raise ValueError(f"invalid collection name {collection!r}")
        return self.root / collection

    def _path(self, collection: str, key: str) -> Path:
        folder = self._folder(collection)
        _checked_key(key)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}.json"

    def _index(self, collection: str) -> Path:
        return self._folder(collection) / "_index"

    @contextmanager
    def _index_lock(self, index: Path) -> Iterator[None]:
        """The collection's index lock. Every listed write of the collection takes it, so the
        threads of one process queue on a mutex first (filelock would have each poll the file
        every 50 ms, which starved some for seconds under load); processes poll every 2 ms."""
        with self._mutexes_guard:
            mutex = self._index_mutexes.setdefault(index, threading.Lock())
        with mutex:
            index.mkdir(parents=True, exist_ok=True)
            with FileLock(index / ".lock", timeout=30, thread_local=False, poll_interval=0.002, mode=LOCK_FILE_MODE):
                yield

    def _lock(self, collection: str, key: str) -> FileLock:
        stripe = zlib.crc32(f"{collection}/{key}".encode()) % LOCK_STRIPES
        # thread_local=False: one FileLock object may be shared by a thread pool.
        return FileLock(self.root / "_locks" / f"{stripe}.lock", timeout=30, thread_local=False, mode=LOCK_FILE_MODE)


def _checked_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid key {key!r}")
    return key


def _group_of(key: str) -> str | None:
    """The group of a key `<group>.<name>` (the part before its last dot); None without a dot."""
    group, dot, _ = key.rpartition(".")
    return group if dot and group else None


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def _atomic_write(path: Path, data: bytes) -> None:
    _atomic_write_all([(path, data)])


def _atomic_write_all(files: list[tuple[Path, bytes]]) -> None:
    """Replace each file with its new content, in the list's order; durable once it returns."""
    staged = _stage(files)
    try:
        _commit(staged)
    finally:
        _discard(staged)


def _stage(files: list[tuple[Path, bytes]]) -> list[tuple[Path, str]]:
    """Write each file's new content to a temporary file beside it, and fsync them all at once.

    Nothing is visible until `_commit` renames them. The fsyncs run in parallel threads: the
    file system flushes them in one journal commit, so five cost about what one does
    (tools/store_bench.py --writes measures it on this disk)."""
    staged: list[tuple[Path, str]] = []
    fds: list[int] = []
    try:
        for path, data in files:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            fds.append(fd)
            staged.append((path, tmp))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        _fsync_all(fds)
    except BaseException:
        _discard(staged)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return staged


def _commit(staged: list[tuple[Path, str]]) -> None:
    """Rename staged files over their targets, then fsync their folders: durable once it returns."""
    for path, tmp in staged:
        os.replace(tmp, path)
    for folder in dict.fromkeys(path.parent for path, _tmp in staged):
        _fsync_folder(folder)


def _discard(staged: list[tuple[Path, str]]) -> None:
    """Remove the temporary files an error left behind (committed ones are gone already)."""
    for _path, tmp in staged:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


_fsync_pool: tuple[int, ThreadPoolExecutor] | None = None
_fsync_pool_guard = threading.Lock()


def _fsync_all(fds: list[int]) -> None:
    """fsync every descriptor, all at once: this thread takes the first, a small pool the rest."""
    global _fsync_pool
    if len(fds) > 1:
        with _fsync_pool_guard:
            # Threads do not survive a fork (gunicorn forks its workers): one pool per process.
            if _fsync_pool is None or _fsync_pool[0] != os.getpid():
                _fsync_pool = (os.getpid(), ThreadPoolExecutor(max_workers=8, thread_name_prefix="store-fsync"))
            pool = _fsync_pool[1]
        others = [pool.submit(os.fsync, fd) for fd in fds[1:]]
    else:
        others = []
    try:
        if fds:
            os.fsync(fds[0])
    finally:
        for pending in others:
            pending.result()


def _fsync_folder(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
