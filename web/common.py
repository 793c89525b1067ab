"""What the loan and order routes share: reading a JSON body or a page number, writing an error.

Both halves answer bad input the same way: a JSON API error is
`{"error": "...", ...}` with a 4xx status, a page error is `error.html`.
Both read a JSON body with `json_body`, which refuses an object with a
duplicated key (JSON leaves it to the parser; Python's would keep the last
silently) with a 400 naming the field.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Collection, Mapping
from typing import Any

from flask import current_app, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider

from core.rules import Messages
from core.validation import parse_after, parse_list_filter, parse_page


class StrictJSONProvider(DefaultJSONProvider):
    """JSON out as the standard defines it: a NaN or an infinity fails loudly instead of
    going out as `NaN`, which no strict client can parse (validation keeps numbers finite)."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


class BadBody(Exception):
    """The request body is not a JSON document (415) or not valid JSON (400); `extra` goes into the answer."""

    def __init__(self, status: int, message: str, **extra: Any):
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


class DuplicateKey(ValueError):
    """A JSON object names a key twice."""


class _Object(dict):
    """A decoded JSON object that remembers the keys it was sent more than once."""

    duplicates: tuple[str, ...] = ()


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    decoded = _Object(pairs)
    if len(decoded) != len(pairs):
        seen: set[str] = set()
        repeated = []
        for key, _ in pairs:
            if key in seen:
                repeated.append(key)
            seen.add(key)
        decoded.duplicates = tuple(dict.fromkeys(repeated))
    return decoded


def first_duplicate(value: Any) -> str | None:
    """The path ("address.city", "items.0.sku") of the first key an object of `value` repeats.

    Walked without recursion: the parser already refused anything nested too deep for it."""
    pending: deque[tuple[str, Any]] = deque([("", value)])
    while pending:
        path, node = pending.popleft()
        if isinstance(node, _Object) and node.duplicates:
            return f"{path}.{node.duplicates[0]}" if path else node.duplicates[0]
        children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        pending.extend((f"{path}.{key}" if path else str(key), child) for key, child in children)
    return None


def loads_strictly(data: bytes | str) -> Any:
    """JSON with every key of an object once: raises DuplicateKey naming the first repeated one's path."""
    value = json.loads(data, object_pairs_hook=_object)
    duplicate = first_duplicate(value)
    if duplicate is not None:
        raise DuplicateKey(duplicate)
    return value


def messages() -> Messages:
    return current_app.extensions["messages"]


def json_body(not_json: str, optional: bool = False) -> Any:
    """The decoded JSON body; None for a missing body when it is `optional`.

    `not_json` is the 415 message, which each half words for its own clients.
    """
    # Judged by the headers: the CSRF check may already have read a form body.
    if optional and not request.mimetype and not request.content_length:
        return None
    if not request.is_json:
        raise BadBody(415, not_json)
    try:
        return loads_strictly(request.get_data(cache=True))
    except DuplicateKey as err:
        field = str(err)
        raise BadBody(
            400, messages().errors["duplicate_key"].format(field=field), fields={field: messages().validation["duplicate_key"]}
        ) from None
    # ValueError: not JSON, or not UTF-8; RecursionError: nesting deeper than the parser goes
    except (ValueError, RecursionError):
        raise BadBody(400, messages().errors["invalid_json"]) from None


def json_error(status: int, error: str, **extra: Any):
    return jsonify({"error": error, **extra}), status


def bad_body_error(err: BadBody):
    """The JSON answer to a body that is not a JSON object to read (both halves' APIs)."""
    return json_error(err.status, err.message, **err.extra)


def page_argument() -> int:
    """The list routes' `?page=`; a bad one raises InvalidInput, which the app answers with a 400."""
    return parse_page(request.args.get("page"), messages())


def after_argument() -> str | None:
    """A filtered list's `?after=` (where its Older link starts the next page); bad: InvalidInput, a 400."""
    return parse_after(request.args.get("after"), messages())


def list_filter(filters: Mapping[str, Collection[str] | None]) -> tuple[str, str] | None:
    """The list routes' one filter (`?decision=`, `?status=`, `?q=`, ...): (parameter, value) or
    None; a bad one raises InvalidInput, which the app answers with a 400 naming it."""
    return parse_list_filter(request.args, filters, messages())


def error_page(status: int, title: str, message: str, **links: str):
    return render_template("error.html", status=status, title=title, message=message, **links), status
