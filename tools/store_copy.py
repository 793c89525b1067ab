"""Copy every record from one store to another: a JSON data folder into PostgreSQL, or back.

    .venv/bin/python -m tools.store_copy data postgresql://user@host/db      # JSON files -> PostgreSQL
    .venv/bin/python -m tools.store_copy postgresql://user@host/db data2     # PostgreSQL -> JSON files

Each side is a folder or a `postgresql://` URL. Every document is written with
the target store's own `put`, listed records oldest first so the newest-first
order survives, so the counts are rebuilt as they would be by the activities.
Idempotent: running it again, or after an interruption, writes the same
documents and counts nothing twice. Stop the workers while copying (a record
written during the copy may be missed; run it again to pick it up).
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from core.store.files import JsonStore

# The sort key every copied listed record gets: both stores list by first write, not by its value.
COPIED = "copied"
_OLD_MARKER = re.compile(r"^(?P<sort>[A-Za-z0-9.:+-]{1,64})_(?P<key>[A-Za-z0-9][A-Za-z0-9._-]*)$")


def open_side(location: str):
    if location.startswith(("postgresql://", "postgres://")):
        from core.store.postgres import PostgresStore

        return PostgresStore(location)
    return JsonStore(location)


def json_records(root: Path) -> Iterator[tuple[str, str, dict, bool]]:
    """(collection, key, document, listed) of a JSON folder, listed records oldest first.

    Reads the numbered index, or the marker files of folders written before it
    (`<sort key>_<key>`, sorted by sort key), so an old data folder moves too."""
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))):
        listed: list[str] = []
        index = folder / "_index"
        if (index / "state.json").exists():
            total = json.loads((index / "state.json").read_text())["total"]
            listed = [(index / f"{n}.seq").read_text() for n in range(1, total + 1) if (index / f"{n}.seq").exists()]
        elif index.is_dir():
            markers = [m for name in os.listdir(index) if (m := _OLD_MARKER.match(name))]
            listed = [m.group("key") for m in sorted(markers, key=lambda m: (m.group("sort"), m.group("key")))]
        keys = {p.name[: -len(".json")] for p in folder.glob("*.json") if not p.name.startswith(".")}
        for key in [k for k in listed if k in keys] + sorted(keys - set(listed)):
            yield folder.name, key, json.loads((folder / f"{key}.json").read_text()), key in listed


def postgres_records(store) -> Iterator[tuple[str, str, dict, bool]]:
    with store.pool.connection() as connection:
        rows = connection.execute(
            "SELECT collection, key, doc, seq IS NOT NULL FROM documents ORDER BY collection, seq NULLS LAST, key"
        ).fetchall()
    yield from rows


def copy(source: str, target: str) -> dict[str, int]:
    """Copy every record; how many per collection."""
    source_store, target_store = open_side(source), open_side(target)
    copied: dict[str, int] = {}
    try:
        records = json_records(Path(source)) if isinstance(source_store, JsonStore) else postgres_records(source_store)
        for collection, key, document, listed in records:
            target_store.put(collection, key, document, sort_key=COPIED if listed else None)
            copied[collection] = copied.get(collection, 0) + 1
    finally:
        for store in (source_store, target_store):
            if hasattr(store, "close"):
                store.close()
    return copied


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a JSON data folder or a postgresql:// URL")
    parser.add_argument("target", help="a JSON data folder or a postgresql:// URL")
    args = parser.parse_args()
    if not args.source.startswith(("postgresql://", "postgres://")) and not Path(args.source).is_dir():
        raise SystemExit(f"{args.source} is neither a folder nor a postgresql:// URL")
    for collection, count in sorted(copy(args.source, args.target).items()):
        print(f"{collection}: {count}")


if __name__ == "__main__":
    main()
