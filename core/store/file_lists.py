"""The JSON store's lists by value: the records with one value of a listed field, latest first.

`JsonStore.list_by` ("the orders whose status is completed", "the applications
whose email is ada@example.com") reads one of these lists. Each (field, value)
is a linked list through the collection's index entries, latest first:

    _index/<key>.key       the entry gains "lists" {field: value} and
                           "links" {field: {"older": key}}
    _index/<digest>.head   {"key": the list's latest key}; the digest names the
                           field and value (a value can be an email address:
                           never part of a file name)

A write that changes a record's value links it at the head of the new list (its
entry and the head change) and takes it out of the old one: the entry that
pointed at it, found by reading the old list from its head, now points past it.
The lists that records leave are the statuses they pass through (processing,
awaiting review, shipping): as long as the records in flight, not the whole
collection. Per field and write, at most two entries and two heads change,
written with the index change they belong to (one journal, absolute contents, so
a redo after a crash is harmless). A page starts at the entry after the previous
page's last record (`after`), or walks `offset` entries from the head, and reads
only the page's documents. A folder written before the lists existed gets them
at the first `list_by` (`rebuild`: one pass over the listed records, oldest first).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from core.store.base import field_value, list_value
from core.store.durable_files import read_json

LISTS_DONE = "lists.json"  # in `_index`: the fields whose lists cover every listed record


def head_name(field: str, value: str) -> str:
    return hashlib.sha256(f"{field}\n{value}".encode()).hexdigest()[:32] + ".head"


def listed_values(document: dict[str, Any], fields: Iterable[str]) -> dict[str, str | None]:
    """The value each listed field puts the document under (None: in no list of that field)."""
    return {field: list_value(field_value(document, field)) for field in fields}


class ListChange:
    """The entries and heads one index change rewrites to move records between lists.

    Entries and heads are read from the index folder once, when first needed, and kept
    here; those changed are marked, and `files` gives their new contents for the journal.
    """

    def __init__(self, index: Path, read: Callable[[Path, Any], Any] = read_json):
        self.index = index
        self.read_json = read
        self.entries: dict[str, dict[str, Any] | None] = {}
        self.heads: dict[str, str | None] = {}
        self.changed_entries: set[str] = set()
        self.changed_heads: set[str] = set()

    def entry(self, key: str) -> dict[str, Any] | None:
        if key not in self.entries:
            self.entries[key] = self.read_json(self.index / f"{key}.key", None)
        return self.entries[key]

    def head(self, name: str) -> str | None:
        if name not in self.heads:
            self.heads[name] = (self.read_json(self.index / name, None) or {}).get("key")
        return self.heads[name]

    def _set_head(self, name: str, key: str | None) -> None:
        self.heads[name] = key
        self.changed_heads.add(name)

    def move(self, key: str, entry: dict[str, Any], values: dict[str, str | None]) -> None:
        """Put the record `key` (its new `entry`, without lists yet) in the lists of `values`,
        out of the lists its previous entry (read from the folder) had it in."""
        previous = self.entry(key) or {}
        old_values, old_links = previous.get("lists", {}), previous.get("links", {})
        entry["lists"], entry["links"] = {}, {}
        self.entries[key] = entry
        self.changed_entries.add(key)
        for field, value in values.items():
            old = old_values.get(field)
            if old == value and (value is None or field in old_links):
                if value is not None:
                    entry["lists"][field], entry["links"][field] = value, {"older": old_links[field].get("older")}
                continue
            if old is not None and field in old_links:
                self._unlink(key, field, old, old_links[field].get("older"))
            if value is not None:
                self._link_at_head(key, entry, field, value)

    def _unlink(self, key: str, field: str, value: str, older: str | None) -> None:
        """Take `key` out of a list: the entry that points at it (found from the head: the
        lists that records leave are those of the statuses records pass through, short ones)
        now points past it."""
        name = head_name(field, value)
        newer: str | None = None
        current = self.head(name)
        seen: set[str] = set()
        while current is not None and current != key and current not in seen:
            seen.add(current)
            current_entry = self.entry(current)
            if current_entry is None or field not in current_entry.get("links", {}):
                return  # a broken list: nothing points at the key through it
            newer, current = current, current_entry["links"][field].get("older")
        if current != key:
            return  # not in the list (left before, or never linked): nothing points at it
        if newer is None:
            self._set_head(name, older)
        else:
            newer_entry = self.entry(newer)
            assert newer_entry is not None  # read on the way
            newer_entry["links"][field] = {**newer_entry["links"][field], "older": older}
            self.changed_entries.add(newer)

    def _link_at_head(self, key: str, entry: dict[str, Any], field: str, value: str) -> None:
        name = head_name(field, value)
        latest = self.head(name)
        entry["lists"][field] = value
        entry["links"][field] = {"older": latest if latest != key else None}
        self._set_head(name, key)

    def files(self) -> dict[str, str]:
        """The changed files' names (in `_index`) and new contents."""
        files = {f"{key}.key": json.dumps(self.entries[key]) for key in self.changed_entries if self.entries.get(key) is not None}
        files.update({name: json.dumps({"key": self.heads[name]}) for name in self.changed_heads})
        return files


def walk(index: Path, field: str, value: str, offset: int, limit: int, after: str | None = None) -> list[str]:
    """The keys of one page of a list, latest first: `offset` entries skipped, `limit` kept; or,
    with `after` (a key still in the list), the `limit` entries after it.

    Reads entries without the index lock: a writer changing the list meanwhile can make a
    page miss or repeat a record once; a cycle or a dangling link ends the walk."""
    start = read_json(index / f"{after}.key", None) if after else None
    if start is not None and start.get("lists", {}).get(field) == value:
        key, offset = start["links"][field].get("older"), 0
    else:
        key = (read_json(index / head_name(field, value), None) or {}).get("key")
    keys: list[str] = []
    seen: set[str] = set()
    position = 0
    while key is not None and key not in seen and len(keys) < limit:
        seen.add(key)
        entry = read_json(index / f"{key}.key", None)
        if entry is None or entry.get("lists", {}).get(field) != value:
            break
        if position >= offset:
            keys.append(key)
        position += 1
        key = entry["links"][field].get("older")
    return keys


def rebuild(records: Iterable[tuple[str, dict[str, Any], dict[str, str | None]]]) -> dict[str, str]:
    """Every list from scratch, from the listed records oldest first (key, entry, values):
    the files to write, whatever links the entries had."""
    change = ListChange(Path("."), lambda _path, default: default)
    for key, entry, values in records:
        entry = {k: v for k, v in entry.items() if k not in ("lists", "links")}
        change.entries.setdefault(key, None)
        change.move(key, entry, values)
    return change.files()
