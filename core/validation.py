"""Input rules both halves share: text without control characters, whole numbers, pages, list filters, the invalid-input error."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
)
from pydantic_core import PydanticCustomError

from core.rules import Messages
from core.store.base import KEY_PATTERN

MAX_PAGE = 100_000
PAGE_SIZE = 20  # rows per page of every list
MAX_SEARCH = 200  # characters of a list's search text
_FORM_WHOLE_NUMBER = re.compile(r"[0-9]{1,10}")
FORM_CHECKBOX_VALUE = "yes"  # the value="..." of every checkbox in templates/

# Unicode categories refused in every text field: control characters (Cc: C0,
# DEL, C1, so also newlines and tabs), format characters (Cf: zero-width space
# and joiners, word joiner, BOM, soft hyphen, bidirectional overrides), lone
# surrogates (Cs: not encodable as UTF-8) and line/paragraph separators (Zl, Zp).
# Refused, not stripped: the client learns which field is wrong, and nothing is
# stored that differs from what was sent. They reach pages, logs, CSV exports
# and email headers, where they hide text or split lines.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
TEXT_CHARACTERS_ERROR = "text_characters"


def has_refused_characters(text: str) -> bool:
    """True if the text holds a character of a refused category (REFUSED_CATEGORIES)."""
    return any(unicodedata.category(char) in REFUSED_CATEGORIES for char in text)


def _clean_text(value: Any) -> Any:
    """Runs before pydantic's own checks and its whitespace strip: a trailing newline is refused, not trimmed."""
    if isinstance(value, str) and has_refused_characters(value):
        raise PydanticCustomError(TEXT_CHARACTERS_ERROR, "control, invisible or line-break character")
    return value


# The same rule for the OpenAPI document (web/openapi.py), where a JSON schema can
# only list characters: the common refused ones (all of Cc, Zl and Zp, and the
# usual Cf: soft hyphen, zero-width, bidi controls, word joiners, BOM). The
# categories above stay the rule; this is what clients and fuzzers are told.
TEXT_SCHEMA_PATTERN = "^[^\x00-\x1f\x7f-\x9f\xad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]*$"

# Every free-text field of every model is `Text`.
Text = Annotated[str, BeforeValidator(_clean_text), Field(json_schema_extra={"pattern": TEXT_SCHEMA_PATTERN})]


def ascii_whole_number(raw: str) -> int | None:
    """The int of 1 to 10 ASCII digits, else None (never a ValueError)."""
    return int(raw) if _FORM_WHOLE_NUMBER.fullmatch(raw) else None


class InvalidInput(Exception):
    """The input has invalid fields; `fields` maps each field to its message."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in fields.items()))
        self.fields = fields


def parse_page(raw: str | None, messages: Messages) -> int:
    """The list routes' `page` query parameter: absent is 1; else ASCII digits, 1 to MAX_PAGE.

    Raises InvalidInput({"page": text}); the route answers 400.
    """
    if raw is None:
        return 1
    page = ascii_whole_number(raw)
    if page is None or not 1 <= page <= MAX_PAGE:
        raise InvalidInput({"page": messages.validation["page"].format(maximum=f"{MAX_PAGE:,}")})
    return page


def parse_after(raw: str | None, messages: Messages) -> str | None:
    """A filtered list's `after` query parameter (the store key its Older link names); None if absent."""
    if raw is None or raw == "":
        return None
    if not KEY_PATTERN.match(raw):
        raise InvalidInput({"after": messages.validation["after"]})
    return raw


def parse_list_filter(
    args: Mapping[str, str], filters: Mapping[str, Collection[str] | None], messages: Messages
) -> tuple[str, str] | None:
    """The list routes' one filter: (parameter, value) for the one query parameter of `filters`
    given (each with its allowed values, or None for a search text), spaces collapsed; None
    without one. Raises InvalidInput naming the parameter; the route answers 400."""
    given = [name for name in filters if args.get(name, "").strip()]
    if len(given) > 1:
        raise InvalidInput({given[1]: messages.validation["one_filter"].format(names=", ".join(filters))})
    if not given:
        return None
    name = given[0]
    value = " ".join(args[name].split())
    allowed = filters[name]
    if allowed is not None and value not in allowed:
        raise InvalidInput({name: messages.validation["filter_value"].format(name=name, values=", ".join(allowed))})
    if len(value) > MAX_SEARCH or has_refused_characters(args[name]):
        raise InvalidInput({name: messages.validation["search"].format(maximum=MAX_SEARCH)})
    return name, value


# --- an order's idempotency key -----------------------------------------------------
