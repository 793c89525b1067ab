"""Operator sign-in, roles, CSRF and security headers: who may do what, checked before any view runs.

Three kinds of user:
- a shopper, with no account yet: the shop's catalog, products and their own
  cart (shop/web.py), kept in their session cookie;
- an applicant, with no account: the loan form, their own result page (its URL
  holds the application's workflow ID, an HMAC of their email under the
  deployment's secret key, so it cannot be guessed or computed from an email),
  the contact question, `POST /api/evaluate`, `GET /api/applications/<id>`;
- an operator, with an account of their own (web/operators.py: a name, a role,
  a password): everything else their role allows. A browser signs in on /signin
  with name and password (Flask-Login) and carries a session cookie (HttpOnly,
  SameSite=Lax, Secure over HTTPS) whose session is recorded server-side; an API
  client sends `Authorization: Bearer <token>` with one of its operator's tokens,
  or OPERATOR_TOKEN, which acts as an admin named `operator-token` (tools and
  automation on the machine: `load_test.py`, the chaos run). Without them: 401
  JSON under /api, /codec and /metrics, a redirect to the sign-in page for
  pages; with a role too low for the route, 403.

Views are operator-only unless listed in `PUBLIC_ENDPOINTS`, and need the admin
role unless listed in `ROLE_OF_ENDPOINT`, so a new route is protected by default.
Forms carry Flask-WTF CSRF tokens; API calls with a bearer token or a JSON body
need none (`check_csrf` says why). Security headers (a Content-Security-Policy
with no inline script, no framing, no referrer to other sites) come from
flask-talisman.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from argon2 import PasswordHasher, profiles
from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask_login import LoginManager, current_user, login_user, logout_user
from flask_talisman import Talisman
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import Markup, escape

from core.secret_files import read_or_create_secret
from core.settings import TEMPORAL_UI_PATH, Settings
from core.store import Store
from web.common import error_page
from web.operators import FIRST_ADMIN, FIRST_ADMIN_PASSWORD_FILE, Operator, OperatorAccounts, operators_cli

# Endpoints anyone may call; every other endpoint needs an operator.
PUBLIC_ENDPOINTS = frozenset(
    {
        "static",
        "health.healthz",
        "health.readyz",
        "docs.openapi_document",
        "auth.signin",
        "auth.signin_submit",
        "auth.signout",
        "pages.form",
        "pages.apply",
        "pages.application",
        "pages.contact",
        "api.evaluate",
        "api.application",
        "api.contact_api",
        "shop.catalog_page",
        "shop.product",
        "shop.cart",
        "shop.change_cart",
        "shop_accounts.register_form",
        "shop_accounts.register",
        "shop_accounts.verify",
        "shop_accounts.resend_verification",
        "shop_accounts.signin_form",
        "shop_accounts.signin",
        "shop_accounts.signout",
        "shop_accounts.reset_request_form",
        "shop_accounts.reset_request",
        "shop_accounts.reset_form",
        "shop_accounts.reset",
        # A customer's own: each checks the signed-in customer itself (shop/orders_web.py).
        "shop_orders.checkout",
        "shop_orders.place",
        "shop_orders.orders",
        "shop_orders.order",
        "shop_orders.cancel",
        "shop_orders.change_address",
    }
)
# The role each operator endpoint needs (web/operators.py ROLES); any other needs admin.
ROLE_OF_ENDPOINT = {
    **dict.fromkeys(
        (
            "orders_api.list_orders",
            "orders_api.order",
            "orders_api.events",
            "orders_api.rewards",
            "orders_pages.dashboard",
            "orders_pages.tracker",
            "orders_review.queue",
            "orders_review.find",
            "api.applications_api",
            "pages.applications",
            "metrics.exposition",
            "codec.decode",  # the Temporal UI showing an operator what Temporal holds
            "mail.inbox",
            "mail.message",
            "mail.message_html",
        ),
        "viewer",
    ),
    **dict.fromkeys(
        (
            "orders_api.create_order",
            "orders_api.approve",
            "orders_api.cancel",
            "orders_api.change_address",
            "orders_api.expedite",
            "orders_pages.place_order",
            "orders_pages.approve_page",
            "orders_pages.cancel_page",
            "orders_pages.address_page",
            "orders_pages.expedite_page",
        ),
        "approver",
    ),
}
OPERATOR_SESSIONS = "operator_sessions"  # one record per sign-in, keyed by a hash of its id
SESSION_LIFETIME = timedelta(hours=12)  # then sign in again, whatever the cookie says
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT = 8  # "aaaaaaaaaaaaaaaa" is 16 characters and no secret
TOKEN_OPERATOR = Operator("operator-token", "admin")  # who OPERATOR_TOKEN acts as
CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "object-src": "'none'",
}
# Password hashing: Argon2id at argon2-cffi's defaults; the tests' settings may ask for its cheapest
# profile (Settings.password_hashing), which the app never reads from the environment.
PASSWORD_HASHERS = {"standard": PasswordHasher, "cheapest": lambda: PasswordHasher.from_parameters(profiles.CHEAPEST)}

auth = Blueprint("auth", __name__)
csrf = CSRFProtect()
login_manager = LoginManager()
talisman = Talisman()  # module-level, so views can set their own headers (`@talisman(...)`)


# Where a generated token is kept, inside the data folder.
TOKEN_FILE = "secrets/operator.token"


def operator_token_path(settings: Settings):
    return settings.data_dir / TOKEN_FILE


def signin_hint(settings: Settings) -> str:
    """How the first admin signs in, for the operator's console (`make run`'s ready line): the
    command that shows the generated password, never the password itself."""
    path = settings.data_dir / FIRST_ADMIN_PASSWORD_FILE
    if path.exists():
        return f"{FIRST_ADMIN}, password: cat {path}"
    return "an operator's name and password (flask --app starter operators add)"


def load_operator_token(settings: Settings) -> str:
    """The configured token, else the one generated into the data folder (0600) on first start."""
    token = settings.operator_token or read_or_create_secret(operator_token_path(settings), lambda: secrets.token_urlsafe(32))
    if len(token) < MIN_TOKEN_LENGTH or len(set(token)) < MIN_TOKEN_DISTINCT:
        raise SystemExit(
            f"OPERATOR_TOKEN must be at least {MIN_TOKEN_LENGTH} characters, {MIN_TOKEN_DISTINCT} of them different "
            "(make one: python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    return token


class OperatorAuth:
    """Who a request comes from: a browser session, checked against its server-side record and
    its account (so signing out, a new password or a disabled account ends it), or a bearer token
    (the operator's own, or OPERATOR_TOKEN), compared in constant time."""

    def __init__(self, token: str, accounts: OperatorAccounts, store: Store):
        self._token = token.encode()
        self.accounts = accounts
        self._store = store

    def start_session(self, operator: Operator, version: int) -> str:
        """A new session's id, recorded server-side (by its hash: the store never holds a usable id)."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        record = {
            "operator": operator.name,
            "version": version,
            "started_at": now.isoformat(),
            "expires_at": (now + SESSION_LIFETIME).isoformat(),
            "revoked": False,
        }
        self._store.put(OPERATOR_SESSIONS, _session_key(session_id), record)
        return session_id

    def end_session(self, session_id: object) -> None:
        """Sign-out: the session's record says revoked, so a copy of its cookie no longer signs anyone in."""
        if isinstance(session_id, str):
            now = datetime.now(timezone.utc).isoformat()
            self._store.put(OPERATOR_SESSIONS, _session_key(session_id), {"revoked": True, "revoked_at": now})

    def session_operator(self, session_id: str) -> Operator | None:
        """Flask-Login's user loader: the operator of a live session, as their account is now."""
        if g.get("operator_lookup_failed"):
            return None  # the store failed once in this request (its 503 page): no operator, no second try
        g.operator_lookup_failed = True
        record = self._store.get(OPERATOR_SESSIONS, _session_key(session_id))
        operator = None
        if record is not None and not record.get("revoked") and "operator" in record:
            if datetime.fromisoformat(record["expires_at"]) > datetime.now(timezone.utc):
                current = self.accounts.current(record["operator"], record["version"])
                operator = None if current is None else Operator(current.name, current.role, session_id)
        g.operator_lookup_failed = False
        return operator

    def bearer_operator(self) -> Operator | None:
        """The operator a request's bearer token names, if any (once per request)."""
        if "bearer_operator" not in g:
            g.bearer_operator = None
            scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() == "bearer" and credentials.strip():
                token = credentials.strip()
                if hmac.compare_digest(token.encode(), self._token):
                    g.bearer_operator = TOKEN_OPERATOR
                else:
                    g.bearer_operator = self.accounts.operator_for_token(token)
        return g.bearer_operator

    def bearer_is_valid(self) -> bool:
        return self.bearer_operator() is not None

    def is_operator(self) -> bool:
        return current_operator() is not None


def _session_key(session_id: str) -> str:
    return hashlib.sha256(b"operator-session-id:" + session_id.encode()).hexdigest()


def operator_auth() -> OperatorAuth:
    return current_app.extensions["operator_auth"]


def current_operator() -> Operator | None:
    """The operator this request comes from (a bearer token first, then the browser's session)."""
    bearer = operator_auth().bearer_operator()
    if bearer is not None:
        return bearer
    user = current_user._get_current_object()  # Flask-Login: the session's operator, or anonymous
    return user if isinstance(user, Operator) else None


class SessionCookieSecureOverHttps(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def wants_json() -> bool:
    """Machine endpoints: a refusal is a 401 they can read, not a redirect to the sign-in page."""
    return request.path.startswith(("/api/", "/codec/", f"{TEMPORAL_UI_PATH}/api/")) or request.path == "/metrics"


def require_operator():
    """Before every request: an operator-only endpoint without credentials, or with a role too low, stops here."""
    if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
        return None  # unknown URLs fall through to 404/405; preflights carry no credentials by design
    operator = current_operator()
    errors = current_app.extensions["messages"].errors
    if operator is None:
        if wants_json():
            response = jsonify({"error": errors["operator_only"]})
            response.headers["WWW-Authenticate"] = 'Bearer realm="operator"'
            return response, 401
        target = request.full_path if request.method == "GET" else request.referrer or request.path
        return redirect(url_for("auth.signin", next=local_path(target)), code=303)
    needed = ROLE_OF_ENDPOINT.get(request.endpoint, "admin")
    if not operator.may(needed):
        text = errors["role_too_low"].format(name=operator.name, role=operator.role, needed=needed)
        if wants_json():
            return jsonify({"error": text}), 403
        return error_page(403, "Not allowed", text)
    return None


def check_csrf():
    """Before every request: state changes a browser's cookie could authorise must carry the CSRF token.

    Exempt: a valid bearer token (no cookie involved); the applicant's JSON API
    (a cookie grants nothing there); a JSON body under /api or /codec, which a
    cross-site page cannot send without a CORS preflight that only the Temporal
    UI's origin passes, and only for /codec; the Temporal UI's own calls, which
    carry its CSRF header instead (web/temporal_ui.py).
    """
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or operator_auth().bearer_is_valid():
        return
    if wants_json() and (request.endpoint in PUBLIC_ENDPOINTS or request.is_json):
        return
    if request.endpoint == "temporal_ui.proxy":
        return  # the Temporal UI's own CSRF check and an admin from this origin (web/temporal_ui.py)
    csrf.protect()


def local_path(target: str | None) -> str:
    """`target` if it is a path on this site, else the orders dashboard (no open redirects)."""
    if not target:
        return "/orders"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/orders"
    return target.rstrip("?")


def signin_page(target: str, error: str | None, name: str = ""):
    first_admin = (current_app.extensions["settings"].data_dir / FIRST_ADMIN_PASSWORD_FILE).exists()
    # The sign-in page, which anyone reads, names the generated password's file inside the data folder, not its path.
    hint = FIRST_ADMIN_PASSWORD_FILE if first_admin else None
    return render_template("auth/signin.html", next=target, error=error, name=name, first_admin=FIRST_ADMIN, hint=hint)


@auth.get("/signin")
def signin():
    return signin_page(local_path(request.args.get("next")), None)


@auth.post("/signin")
def signin_submit():
    target = local_path(request.form.get("next"))
    name = request.form.get("name", "").strip().lower()
    signed = operator_auth().accounts.authenticate(name, request.form.get("password", ""))
    if signed is None:
        # One line per failure, for whoever watches the logs (never the password typed).
        current_app.logger.warning(
            "Operator sign-in refused: wrong name or password for %r from %s", name[:64], request.remote_addr
        )
        error = current_app.extensions["messages"].errors["wrong_operator_credentials"]
        return signin_page(target, error, name[:64]), 401
    operator, version = signed
    session.clear()  # a new session on sign-in: nothing from before carries over
    session_id = operator_auth().start_session(operator, version)
    login_user(Operator(operator.name, operator.role, session_id))
    session.permanent = False
    current_app.logger.info("Operator %s signed in from %s", operator.name, request.remote_addr)
    return redirect(target, code=303)


@auth.post("/signout")
def signout():
    operator_auth().end_session(session.get("_user_id"))
    logout_user()
    session.clear()
    return redirect(url_for("pages.form"), code=303)


def csrf_field() -> Markup:
    """The hidden input every POST form carries (`{{ csrf_field() }}` in templates).

    The one Markup in the app: its only value is the server's own token, escaped; no user data.
    """
    return Markup(f'<input type="hidden" name="csrf_token" value="{escape(generate_csrf())}">')


def init_app(app: Flask, settings: Settings, store: Store) -> None:
    """Sign-in routes, the operator and role checks, CSRF and security headers for every request;
    the operators' accounts in `store`, with the first admin if it holds none."""
    accounts = OperatorAccounts(store, PASSWORD_HASHERS[settings.password_hashing]())
    accounts.ensure_first_admin(settings.data_dir)
    app.extensions["settings"] = settings
    app.extensions["operator_accounts"] = accounts
    app.extensions["operator_auth"] = auth_ = OperatorAuth(load_operator_token(settings), accounts, store)
    login_manager.init_app(app)
    login_manager.session_protection = None  # sessions are recorded server-side and revocable instead
    login_manager.user_loader(auth_.session_operator)
    # Sessions are signed with a key derived from the deployment's secret, apart
    # from the one that makes workflow IDs.
    app.secret_key = hmac.new(settings.secret_key.encode(), b"flask-session", hashlib.sha256).hexdigest()
    app.session_interface = SessionCookieSecureOverHttps()
    app.config.setdefault("SESSION_COOKIE_SAMESITE", "Lax")
    app.config.setdefault("SESSION_COOKIE_HTTPONLY", True)
    # Checked by `check_csrf`, which knows the bearer and JSON exemptions; a
    # token stays valid for the browser session, so a form left open still submits.
    app.config.setdefault("WTF_CSRF_CHECK_DEFAULT", False)
    app.config.setdefault("WTF_CSRF_TIME_LIMIT", None)
    csrf.init_app(app)
    talisman.init_app(
        app,
        force_https=False,  # TLS is the deployment's proxy's job; cookies still go Secure over HTTPS
        session_cookie_secure=False,
        content_security_policy=CONTENT_SECURITY_POLICY,
        frame_options="DENY",
        # Same-origin: no URL (an applicant's result page) leaks to other sites, while
        # form posts over HTTPS keep the Referer that the CSRF check compares.
        referrer_policy="same-origin",
    )
    app.before_request(require_operator)
    app.before_request(check_csrf)
    app.after_request(never_stored)
    app.register_blueprint(auth)
    app.cli.add_command(operators_cli)
    app.jinja_env.globals["csrf_field"] = csrf_field
    app.context_processor(lambda: {"is_operator": operator_auth().is_operator(), "operator": current_operator()})


def never_stored(response):
    """`Cache-Control: no-store` on every answer but the static files: pages and API answers
    hold applicants' and customers' data, which no browser cache or proxy should keep."""
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


__all__ = ["CSRFError", "PUBLIC_ENDPOINTS", "ROLE_OF_ENDPOINT", "current_operator", "init_app", "operator_auth"]
