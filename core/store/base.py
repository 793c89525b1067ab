"""The store's contract: what every implementation offers, and the rules they share.

Two implementations keep it: JSON files in a data folder (`core.store.files`,
the default, one host) and PostgreSQL (`core.store.postgres`, several hosts).
Callers type against `Store` and never know which they have;
`tests/core/test_store_contract.py` runs one suite against both.

Guarantees both give (docs/stores.md): every write is O(1) in the number of
records, durable when it returns, and idempotent (the same document written
again changes nothing); `update` is atomic across processes and hosts; the
listing and the counts never disagree with the documents after a crash.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

# Collection names and keys: safe as file names and as SQL values alike.
KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SORT_KEY_PATTERN = re.compile(r"^[A-Za-z0-9.:+-]{1,64}$")
# The fields each collection is counted by (`count_by`): the pages show these counts above the lists
# (loans.model.APPLICATIONS by decision, orders.model.ORDERS by status), and the charts of the last
# days by `day_*` ("2026-12-05/denied": core/formatting.py `day_value`), which their writers add.
DEFAULT_COUNTED_FIELDS: dict[str, tuple[str, ...]] = {
    "applications": ("decision", "day_decision"),
    "orders": ("status", "day_status"),
}
# The fields each collection can be listed by (`list_by`): the lists' filters (decision, status)
# and searches (a name, an email address, a customer). A dotted name is a field of a field.
DEFAULT_LISTED_BY: dict[str, tuple[str, ...]] = {
    "applications": ("decision", "application.name", "application.email"),
    "orders": ("status", "customer_id", "customer_email"),
}
# The collections whose keys are `<group>.<name>` and that find a group's newest listed record
# (`newest_in_group`): an application is `<workflow id>.<run id>`, and a workflow ID runs again after its window.
DEFAULT_GROUPED: tuple[str, ...] = ("applications",)


class StoreUnavailable(Exception):
    """The store cannot be reached (a database that is down); callers answer 503 or retry."""


class Store(Protocol):
    """Documents (JSON objects) by collection and key."""

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        """The document, or None."""
        ...

    def list_recent(self, collection: str, offset: int = 0, limit: int = 20) -> tuple[list[dict], int]:
        """A page of the listed documents, newest first, and how many are listed."""
        ...

    def count_by(self, collection: str, field: str) -> dict[str, int]:
        """How many listed documents have each value of a counted field."""
        ...

    def newest_in_group(self, collection: str, group: str) -> dict[str, Any] | None:
        """The newest listed document whose key is `<group>.<name>`, in a grouped collection."""
        ...

    def list_by(
        self, collection: str, field: str, value: str, offset: int = 0, limit: int = 20, after: str | None = None
    ) -> list[dict]:
        """A page of the listed documents whose `field` (one the collection is listed by) has
        `value` (compared as `list_value` writes it), the latest to take that value first. With
        `after` (the key of the previous page's last record, while it still has the value), the
        page starts just after it and `offset` is not used: a page costs the same however deep."""
        ...

    def list_all(self, collection: str) -> list[dict[str, Any]]:
        """Every document of a (small) collection, in no particular order."""
        ...

    def put(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        """Create or replace a document (idempotent); a `sort_key` lists it."""
        ...

    def update(
        self, collection: str, key: str, change: Callable[[dict[str, Any] | None], dict[str, Any]], sort_key: str | None = None
    ) -> dict[str, Any]:
        """Read, change and write one document atomically across processes."""
        ...

    def locked(self, collection: str, key: str) -> AbstractContextManager[Any]:
        """The lock of one document, for changes that span several (then `write_locked`)."""
        ...

    def write_locked(self, collection: str, key: str, document: dict[str, Any], sort_key: str | None = None) -> None:
        """Write a document whose lock the caller holds (see `locked`)."""
        ...


def count_value(value: Any) -> str | None:
    """The name a field's value is counted under (counts are JSON object keys: text)."""
    return None if value is None else value if isinstance(value, str) else json.dumps(value)


def field_value(document: dict[str, Any], field: str) -> Any:
    """A document's value of a field, a dotted name reaching into nested objects ("application.email")."""
    value: Any = document
    for part in field.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def list_value(value: Any) -> str | None:
    """How a value is compared in the lists by value: text with its spaces collapsed and case folded,
    so "Ada  LOVELACE" finds "Ada Lovelace"; None (and empty text) lists nothing."""
    text = count_value(value)
    if text is None:
        return None
    text = " ".join(text.split()).casefold()
    return text or None
