"""The JSON store's lists by value: the records with one value of a listed field, latest first.

`JsonStore.list_by` ("the orders whose status is completed", "the applications
whose email is ada@example.com") reads one of these lists. Each (field, value)
is a doubly linked list through the collection's index entries:

    _index/<key>.key       the entry gains "lists" {field: value} and
                           "links" {field: {"newer": key, "older": key}}
    _index/<digest>.head   {"key": the list's latest key}; the digest names the
                           field and value (a value can be an email address:
                           never part of a file name)

A write that changes a record's value unlinks it from the old list and links
it at the head of the new one: at most four entries and two heads change,
whatever the lists' lengths, written with the index change they belong to
(one journal, absolute contents, so a redo after a crash is harmless). A page
starts at the entry after the previous page's last record (`after`), or walks
`offset` entries from the head, and reads only the page's documents. A folder written before the lists existed gets them at the first
`list_by` (`rebuild`: one pass over the listed records, oldest first).
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
    here changed; `files` gives their new contents for the journal.
    """

    def __init__(self, index: Path, read: Callable[[Path, Any], Any] = read_json):
        self.index = index
        self.read_json = read
        self.entries: dict[str, dict[str, Any] | None] = {}
        self.heads: dict[str, str | None] = {}

    def entry(self, key: str) -> dict[str, Any] | None:
        if key not in self.entries:
            self.entries[key] = self.read_json(self.index / f"{key}.key", None)
        return self.entries[key]

    def head(self, name: str) -> str | None:
        if name not in self.heads:
            self.heads[name] = (self.read_json(self.index / name, None) or {}).get("key")
        return self.heads[name]

    def move(self, key: str, entry: dict[str, Any], values: dict[str, str | None]) -> None:
        """Put the record `key` (its new `entry`, without lists yet) in the lists of `values`,
        out of the lists its previous entry (read from the folder) had it in."""
        previous = self.entry(key) or {}
        old_values, old_links = previous.get("lists", {}), previous.get("links", {})
        entry["lists"], entry["links"] = {}, {}
        self.entries[key] = entry
        for field, value in values.items():
            old = old_values.get(field)
            if old == value and (value is None or field in old_links):
                if value is not None:
                    entry["lists"][field], entry["links"][field] = value, dict(old_links[field])
                continue
            if old is not None and field in old_links:
                self._unlink(field, old, old_links[field])
            if value is not None:
                self._link_at_head(key, entry, field, value)

    def _unlink(self, field: str, value: str, links: dict[str, str | None]) -> None:
        newer, older = links.get("newer"), links.get("older")
        newer_entry = self.entry(newer) if newer else None
        if newer_entry is not None and field in newer_entry.get("links", {}):
            newer_entry["links"][field]["older"] = older
        elif newer is None:
            self.heads[head_name(field, value)] = older
        older_entry = self.entry(older) if older else None
        if older_entry is not None and field in older_entry.get("links", {}):
            older_entry["links"][field]["newer"] = newer

    def _link_at_head(self, key: str, entry: dict[str, Any], field: str, value: str) -> None:
        name = head_name(field, value)
        latest = self.head(name)
        latest_entry = self.entry(latest) if latest else None
        if latest != key and latest_entry is not None and field in latest_entry.get("links", {}):
            latest_entry["links"][field]["newer"] = key
        else:
            latest = None  # a head whose entry is gone (never written by this store): start afresh
        entry["lists"][field] = value
        entry["links"][field] = {"newer": None, "older": latest}
        self.heads[name] = key

    def files(self) -> dict[str, str]:
        """The changed files' names (in `_index`) and new contents."""
        files = {f"{key}.key": json.dumps(entry) for key, entry in self.entries.items() if entry is not None}
        files.update({name: json.dumps({"key": key}) for name, key in self.heads.items()})
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
