"""Configuration: environment settings, the Temporal connection, rules and messages.

Every process (web app, worker, load test, tests) reads its settings here, so
one table in the README documents them all. The Temporal connection comes from
`temporalio.envconfig` (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY,
TLS settings or a TOML profile), so the same code reaches a local dev server, a
self-hosted cluster or Temporal Cloud.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

HERE = Path(__file__).resolve().parent
DEFAULT_SECRET = "dev-only-secret-change-me"


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

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            task_queue=os.environ.get("LOAN_TASK_QUEUE", "loan-applications"),
            data_dir=Path(os.environ.get("DATA_DIR", HERE / "data")).resolve(),
            rules_file=Path(os.environ.get("RULES_FILE", HERE / "rules.json")),
            messages_file=Path(os.environ.get("MESSAGES_FILE", HERE / "messages.json")),
            web_host=os.environ.get("WEB_HOST", "127.0.0.1"),
            web_port=_env_int("WEB_PORT", 5001),
            temporal_ui_url=os.environ.get("TEMPORAL_UI_URL", "http://localhost:8233").rstrip("/"),
            secret_key=os.environ.get("APP_SECRET_KEY", DEFAULT_SECRET),
            decision_wait_seconds=_env_float("DECISION_WAIT_SECONDS", 5.0),
            order_task_queue=os.environ.get("ORDER_TASK_QUEUE", "orders"),
            shipping_task_queue=os.environ.get("SHIPPING_TASK_QUEUE", "shipping"),
            operator_token=os.environ.get("OPERATOR_TOKEN") or None,
        )


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
    """The one way every process creates its Temporal client."""
    from temporalio.client import Client

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


class DecisionText(_Strict):
    title: str
    message: str
    next_steps: list[str]


class Messages(_Strict):
    """User-facing texts; read from messages.json."""

    decisions: dict[str, DecisionText]
    validation: dict[str, str]
    errors: dict[str, str]
    orders: dict[str, str]  # order texts: statuses, refusals, notifications, validation


def load_rules(path: Path) -> Rules:
    return Rules.model_validate(json.loads(Path(path).read_text()))


def load_messages(path: Path) -> Messages:
    messages = Messages.model_validate(json.loads(Path(path).read_text()))
    from shared import DECISIONS

    missing = [d for d in DECISIONS if d not in messages.decisions]
    if missing:
        raise ValueError(f"{path}: no text for decisions {missing}")
    return messages
