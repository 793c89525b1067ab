"""A page of a record list (applications, orders): all of them newest first, or one filter's.

Both halves' list pages and list APIs read the same shape. A filter is one query
parameter: a counted field's value (`?decision=denied`, `?status=completed`), a
listed field's text (`?email=ada@example.com`), or `?q=`, the page's one search
box, whose text chooses the field (an email address, else a name). The store
keeps a list per value (`Store.list_by`), so a page reads its own rows only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core.store import Store, filtered_page, page_of
from core.validation import PAGE_SIZE

SEARCH = "q"  # the list pages' search box


@dataclass(frozen=True)
class Listing:
    records: list[dict[str, Any]]
    page: int
    pages: int | None  # None for a search: its matches are not counted
    more: bool  # another page follows
    total: int  # every listed record, whatever the filter
    counts: dict[str, int]  # every listed record by the counted field
    chosen: tuple[str, str] | None = None  # the filter: (query parameter, value)
    next_after: str | None = None  # a filter's next page starts after this record (its store key)

    @property
    def args(self) -> dict[str, str]:
        """The filter as query arguments, kept by the page links."""
        return dict([self.chosen]) if self.chosen else {}

    def as_json(self) -> dict[str, Any]:
        """The list API's fields besides the records."""
        return {
            "page": self.page,
            "pages": self.pages,
            "more": self.more,
            "after": self.next_after,  # for the next page: ?page=<page + 1>&after=<this>
            "total": self.total,
            "counts": self.counts,
            "filter": self.args,
        }


def list_page(
    store: Store,
    collection: str,
    counted_field: str,
    fields: Mapping[str, str],
    text_parameter: str,
    page: int,
    chosen: tuple[str, str] | None,
    key_of: Callable[[dict[str, Any]], str],
    after: str | None = None,
) -> Listing:
    """Page `page` of `collection`: newest first, or filtered by `chosen`: a parameter of `fields`
    (which names the store's field of each), or `SEARCH`, whose text is looked up as the "email"
    parameter's if it has an @, else as `text_parameter`'s (a name, a customer ID). A filter's page
    starts after the record `after` names (its store key, `key_of` a record) when given."""
    counts = store.count_by(collection, counted_field)
    if chosen is None:
        records, total, pages = page_of(store, collection, page, PAGE_SIZE)
        return Listing(records, page, pages, page < pages, total, counts)
    parameter, value = chosen
    if parameter == SEARCH:
        parameter = "email" if "@" in value else text_parameter
    field = fields[parameter]
    records, more = filtered_page(store, collection, field, value, page, PAGE_SIZE, after)
    matching = max(1, math.ceil(counts.get(value, 0) / PAGE_SIZE)) if field == counted_field else None
    _, total = store.list_recent(collection, 0, 0)
    next_after = key_of(records[-1]) if more and records else None
    return Listing(records, page, matching, more, total, counts, chosen, next_after)
