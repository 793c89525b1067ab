"""A JSON document store on the local file system, safe for several worker processes.

Layout under the root folder:
    <collection>/<key>.json          one document per record
    <collection>/_index/<sort>_<key> empty marker per record, for newest-first listing
    _locks/<n>.lock                  a fixed set of lock files (lock striping)

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
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_SORT_KEY = re.compile(r"^[A-Za-z0-9.:+-]{1,64}$")
LOCK_STRIPES = 64


class JsonStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        (self.root / "_locks").mkdir(parents=True, exist_ok=True)

    # --- reads -------------------------------------------------------------

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(collection, key).read_text())
        except FileNotFoundError:
            return None

    def list_recent(self, collection: str, offset: int = 0, limit: int = 20) -> tuple[list[dict], int]:
        """One page of records, newest first, and the total count.

        Sorting reads only the index's file names; only the page's documents are read.
        """
        index = self._folder(collection) / "_index"
        try:
            markers = sorted(os.listdir(index), reverse=True)
        except FileNotFoundError:
            return [], 0
        page = []
        for marker in markers[offset : offset + limit]:
            record = self.get(collection, marker.split("_", 1)[1])
            if record is not None:
                page.append(record)
        return page, len(markers)

    def list_all(self, collection: str) -> list[dict[str, Any]]:
        """Every document of a small collection (for example one order's events), by key."""
        folder = self._folder(collection)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
        except FileNotFoundError:
            return []
        documents = (self.get(collection, name[: -len(".json")]) for name in names)
        return [d for d in documents if d is not None]

    # --- writes ------------------------------------------------------------

    def put(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        """Create or replace a document (idempotent)."""
        self.update(collection, key, lambda _existing: document, sort_key)

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
        if sort_key is not None and not _SORT_KEY.match(sort_key):
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
        self._write(collection, key, document)
        if sort_key is not None:
            # Touched on every write, not only the first, so a crash between
            # the document and its marker is repaired by the retry.
            index = self._folder(collection) / "_index"
            index.mkdir(exist_ok=True)
            (index / f"{sort_key}_{key}").touch()

    def _write(self, collection: str, key: str, document: dict[str, Any]) -> None:
        _atomic_write(self._path(collection, key), json.dumps(document, indent=2, sort_keys=True).encode())

    # --- helpers -----------------------------------------------------------

    def _folder(self, collection: str) -> Path:
        if not _KEY.match(collection):
            raise ValueError(f"invalid collection name {collection!r}")
        return self.root / collection

    def _path(self, collection: str, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"invalid key {key!r}")
        folder = self._folder(collection)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{key}.json"

    def _lock(self, collection: str, key: str) -> FileLock:
        stripe = zlib.crc32(f"{collection}/{key}".encode()) % LOCK_STRIPES
        # thread_local=False: one FileLock object may be shared by a thread pool.
        return FileLock(self.root / "_locks" / f"{stripe}.lock", timeout=30, thread_local=False)


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
