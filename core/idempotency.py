"""Idempotency keys, shared by the loan and order APIs: what a key may be, and how a retry is recognised.

A client that lost an answer sends the same request again with the same
`Idempotency-Key` header. The request is stored with the digest of what was
asked (its fingerprint, taken after validation), so the same key with the same
request is a retry and gets the first answer, and the same key with another
request is refused (`IdempotencyKeyReused`, a 422).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import uuid
from typing import Any

IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class IdempotencyKeyReused(Exception):
    """The idempotency key was used before for a request with other contents: not a retry."""


def valid_idempotency_key(raw: str | None) -> str | None:
    """The header's value when it is a key (1 to 128 letters, digits and . _ : -), None when absent;
    ValueError when present and not a key."""
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise ValueError(raw)
    return raw


# A form's hidden field carrying its own idempotency key (one per form shown): a second press,
# a reload or a retry after an error sends the same one, and gets the first answer.
FORM_KEY_FIELD = "submission_key"


def new_form_key() -> str:
    return uuid.uuid4().hex


def form_key(values: dict[str, str]) -> str | None:
    """The key a posted form carries (None without a valid one); `values` keeps a key to render
    the form again with: the same one, or a new one."""
    try:
        key = valid_idempotency_key(values.get(FORM_KEY_FIELD) or None)
    except ValueError:
        key = None
    values[FORM_KEY_FIELD] = key or new_form_key()
    return key


def fingerprint(request: Any) -> str:
    """A digest of a validated request (a dataclass): the same request, however its JSON was spelled."""
    canonical = json.dumps(dataclasses.asdict(request), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
