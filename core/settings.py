"""Settings: every environment knob of every process, read once; the Temporal connection; the secrets.

Every process (web app, worker, load test, tests) reads its settings here, so
one table (docs/operations.md) documents them all. The Temporal connection
comes from `temporalio.envconfig` (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TLS settings or a TOML profile), so the same code reaches a
local dev server, a self-hosted cluster or Temporal Cloud. Every client it
creates encrypts payloads with the key from PAYLOAD_KEY (core/codec.py).

Secrets: APP_SECRET_KEY (the HMAC key of loan workflow IDs) and PAYLOAD_KEY
are read from the environment; when unset, each is generated once into
DATA_DIR/secrets/ (mode 0600) and reused by every process sharing that folder.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from core.codec import KEY_BYTES, EncryptionCodec
from core.secret_files import read_or_create_secret

# Who the emails come from unless MAIL_FROM says otherwise; the orders' emails carry the name
# ORDER_SENDER_NAME on the same address, unless ORDER_MAIL_FROM names another sender.
DEFAULT_MAIL_FROM = "Loan pre-approval <no-reply@loans.invalid>"
ORDER_SENDER_NAME = "Orders"
HERE = Path(__file__).resolve().parent.parent  # the repository root


def sender_named(name: str, mail_from: str) -> str:
    """`mail_from`'s address under another display name: "Orders <no-reply@…>"."""
    from email.utils import formataddr, parseaddr

    return formataddr((name, parseaddr(mail_from)[1]))


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _env_switch(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in ("on", "off"):
        raise SystemExit(f"{name} must be on or off, got {raw!r}")
    return raw == "on"


# Where the web app serves the Temporal UI (web/temporal_ui.py), and the UI server's public path.
TEMPORAL_UI_PATH = "/temporal"


@dataclass(frozen=True)
class Settings:
    task_queue: str  # the loan workflow's
    data_dir: Path
    rules_file: Path
    messages_file: Path
    web_host: str
    web_port: int
    temporal_ui_url: str
    secret_key: str
    decision_wait_seconds: float
    order_task_queue: str = "orders"
    shipping_task_queue: str = "shipping"
    # None: generated into the data folder on first start (web/auth.py).
    operator_token: str | None = None
    # postgresql://... : the records in PostgreSQL (core/store/postgres.py); None: JSON files in data_dir.
    database_url: str | None = None
    # Mail: where it is sent (smtp://, smtps://; None sends nothing) and from whom.
    smtp_url: str | None = None
    mail_from: str = DEFAULT_MAIL_FROM
    order_mail_from: str = f"{ORDER_SENDER_NAME} <no-reply@loans.invalid>"
    # The Maildir the operators' mail view reads (web/mail_view.py): make run's mail sink's; None: no view.
    mail_view_dir: Path | None = None
    # How the workflows retry an email (core/email_policy.py; the tests shorten them).
    email_retry_initial_seconds: float = 5.0
    email_attempt_timeout_seconds: float = 30.0
    # The worker process (worker.py): its name in the histories, its metrics endpoint (no port: none),
    # how long it waits for the server at start, its threads per pool and pollers.
    worker_identity: str | None = None
    worker_metrics_port: str = ""
    worker_metrics_host: str = "127.0.0.1"
    worker_connect_timeout: float = 60.0
    worker_activity_threads: int = 32
    worker_pollers: int = 8
    # The web app's abuse limits (web/limits.py): on unless PUBLIC_RATE_LIMIT=off (load tests,
    # benchmarks); where their counts live (memory: per web process; redis://... : shared).
    public_rate_limit: bool = True
    rate_limit_storage_uri: str = "memory://"
    # Host names the web app answers to (ALLOWED_HOSTS, comma-separated; ".example.com" takes its
    # subdomains too); empty: the loopback names and WEB_HOST (see `trusted_hosts`).
    allowed_hosts: tuple[str, ...] = ()
    # Operators' passwords (web/auth.py PASSWORD_HASHERS): Argon2id at its defaults; the tests
    # set "cheapest" to sign in fast. Not read from the environment: no deployment can lower it.
    password_hashing: str = "standard"
    # Where the web app reaches the Temporal UI server it serves to operators at /temporal
    # (web/temporal_ui.py; that server's public path must be /temporal); None: not served.
    temporal_ui_upstream: str | None = None
    # The payment provider (orders/payments.py): Stripe's API with this key, at its own address unless
    # STRIPE_API_BASE names another (make run: its local Stripe). No key: no provider (the record alone).
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    # Card entry at the shop's checkout (shop/card.py): Stripe.js from STRIPE_JS_URL with this
    # publishable key (make run: its local Stripe's stand-in). No key: the shop's test card is charged.
    stripe_publishable_key: str | None = None
    stripe_js_url: str = "https://js.stripe.com/v3/"

    @property
    def public_url(self) -> str:
        """Where people open the app: localhost for a loopback address, so the operator's
        cookie also reaches the codec endpoint the Temporal UI calls (same site)."""
        host = "localhost" if self.web_host in ("127.0.0.1", "0.0.0.0", "::1", "localhost") else self.web_host
        return f"http://{host}:{self.web_port}"

    @property
    def trusted_hosts(self) -> list[str]:
        """The Host header values the web app serves (Flask's TRUSTED_HOSTS); any other gets 400."""
        if self.allowed_hosts:
            return list(self.allowed_hosts)
        names = ["localhost", "127.0.0.1", "::1"]
        if self.web_host not in ("0.0.0.0", "::", *names):
            names.append(self.web_host)
        return names

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = data_dir_from_env()
        mail_from = os.environ.get("MAIL_FROM", "").strip() or DEFAULT_MAIL_FROM
        return cls(
            task_queue=os.environ.get("LOAN_TASK_QUEUE", "loan-applications"),
            data_dir=data_dir,
            rules_file=Path(os.environ.get("RULES_FILE", HERE / "rules.json")),
            messages_file=Path(os.environ.get("MESSAGES_FILE", HERE / "messages.json")),
            web_host=os.environ.get("WEB_HOST", "127.0.0.1"),
            web_port=_env_int("WEB_PORT", 5001),
            temporal_ui_url=os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233").rstrip("/"),
            temporal_ui_upstream=os.environ.get("TEMPORAL_UI_UPSTREAM", "").strip().rstrip("/") or None,
            stripe_api_key=os.environ.get("STRIPE_API_KEY", "").strip() or None,
            stripe_api_base=os.environ.get("STRIPE_API_BASE", "").strip().rstrip("/") or None,
            stripe_publishable_key=os.environ.get("STRIPE_PUBLISHABLE_KEY", "").strip() or None,
            stripe_js_url=os.environ.get("STRIPE_JS_URL", "").strip() or "https://js.stripe.com/v3/",
            secret_key=app_secret_key(data_dir),
            decision_wait_seconds=_env_float("DECISION_WAIT_SECONDS", 5.0),
            order_task_queue=os.environ.get("ORDER_TASK_QUEUE", "orders"),
            shipping_task_queue=os.environ.get("SHIPPING_TASK_QUEUE", "shipping"),
            operator_token=os.environ.get("OPERATOR_TOKEN") or None,
            database_url=os.environ.get("DATABASE_URL", "").strip() or None,
            smtp_url=os.environ.get("SMTP_URL", "").strip() or None,
            mail_from=mail_from,
            order_mail_from=os.environ.get("ORDER_MAIL_FROM", "").strip() or sender_named(ORDER_SENDER_NAME, mail_from),
            mail_view_dir=Path(os.environ["MAIL_VIEW_DIR"]) if os.environ.get("MAIL_VIEW_DIR", "").strip() else None,
            email_retry_initial_seconds=_env_float("EMAIL_RETRY_INITIAL_SECONDS", 5.0),
            email_attempt_timeout_seconds=_env_float("EMAIL_ATTEMPT_TIMEOUT_SECONDS", 30.0),
            worker_identity=os.environ.get("WORKER_IDENTITY", "").strip() or None,
            worker_metrics_port=os.environ.get("WORKER_METRICS_PORT", "").strip(),
            worker_metrics_host=os.environ.get("WORKER_METRICS_HOST", "").strip() or "127.0.0.1",
            worker_connect_timeout=_env_float("WORKER_CONNECT_TIMEOUT", 60.0),
            worker_activity_threads=_env_int("WORKER_ACTIVITY_THREADS", 32),
            worker_pollers=_env_int("WORKER_POLLERS", 8),
            public_rate_limit=_env_switch("PUBLIC_RATE_LIMIT", True),
            rate_limit_storage_uri=os.environ.get("RATE_LIMIT_STORAGE_URI", "").strip() or "memory://",
            allowed_hosts=tuple(h.strip() for h in os.environ.get("ALLOWED_HOSTS", "").split(",") if h.strip()),
        )


def data_dir_from_env() -> Path:
    return Path(os.environ.get("DATA_DIR", HERE / "data")).resolve()


# --- secrets -----------------------------------------------------------------


def app_secret_key(data_dir: Path) -> str:
    """APP_SECRET_KEY, or the one generated into DATA_DIR/secrets/app_secret.key on first use."""
    configured = os.environ.get("APP_SECRET_KEY", "").strip()
    if configured:
        return configured
    return read_or_create_secret(data_dir / "secrets" / "app_secret.key", lambda: secrets.token_urlsafe(32))


def parse_payload_key(text: str, source: str) -> bytes:
    """A payload key as configured: standard base64 of 32 random bytes (`openssl rand -base64 32`)."""
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SystemExit(f"{source} is not base64 (make one with: openssl rand -base64 32)") from None
    if len(key) != KEY_BYTES:
        raise SystemExit(
            f"{source} must be base64 of {KEY_BYTES} bytes, got {len(key)} bytes (make one with: openssl rand -base64 32)"
        )
    return key


def payload_codec_from_env(accept_plain: bool = False) -> EncryptionCodec:
    """The payload codec every client uses, with its keys from the environment.
    Plain payloads are refused unless `accept_plain` (replaying recorded histories, the codec server).

    The current key: PAYLOAD_KEY, or the file named by PAYLOAD_KEY_FILE, or (neither
    set) DATA_DIR/secrets/payload.key, generated on first use. PAYLOAD_OLD_KEYS,
    comma-separated, are keys that still decrypt (rotation).
    """
    key_text, key_file = os.environ.get("PAYLOAD_KEY", "").strip(), os.environ.get("PAYLOAD_KEY_FILE", "").strip()
    if key_text and key_file:
        raise SystemExit("Set PAYLOAD_KEY or PAYLOAD_KEY_FILE, not both")
    if key_text:
        key = parse_payload_key(key_text, "PAYLOAD_KEY")
    elif key_file:
        try:
            key = parse_payload_key(Path(key_file).read_text(), f"PAYLOAD_KEY_FILE {key_file}")
        except OSError as err:
            raise SystemExit(f"PAYLOAD_KEY_FILE {key_file} cannot be read: {err.strerror}") from None
    else:
        generated = data_dir_from_env() / "secrets" / "payload.key"
        key = parse_payload_key(
            read_or_create_secret(generated, lambda: base64.b64encode(os.urandom(KEY_BYTES)).decode()), str(generated)
        )
    old_keys = [
        parse_payload_key(text, f"PAYLOAD_OLD_KEYS entry {number}")
        for number, text in enumerate(os.environ.get("PAYLOAD_OLD_KEYS", "").split(","), start=1)
        if text.strip()
    ]
    return EncryptionCodec(key, old_keys, accept_plain=accept_plain)


def payload_data_converter(codec: EncryptionCodec | None = None):
    """The app's payload converter with the payload codec: what every client and worker uses.

    JSON through pydantic (core/converter.py) rather than the SDK's default
    converter: the same JSON, read into the same dataclasses, at a fraction of the
    CPU (docs/performance.md), and every order step and record is a payload.
    Failure messages and stack traces are moved into an encrypted payload too
    (`DefaultFailureConverterWithEncodedAttributes`): an error's text can quote
    its input.
    """
    from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

    from core.converter import AppPayloadConverter

    return DataConverter(
        payload_converter_class=AppPayloadConverter,
        payload_codec=codec or payload_codec_from_env(),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


# --- the Temporal connection -------------------------------------------------


def temporal_connect_config() -> dict:
    """Keyword arguments for `Client.connect`, from envconfig.

    Without TEMPORAL_ADDRESS or a profile this is the local dev server.
    """
    from temporalio.envconfig import ClientConfig

    connect_config = dict(ClientConfig.load_client_connect_config())
    connect_config.setdefault("target_host", "localhost:7233")
    connect_config.setdefault("namespace", "default")
    return connect_config


async def connect_temporal(**overrides):
    """The one way every process creates its Temporal client: envconfig's connection, encrypted payloads."""
    from temporalio.client import Client

    overrides.setdefault("data_converter", payload_data_converter())
    return await Client.connect(**{**temporal_connect_config(), **overrides})
