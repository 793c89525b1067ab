"""The codec server: the Temporal remote codec protocol, so operators read encrypted payloads.

The Temporal Web UI and the `temporal` CLI (`--codec-endpoint`) send the
payloads they show to `POST <endpoint>/decode` (and inputs they send to
`/encode`) as `{"payloads": [...]}` in protobuf JSON; this blueprint answers
the same shape, run through the app's payload codec. Browsers may call it only
from the configured Temporal UI origin (CORS with credentials, so the UI can
send the operator's session cookie), and from this app's own origin, where it
serves the UI itself (web/temporal_ui.py); requests from any other origin get `403`.

Who may call it is the app's business, not this blueprint's: the app that
registers it puts it behind operator sign-in (and must let `OPTIONS`
preflights through unauthenticated: browsers send them without credentials).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from flask import Blueprint, jsonify, request
from flask_cors import CORS
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from core.codec import PayloadDecryptionError

# One payload may be up to 2 MB in Temporal; the app's 16 KB body limit is for forms.
MAX_BODY_BYTES = 4 * 1024 * 1024
# The headers the Temporal UI sends: X-Namespace always, Authorization with "pass access token".
ALLOWED_HEADERS = ["Content-Type", "X-Namespace", "Authorization"]


def origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL: what browsers send as `Origin`."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


def create_codec_blueprint(codec_provider: Callable[[], PayloadCodec], allowed_origin: str) -> Blueprint:
    """`/codec/encode` and `/codec/decode`; CORS for `allowed_origin` only (e.g. `origin_of(TEMPORAL_UI_URL)`)."""
    allowed_origin = origin_of(allowed_origin)
    codec = Blueprint("codec", __name__, url_prefix="/codec")
    CORS(codec, origins=[allowed_origin], supports_credentials=True, allow_headers=ALLOWED_HEADERS, methods=["POST"], max_age=600)

    @codec.before_request
    def refuse_other_origins():
        request.max_content_length = MAX_BODY_BYTES
        origin = request.headers.get("Origin")
        own_origin = request.host_url.rstrip("/").lower()  # the UI served through this app (web/temporal_ui.py)
        if origin is not None and origin.lower() not in (allowed_origin, own_origin):
            return jsonify(error=f"Origin {origin} may not use the codec; only {allowed_origin} may."), 403
        return None

    @codec.post("/encode")
    async def encode():
        return await _convert(codec_provider().encode)

    @codec.post("/decode")
    async def decode():
        return await _convert(codec_provider().decode)

    return codec


async def _convert(convert: Callable[[Iterable[Payload]], Awaitable[list[Payload]]]):
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        return _bad_request("The JSON is nested too deeply.")
    if not isinstance(body, dict) or not isinstance(body.get("payloads"), list):
        return _bad_request('Send a JSON object {"payloads": [...]}, payloads in protobuf JSON.')
    try:
        payloads = json_format.ParseDict(body, Payloads())
    except (json_format.ParseError, RecursionError) as err:
        return _bad_request(f"Not Temporal payloads in protobuf JSON: {err}")
    try:
        converted = await convert(payloads.payloads)
    except PayloadDecryptionError as err:
        return jsonify(error=str(err)), 422
    return jsonify(payloads=[json_format.MessageToDict(payload) for payload in converted])


def _bad_request(message: str):
    return jsonify(error=message, fields={"payloads": message}), 400
