"""Types and names of the loan half: what the workflow, its activities and the web layer pass each other.

Everything passed to or returned from a workflow or activity is one typed
dataclass (with real annotations, not `from __future__ import annotations`: the
data converter resolves them for every payload), so fields can be added without
breaking running workflows. The loan's workflow ID, its search attributes and
its store collections are decided here, once.
"""

import base64
import dataclasses
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from temporalio.common import SearchAttributeKey

from core.email_address import normalize_email

DECISIONS = ("pre_approved", "conditional", "denied", "denied_compliance")
# Why a decision was made, one code per rule (activities.LoanActivities.decide); messages.json
# "reasons" words each for the applicant, in the decision email.
DECISION_REASONS = (
    "credit_below_minimum",
    "loan_above_maximum",
    "bankruptcy_credit_below_minimum",
    "bankruptcy_review",
    "strong_and_affordable",
    "loan_to_income_above_limit",
    "fair_credit_review",
    "does_not_qualify",
)

# Custom search attributes: registered on the dev server by `make run` and the
# tests. They carry no PII, only the decision and a coarse amount band.
LOAN_DECISION = SearchAttributeKey.for_keyword("LoanDecision")
LOAN_AMOUNT_BAND = SearchAttributeKey.for_keyword("LoanAmountBand")
SEARCH_ATTRIBUTES = (LOAN_DECISION, LOAN_AMOUNT_BAND)

# Error type raised by the validate step; the workflow and retry policies name it.
INVALID_APPLICATION = "InvalidApplication"

# The decision email's activity (loans/emails.py), called by name: the workflow module imports no mail code.
SEND_DECISION_EMAIL = "send_decision_email"

# Store collections of the loan half.
APPLICATIONS = "applications"  # one record per application (workflow and run)
AGENT_NOTIFICATIONS = "agent_notifications"  # what a loan agent is asked to do
# The applicant's answers to "may an agent contact you?".
CONTACT_ANSWERS = ("yes", "not_yet")


def loan_workflow_id(email: str, secret: bytes) -> str:
    """The one workflow ID per applicant email.

    A keyed hash, so the email (PII) never appears in the Temporal UI while the
    same email always maps to the same ID: that is what makes the server refuse
    a second application while the first one's window is open. The address is
    normalised here too (`normalize_email`), so no caller can hash another spelling.
    """
    digest = hmac.new(secret, normalize_email(email).encode(), hashlib.sha256).hexdigest()
    return f"loan-{digest[:32]}"


# An applicant's link stops working this long before their window closes, so a link never
# shows the next application from the same email (a new run under the same workflow ID).
LINK_MARGIN = timedelta(minutes=1)


def applicant_link_key(secret: bytes, workflow_id: str, expires: datetime) -> str:
    """The capability in an applicant's link (`?key=`): its expiry (Unix seconds, base 36) and an
    HMAC of the workflow ID and that expiry under a key derived from the deployment's secret.

    The workflow ID alone is no secret (the Temporal UI, the store's file names show it); this
    key is stored nowhere and never goes through Temporal: the web app computes it for the
    answer to an application, the worker for the decision email's link.
    """
    expiry = _base36(int(expires.timestamp()))
    derived = hmac.new(secret, b"applicant-link", hashlib.sha256).digest()
    tag = hmac.new(derived, f"{workflow_id}|{expiry}".encode(), hashlib.sha256).digest()
    return f"{expiry}.{base64.urlsafe_b64encode(tag[:16]).rstrip(b'=').decode()}"


def applicant_link_expiry(secret: bytes, workflow_id: str, key: object) -> datetime | None:
    """When `key` stops opening `workflow_id`'s application; None if it never did (forged, mangled
    or for another application). The caller compares with the time."""
    if not isinstance(key, str) or len(key) > 64 or key.count(".") != 1:
        return None
    expiry = key.split(".")[0]
    if not expiry.isalnum() or not expiry.isascii():  # base 36 digits only: no sign, no spaces
        return None
    try:
        expires = datetime.fromtimestamp(int(expiry, 36), timezone.utc)
    except (ValueError, OverflowError, OSError):
        return None
    return expires if hmac.compare_digest(applicant_link_key(secret, workflow_id, expires), key) else None


def applicant_link_expires(submitted: datetime, window_days: int) -> datetime:
    return submitted + timedelta(days=window_days) - LINK_MARGIN


def _base36(number: int) -> str:
    if number < 0:
        raise ValueError("a link's expiry is after 1970")
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    text = ""
    while True:
        number, digit = divmod(number, 36)
        text = digits[digit] + text
        if number == 0:
            return text


def amount_band(amount: float, band_edges: list[int]) -> str:
    """A coarse, non-identifying label for a loan amount, e.g. '50k-100k'."""

    def short(value: int) -> str:
        return f"{value // 1000}k" if value % 1000 == 0 else str(value)

    lower = 0
    for edge in band_edges:
        if amount <= edge:
            return f"{short(lower)}-{short(edge)}"
        lower = edge
    return f"over-{short(lower)}"


@dataclass(frozen=True)
class LoanApplication:
    """A validated, normalized application (email normalised by `normalize_email`)."""

    name: str
    email: str
    loan_amount: float
    credit_score: int
    annual_income: float
    has_bankruptcy: bool


@dataclass(frozen=True)
class LoanRequest:
    """Input of LoanApplicationWorkflow."""

    application: LoanApplication
    # Fixed at submission so a rules change never shortens a running window.
    duplicate_window_days: int
    amount_band: str
    # The persist step sends the decision email (docs/versioning.md, "The decision email carried by
    # the persist step"); False in applications started before, which email through its own activity.
    persist_sends_email: bool = False


@dataclass(frozen=True)
class DecisionMessage:
    title: str
    message: str
    next_steps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class DecisionEmail:
    """The decision email's own wording (messages.json `decisions.<decision>.email`): the email is
    the message, so it never promises another one; `explanation` is the decision's reason in the
    applicant's words (messages.json `reasons`), never their income or credit score."""

    message: str
    explanation: str
    next_steps: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class CreditDecision:
    """Result of the decide step."""

    decision: str
    reason: str
    # None means infinite: no income at all.
    loan_to_income_ratio: float | None
    message: DecisionMessage
    decided_by: str
    # None in histories recorded before the email had its own wording.
    email_text: DecisionEmail | None = None


@dataclass(frozen=True)
class LoanOutcome:
    """What the applicant is told; the workflow's update and query result.

    The decision's fields, flat, after the application's: the payload and the stored
    record have this shape, so it stays; `decided` builds one from a CreditDecision.
    """

    workflow_id: str
    run_id: str
    submitted_at: str
    application: LoanApplication
    decision: str
    reason: str
    loan_to_income_ratio: float | None
    message: DecisionMessage
    decided_by: str
    # The email's wording, fixed with the decision (None: decided before it had its own).
    email_text: DecisionEmail | None = None

    @classmethod
    def decided(
        cls, workflow_id: str, run_id: str, submitted_at: str, application: LoanApplication, decision: CreditDecision
    ) -> "LoanOutcome":
        decided = {f.name: getattr(decision, f.name) for f in dataclasses.fields(CreditDecision)}
        return cls(workflow_id=workflow_id, run_id=run_id, submitted_at=submitted_at, application=application, **decided)


@dataclass(frozen=True)
class PersistRequest:
    outcome: LoanOutcome
    send_email: bool = False  # the step carries the decision email (LoanRequest.persist_sends_email)


@dataclass(frozen=True)
class AgentNotificationRequest:
    outcome: LoanOutcome
    kind: str  # "conditional_review" or "contact_requested"


@dataclass(frozen=True)
class ContactPreferenceRequest:
    workflow_id: str
    run_id: str
    answer: str  # "yes" or "not_yet"
    answered_at: str


@dataclass(frozen=True)
class ApplicationStatus:
    """Live state of one application, served by the workflow's query."""

    stage: str  # received, validated, decided, persisted, failed
    outcome: LoanOutcome | None = None
    contact_preference: str | None = None
    error: str | None = None
    window_ends_at: str | None = None


def record_key(workflow_id: str, run_id: str) -> str:
    """Store key of one application: one workflow run is one application."""
    return f"{workflow_id}.{run_id}"
