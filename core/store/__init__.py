"""The store: one contract (`Store`), JSON files by default, PostgreSQL when DATABASE_URL is set."""

from __future__ import annotations

import math

from core.settings import Settings
from core.store.base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "filtered_page", "open_store", "page_of"]


def open_store(settings: Settings) -> Store:
    """The store every process uses: PostgreSQL when DATABASE_URL is set, else the JSON files."""
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise SystemExit(f"DATABASE_URL must start with postgresql://, got {settings.database_url.split(':')[0]}:...")
        from core.store.postgres import PostgresStore

        return PostgresStore(settings.database_url)
    from core.store.files import JsonStore

    return JsonStore(settings.data_dir)


def page_of(store: Store, collection: str, page: int, size: int) -> tuple[list[dict], int, int]:
    """One page (from 1) of a listed collection, newest first; the total and the number of pages."""
    records, total = store.list_recent(collection, (page - 1) * size, size)
    return records, total, max(1, math.ceil(total / size))


def filtered_page(
    store: Store, collection: str, field: str, value: str, page: int, size: int, after: str | None = None
) -> tuple[list[dict], bool]:
    """One page (from 1) of the listed records whose `field` has `value`, the latest to take it
    first, and whether another page follows (one record more is read to know). `after`: the key
    of the previous page's last record, so the page is found without walking the ones before."""
    records = store.list_by(collection, field, value, (page - 1) * size, size + 1, after)
    return records[:size], len(records) > size
