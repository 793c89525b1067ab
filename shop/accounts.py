"""Customers' accounts: registration, a verified email, sign-in, password resets, and what the
account remembers (the shipping address, the cart).

Separate from the operators' accounts (web/operators.py): a customer reaches the
shop's own pages and their own orders, nothing an operator does. Each account is
one document of the `customers` collection in the configured store (JSON files or
PostgreSQL), keyed by a digest of the normalised email address (so the key is
safe as a file name and two spellings of one address are one account):

    {"customer_id": "c-…", "email", "name", "password_hash" (Argon2id),
     "verified": bool, "version": n, "address": {...} | None, "cart": {...}, "created_at"}

`customer_id` is what the customer's orders carry. `version` moves with every new
password: a signed-in session remembers it, so a reset ends every other session,
and a reset link names it, so a link works once. `sessions` holds each open
sign-in's ID and when it opened: signing out closes that one on the server (a
copy of the cookie is no use after it), and each lasts SESSION_DAYS.

The email links (verify the address, reset the password) are signed with the
deployment's secret key (itsdangerous, which Flask itself uses) and expire: a
day to verify, an hour to reset. They carry the account's key and version, never
the address or a password.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from core.email_address import normalize_email
from core.formatting import utc_now
from core.store import Store
from shop.cart import MAX_QUANTITY

CUSTOMERS = "customers"
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 256
VERIFY_SECONDS = 24 * 3600
RESET_SECONDS = 3600
SESSION_DAYS = 14  # a sign-in lasts this long, unless signed out or the password changes
MAX_SESSIONS = 10  # sign-ins kept open per account (browsers, devices); an older one closes


class AccountRefused(Exception):
    """A registration or password the rules refuse; `field` names the form field, `message` the
    key of its text (messages.json, "shop")."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def links_key(secret_key: str) -> str:
    """The links' own key, derived from the deployment's secret (as the session cookie's is): the web
    app checks the links the worker's emails carry (shop/account_emails.py)."""
    return hmac.new(secret_key.encode(), b"shop-customer-links", hashlib.sha256).hexdigest()


def account_key(email: str) -> str:
    """The store key of the account for `email` (normalised first)."""
    return hashlib.sha256(normalize_email(email).encode()).hexdigest()[:40]


def check_password(password: str) -> str:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise AccountRefused("password", "password")  # the text's key (messages.json, "shop")
    return password


class CustomerAccounts:
    """The customers' accounts in `store`; links signed with `secret_key`."""

    def __init__(self, store: Store, secret_key: str, hasher: PasswordHasher | None = None, signs_in: bool = True):
        self._store = store
        self._hasher = hasher or PasswordHasher()
        self._links = URLSafeTimedSerializer(secret_key, salt="shop-customer-links")
        self._decoy_hash: str | None = None
        if signs_in:  # made now, so the first unknown address costs no more than the next (the worker's signs no one in)
            self._decoy()

    def _decoy(self) -> str:
        """Checked when the email is unknown, so an unknown address costs the time a wrong password does."""
        if self._decoy_hash is None:  # two first sign-ins at once may both make one: either will do
            self._decoy_hash = self._hasher.hash(secrets.token_urlsafe(16))
        return self._decoy_hash

    # --- accounts ----------------------------------------------------------

    def register(self, name: str, email: str, password: str) -> tuple[dict[str, Any], bool]:
        """The account for `email`: new and unverified (True), or the verified one that exists (False,
        unchanged). An unverified one is replaced (True): whoever registered an address first holds
        nothing until its owner confirms it, and the owner's own registration ends that claim (its
        version moves on, so the links sent before no longer work)."""
        record = {
            "customer_id": "c-" + secrets.token_hex(8),
            "email": normalize_email(email),
            "name": name,
            "password_hash": self._hasher.hash(check_password(password)),
            "verified": False,
            "version": 1,
            "address": None,
            "cart": {},
            "created_at": utc_now(),
        }

        def claim(old: dict[str, Any] | None) -> dict[str, Any]:
            if old is None:
                return record
            if old.get("verified"):
                return old
            return {**record, "customer_id": old["customer_id"], "version": old["version"] + 1, "created_at": old["created_at"]}

        stored = self._store.update(CUSTOMERS, account_key(email), claim)
        return stored, stored["password_hash"] == record["password_hash"]

    def get(self, key: str) -> dict[str, Any] | None:
        return self._store.get(CUSTOMERS, key)

    def current(self, key: str, version: int, session_id: str | None = None, now: float | None = None) -> dict[str, Any] | None:
        """The account a session names, if its password has not changed since and, with
        `session_id`, that sign-in is still open (not signed out, not older than SESSION_DAYS)."""
        record = self._store.get(CUSTOMERS, key)
        if record is None or record["version"] != version:
            return None
        if session_id is not None:
            opened = record.get("sessions", {}).get(session_id)
            if opened is None or (now if now is not None else time.time()) - opened > SESSION_DAYS * 86400:
                return None
        return record

    def open_session(self, key: str) -> str:
        """A new sign-in's ID, kept in the account (its newest MAX_SESSIONS): signing out closes it."""
        session_id = secrets.token_urlsafe(16)

        def opened(record: dict[str, Any]) -> dict[str, Any]:
            sessions = {**record.get("sessions", {}), session_id: time.time()}
            newest = sorted(sessions.items(), key=lambda item: item[1])[-MAX_SESSIONS:]
            return {**record, "sessions": dict(newest)}

        self.change(key, opened)
        return session_id

    def close_session(self, key: str, session_id: str) -> None:
        self.change(
            key, lambda record: {**record, "sessions": {k: v for k, v in record.get("sessions", {}).items() if k != session_id}}
        )

    def authenticate(self, email: str, password: str) -> dict[str, Any] | None:
        """The account if `password` is its password; None otherwise (unknown or wrong alike)."""
        try:
            record = self._store.get(CUSTOMERS, account_key(email))
        except ValueError:
            record = None
        password = password[:MAX_PASSWORD_LENGTH]
        if record is None:
            self._verify(self._decoy(), password)
            return None
        return record if self._verify(record["password_hash"], password) else None

    def change(self, key: str, change: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        return self._store.update(CUSTOMERS, key, lambda record: change(record or {}))

    def remember_address(self, key: str, address: Mapping[str, str]) -> None:
        self.change(key, lambda record: {**record, "address": dict(address)})

    def save_cart(self, key: str, cart: Mapping[str, int]) -> None:
        self.change(key, lambda record: {**record, "cart": dict(cart)})

    def merge_cart(self, key: str, visitor_cart: Mapping[str, int]) -> dict[str, int]:
        """The account's cart with what the visitor put in theirs before signing in (the larger
        quantity of a product in both, at most MAX_QUANTITY); stored, and returned."""

        def merged(record: dict[str, Any]) -> dict[str, Any]:
            cart = dict(record.get("cart") or {})
            for sku, quantity in visitor_cart.items():
                cart[sku] = min(max(cart.get(sku, 0), quantity), MAX_QUANTITY)
            return {**record, "cart": cart}

        return self.change(key, merged)["cart"]

    # --- email links -------------------------------------------------------

    def link_token(self, record: dict[str, Any], purpose: str) -> str:
        return self._links.dumps({"k": account_key(record["email"]), "v": record["version"], "p": purpose})

    def verify_email(self, token: str) -> dict[str, Any] | None:
        """The account whose address the link verifies (verified now, or already); None for a bad
        or expired link."""
        found = self._read_link(token, "verify", VERIFY_SECONDS)
        if found is None:
            return None

        def verify(record: dict[str, Any]) -> dict[str, Any]:
            if record.get("version") != found["v"]:
                return record  # registered again, or a new password, since: not the current link
            return {**record, "verified": True, "verified_at": record.get("verified_at") or utc_now()}

        record = self.change(found["k"], verify)
        return record if record.get("verified") and record.get("version") == found["v"] else None

    def reset_account(self, token: str) -> dict[str, Any] | None:
        """The account a reset link is for, while the link is valid and unused."""
        found = self._read_link(token, "reset", RESET_SECONDS)
        return None if found is None else self.current(found["k"], found["v"])

    def reset_password(self, token: str, password: str) -> dict[str, Any] | None:
        """A new password through a reset link: every session and link of the old one ends, and the
        address counts as verified (the link reached it). None for a bad, expired or used link."""
        found = self._read_link(token, "reset", RESET_SECONDS)
        if found is None:
            return None
        password_hash = self._hasher.hash(check_password(password))
        version = found["v"]

        def reset(record: dict[str, Any]) -> dict[str, Any]:
            if record.get("version") != version:
                return record  # used already (or the password changed since)
            return {**record, "password_hash": password_hash, "version": version + 1, "verified": True, "sessions": {}}

        record = self.change(found["k"], reset)
        return record if record["password_hash"] == password_hash else None

    def _read_link(self, token: str, purpose: str, max_age: int) -> dict[str, Any] | None:
        try:
            found = self._links.loads(token, max_age=max_age)
        except (SignatureExpired, BadSignature):
            return None
        if not isinstance(found, dict) or found.get("p") != purpose or self._store.get(CUSTOMERS, str(found.get("k"))) is None:
            return None
        return found

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
