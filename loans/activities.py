"""TODO docstring (from activities.py)."""

from __future__ import annotations

import dataclasses
import math

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.formatting import format_amount, sort_key_for
from core.rules import Messages, Rules
from core.store import Store
from loans.model import (
    AGENT_NOTIFICATIONS,
    APPLICATIONS,
    INVALID_APPLICATION,
    AgentNotificationRequest,
    ContactPreferenceRequest,
    CreditDecision,
    DecisionEmail,
    DecisionMessage,
    LoanApplication,
    PersistRequest,
    record_key,
)
from loans.validation import InvalidApplication, revalidate


def loan_to_income(application: LoanApplication) -> float | None:
    """Loan / annual income; None stands for infinite (no income).

    Validation bounds keep the ratio finite (an income is 0 or at least 1); the
    isfinite check keeps Infinity out of records and JSON answers even so.
    """
    if application.annual_income == 0:
        return None
    ratio = application.loan_amount / application.annual_income
    return ratio if math.isfinite(ratio) else None


class LoanActivities:
    """The loan steps, bound to their store, rules and texts."""

    def __init__(self, store: Store, rules: Rules, messages: Messages, identity: str):
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
        decision, code, reason = self._compliance_denial(application) or self._credit_decision(application)
        return self._decision(application, decision, code, reason)

    def _compliance_denial(self, application: LoanApplication) -> tuple[str, str, str] | None:
        """(decision, reason code, reason) of a compliance denial, else None."""
        limits = self.rules.compliance
        if application.credit_score < limits.min_credit_score:
            return "denied_compliance", "credit_below_minimum", f"credit score below {limits.min_credit_score}"
        if application.loan_amount > limits.max_loan_amount:
            return ("denied_compliance", "loan_above_maximum", f"loan amount above {format_amount(limits.max_loan_amount)}")
        return None

    def _credit_decision(self, application: LoanApplication) -> tuple[str, str, str]:
        """(decision, reason code, reason): the code names the rule (shared.DECISION_REASONS), the
        reason is the operators' wording; messages.json `reasons` words the code for the applicant."""
        rules = self.rules
        score = application.credit_score
        ratio = loan_to_income(application)
        ratio_at_most = lambda limit: ratio is not None and ratio <= limit  # noqa: E731
        if application.has_bankruptcy and score < rules.bankruptcy.min_credit_score:
            return (
                "denied",
                "bankruptcy_credit_below_minimum",
                f"bankruptcy with credit score below {rules.bankruptcy.min_credit_score}",
            )
        if score >= rules.prime.min_credit_score:
            if application.has_bankruptcy:
                return "conditional", "bankruptcy_review", "prior bankruptcy needs an agent's review"
            if ratio_at_most(rules.prime.max_loan_to_income):
                return "pre_approved", "strong_and_affordable", "strong credit and affordable loan"
            return ("conditional", "loan_to_income_above_limit", f"loan-to-income above {rules.prime.max_loan_to_income:.2f}")
        if score >= rules.near_prime.min_credit_score and ratio_at_most(rules.near_prime.max_loan_to_income):
            return "conditional", "fair_credit_review", "fair credit needs an agent's review"
        return "denied", "does_not_qualify", "credit score and loan-to-income do not qualify"

    def _decision(self, application: LoanApplication, decision: str, code: str, reason: str) -> CreditDecision:
        """The decision with its texts: the page's, and the email's own (with the reason explained)."""
        text = self.messages.decisions[decision]
        values = {
            "amount": format_amount(application.loan_amount),
            "email": application.email,
            "min_credit_score": self.rules.compliance.min_credit_score,
            "max_loan_amount": format_amount(self.rules.compliance.max_loan_amount),
            "window_days": self.rules.duplicate_window_days,
            "bankruptcy_min_credit_score": self.rules.bankruptcy.min_credit_score,
            "prime_max_loan_to_income": f"{self.rules.prime.max_loan_to_income:.0%}",
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
            email_text=DecisionEmail(
                message=text.email.message.format(**values),
                explanation=self.messages.reasons[code].format(**values),
                next_steps=[step.format(**values) for step in text.email.next_steps],
            ),
        )

    @activity.defn
    def persist_application(self, request: PersistRequest) -> None:
        outcome = request.outcome
        document = dataclasses.asdict(outcome)
        document["persisted_by"] = self.identity
        key = record_key(outcome.workflow_id, outcome.run_id)

        def merge(existing: dict | None) -> dict:
            # A retry after a later change (a contact answer) must not undo it.
            return {**document, **{k: v for k, v in (existing or {}).items() if k.startswith("contact_") or k == "email"}}

        self.store.update(APPLICATIONS, key, merge, sort_key=sort_key_for(outcome.submitted_at))

    @activity.defn
    def notify_agent(self, request: AgentNotificationRequest) -> None:
        """Leave a notification for the loan agents (one per application and kind)."""
        outcome = request.outcome
        key = f"{record_key(outcome.workflow_id, outcome.run_id)}.{request.kind}"
        self.store.update(
            AGENT_NOTIFICATIONS,
            key,
            lambda existing: (
                existing
                or {
                    "kind": request.kind,
                    "workflow_id": outcome.workflow_id,
                    "run_id": outcome.run_id,
                    "decision": outcome.decision,
                    "applicant_name": outcome.application.name,
                    "applicant_email": outcome.application.email,
                    "loan_amount": outcome.application.loan_amount,
                    "created_at": activity.info().current_attempt_scheduled_time.isoformat(),
                }
            ),
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
