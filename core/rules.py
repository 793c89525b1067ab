"""The rules (rules.json) and the texts (messages.json), as strict models loaded once per process.

A misspelt key or a wrong type stops the process at start with the path of the
mistake, rather than a decision taken on a default.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

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
    description: str = ""  # the shop's product page shows it


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
    shop: dict[str, str]  # the storefront's texts: the cart, customers' accounts and their emails, checkout


def load_rules(path: Path) -> Rules:
    return Rules.model_validate(json.loads(Path(path).read_text()))


def load_messages(path: Path) -> Messages:
    messages = Messages.model_validate(json.loads(Path(path).read_text()))
    from loans.model import DECISION_REASONS, DECISIONS

    missing = [d for d in DECISIONS if d not in messages.decisions]
    if missing:
        raise ValueError(f"{path}: no text for decisions {missing}")
    unexplained = [r for r in DECISION_REASONS if r not in messages.reasons]
    if unexplained:
        raise ValueError(f"{path}: no text for reasons {unexplained}")
    return messages
