"""Operators' accounts: who may sign in, with which role, and the API tokens they hold.

An operator has a name, a role and a password hashed with Argon2id (argon2-cffi's
defaults: RFC 9106's low-memory profile, 64 MiB and 3 passes, so each guess costs
an attacker that much memory), kept in the configured store (`operators`, one
record per name, files or PostgreSQL). Roles, each allowing what the ones before
it allow (`ROLES`; which route needs which: web/auth.py):

- viewer: every operator page and read, and decrypting payloads for the Temporal UI;
- approver: the order actions too (place, approve, cancel, change the address, expedite);
- admin: the rest (simulated failures, encrypting payloads through the codec endpoint).

An API client sends a token of its own operator's (`op_<id>_<secret>`; the store
keeps its SHA-256 only, in `operator_tokens`), revocable one by one. Changing a
password or disabling an account ends its sessions (each session's record names
the account's credentials version) and disabling stops its tokens; a role change
applies at the account's next request.

The first admin: when the store holds no operator, the web app's first start
creates `admin` with a password generated into the data folder
(`secrets/admin.password`, 0600), which the sign-in page and `make run` point to;
the file goes when that password is changed. Accounts are managed with
`flask --app starter operators …` (below).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app
from flask.cli import with_appcontext

from core.formatting import utc_now
from core.secret_files import read_or_create_secret
from core.store import Store

ROLES = ("viewer", "approver", "admin")  # each allows what the ones before it allow
OPERATORS = "operators"
OPERATOR_TOKENS = "operator_tokens"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # Argon2 takes any length; a bound keeps a sign-in's work bounded
FIRST_ADMIN = "admin"
FIRST_ADMIN_PASSWORD_FILE = "secrets/admin.password"  # inside the data folder
TOKEN_PATTERN = re.compile(r"^op_([0-9a-f]{16})_([A-Za-z0-9_-]{43})$")


class AccountRefused(ValueError):
    """A change the accounts refuse; the message says why, for the CLI."""


def role_allows(role: str, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Operator:
    """Who sent a request: Flask-Login's user (its id is the browser session's, None for a token)."""

    name: str
    role: str
    session_id: str | None = None
    is_authenticated = True
    is_active = True
    is_anonymous = False

    def get_id(self) -> str | None:
        return self.session_id

    def may(self, needed: str) -> bool:
        return role_allows(self.role, needed)


class OperatorAccounts:
    """The operators' records in `store`, their passwords checked with `hasher`."""

    def __init__(self, store: Store, hasher: PasswordHasher | None = None):
        self._store = store
        self._hasher = hasher or PasswordHasher()
        # Checked when the name is unknown, so a wrong name costs the same time as a wrong password.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    # --- accounts ----------------------------------------------------------

    def add(self, name: str, role: str, password: str) -> None:
        _check_name(name)
        _check_role(role)
        if self._store.get(OPERATORS, name) is not None:
            raise AccountRefused(f"an operator named {name!r} exists already")
        record = self._new_record(name, role, password)
        if self._store.update(OPERATORS, name, lambda old: old or record) is not record:  # added meanwhile
            raise AccountRefused(f"an operator named {name!r} exists already")

    def set_password(self, name: str, password: str, first_admin_file: Path | None = None) -> None:
        """A new password; the account's sessions end (the first admin's generated file goes too)."""
        if self._store.get(OPERATORS, name) is None:
            raise AccountRefused(f"no operator named {name!r}")
        password_hash = self._hash(password)
        self._change(name, lambda record: {**record, "password_hash": password_hash, "version": record["version"] + 1})
        if name == FIRST_ADMIN and first_admin_file is not None:
            first_admin_file.unlink(missing_ok=True)

    def set_role(self, name: str, role: str) -> None:
        _check_role(role)
        self._change(name, lambda record: {**record, "role": role})

    def disable(self, name: str) -> None:
        """No more sign-ins; its sessions and tokens stop working at their next request."""
        self._change(name, lambda record: {**record, "disabled": True, "version": record["version"] + 1})

    def accounts(self) -> list[dict[str, Any]]:
        """Every account, without its password hash, by name."""
        records = [{k: v for k, v in r.items() if k != "password_hash"} for r in self._store.list_all(OPERATORS)]
        return sorted(records, key=lambda record: record["name"])

    def current(self, name: str, version: int | None = None) -> Operator | None:
        """The operator `name` as they are now, if active (and still at credentials `version`)."""
        record = self._store.get(OPERATORS, name) if NAME_PATTERN.match(name) else None
        if record is None or record.get("disabled") or (version is not None and record["version"] != version):
            return None
        return Operator(record["name"], record["role"])

    def authenticate(self, name: str, password: str) -> tuple[Operator, int] | None:
        """The operator and their credentials version if `password` is theirs; None otherwise."""
        record = self._store.get(OPERATORS, name) if NAME_PATTERN.match(name) else None
        password = password[:MAX_PASSWORD_LENGTH]
        if record is None or record.get("disabled"):
            self._verify(self._decoy, password)
            return None
        if not self._verify(record["password_hash"], password):
            return None
        return Operator(record["name"], record["role"]), record["version"]

    def ensure_first_admin(self, data_dir: Path) -> bool:
        """Create `admin` with a generated password if the store holds no operator; True while
        the generated file still signs `admin` in (a file another host made for a shared store,
        or one whose password was changed, is removed)."""
        path = data_dir / FIRST_ADMIN_PASSWORD_FILE
        if not self._store.list_all(OPERATORS):
            password = read_or_create_secret(path, lambda: secrets.token_urlsafe(18))
            self._store.update(OPERATORS, FIRST_ADMIN, lambda old: old or self._new_record(FIRST_ADMIN, "admin", password))
        if not path.exists():
            return False
        record = self._store.get(OPERATORS, FIRST_ADMIN)
        if record is None or not self._verify(record["password_hash"], path.read_text().strip()):
            path.unlink(missing_ok=True)
            return False
        return True

    # --- tokens ------------------------------------------------------------

    def add_token(self, name: str, label: str = "") -> str:
        """A new API token for `name`: returned once, only its hash kept."""
        if self.current(name) is None:
            raise AccountRefused(f"no active operator named {name!r}")
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        record = {"id": token_id, "operator": name, "label": label[:100], "hash": _token_hash(secret), "created_at": utc_now()}
        self._store.put(OPERATOR_TOKENS, token_id, {**record, "revoked": False})
        return f"op_{token_id}_{secret}"

    def revoke_token(self, token_id: str) -> None:
        if not re.fullmatch(r"[0-9a-f]{16}", token_id) or self._store.get(OPERATOR_TOKENS, token_id) is None:
            raise AccountRefused(f"no token with id {token_id!r}")
        self._store.update(OPERATOR_TOKENS, token_id, lambda record: {**(record or {}), "revoked": True, "revoked_at": utc_now()})

    def tokens(self) -> list[dict[str, Any]]:
        records = [{k: v for k, v in r.items() if k != "hash"} for r in self._store.list_all(OPERATOR_TOKENS)]
        return sorted(records, key=lambda record: record["created_at"])

    def operator_for_token(self, token: str) -> Operator | None:
        """The operator a bearer token belongs to, if it is one of theirs, unrevoked, and they are active."""
        match = TOKEN_PATTERN.match(token)
        if match is None:
            return None
        record = self._store.get(OPERATOR_TOKENS, match.group(1))
        if record is None or record.get("revoked") or not hmac.compare_digest(record["hash"], _token_hash(match.group(2))):
            return None
        return self.current(record["operator"])

    # --- helpers -----------------------------------------------------------

    def _new_record(self, name: str, role: str, password: str) -> dict[str, Any]:
        return {
            "name": name,
            "role": role,
            "password_hash": self._hash(password),
            "version": 1,
            "disabled": False,
            "created_at": utc_now(),
        }

    def _hash(self, password: str) -> str:
        if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
            raise AccountRefused(f"a password is {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")
        return self._hasher.hash(password)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    def _change(self, name: str, change) -> None:
        if self._store.get(OPERATORS, name) is None:
            raise AccountRefused(f"no operator named {name!r}")
        self._store.update(OPERATORS, name, change)


def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise AccountRefused("a name is 2 to 32 characters: lowercase letters, digits, '-' or '_', starting with a letter")


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise AccountRefused(f"a role is one of {', '.join(ROLES)}")


def _token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()  # the secret is 256 random bits: no stretching needed


# --- the CLI: flask --app starter operators … ---------------------------------


def accounts() -> OperatorAccounts:
    return current_app.extensions["operator_accounts"]


def _password(prompt: str, from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt(prompt, hide_input=True, confirmation_prompt=True)


def _run(action):
    """`action()`'s result; a refusal is the command's error message."""
    try:
        return action()
    except AccountRefused as refused:
        raise click.ClickException(str(refused)) from None


@click.group("operators")
def operators_cli() -> None:
    """Operators' accounts and API tokens."""


@operators_cli.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@with_appcontext
def add_command(name: str, role: str, password_stdin: bool) -> None:
    """Create an operator (the password is asked for twice)."""
    _run(lambda: accounts().add(name, role, _password("Password", password_stdin)))
    click.echo(f"Operator {name} added ({role}).")


@operators_cli.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of stdin.")
@with_appcontext
def passwd_command(name: str, password_stdin: bool) -> None:
    """Change an operator's password: their sessions end."""
    first_admin_file = current_app.extensions["settings"].data_dir / FIRST_ADMIN_PASSWORD_FILE
    _run(lambda: accounts().set_password(name, _password("New password", password_stdin), first_admin_file))
    click.echo(f"Password of {name} changed; their sessions are over.")


@operators_cli.command("role")
@click.argument("name")
@click.argument("role", type=click.Choice(ROLES))
@with_appcontext
def role_command(name: str, role: str) -> None:
    """Give an operator another role (from their next request)."""
    _run(lambda: accounts().set_role(name, role))
    click.echo(f"{name} is now {role}.")


@operators_cli.command("disable")
@click.argument("name")
@with_appcontext
def disable_command(name: str) -> None:
    """Stop an operator signing in; their sessions and tokens stop working."""
    _run(lambda: accounts().disable(name))
    click.echo(f"{name} is disabled.")


@operators_cli.command("list")
@with_appcontext
def list_command() -> None:
    """Every operator and API token (never a password or a token's secret)."""
    for record in accounts().accounts():
        state = "disabled" if record.get("disabled") else "active"
        click.echo(f"{record['name']:<32} {record['role']:<9} {state}")
    for token in accounts().tokens():
        state = "revoked" if token.get("revoked") else "active"
        click.echo(f"token {token['id']}  {token['operator']:<32} {state:<8} {token['label']}")


@operators_cli.command("token")
@click.argument("name")
@click.option("--label", default="", help="What the token is for (shown by `list`).")
@with_appcontext
def token_command(name: str, label: str) -> None:
    """Make an API token for an operator; it is printed once."""
    click.echo(_run(lambda: accounts().add_token(name, label)))


@operators_cli.command("revoke-token")
@click.argument("token_id")
@with_appcontext
def revoke_token_command(token_id: str) -> None:
    """Revoke an API token by its id (the 16 hex digits after `op_`)."""
    _run(lambda: accounts().revoke_token(token_id))
    click.echo(f"Token {token_id} revoked.")
