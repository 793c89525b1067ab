"""LoanApplicationWorkflow: validate -> decide -> persist and email -> notify, then hold the email's slot.

One workflow per applicant email (the ID comes from `loans.model.loan_workflow_id`).
The application is the workflow's start input, so it is durable the moment the
server accepts the start; the web layer attaches a `wait_for_decision` update
to that start (update-with-start) to answer the applicant. The update's handler
returns once the decision exists; its answer leaves with the decision's workflow
task, after the local steps in it (persist, which sends the email it carries, and
notify), or earlier if they outlast the task's timeout and the SDK completes it.

After the decision the workflow stays open for the duplicate window (7 days by
default): while it runs, the server itself refuses a second start with the
same ID, which is how duplicates are refused without a look-up. During the
window the applicant's "contact me" answer arrives as a signal.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
)

from core.email_policy import EMAIL_REFUSED, execute_email_activity
from core.workflow_helpers import business_error, root_message
from loans.model import CONTACT_ANSWERS, SEND_DECISION_EMAIL

with workflow.unsafe.imports_passed_through():
    from loans.activities import LoanActivities
    from loans.model import (
        INVALID_APPLICATION,
        LOAN_DECISION,
        AgentNotificationRequest,
        ApplicationStatus,
        ContactPreferenceRequest,
        CreditDecision,
        LoanApplication,
        LoanOutcome,
        LoanRequest,
        PersistRequest,
    )


# Pure, fast steps run as local activities: recorded in history (visible in the
# UI as markers) without a round trip through the task queue.
PURE_STEP_TIMEOUT = timedelta(seconds=5)
PURE_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_attempts=3,
    non_retryable_error_types=[INVALID_APPLICATION],
)
# Steps with I/O retry until they succeed: an application once decided must be
# recorded, however long the disk or a worker is away. Backoff is capped so a
# recovered store is used within 30 seconds.
IO_STEP_TIMEOUT = timedelta(seconds=10)
IO_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
# Retired patches (docs/versioning.md): the branch each chose is now the only code, and
# `deprecate_patch` keeps the recorded histories, which carry their markers, replaying.
# The decision email is sent while the duplicate window is held.
DECISION_EMAIL_PATCH = "decision-email"
# Validate and decide run side by side (see LoanApplicationWorkflow._validate_and_decide).
VALIDATE_BESIDE_DECIDE_PATCH = "validate-beside-decide"


@workflow.defn(sandboxed=False)
class LoanApplicationWorkflow:
    @workflow.init
    def __init__(self, request: LoanRequest) -> None:
        self._stage = "received"
        self._outcome: LoanOutcome | None = None
        self._error: str | None = None
        self._error_fields: dict[str, str] = {}
        self._contact_preference: str | None = None
        self._pending_contact: str | None = None
        self._email_status: str | None = None
        self._window_ends_at = workflow.info().workflow_start_time + timedelta(days=request.duplicate_window_days)

    @workflow.run
    async def run(self, request: LoanRequest) -> LoanOutcome:
        try:
            application, decision = await self._validate_and_decide(request.application)
        except (ActivityError, ApplicationError) as err:
            invalid = business_error(err, INVALID_APPLICATION)
            if invalid is None:
                raise
            self._stage = "failed"
            self._error = invalid.message
            self._error_fields = invalid.details[0] if invalid.details else {}
            # Let a waiting update see the failure before the workflow closes.
            await workflow.wait_condition(workflow.all_handlers_finished)
            raise ApplicationError(self._error, self._error_fields, type=INVALID_APPLICATION) from err
        outcome = self._announce(application, decision, request)
        follow_ups = [self._persist(outcome, request.persist_sends_email)]
        if outcome.decision == "conditional":
            follow_ups.append(self._notify_agent(outcome, "conditional_review"))
        # Independent steps, scheduled together: one workflow task instead of two.
        await asyncio.gather(*follow_ups)
        workflow.deprecate_patch(DECISION_EMAIL_PATCH)
        # The persist step sent the email (the input says it carries it), or else the email's own
        # activity sends it, with its retries, while the window is held. Which one is in the history:
        # the persist step's result, or the activity.
        emailing = None if self._email_status else asyncio.ensure_future(self._send_decision_email(outcome))
        await self._hold_duplicate_window(outcome)
        if emailing:
            await emailing
        return outcome

    # --- steps -------------------------------------------------------------

    async def _validate_and_decide(self, submitted: LoanApplication) -> tuple[LoanApplication, CreditDecision]:
        """Validate, and decide on the validated application.

        Both local activities are scheduled
        together, decide on the application as submitted, so the workflow waits for
        one round trip to them instead of two. The decision is kept only when
        validation returns the application unchanged (the web layer sends it
        validated and normalized already); otherwise decide runs again on the
        validated one, and an invalid application's decision is never used. Both
        stay separate steps in the history and the UI.
        """
        workflow.deprecate_patch(VALIDATE_BESIDE_DECIDE_PATCH)
        # gather waits for both, so no step is left running when validation fails.
        validated, decided = await asyncio.gather(self._validate(submitted), self._decide(submitted), return_exceptions=True)
        if isinstance(validated, BaseException):
            raise validated
        if validated != submitted:
            decided = await self._decide(validated)
        elif isinstance(decided, BaseException):
            raise decided
        return validated, decided

    async def _validate(self, application: LoanApplication) -> LoanApplication:
        validated = await workflow.execute_local_activity_method(
            LoanActivities.validate_application,
            application,
            start_to_close_timeout=PURE_STEP_TIMEOUT,
            retry_policy=PURE_STEP_RETRY,
            summary="Validate the application",
        )
        self._stage = "validated"
        return validated

    async def _decide(self, application: LoanApplication) -> CreditDecision:
        return await workflow.execute_local_activity_method(
            LoanActivities.decide,
            application,
            start_to_close_timeout=PURE_STEP_TIMEOUT,
            retry_policy=PURE_STEP_RETRY,
            summary="Decide: compliance limits, then credit rules",
        )

    def _announce(self, application: LoanApplication, decision: CreditDecision, request: LoanRequest) -> LoanOutcome:
        """Make the decision visible: to the waiting update, the query and the UI."""
        info = workflow.info()
        submitted_at = info.workflow_start_time.isoformat(timespec="microseconds")
        self._outcome = LoanOutcome.decided(info.workflow_id, info.run_id, submitted_at, application, decision)
        self._stage = "decided"
        workflow.upsert_search_attributes([LOAN_DECISION.value_set(decision.decision)])
        workflow.set_current_details(f"Decision: **{decision.decision}** ({decision.reason}); amount band {request.amount_band}.")
        return self._outcome

    async def _persist(self, outcome: LoanOutcome, send_email: bool) -> None:
        self._email_status = await workflow.execute_local_activity_method(
            LoanActivities.persist_application,
            PersistRequest(outcome, send_email),
            start_to_close_timeout=IO_STEP_TIMEOUT,
            retry_policy=IO_STEP_RETRY,
            summary="Persist the record and email the decision" if send_email else "Persist the application record",
        )
        self._stage = "persisted"

    async def _notify_agent(self, outcome: LoanOutcome, kind: str) -> None:
        await workflow.execute_local_activity_method(
            LoanActivities.notify_agent,
            AgentNotificationRequest(outcome, kind),
            start_to_close_timeout=IO_STEP_TIMEOUT,
            retry_policy=IO_STEP_RETRY,
            summary=f"Notify a loan agent ({kind})",
        )

    async def _send_decision_email(self, outcome: LoanOutcome) -> None:
        try:
            self._email_status = await execute_email_activity(SEND_DECISION_EMAIL, outcome, "Email the decision to the applicant")
        except ActivityError as err:
            # Refused for good, or given up after a day: recorded, and the application stands.
            self._email_status = "refused" if business_error(err, EMAIL_REFUSED) else "failed"
            workflow.logger.warning("Decision email not delivered: %s", root_message(err))

    async def _hold_duplicate_window(self, outcome: LoanOutcome) -> None:
        """Stay open until the window ends, recording contact answers as they come."""
        while True:
            remaining = self._window_ends_at - workflow.now()
            if remaining <= timedelta(0):
                break
            try:
                await workflow.wait_condition(lambda: self._pending_contact is not None, timeout=remaining)
            except asyncio.TimeoutError:
                # An answer that came in the same workflow task as the timer still counts.
                if self._pending_contact is None:
                    break
            answer, self._pending_contact = self._pending_contact, None
            if answer is None:
                break  # unreachable: the wait above returns only with an answer or at the window's end
            await workflow.execute_activity_method(
                LoanActivities.record_contact_preference,
                ContactPreferenceRequest(outcome.workflow_id, outcome.run_id, answer, workflow.now().isoformat()),
                start_to_close_timeout=IO_STEP_TIMEOUT,
                retry_policy=IO_STEP_RETRY,
                summary=f"Record contact preference: {answer}",
            )
            if answer == "yes" and self._contact_preference != "yes":
                await self._notify_agent(outcome, "contact_requested")
            self._contact_preference = answer

    # --- messages ------------------------------------------------------------

    @workflow.update
    async def wait_for_decision(self) -> LoanOutcome:
        """Returns as soon as the decision exists; the answer leaves with the workflow task (module docstring)."""
        await workflow.wait_condition(lambda: self._outcome is not None or self._error is not None)
        if self._outcome is None:
            raise ApplicationError(self._error or "invalid application", self._error_fields, type=INVALID_APPLICATION)
        return self._outcome

    @workflow.signal
    def contact_preference(self, answer: str) -> None:
        if answer not in CONTACT_ANSWERS:
            workflow.logger.warning("Ignoring unknown contact answer %r", answer)
            return
        self._pending_contact = answer

    @workflow.query
    def status(self) -> ApplicationStatus:
        return ApplicationStatus(
            stage=self._stage,
            outcome=self._outcome,
            contact_preference=self._pending_contact or self._contact_preference,
            error=self._error,
            window_ends_at=self._window_ends_at.isoformat(),
        )
