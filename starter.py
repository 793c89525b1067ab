"""The web app factory: settings, the Temporal client, the two halves' routes, health and errors.

`create_app()` builds the Flask app (tests pass a config mapping) the way
Flask's tutorial does: nothing connects at import time. It wires

- one `ProcessClient` (core/temporal_client.py): the process's Temporal client,
  created on the first request, after gunicorn forks;
- the loan half: `LoanService` (loans/service.py) and its routes (loans/web.py);
- the order half: `OrderService` (orders/service.py), its routes
  (orders/web.py) and the `flask --app starter orders` CLI (orders/cli.py);
- who may do what: operator sign-in, CSRF and security headers (web/auth.py);
- request metrics for Prometheus at /metrics (web/metrics.py);
- the codec server (web/codec_server.py) that decrypts payloads for the Temporal UI and CLI;
- the operators' mail view at /mail (web/mail_view.py): the emails the local sink holds;
- `/healthz`, `/readyz`, the API's OpenAPI document at `/openapi.json` (web/openapi.py),
  and the error pages: JSON under /api, HTML elsewhere.

Views that talk to Temporal are `async def` (Flask[async]). Serve the app with
gunicorn (see tools/stack.py); `python starter.py` runs Flask's
development server for quick experiments.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, SecurityError

from core.rules import load_messages, load_rules
from core.search_attributes import missing_search_attributes, registration_command
from core.settings import Settings, payload_codec_from_env
from core.store import StoreUnavailable, open_store
from core.temporal_client import ProcessClient
from core.validation import InvalidInput
from loans import web as loans_web
from loans.model import SEARCH_ATTRIBUTES
from loans.service import LoanService
from orders import web as orders_web
from orders.cli import orders_cli
from orders.service import OrderService
from shop import account_web as shop_account_web
from shop import orders_web as shop_orders_web
from shop import web as shop_web
from web import auth as operator_auth
from web import limits as web_limits
from web import mail_view
from web import metrics as web_metrics
from web.codec_server import create_codec_blueprint
from web.common import StrictJSONProvider, error_page, json_error, messages
from web.openapi import build_openapi
from web.temporal_ui import temporal_ui

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
async def readyz():
    try:
        async with asyncio.timeout(2.0):
            client = await current_app.extensions["temporal"].get()
            await client.service_client.check_health()
            # Checked (and registered where allowed) until they exist once; then never again.
            missing = (
                []
                if current_app.extensions.get("search_attributes_ok")
                else await missing_search_attributes(client, SEARCH_ATTRIBUTES)
            )
    except Exception as err:  # noqa: BLE001 - any failure means "not ready"
        # The detail (addresses, gRPC text) is for the log; anyone may call /readyz.
        current_app.logger.warning("Not ready: Temporal is unreachable: %s", str(err) or type(err).__name__)
        return jsonify({"status": "unavailable", "error": messages().errors["not_ready"]}), 503
    if missing:
        current_app.logger.error(
            "Not ready: namespace %s lacks the search attributes %s; register them: %s",
            client.namespace,
            ", ".join(key.name for key in missing),
            registration_command(client.namespace, missing),
        )
        return jsonify({"status": "unavailable", "error": messages().errors["search_attributes_missing"]}), 503
    current_app.extensions["search_attributes_ok"] = True
    return jsonify({"status": "ready"})


def sized_chunked_bodies(wsgi_app, max_length: int):
    """Give a chunked request body a length, so MAX_CONTENT_LENGTH applies to it too.

    gunicorn decodes a chunked body but gives no length and does not mark the
    stream as terminated, so Werkzeug read such a body as empty (a valid chunked
    JSON was a 400, a 1 MB one too, never a 413). This reads at most one byte
    past the limit: within it, the body is passed on with its length; past it,
    the length says so and Werkzeug answers 413 without reading the rest.
    """

    def app(environ, start_response):
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower() and not environ.get("CONTENT_LENGTH"):
            body = environ["wsgi.input"].read(max_length + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            del environ["HTTP_TRANSFER_ENCODING"]  # Werkzeug ignores the length of a chunked body
        return wsgi_app(environ, start_response)

    return app


docs = Blueprint("docs", __name__)


@docs.get("/openapi.json")
def openapi_document():
    """The JSON API described for clients and for the fuzz tests (web/openapi.py)."""
    return jsonify(current_app.extensions["openapi"])


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    # "/api/orders//events" is an unknown URL (404), not a redirect to a guessed one.
    app.url_map.merge_slashes = False
    app.config.from_mapping(MAX_CONTENT_LENGTH=16 * 1024)
    app.json = StrictJSONProvider(app)
    if test_config:
        app.config.from_mapping(test_config)
    app.wsgi_app = sized_chunked_bodies(app.wsgi_app, app.config["MAX_CONTENT_LENGTH"])  # type: ignore[method-assign]
    settings: Settings = app.config.get("SETTINGS") or Settings.from_env()
    rules = load_rules(settings.rules_file)
    app.extensions["messages"] = app_messages = load_messages(settings.messages_file)
    temporal = app.extensions["temporal"] = ProcessClient()
    store = open_store(settings)

    if app.config.get("TRUSTED_HOSTS") is None:  # Flask's default is None: every host
        app.config["TRUSTED_HOSTS"] = settings.trusted_hosts  # any other Host header: 400
    web_metrics.init_app(app)  # first: it times every request, refused ones too
    operator_auth.init_app(app, settings, store)
    loans_web.init_app(app, LoanService(settings, rules, temporal, store))
    orders_web.init_app(app, OrderService(settings, rules, app_messages, temporal, store))
    shop_web.init_app(app)  # the storefront: it reads the order service's catalog and stock
    shop_account_web.init_app(app, store, settings)  # customers' accounts
    shop_orders_web.init_app(app, settings)  # a customer's checkout and orders
    app.cli.add_command(orders_cli)
    app.register_blueprint(health)
    app.extensions["openapi"] = build_openapi([item.sku for item in rules.orders.catalog])
    app.register_blueprint(docs)
    # Operator-only like every non-public route (web/auth.py); its CORS admits the Temporal UI.
    # It shows what Temporal holds, plain payloads included (a worker refuses those).
    codec = payload_codec_from_env(accept_plain=True)
    app.register_blueprint(create_codec_blueprint(lambda: codec, settings.temporal_ui_url))
    app.register_blueprint(temporal_ui)  # the Temporal UI for operators, where TEMPORAL_UI_UPSTREAM is set
    mail_view.init_app(app, settings)  # the emails the local sink holds, where MAIL_VIEW_DIR is set
    web_limits.init_app(app, settings)  # last: it wraps the public views
    app.register_error_handler(SecurityError, handle_untrusted_host)
    app.register_error_handler(InvalidInput, handle_invalid_input)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(StoreUnavailable, handle_store_unavailable)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.context_processor(lambda: {"temporal_ui_url": settings.temporal_ui_url})
    return app


def handle_untrusted_host(err: SecurityError):
    """A Host header not in ALLOWED_HOSTS: a plain 400 (no page: its links would be built from that host)."""
    return "Bad request: this server does not answer to that host name.\n", 400, {"Content-Type": "text/plain; charset=utf-8"}


def handle_invalid_input(err: InvalidInput):
    """Input a route did not handle itself (the list pages' `page`): 400 naming the field."""
    if request.path.startswith("/api/"):
        return json_error(400, messages().errors["invalid_request"], fields=err.fields)
    return error_page(400, "Invalid request", " ".join(err.fields.values()))


def handle_http_error(err: HTTPException):
    """JSON errors under /api, an HTML page elsewhere; never a bare 500 page."""
    if request.path.startswith("/api/"):
        message = messages().errors["too_large"] if err.code == 413 else err.description
        return json_error(err.code or 500, message or err.name)
    return error_page(err.code or 500, err.name, err.description or "")


def handle_store_unavailable(err: StoreUnavailable):
    """The database is down (core/store/postgres.py): a 503 saying so, never a 500; the workflows carry on."""
    current_app.logger.warning("Store unavailable on %s %s: %s", request.method, request.path, err)
    text = "The records database is unreachable right now; nothing was lost, please try again in a moment."
    if request.path.startswith("/api/"):
        return json_error(503, text)
    return error_page(503, "Temporarily unavailable", text)


def handle_unexpected_error(err: Exception):
    current_app.logger.exception("Unhandled error on %s %s", request.method, request.path)
    if request.path.startswith("/api/"):
        return json_error(500, "Internal error; the request was logged.")
    return error_page(500, "Something went wrong", "The error was logged; please try again.")


if __name__ == "__main__":
    settings = Settings.from_env()
    create_app().run(host=settings.web_host, port=settings.web_port, debug=False)
