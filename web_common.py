"""What the loan and order routes share: reading a JSON body or a page number, writing an error.

Both halves answer bad input the same way: a JSON API error is
`{"error": "...", ...}` with a 4xx status, a page error is `error.html`.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, render_template, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import BadRequest

from config import Messages
from validation import parse_page


class StrictJSONProvider(DefaultJSONProvider):
    """JSON out as the standard defines it: a NaN or an infinity fails loudly instead of
    going out as `NaN`, which no strict client can parse (validation keeps numbers finite)."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


class BadBody(Exception):
    """The request body is not a JSON document (415) or not valid JSON (400)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


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
        return request.get_json()
    except (BadRequest, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise BadBody(400, messages().errors["invalid_json"]) from None


def json_error(status: int, error: str, **extra: Any):
    return jsonify({"error": error, **extra}), status


def page_argument() -> int:
    """The list routes' `?page=`; a bad one raises InvalidInput, which the app answers with a 400."""
    return parse_page(request.args.get("page"), messages())


def error_page(status: int, title: str, message: str, **links: str):
    return render_template("error.html", status=status, title=title, message=message, **links), status
