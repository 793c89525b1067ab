"""Abuse limits on the public endpoints (issue 26): how often one client may apply, answer, read and sign in.

Anyone can reach the loan form, `POST /api/evaluate`, an application's page and
its contact question, the shop and its cart, and the sign-in form. Each of those has limits per client
address, refused sign-ins have one per operator account, and applying has one per
applicant email too (the duplicate window
already stops a second decision email to one address for 7 days). Operators
(signed in, or with the bearer token) are not limited. A request over a limit
gets `429` with `Retry-After`: a JSON error under /api, the form again with what
was typed under /apply, a page elsewhere.

Counts live in each web process's memory by default (`make run` has 2, so a
client gets up to twice the figures below across them); RATE_LIMIT_STORAGE_URI
(`redis://…`, `memcached://…`) shares them between processes and hosts.
`PUBLIC_RATE_LIMIT=off` lifts every limit, for load tests and benchmarks.
Flask-Limiter does the counting (moving windows).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from flask_limiter.util import get_remote_address

from core.email_address import normalize_email
from core.settings import Settings
from web.common import error_page, json_error, messages

# Per client address.
APPLY_PER_CLIENT = "10 per minute;60 per hour"
ANSWER_PER_CLIENT = "20 per minute;100 per hour"
READ_PER_CLIENT = "240 per minute"
SIGNIN_PER_CLIENT = "10 per minute;50 per hour"
CART_PER_CLIENT = "60 per minute;600 per hour"  # the shop's cart changes
CHECKOUT_PAGE_PER_CLIENT = "30 per minute;200 per hour"  # each view creates a SetupIntent at Stripe (shop/card.py)
# Customers' accounts: each form that sends an email, per client and per address it names.
ACCOUNT_EMAIL_PER_CLIENT = "5 per minute;20 per hour"
ACCOUNT_EMAIL_PER_ADDRESS = "3 per hour"
# Per operator account, refused sign-ins only, whichever clients send them: guessing one
# account's password from many addresses stops after 5 a minute and 20 an hour.
SIGNIN_FAILURES_PER_ACCOUNT = "5 per minute;20 per hour"
# Per applicant email, whoever sends it.
APPLY_PER_EMAIL = "5 per hour"


def _is_operator() -> bool:
    return bool(current_app.extensions["operator_auth"].is_operator())


def applicant_email() -> str:
    """The application's email, normalised (the limit's key); the client's address if there is none."""
    data = request.get_json(silent=True) if request.is_json else request.form
    email = data.get("email") if data is not None and hasattr(data, "get") else None
    if isinstance(email, str):
        try:
            return "email:" + normalize_email(email.strip())
        except ValueError:
            pass
    return "client:" + get_remote_address()


def signin_account() -> str:
    """The account a sign-in names (the limit's key), as the sign-in reads it."""
    return "operator:" + str(request.form.get("name", "")).strip().lower()[:64]


def refused(response: Response) -> bool:
    return response.status_code == 401


# Each public endpoint's limits: (limit, scope shared by the endpoints that count together, key,
# which answers count: None for all).
PUBLIC_LIMITS: dict[str, list[tuple[str, str, Callable[[], str] | None, Callable[[Response], bool] | None]]] = {
    "api.evaluate": [(APPLY_PER_CLIENT, "apply", None, None), (APPLY_PER_EMAIL, "apply-email", applicant_email, None)],
    "pages.apply": [(APPLY_PER_CLIENT, "apply", None, None), (APPLY_PER_EMAIL, "apply-email", applicant_email, None)],
    "api.application": [(READ_PER_CLIENT, "read", None, None)],
    "pages.application": [(READ_PER_CLIENT, "read", None, None)],
    "api.contact_api": [(ANSWER_PER_CLIENT, "answer", None, None)],
    "pages.contact": [(ANSWER_PER_CLIENT, "answer", None, None)],
    "shop.catalog_page": [(READ_PER_CLIENT, "read", None, None)],
    "shop.product": [(READ_PER_CLIENT, "read", None, None)],
    "shop.cart": [(READ_PER_CLIENT, "read", None, None)],
    "shop.change_cart": [(CART_PER_CLIENT, "cart", None, None)],
    # The forms that email an account (counted together, per client and per address they name).
    **dict.fromkeys(
        ("shop_accounts.register", "shop_accounts.resend_verification", "shop_accounts.reset_request"),
        [
            (ACCOUNT_EMAIL_PER_CLIENT, "account-email", None, None),
            (ACCOUNT_EMAIL_PER_ADDRESS, "account-address", applicant_email, None),
        ],
    ),
    "shop_accounts.signin": [
        (SIGNIN_PER_CLIENT, "shop-signin", None, None),
        (SIGNIN_FAILURES_PER_ACCOUNT, "shop-signin-account", applicant_email, refused),
    ],
    "shop_orders.checkout": [(CHECKOUT_PAGE_PER_CLIENT, "checkout-page", None, None)],
    "shop_orders.place": [(APPLY_PER_CLIENT, "checkout", None, None)],
    "shop_accounts.verify": [(ANSWER_PER_CLIENT, "shop-link", None, None)],
    "shop_accounts.reset": [(ANSWER_PER_CLIENT, "shop-link", None, None)],
    "auth.signin_submit": [
        (SIGNIN_PER_CLIENT, "signin", None, None),
        (SIGNIN_FAILURES_PER_ACCOUNT, "signin-account", signin_account, refused),
    ],
}


def init_app(app: Flask, settings: Settings) -> None:
    """A limiter of the app's own (after every blueprint is registered), its public views wrapped."""
    limiter = Limiter(
        get_remote_address,
        app=app,
        enabled=settings.public_rate_limit,
        storage_uri=settings.rate_limit_storage_uri,
        headers_enabled=False,  # the 429's Retry-After is set by the app's handler, from the limit itself
        strategy="moving-window",
    )
    for endpoint, limits in PUBLIC_LIMITS.items():
        view: Any = app.view_functions[endpoint]
        for limit, scope, key, counted in limits:
            view = limiter.shared_limit(limit, scope=scope, key_func=key, exempt_when=_is_operator, deduct_when=counted)(view)
        app.view_functions[endpoint] = view
    app.extensions["limiter"] = limiter
    app.register_error_handler(RateLimitExceeded, rate_limited)


def over_limit() -> tuple[int, str]:
    """For a refused request: whole seconds until its limit lets one through again, and the text saying so."""
    limit = current_app.extensions["limiter"].current_limit
    seconds = 60 if limit is None else max(1, math.ceil(limit.reset_at - time.time()))
    return seconds, messages().errors["rate_limited"].format(seconds=seconds)


def rate_limited(err: RateLimitExceeded):
    """The app's answer over a limit: 429 with Retry-After, JSON under /api, a page elsewhere
    (the loan form answers with itself: loans/web.py)."""
    seconds, text = over_limit()
    if request.path.startswith("/api/"):
        body = json_error(429, text, retry_after=seconds)[0]
    else:
        body = error_page(429, "Too many requests", text)[0]
    return body, 429, {"Retry-After": str(seconds)}
