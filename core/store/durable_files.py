"""Durable writes of small files: each replaced whole or not at all, on disk when the call returns.

The JSON store (core/store/files.py) writes every document and index file through
these. A file's new content goes to a hidden temporary file beside it, is fsynced,
then renamed over the old one, and the folder is fsynced: a killed process leaves
the old content or the new one, never a torn file. Several files are staged and
fsynced together, in parallel threads, so the disk is waited for once.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default


def atomic_write(path: Path, data: bytes) -> None:
    atomic_write_all([(path, data)])


def atomic_write_all(files: list[tuple[Path, bytes]]) -> None:
    """Replace each file with its new content, in the list's order; durable once it returns."""
    staged = stage(files)
    try:
        commit(staged)
    finally:
        discard(staged)


def stage(files: list[tuple[Path, bytes]]) -> list[tuple[Path, str]]:
    """Write each file's new content to a temporary file beside it, and fsync them all at once.

    Nothing is visible until `commit` renames them. The fsyncs run in parallel threads: the
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
        discard(staged)
        raise
    finally:
        for fd in fds:
            os.close(fd)
    return staged


def commit(staged: list[tuple[Path, str]]) -> None:
    """Rename staged files over their targets, then fsync their folders: durable once it returns."""
    for path, tmp in staged:
        os.replace(tmp, path)
    for folder in dict.fromkeys(path.parent for path, _tmp in staged):
        _fsync_folder(folder)


def discard(staged: list[tuple[Path, str]]) -> None:
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
