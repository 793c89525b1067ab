"""The loan steps: validate, decide (loans/decision.py), persist the record (and send the decision
email it carries), notify an agent, record a contact answer.

Plain `def` activities: the worker runs them on a thread pool, so blocking file
I/O never stalls its event loop. A business failure (an invalid application) is
a non-retryable `ApplicationError`; anything else is retried by the policy the
workflow sets next to each call. Every write is idempotent under retries.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.formatting import day_value, sort_key_for
from core.rules import Messages, Rules
from core.store import Store
from loans.decision import CreditRules
from loans.model import (
    AGENT_NOTIFICATIONS,
    APPLICATIONS,
    INVALID_APPLICATION,
    AgentNotificationRequest,
    ContactPreferenceRequest,
    CreditDecision,
    LoanApplication,
    PersistRequest,
    record_key,
)
from loans.validation import InvalidApplication, revalidate

if TYPE_CHECKING:
    from loans.emails import LoanEmailActivities


class LoanActivities:
    """The loan steps, bound to their store, rules and texts."""

    def __init__(self, store: Store, rules: Rules, messages: Messages, identity: str, emails: LoanEmailActivities | None = None):
        self.store = store
        self.emails = emails  # the decision email the persist step carries; None: the email's own activity sends it
        self.rules = rules
        self.messages = messages
        self.identity = identity
        self.credit = CreditRules(rules, messages)

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
        return self.credit.decide(application, decided_by=self.identity)

    @activity.defn
    def persist_application(self, request: PersistRequest) -> str | None:
        """Write the application's record; then, if the step carries the decision email, send it.

        Returns the email's status when this step sent it (or found it sent), None when the
        workflow is to start the email's own activity: not carried, the mail server not
        answering (`CarriedSends`), or a retry of this step (the record was written, but whether
        the first attempt's email went is for the email's own activity to find out).
        """
        outcome = request.outcome
        document = dataclasses.asdict(outcome)
        document["persisted_by"] = self.identity
        document["day_decision"] = day_value(outcome.submitted_at, outcome.decision)  # the chart's count
        key = record_key(outcome.workflow_id, outcome.run_id)

        def merge(existing: dict | None) -> dict:
            # A retry after a later change (a contact answer) must not undo it.
            return {**document, **{k: v for k, v in (existing or {}).items() if k.startswith("contact_") or k == "email"}}

        self.store.update(APPLICATIONS, key, merge, sort_key=sort_key_for(outcome.submitted_at))
        if request.send_email and self.emails is not None and activity.info().attempt == 1:
            return self.emails.send_carried(outcome)
        return None

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
            # Answers recorded so far (service.MAX_CONTACT_ANSWERS bounds them); a retry of this
            # answer, already written, has its time and counts nothing more.
            answers = existing.get("contact_answers", 0) + (existing.get("contact_answered_at") != request.answered_at)
            return {
                **existing,
                "contact_preference": request.answer,
                "contact_answered_at": request.answered_at,
                "contact_answers": answers,
            }

        self.store.update(APPLICATIONS, key, change)
