"""Configuration: environment settings, the Temporal connection, rules and messages.

Every process (web app, worker, load test, tests) reads its settings here, so
one table in the README documents them all. The Temporal connection comes from
`temporalio.envconfig` (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TLS settings or a TOML profile), so the same code reaches a local dev server, a
self-hosted cluster or Temporal Cloud. Every client it creates encrypts payloads
with the key from PAYLOAD_KEY (`codec.py`).

Secrets: APP_SECRET_KEY (the HMAC key of loan workflow IDs) and PAYLOAD_KEY
are read from the environment; when unset, each is generated once into
DATA_DIR/secrets/ (mode 0600) and reused by every process sharing that folder.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from codec import KEY_BYTES, EncryptionCodec
from secret_files import read_or_create_secret

HERE = Path(__file__).resolve().parent


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
    # None: generated into the data folder on first start (operator_auth.py).
    operator_token: str | None = None
    # postgresql://... : the records in PostgreSQL (pg_store.py); None: JSON files in data_dir (store.py).
    database_url: str | None = None

    @property
    def public_url(self) -> str:
        """Where people open the app: localhost for a loopback address, so the operator's
        cookie also reaches the codec endpoint the Temporal UI calls (same site)."""
        host = "localhost" if self.web_host in ("127.0.0.1", "0.0.0.0", "::1", "localhost") else self.web_host
        return f"http://{host}:{self.web_port}"

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = data_dir_from_env()
        return cls(
            task_queue=os.environ.get("LOAN_TASK_QUEUE", "loan-applications"),
            data_dir=data_dir,
            rules_file=Path(os.environ.get("RULES_FILE", HERE / "rules.json")),
            messages_file=Path(os.environ.get("MESSAGES_FILE", HERE / "messages.json")),
            web_host=os.environ.get("WEB_HOST", "127.0.0.1"),
            web_port=_env_int("WEB_PORT", 5001),
            temporal_ui_url=os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233").rstrip("/"),
            secret_key=app_secret_key(data_dir),
            decision_wait_seconds=_env_float("DECISION_WAIT_SECONDS", 5.0),
            order_task_queue=os.environ.get("ORDER_TASK_QUEUE", "orders"),
            shipping_task_queue=os.environ.get("SHIPPING_TASK_QUEUE", "shipping"),
            operator_token=os.environ.get("OPERATOR_TOKEN") or None,
            database_url=os.environ.get("DATABASE_URL", "").strip() or None,
        )


def open_store(settings: Settings):
    """The store every process uses: PostgreSQL when DATABASE_URL is set, else the JSON files."""
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise SystemExit(f"DATABASE_URL must start with postgresql://, got {settings.database_url.split(':')[0]}:...")
        from pg_store import PostgresStore

        return PostgresStore(settings.database_url)
    from store import JsonStore

    return JsonStore(settings.data_dir)


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
        raise SystemExit(f"{source} must be base64 of {KEY_BYTES} bytes, got {len(key)} bytes "
                         "(make one with: openssl rand -base64 32)")
    return key


def payload_codec_from_env() -> EncryptionCodec:
    """The payload codec every client uses, with its keys from the environment.

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
    return EncryptionCodec(key, old_keys)


def payload_data_converter(codec: EncryptionCodec | None = None):
    """The default converter with the payload codec: what every client and worker uses.

    Failure messages and stack traces are moved into an encrypted payload too
    (`DefaultFailureConverterWithEncodedAttributes`): an error's text can quote its input.
    """
    from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes

    return dataclasses.replace(
        DataConverter.default,
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


# --- rules.json and messages.json ------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ComplianceRules(_Strict):
    min_credit_score: int = Field(ge=300, le=850)
    max_loan_amount: float = Field(gt=0)


class BankruptcyRules(_Strict):
    min_credit_score: int = Field(ge=300, le=850)


class TierRules(_Strict):
    min_credit_score: int = Field(ge=300, le=850)
    max_loan_to_income: float = Field(gt=0)


class CatalogItem(_Strict):
    sku: str = Field(pattern=r"^[A-Z0-9-]{1,32}$")
    name: str = Field(min_length=1)
    price: float = Field(gt=0)
    stock: int = Field(ge=0)  # starting stock, used when the inventory is first touched


class RewardTier(_Strict):
    name: str
    min_points: int = Field(ge=0)


class RewardRules(_Strict):
    points_per_dollar: float = Field(ge=0)
    tiers: list[RewardTier] = Field(min_length=1)
    # The rewards workflow continues as new past this many history events.
    max_history_events: int = Field(ge=10)


class ShippingRules(_Strict):
    prepare_seconds: float = Field(ge=0)
    transit_seconds: float = Field(ge=0)
    expedited_transit_seconds: float = Field(ge=0)


class FailureRules(_Strict):
    """Random transient failures of order steps, for demos and load tests."""

    random_failure_rate: float = Field(ge=0, lt=1)
    seed: int


class OrderRules(_Strict):
    max_order_total: float = Field(gt=0)
    auto_approve_limit: float = Field(ge=0)
    review_sla_seconds: float = Field(gt=0)
    catalog: list[CatalogItem] = Field(min_length=1)
    rewards: RewardRules
    shipping: ShippingRules
    failures: FailureRules

    def item(self, sku: str) -> CatalogItem | None:
        return next((item for item in self.catalog if item.sku == sku), None)


class Rules(_Strict):
    """Every threshold of the loan decision and the order process; read from rules.json."""

    compliance: ComplianceRules
    bankruptcy: BankruptcyRules
    prime: TierRules
    near_prime: TierRules
    duplicate_window_days: int = Field(ge=1, le=365)
    amount_bands: list[int]
    orders: OrderRules


class DecisionEmailText(_Strict):
    """The decision email's own message and next steps: it is the email, so it promises no other."""

    message: str
    next_steps: list[str]


class DecisionText(_Strict):
    title: str
    message: str  # the result page's (and the API's)
    next_steps: list[str]
    email: DecisionEmailText


class Messages(_Strict):
    """User-facing texts; read from messages.json."""

    decisions: dict[str, DecisionText]
    reasons: dict[str, str]  # each decision reason (shared.DECISION_REASONS) in the applicant's words, for the email
    contact: dict[str, str]  # the result page's contact question and what it says after an answer
    validation: dict[str, str]
    errors: dict[str, str]
    orders: dict[str, str]  # order texts: statuses, refusals, notifications, validation


def load_rules(path: Path) -> Rules:
    return Rules.model_validate(json.loads(Path(path).read_text()))


def load_messages(path: Path) -> Messages:
    messages = Messages.model_validate(json.loads(Path(path).read_text()))
    from shared import DECISION_REASONS, DECISIONS

    missing = [d for d in DECISIONS if d not in messages.decisions]
    if missing:
        raise ValueError(f"{path}: no text for decisions {missing}")
    unexplained = [r for r in DECISION_REASONS if r not in messages.reasons]
    if unexplained:
        raise ValueError(f"{path}: no text for reasons {unexplained}")
    return messages
