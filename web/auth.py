"""Operator sign-in, CSRF and security headers: who may do what, checked before any view runs.

Two kinds of user:
- an applicant, with no account: the loan form, their own result page (its URL
  holds the application's workflow ID, an HMAC of their email under the
  deployment's secret key, so it cannot be guessed or computed from an email),
  the contact question, `POST /api/evaluate`, `GET /api/applications/<id>`;
- an operator, who holds the operator token (`OPERATOR_TOKEN`, else generated
  into the data folder): everything else. A browser signs in once on /signin
  and carries a session cookie (HttpOnly, SameSite=Lax, Secure over HTTPS); an
  API client sends `Authorization: Bearer <token>`. Without them: 401 JSON
  under /api and /codec, a redirect to the sign-in page for pages.

Views are operator-only unless listed in `PUBLIC_ENDPOINTS`, so a new route is
protected by default. Forms carry Flask-WTF CSRF tokens; API calls with a
bearer token or a JSON body need none (`check_csrf` says why). Security headers (a Content-Security-Policy with no inline script,
no framing, no referrer to other sites) come from flask-talisman.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

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
from flask_talisman import Talisman
from flask_wtf.csrf import CSRFError, CSRFProtect, generate_csrf
from markupsafe import Markup, escape

from core.secret_files import read_or_create_secret
from core.settings import Settings
from core.store import Store

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
    }
)
SESSION_KEY = "operator"
SESSION_ID_KEY = "operator_session"
OPERATOR_SESSIONS = "operator_sessions"  # one record per sign-in, keyed by a hash of its id
SESSION_LIFETIME = timedelta(hours=12)  # then sign in again, whatever the cookie says
MIN_TOKEN_LENGTH = 16
MIN_TOKEN_DISTINCT = 8  # "aaaaaaaaaaaaaaaa" is 16 characters and no secret
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

auth = Blueprint("auth", __name__)
csrf = CSRFProtect()


# Where a generated token is kept, inside the data folder; the sign-in page names only this.
TOKEN_FILE = "secrets/operator.token"


def operator_token_path(settings: Settings):
    return settings.data_dir / TOKEN_FILE


def signin_hint(settings: Settings) -> str:
    """Where the operator finds the token, for the operator's console (`make run`'s ready line):
    the whole command, never the token itself."""
    if settings.operator_token:
        return "the OPERATOR_TOKEN you set"
    load_operator_token(settings)
    return f"cat {operator_token_path(settings)}"


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
    """Checks a request's credentials against the operator token, in constant time, and a browser's
    session against its server-side record (so signing out ends it for good)."""

    def __init__(self, token: str, store: Store | None = None):
        self._token = token.encode()
        # The session stores a fingerprint of the token, never the token, so
        # changing the token signs every browser out.
        self.fingerprint = hashlib.sha256(b"operator-session:" + self._token).hexdigest()
        self._store = store

    def start_session(self) -> str:
        """A new session's id, recorded server-side (by its hash: the store never holds a usable id)."""
        session_id = secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        if self._store is not None:
            record = {"started_at": now.isoformat(), "expires_at": (now + SESSION_LIFETIME).isoformat(), "revoked": False}
            self._store.put(OPERATOR_SESSIONS, _session_key(session_id), record)
        return session_id

    def end_session(self, session_id: object) -> None:
        """Sign-out: the session's record says revoked, so a copy of its cookie no longer signs anyone in."""
        if self._store is not None and isinstance(session_id, str):
            now = datetime.now(timezone.utc).isoformat()
            self._store.put(OPERATOR_SESSIONS, _session_key(session_id), {"revoked": True, "revoked_at": now})

    def token_matches(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self._token)

    def bearer_is_valid(self) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(credentials.strip())

    def session_is_valid(self) -> bool:
        if "operator_session_valid" not in g:  # read once per request, however often asked
            # If the store cannot say (StoreUnavailable: the 503 page), the rest of this request
            # (that page's own check) sees no operator rather than asking again.
            g.operator_session_valid = False
            g.operator_session_valid = self._session_is_valid()
        return bool(g.operator_session_valid)

    def _session_is_valid(self) -> bool:
        stored, session_id = session.get(SESSION_KEY), session.get(SESSION_ID_KEY)
        if not (isinstance(stored, str) and hmac.compare_digest(stored, self.fingerprint)):
            return False
        if self._store is None:
            return True
        if not isinstance(session_id, str):
            return False  # a cookie from before sessions were recorded: sign in again
        record = self._store.get(OPERATOR_SESSIONS, _session_key(session_id))
        if record is None or record.get("revoked"):
            return False
        return datetime.fromisoformat(record["expires_at"]) > datetime.now(timezone.utc)

    def is_operator(self) -> bool:
        return self.bearer_is_valid() or self.session_is_valid()


def _session_key(session_id: str) -> str:
    return hashlib.sha256(b"operator-session-id:" + session_id.encode()).hexdigest()


def operator_auth() -> OperatorAuth:
    return current_app.extensions["operator_auth"]


class SessionCookieSecureOverHttps(SecureCookieSessionInterface):
    """Mark the session cookie Secure whenever the request came over HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure


def wants_json() -> bool:
    """Machine endpoints: a refusal is a 401 they can read, not a redirect to the sign-in page."""
    return request.path.startswith(("/api/", "/codec/")) or request.path == "/metrics"


def require_operator():
    """Before every request: an operator-only endpoint without credentials stops here."""
    if request.endpoint is None or request.endpoint in PUBLIC_ENDPOINTS or request.method == "OPTIONS":
        return None  # unknown URLs fall through to 404/405; preflights carry no credentials by design
    if operator_auth().is_operator():
        return None
    if wants_json():
        response = jsonify({"error": current_app.extensions["messages"].errors["operator_only"]})
        response.headers["WWW-Authenticate"] = 'Bearer realm="operator"'
        return response, 401
    target = request.full_path if request.method == "GET" else request.referrer or request.path
    return redirect(url_for("auth.signin", next=local_path(target)), code=303)


def check_csrf():
    """Before every request: state changes a browser's cookie could authorise must carry the CSRF token.

    Exempt: a valid bearer token (no cookie involved); the applicant's JSON API
    (a cookie grants nothing there); a JSON body under /api or /codec, which a
    cross-site page cannot send without a CORS preflight that only the Temporal
    UI's origin passes, and only for /codec.
    """
    if request.method in ("GET", "HEAD", "OPTIONS", "TRACE") or operator_auth().bearer_is_valid():
        return
    if wants_json() and (request.endpoint in PUBLIC_ENDPOINTS or request.is_json):
        return
    csrf.protect()


def local_path(target: str | None) -> str:
    """`target` if it is a path on this site, else the orders dashboard (no open redirects)."""
    if not target:
        return "/orders"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/orders"
    return target.rstrip("?")


def signin_page(target: str, error: str | None):
    # Where this deployment keeps the token (its DATA_DIR, or the OPERATOR_TOKEN it was given).
    return render_template("auth/signin.html", next=target, error=error, token_file=current_app.extensions["token_file"])


@auth.get("/signin")
def signin():
    return signin_page(local_path(request.args.get("next")), None)


@auth.post("/signin")
def signin_submit():
    target = local_path(request.form.get("next"))
    if not operator_auth().token_matches(request.form.get("token", "")):
        # One line per failure, for whoever watches the logs (the token typed is never logged).
        current_app.logger.warning("Operator sign-in refused: wrong token from %s", request.remote_addr)
        error = current_app.extensions["messages"].errors["wrong_operator_token"]
        return signin_page(target, error), 401
    session.clear()  # a new session on sign-in: nothing from before carries over
    session[SESSION_KEY] = operator_auth().fingerprint
    session[SESSION_ID_KEY] = operator_auth().start_session()
    session.permanent = False
    return redirect(target, code=303)


@auth.post("/signout")
def signout():
    operator_auth().end_session(session.get(SESSION_ID_KEY))
    session.clear()
    return redirect(url_for("pages.form"), code=303)


def csrf_field() -> Markup:
    """The hidden input every POST form carries (`{{ csrf_field() }}` in templates).

    The one Markup in the app: its only value is the server's own token, escaped; no user data.
    """
    return Markup(f'<input type="hidden" name="csrf_token" value="{escape(generate_csrf())}">')


def init_app(app: Flask, settings: Settings, store: Store | None = None) -> None:
    """Sign-in routes, the operator check, CSRF and security headers for every request.
    `store` keeps the operators' sessions (without one, a session lasts as long as its cookie)."""
    app.extensions["operator_auth"] = OperatorAuth(load_operator_token(settings), store)
    # The sign-in page, which anyone reads, names the token's file inside the data folder, not its path.
    app.extensions["token_file"] = None if settings.operator_token else TOKEN_FILE
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
    Talisman(
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
    app.jinja_env.globals["csrf_field"] = csrf_field
    app.context_processor(lambda: {"is_operator": operator_auth().is_operator()})


def never_stored(response):
    """`Cache-Control: no-store` on every answer but the static files: pages and API answers
    hold applicants' and customers' data, which no browser cache or proxy should keep."""
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


__all__ = ["CSRFError", "PUBLIC_ENDPOINTS", "init_app", "operator_auth"]
