"""A JSON document store on the local file system, safe for several worker processes.

Layout under the root folder:
    <collection>/<key>.json                   one document per record
    <collection>/_index/state.json            how many records are listed, and the counts by field
    <collection>/_index/<n>.seq               the key of the n-th listed record (1, 2, ...)
    <collection>/_index/<key>.key             a listed record's number and the values it is counted under
    <collection>/_index/journal.json          an index change in progress (redo log), gone once applied
    <collection>/_index/<group>.newest        a grouped collection's newest listed key of each group
    <collection>/_index/groups.json           present once the group pointers cover every listed record
    <collection>/_index/<digest>.head         the latest key of a list by value (core/store/file_lists.py)
    <collection>/_index/lists.json            the fields whose lists cover every listed record
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
- The same index change moves the record between the lists by value that
  `list_by` reads (core/store/file_lists.py): a page of "the orders whose status
  is completed" or "the applications from ada@example.com" walks those lists,
  never the folder.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock

from core.store.base import (
    DEFAULT_COUNTED_FIELDS,
    DEFAULT_GROUPED,
    DEFAULT_LISTED_BY,
    KEY_PATTERN,
    SORT_KEY_PATTERN,
    count_value,
    field_value,
    list_value,
)
from core.store.durable_files import atomic_write, atomic_write_all, commit, discard, read_json, stage
from core.store.file_lists import LISTS_DONE, ListChange, listed_values, rebuild, walk

LOCK_STRIPES = 64
# filelock sets a lock file's mode itself (0644 by default, whatever the umask): another local
# user who could open one could flock it and hold every write of its stripe (issue 26).
LOCK_FILE_MODE = 0o600
POINTER_BATCH = 64  # pointers written at once by the one-time pass over an older folder
GROUPS_DONE = "groups.json"  # in `_index`: every listed record of the collection has its group's pointer


class JsonStore:
    """The `Store` contract on JSON files under one folder (see the module docstring)."""

    def __init__(
        self,
        root: Path | str,
        counted_fields: dict[str, tuple[str, ...]] | None = None,
        grouped: tuple[str, ...] | None = None,
        listed_by: dict[str, tuple[str, ...]] | None = None,
    ):
        self.root = Path(root)
        self.counted_fields = DEFAULT_COUNTED_FIELDS if counted_fields is None else counted_fields
        self.listed_by = DEFAULT_LISTED_BY if listed_by is None else listed_by
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
        total = read_json(index / "state.json", {"total": 0})["total"]
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
        return dict(read_json(index / "state.json", {"counts": {}}).get("counts", {}).get(field, {}))

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
        pointer = read_json(index / f"{group}.newest", None)
        return None if pointer is None else self.get(collection, pointer["key"])

    def list_by(
        self, collection: str, field: str, value: str, offset: int = 0, limit: int = 20, after: str | None = None
    ) -> list[dict]:
        """A page of the listed records whose `field` has `value`, the latest to take it first.

        Walks `offset + limit` small index entries and reads the page's documents only
        (core/store/file_lists.py); the document is the truth, so one that has just moved on
        and whose index change is not applied yet is left out."""
        fields = self.listed_by.get(collection, ())
        if field not in fields:
            raise ValueError(f"{collection!r} is not listed by {field!r}")
        wanted = list_value(value)
        if wanted is None:
            return []
        index = self._index(collection)
        self._recover_if_needed(index)
        if read_json(index / LISTS_DONE, None) != list(fields):
            self._link_every_list(index, list(fields))
        if after is not None:
            _checked_key(after)
        keys = walk(index, field, wanted, max(offset, 0), max(limit, 0), after)
        documents = (self.get(collection, key) for key in keys)
        return [d for d in documents if d is not None and list_value(field_value(d, field)) == wanted]

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
        atomic_write(self._path(collection, key), json.dumps(document, indent=2, sort_keys=True).encode())
        index = self._index(collection)
        entry_path = index / f"{key}.key"
        if sort_key is None and not entry_path.exists():
            return  # not listed: no index to keep
        counted = {field: count_value(document.get(field)) for field in self.counted_fields.get(collection, ())}
        values = listed_values(document, self.listed_by.get(collection, ()))
        in_lists = {field: value for field, value in values.items() if value is not None}

        def unchanged(entry: dict[str, Any] | None) -> bool:
            return entry is not None and entry["counted"] == counted and entry.get("lists", {}) == in_lists

        # Most rewrites (a retry, a contact answer) change nothing counted or listed: no index
        # lock. The entry only changes under this document's lock, which the caller holds.
        if unchanged(read_json(entry_path, None)) and not (index / "journal.json").exists():
            return
        with self._index_lock(index):
            self._recover(index)
            first = not (index / "state.json").exists()
            state = read_json(index / "state.json", None) or {"total": 0, "counts": {}}
            entry = read_json(entry_path, None)
            if unchanged(entry):
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
            lists = ListChange(index)
            lists.entries[key] = entry  # read above: the lists it leaves
            lists.move(key, new_entry, values)
            files = {f"{new_entry['seq']}.seq": key}
            files.update({path.name: data.decode() for path, data in self._group_pointer(index, key, new_entry["seq"])})
            files.update(lists.files())
            if first:  # a new collection: its lists cover every record from the start
                files[LISTS_DONE] = json.dumps(list(self.listed_by.get(collection, ())))
            files["state.json"] = json.dumps(new_state)  # last: the listing's total counts the rest
            journal = {"files": files}
            # The journal and the index files are written and fsynced at once (one wait for the
            # disk, not four); the renames then go in the order that keeps a crash recoverable:
            # the journal, then the index files, each made durable by the folder's fsync.
            staged = stage([(index / "journal.json", json.dumps(journal).encode()), *self._index_files(index, journal)])
            try:
                commit(staged[:1])
                self._apply(index, journal, staged[1:])
            finally:
                discard(staged)

    def _index_files(self, index: Path, journal: dict[str, Any]) -> list[tuple[Path, bytes]]:
        """A journaled change's files: named in it, or (a journal an older version left) derived."""
        if "files" in journal:
            return [(index / name, text.encode()) for name, text in journal["files"].items()]
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
            staged = stage(self._index_files(index, journal))
        try:
            commit(staged)
        finally:
            discard(staged)
        os.unlink(index / "journal.json")

    def _group_pointer(self, index: Path, key: str, seq: int) -> list[tuple[Path, bytes]]:
        """The pointer of the key's group at it, unless the group already has a newer one (index
        lock held). Decided from the files alone, so a redo does the same."""
        group = _group_of(key)
        if group is None or index.parent.name not in self.grouped:
            return []
        pointer = read_json(index / f"{group}.newest", None)
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
                    entry = read_json(index / name, None)
                    if entry is None:
                        continue
                    for path, data in self._group_pointer(index, name[: -len(".key")], entry["seq"]):
                        pointer = json.loads(data)
                        if path not in newest or newest[path]["seq"] < pointer["seq"]:
                            newest[path] = pointer
            files = [(path, json.dumps(pointer).encode()) for path, pointer in newest.items()]
            for start in range(0, len(files), POINTER_BATCH):  # a bounded number of open files at once
                atomic_write_all(files[start : start + POINTER_BATCH])
            atomic_write(index / GROUPS_DONE, b"{}")  # last: its presence is what counts

    def _link_every_list(self, index: Path, fields: list[str]) -> None:
        """Once per collection written before its lists by value (or by other fields): every list
        from scratch, oldest listed record first (index lock held, so no listed write runs meanwhile).
        A crash part way leaves no marker, and the next pass starts again from scratch."""
        with self._index_lock(index):
            self._recover(index)
            if read_json(index / LISTS_DONE, None) == fields:
                return  # another thread or process did it meanwhile
            total = read_json(index / "state.json", {"total": 0})["total"]
            records = []
            for number in range(1, total + 1):
                try:
                    key = (index / f"{number}.seq").read_text()
                except FileNotFoundError:
                    continue
                entry, document = read_json(index / f"{key}.key", None), self.get(index.parent.name, key)
                if entry is not None and document is not None:
                    records.append((key, entry, listed_values(document, fields)))
            files = [(index / name, text.encode()) for name, text in rebuild(records).items()]
            for start in range(0, len(files), POINTER_BATCH):  # a bounded number of open files at once
                atomic_write_all(files[start : start + POINTER_BATCH])
            atomic_write(index / LISTS_DONE, json.dumps(fields).encode())  # last: its presence is what counts

    def _recover(self, index: Path) -> None:
        """Redo an index change whose writer crashed after journaling it (index lock held)."""
        journal = read_json(index / "journal.json", None)
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
