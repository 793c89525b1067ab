"""Customers' sign-up, email verification, sign-in and out, and password resets, at /shop/….

Every form carries the CSRF token; each route has abuse limits (web/limits.py).
A session remembers the signed-in customer as their account's key and password
version (`session["customer"]`), next to, and separate from, an operator's sign-in.

No page tells whether an address has an account: registering an address that has
one, or asking to reset one that has none, answers as if it worked, and the email
(or its absence) tells the owner. The emails go out from a workflow
(shop/account_emails.py), which the request starts whatever the address: the
worker decides what, if anything, the address calls for, and retries through a
mail outage. So neither the words nor the time of an answer depend on the
account, or on the mail server.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for
from temporalio.service import RPCError

from core.email_address import normalize_email
from core.formatting import utc_now
from core.temporal_client import TemporalUnavailable
from core.validation import TEXT_CHARACTERS_ERROR, has_refused_characters
from loans.validation import ENCODED_WORD, ENCODED_WORD_ERROR, LINK_IN_NAME, LINK_IN_NAME_ERROR
from shop.account_email_workflow import AccountEmailRequest, AccountEmailWorkflow, account_email_workflow_id
from shop.accounts import (
    MAX_PASSWORD_LENGTH,
    MIN_PASSWORD_LENGTH,
    AccountRefused,
    CustomerAccounts,
    account_key,
    links_key,
)
from shop.session import CART, CUSTOMER, PLACED, session_cart, signed_in_customer, texts
from web.auth import PASSWORD_HASHERS

shop_accounts = Blueprint("shop_accounts", __name__)
START_TIMEOUT = 5.0  # seconds for Temporal to take an email's workflow
log = logging.getLogger(__name__)


def accounts() -> CustomerAccounts:
    return current_app.extensions["customer_accounts"]


# --- emails ------------------------------------------------------------------------------


async def request_email(purpose: str, email: str, version: int | None = None) -> bool:
    """Hand the email to a workflow (shop/account_emails.py), which decides in the worker whether the
    address calls for one: the same call, and the same time, whatever the address. False: Temporal
    did not confirm it took the request (it may have, and then the email goes)."""
    settings = current_app.extensions["settings"]
    request_id = uuid.uuid4().hex
    try:
        async with asyncio.timeout(START_TIMEOUT):
            client = await current_app.extensions["temporal"].get()
            await client.start_workflow(
                AccountEmailWorkflow.run,
                AccountEmailRequest(purpose, email, utc_now(), version),
                id=account_email_workflow_id(request_id),
                task_queue=settings.order_task_queue,
                static_summary=f"An account's {purpose} email",
            )
    except (TemporalUnavailable, RPCError, TimeoutError) as err:
        log.warning("the shop's %s email was not confirmed by Temporal: %s", purpose, type(err).__name__)
        return False
    return True


def name_problem(name: str) -> dict[str, str]:
    """The name's error, if any: it greets the customer in emails sent to the address typed, so it
    holds no web or email address, no encoded-word marker and no invisible character (as a loan
    applicant's name)."""
    validation = current_app.extensions["messages"].validation
    if not 1 <= len(name) <= 100:
        return {"name": texts()["name"]}
    if has_refused_characters(name):
        return {"name": validation[TEXT_CHARACTERS_ERROR]}
    if ENCODED_WORD in name:
        return {"name": validation[ENCODED_WORD_ERROR]}
    if LINK_IN_NAME.search(name):
        return {"name": validation[LINK_IN_NAME_ERROR]}
    return {}


def account_text(refused: AccountRefused) -> str:
    return texts()[refused.message].format(minimum=MIN_PASSWORD_LENGTH, maximum=MAX_PASSWORD_LENGTH)


# --- sign-up and verification ---------------------------------------------------------------


def render_form(template: str, values: dict[str, str], errors: dict[str, str], status: int = 200, **extra: Any):
    values = {k: v for k, v in values.items() if "password" not in k}  # a password is never sent back
    return render_template(
        f"shop/{template}.html",
        values=values,
        errors=errors,
        min_password=MIN_PASSWORD_LENGTH,
        max_password=MAX_PASSWORD_LENGTH,
        **extra,
    ), status


@shop_accounts.get("/shop/register")
def register_form():
    return render_form("register", {}, {})


@shop_accounts.post("/shop/register")
async def register():
    form = request.form
    values = {name: form.get(name, "").strip() for name in ("name", "email")}
    errors = {}
    errors.update(name_problem(values["name"]))
    try:
        values["email"] = normalize_email(values["email"])
    except ValueError:
        errors["email"] = texts()["email"]
    password = form.get("password", "")
    if password != form.get("password_again", ""):
        errors["password_again"] = texts()["password_again"]
    version = None
    if not errors:
        try:
            record, _ = accounts().register(values["name"], values["email"], password)
            version = record["version"]  # this claim's: a later one's email is the later one's
        except AccountRefused as refused:
            errors[refused.field] = account_text(refused)
    if errors:
        return render_form("register", values, errors, 400)
    return await check_email("register", values["email"], version)


@shop_accounts.get("/shop/verify/<token>")
def verify(token: str):
    record = accounts().verify_email(token)
    if record is None:
        return render_template("shop/link_expired.html", purpose="verify"), 400
    flash(texts()["confirmed"], "success")
    return redirect(url_for("shop_accounts.signin_form"), code=303)


@shop_accounts.post("/shop/verify")
async def resend_verification():
    """Another verification link, asked for on the sign-in page (the same answer for any address)."""
    email = request.form.get("email", "").strip()
    try:
        email = normalize_email(email)
    except ValueError:
        return render_template("shop/check_email.html", email=email, sent=True, purpose="verify")  # none to send
    return await check_email("verify", email)


async def check_email(purpose: str, email: str, version: int | None = None):
    """The page after asking for an email: on its way if the address calls for one (the workflow
    decides), or 503 when Temporal did not confirm the request."""
    sent = await request_email(purpose, email, version)
    page = render_template("shop/check_email.html", email=email, sent=sent, purpose="reset" if purpose == "reset" else "verify")
    return page, 200 if sent else 503


# --- sign-in and out ----------------------------------------------------------------------


SHOP_PATH = re.compile(r"/shop/[A-Za-z0-9_/-]*")


def next_page(raw: str | None) -> str:
    """Where to go after signing in: a shop page the visitor was sent from (a plain path, no dot
    segment, no query), else the shop."""
    if raw and SHOP_PATH.fullmatch(raw) and "//" not in raw:
        return raw
    return url_for("shop.catalog_page")


@shop_accounts.get("/shop/signin")
def signin_form():
    return render_form("signin", {}, {}, next=next_page(request.args.get("next")))


@shop_accounts.post("/shop/signin")
def signin():
    email = request.form.get("email", "").strip()
    record = accounts().authenticate(email, request.form.get("password", ""))
    if record is None:
        errors = {"email": texts()["signin_wrong"]}
        return render_form("signin", {"email": email}, errors, 401, next=next_page(request.form.get("next")))
    if not record["verified"]:
        return render_form("signin", {"email": email}, {}, 403, unverified=True, next=next_page(request.form.get("next")))
    key = account_key(record["email"])
    previous = session.get(CUSTOMER)
    if isinstance(previous, dict) and previous.get("k") != key:  # another customer never signed out here
        for entry in (CART, PLACED):
            session.pop(entry, None)
    session[CUSTOMER] = {"k": key, "v": record["version"], "s": accounts().open_session(key)}
    session[CART] = accounts().merge_cart(key, session_cart())  # the visitor's cart joins the account's
    flash(texts()["signed_in"].format(name=record["name"]), "success")
    return redirect(next_page(request.form.get("next")), code=303)


@shop_accounts.post("/shop/signout")
def signout():
    signed_in = session.get(CUSTOMER)
    if isinstance(signed_in, dict) and signed_in_customer() is not None:
        accounts().close_session(str(signed_in["k"]), str(signed_in.get("s")))  # a copy of the cookie is no use now
    for entry in (CUSTOMER, CART, PLACED):  # the cart stays with the account, not in this browser
        session.pop(entry, None)
    flash(texts()["signed_out"], "success")
    return redirect(url_for("shop.catalog_page"), code=303)


# --- password resets ------------------------------------------------------------------------


@shop_accounts.get("/shop/reset")
def reset_request_form():
    return render_form("reset_request", {}, {})


@shop_accounts.post("/shop/reset")
async def reset_request():
    email = request.form.get("email", "").strip()
    try:
        email = normalize_email(email)
    except ValueError:
        return render_form("reset_request", {"email": email}, {"email": texts()["email"]}, 400)
    return await check_email("reset", email)


@shop_accounts.get("/shop/reset/<token>")
def reset_form(token: str):
    if accounts().reset_account(token) is None:
        return render_template("shop/link_expired.html", purpose="reset"), 400
    return render_form("reset", {}, {}, token=token)


@shop_accounts.post("/shop/reset/<token>")
def reset(token: str):
    password = request.form.get("password", "")
    if password != request.form.get("password_again", ""):
        return render_form("reset", {}, {"password_again": texts()["password_again"]}, 400, token=token)
    try:
        record = accounts().reset_password(token, password)
    except AccountRefused as refused:
        return render_form("reset", {}, {refused.field: account_text(refused)}, 400, token=token)
    if record is None:
        return render_template("shop/link_expired.html", purpose="reset"), 400
    session.pop(CUSTOMER, None)
    flash(texts()["password_changed"], "success")
    return redirect(url_for("shop_accounts.signin_form"), code=303)


def init_app(app, store, settings) -> None:
    hasher = PASSWORD_HASHERS[settings.password_hashing]()  # Argon2id, as the operators' passwords
    app.extensions["customer_accounts"] = CustomerAccounts(store, links_key(settings.secret_key), hasher)
    app.register_blueprint(shop_accounts)
    app.context_processor(lambda: {"customer": signed_in_customer() if CUSTOMER in session else None})
