"""The Temporal Web UI through the app's own origin, for signed-in operators: `/temporal/...`.

Why: the UI decrypts payloads by sending them to the app's codec endpoint
(web/codec_server.py), which answers operators only. Served from another
origin, the UI's calls carry the operator's session cookie only after a manual
"include credentials" setting in each browser. Served from this origin, they
are same-origin calls: a signed-in operator sees every payload decrypted, with
nothing to set up, and anyone else cannot open the UI here at all (the UI
server's own port still shows ciphertext to whoever reaches it).

The UI server runs with its public path at `/temporal` (`make run` starts the
dev server with `--ui-public-path /temporal`), so paths pass through unchanged
to `TEMPORAL_UI_UPSTREAM`. Who may do what:
- reading (GET, HEAD): operators with the viewer role and above;
- anything else the UI sends (terminate, cancel, signal, reset, start): admins,
  from this origin only. The UI server's own CSRF check (a SameSite=Strict
  cookie echoed in a header) stands in for the app's form tokens, which the UI
  cannot send.
The operator's cookies and bearer token never reach the UI server, and its
answers get a Content-Security-Policy that lets its scripts talk to this
origin only.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from http.client import HTTPConnection
from http.cookies import SimpleCookie
from urllib.parse import quote, urlsplit

from flask import Blueprint, Response, current_app, jsonify, request

from core.settings import TEMPORAL_UI_PATH
from web.auth import ROLE_OF_ENDPOINT, current_operator, talisman
from web.common import error_page

PUBLIC_PATH = TEMPORAL_UI_PATH
temporal_ui = Blueprint("temporal_ui", __name__)
ROLE_OF_ENDPOINT["temporal_ui.proxy"] = "viewer"  # reading; writing needs admin (`proxy` checks it)

# The UI's own cookie for its CSRF check: the only cookie passed either way.
UI_COOKIE = "_csrf"
# Connection-level headers, and those this proxy sets itself (RFC 9110 section 7.6.1).
HOP_BY_HOP = frozenset(
    ("connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade")
)
NOT_FORWARDED = HOP_BY_HOP | {"host", "cookie", "authorization", "content-length"}
NOT_RETURNED = HOP_BY_HOP | {"set-cookie", "x-frame-options"}
# The UI is a compiled single-page app with inline bootstrap script and styles; it may load and call
# this origin only, so a payload it renders cannot send data anywhere else.
UI_CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self' 'unsafe-inline'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",
    "font-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "frame-ancestors": "'none'",
    "form-action": "'self'",
}
CONNECT_TIMEOUT_SECONDS = 5
# The UI's longest call is a long poll of a workflow's history, which the server ends after 20 s.
READ_TIMEOUT_SECONDS = 75
CHUNK_BYTES = 64 * 1024
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
# The calls to the UI server in flight in this process, so a stop can end them.
_open: set[HTTPConnection] = set()
_open_lock = threading.Lock()


@temporal_ui.route(PUBLIC_PATH, defaults={"path": ""}, methods=METHODS, strict_slashes=False)
@temporal_ui.route(f"{PUBLIC_PATH}/<path:path>", methods=METHODS)
@talisman(content_security_policy=UI_CONTENT_SECURITY_POLICY, frame_options="DENY")
def proxy(path: str):
    upstream: str | None = current_app.extensions["settings"].temporal_ui_upstream
    if upstream is None:
        return error_page(404, "Not found", "This deployment does not serve the Temporal UI.")
    writes = request.method not in ("GET", "HEAD")
    if writes:
        refusal = _write_refusal()
        if refusal is not None:
            return refusal
    headers = {name: value for name, value in request.headers.items() if name.lower() not in NOT_FORWARDED}
    if UI_COOKIE in request.cookies:
        headers["Cookie"] = f"{UI_COOKIE}={request.cookies[UI_COOKIE]}"
    target = urlsplit(upstream)
    connection = HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        connection.connect()
        connection.sock.settimeout(READ_TIMEOUT_SECONDS)
        with _open_lock:
            _open.add(connection)
        connection.request(request.method, _raw_path(), body=request.get_data() if writes else None, headers=headers)
        answer = connection.getresponse()
    except OSError as err:  # refused, timed out, or interrupted by the web app's stop
        _close(connection)
        current_app.logger.warning("Temporal UI at %s did not answer: %s", upstream, err)
        return error_page(502, "Temporal UI unavailable", "The Temporal UI is not answering. Try again in a moment.")
    response = Response(
        iter(lambda: answer.read(CHUNK_BYTES), b""),
        status=answer.status,
        headers=[(name, value) for name, value in answer.getheaders() if name.lower() not in NOT_RETURNED],
    )
    response.call_on_close(lambda: _close(connection))
    for header in answer.headers.get_all("Set-Cookie") or ():
        cookie = SimpleCookie(header).get(UI_COOKIE)
        if cookie is not None:  # its CSRF cookie, set for the UI's path only
            response.set_cookie(UI_COOKIE, cookie.value, path=PUBLIC_PATH, samesite="Strict", httponly=False)
    return response


def interrupt_upstream_calls() -> None:
    """The web app is stopping: end every call to the UI server at once. The UI's long poll of a
    workflow's history waits up to 20 s for news, and would hold the stop that long."""
    with _open_lock:
        for connection in _open:
            if connection.sock is not None:
                with contextlib.suppress(OSError):
                    connection.sock.shutdown(socket.SHUT_RDWR)


def _close(connection: HTTPConnection) -> None:
    with _open_lock:
        _open.discard(connection)
    connection.close()


def _write_refusal():
    """A change through the UI: an admin's, sent by a page of this origin (no other site's form)."""
    operator = current_operator()
    if operator is None or not operator.may("admin"):
        name, role = (operator.name, operator.role) if operator else ("", "")
        text = current_app.extensions["messages"].errors["role_too_low"].format(name=name, role=role, needed="admin")
        return jsonify(error=text), 403
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/").lower() != request.host_url.rstrip("/").lower():
        return jsonify(error=f"Origin {origin} may not act through the Temporal UI."), 403
    return None


def _raw_path() -> str:
    """The path and query as the browser sent them: a workflow ID may hold an escaped `/`."""
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI")
    if raw and raw.startswith(PUBLIC_PATH):
        return raw
    query = request.query_string.decode("latin-1")
    return quote(request.path) + (f"?{query}" if query else "")
