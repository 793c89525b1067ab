"""The store: one contract (`Store`), JSON files by default, PostgreSQL when DATABASE_URL is set."""

from __future__ import annotations

from core.settings import Settings
from core.store.base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store"]


def open_store(settings: Settings) -> Store:
    """The store every process uses: PostgreSQL when DATABASE_URL is set, else the JSON files."""
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise SystemExit(f"DATABASE_URL must start with postgresql://, got {settings.database_url.split(':')[0]}:...")
        from core.store.postgres import PostgresStore

        return PostgresStore(settings.database_url)
    from core.store.files import JsonStore

    return JsonStore(settings.data_dir)
