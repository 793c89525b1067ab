"""Activities of the loan application: every side effect and every business rule.

The decision rules read their thresholds from rules.json and their texts from
messages.json (loaded when the worker starts). Activities are plain `def`
functions: the worker runs them on a thread pool, so blocking file I/O never
stalls its event loop. Business failures (invalid input, compliance) raise
non-retryable `ApplicationError`s; a compliance denial is a decision, not an
error. Anything else is retried by the policy the workflow sets next to each call.
"""

from __future__ import annotations

import dataclasses

from temporalio import activity
from temporalio.exceptions import ApplicationError

from config import Rules, Messages
from shared import (
    INVALID_APPLICATION,
    AgentNotificationRequest,
    ContactPreferenceRequest,
    CreditDecision,
    DecisionMessage,
    LoanApplication,
    PersistRequest,
    record_key,
)
from store import JsonStore
from validation import InvalidApplication, revalidate

APPLICATIONS = "applications"
AGENT_NOTIFICATIONS = "agent_notifications"


def loan_to_income(application: LoanApplication) -> float | None:
    """Loan / annual income; None stands for infinite (no income)."""
    if application.annual_income == 0:
        return None
    return application.loan_amount / application.annual_income


def format_amount(amount: float) -> str:
    return f"${amount:,.0f}" if amount == int(amount) else f"${amount:,.2f}"


def sort_key_for(timestamp: str) -> str:
    """A file-name-safe, sortable form of an ISO timestamp."""
    return timestamp.replace(":", "").replace("+0000", "Z")


class LoanActivities:
    """The loan steps, bound to their store, rules and texts."""

    def __init__(self, store: JsonStore, rules: Rules, messages: Messages, identity: str):
        self.store = store
        self.rules = rules
        self.messages = messages
        self.identity = identity

    @activity.defn
    def validate_application(self, application: LoanApplication) -> LoanApplication:
        try:
            return revalidate(application, self.messages)
        except InvalidApplication as err:
            raise ApplicationError(
                self.messages.errors["invalid_application"],
                err.fields,
                type=INVALID_APPLICATION,
                non_retryable=True,
            ) from None

    @activity.defn
    def decide(self, application: LoanApplication) -> CreditDecision:
        """Compliance limits first, then the credit rules. Every outcome is a decision:
        a compliance denial is final by nature, so nothing about it is retried."""
        decision, reason = self._compliance_denial(application) or self._credit_decision(application)
        return self._decision(application, decision, reason)

    def _compliance_denial(self, application: LoanApplication) -> tuple[str, str] | None:
        limits = self.rules.compliance
        if application.credit_score < limits.min_credit_score:
            return "denied_compliance", f"credit score below {limits.min_credit_score}"
        if application.loan_amount > limits.max_loan_amount:
            return "denied_compliance", f"loan amount above {format_amount(limits.max_loan_amount)}"
        return None

    def _credit_decision(self, application: LoanApplication) -> tuple[str, str]:
        rules = self.rules
        score = application.credit_score
        ratio = loan_to_income(application)
        ratio_at_most = lambda limit: ratio is not None and ratio <= limit  # noqa: E731
        if application.has_bankruptcy and score < rules.bankruptcy.min_credit_score:
            return "denied", f"bankruptcy with credit score below {rules.bankruptcy.min_credit_score}"
        if score >= rules.prime.min_credit_score:
            if application.has_bankruptcy:
                return "conditional", "prior bankruptcy needs an agent's review"
            if ratio_at_most(rules.prime.max_loan_to_income):
                return "pre_approved", "strong credit and affordable loan"
            return "conditional", f"loan-to-income above {rules.prime.max_loan_to_income:.2f}"
        if score >= rules.near_prime.min_credit_score and ratio_at_most(rules.near_prime.max_loan_to_income):
            return "conditional", "fair credit needs an agent's review"
        return "denied", "credit score and loan-to-income do not qualify"

    def _decision(self, application: LoanApplication, decision: str, reason: str) -> CreditDecision:
        text = self.messages.decisions[decision]
        values = {
            "amount": format_amount(application.loan_amount),
            "email": application.email,
            "min_credit_score": self.rules.compliance.min_credit_score,
            "max_loan_amount": format_amount(self.rules.compliance.max_loan_amount),
            "window_days": self.rules.duplicate_window_days,
        }
        ratio = loan_to_income(application)
        return CreditDecision(
            decision=decision,
            reason=reason,
            loan_to_income_ratio=None if ratio is None else round(ratio, 4),
            message=DecisionMessage(
                title=text.title.format(**values),
                message=text.message.format(**values),
                next_steps=[step.format(**values) for step in text.next_steps],
            ),
            decided_by=self.identity,
        )

    @activity.defn
    def persist_application(self, request: PersistRequest) -> None:
        outcome = request.outcome
        document = dataclasses.asdict(outcome)
        document["persisted_by"] = self.identity
        key = record_key(outcome.workflow_id, outcome.run_id)

        def merge(existing: dict | None) -> dict:
            # A retry after a later change (a contact answer) must not undo it.
            return {**document, **{k: v for k, v in (existing or {}).items() if k.startswith("contact_")}}

        self.store.update(APPLICATIONS, key, merge, sort_key=sort_key_for(outcome.submitted_at))

    @activity.defn
    def notify_agent(self, request: AgentNotificationRequest) -> None:
        """Leave a notification for the loan agents (one per application and kind)."""
        outcome = request.outcome
        key = f"{record_key(outcome.workflow_id, outcome.run_id)}.{request.kind}"
        self.store.update(
            AGENT_NOTIFICATIONS,
            key,
            lambda existing: existing
            or {
                "kind": request.kind,
                "workflow_id": outcome.workflow_id,
                "run_id": outcome.run_id,
                "decision": outcome.decision,
                "applicant_name": outcome.application.name,
                "applicant_email": outcome.application.email,
                "loan_amount": outcome.application.loan_amount,
                "created_at": activity.info().current_attempt_scheduled_time.isoformat(),
            },
            sort_key=sort_key_for(outcome.submitted_at),
        )

    @activity.defn
    def record_contact_preference(self, request: ContactPreferenceRequest) -> None:
        key = record_key(request.workflow_id, request.run_id)

        def change(existing: dict | None) -> dict:
            if existing is None:
                # The workflow persists before it records answers; retry until it is there.
                raise ApplicationError(f"application {key} is not persisted yet")
            return {**existing, "contact_preference": request.answer, "contact_answered_at": request.answered_at}

        self.store.update(APPLICATIONS, key, change)
