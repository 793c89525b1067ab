"""The loan half's Temporal-facing service: every Temporal call the loan routes make.

`LoanService` starts an application's workflow and waits for its decision,
reads an application (the stored record, else the live workflow), and sends
the applicant's contact answer. It knows nothing of Flask: it takes typed
input and returns `Decided`, `Pending` or `Duplicate`, or raises one of the
errors below, which `loans/web.py` maps to HTTP answers.

A result link outlives the workflow: once the workflow is gone (the server
deletes a closed one when the namespace's retention has passed) or while
Temporal is unreachable, reading an application serves its stored record, the
newest of its workflow ID (`newest_in_group`, one look-up in either store).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    WithStartWorkflowOperation,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from core.formatting import CHART_DAYS, counts_by_day, last_days
from core.idempotency import IdempotencyKeyReused, fingerprint
from core.listing import SEARCH, Listing, list_page
from core.rules import Rules
from core.settings import Settings, temporal_connect_config
from core.store import Store, StoreUnavailable
from core.temporal_client import OutcomeUnknown, ProcessClient, TemporalUnavailable, workflow_ui_url
from loans.model import (
    APPLICATIONS,
    DECISIONS,
    LOAN_AMOUNT_BAND,
    LoanApplication,
    LoanOutcome,
    LoanRequest,
    amount_band,
    loan_workflow_id,
    record_key,
)
from loans.validation import InvalidApplication
from loans.workflow import LoanApplicationWorkflow

# The shape `shared.loan_workflow_id` makes: anything else (an order's or a
# customer's workflow, a path trick) is unknown without asking Temporal.
LOAN_WORKFLOW_ID = re.compile(r"^loan-[0-9a-f]{32}$")
# Seconds to wait for a describe, a query or a signal: each is one server call
# (a query also needs a worker; without one the workflow waits and we say so).
STATUS_QUERY_TIMEOUT = 2.0


# The applications list's filters (query parameters) and the store's field each reads.
LIST_FILTERS: dict[str, tuple[str, ...] | None] = {"decision": DECISIONS, "name": None, "email": None, SEARCH: None}
LIST_FIELDS = {"decision": "decision", "name": "application.name", "email": "application.email"}


@dataclass(frozen=True)
class Decided:
    record: dict[str, Any]
    persisted: bool
    # Whether the contact question can still be answered: True while the workflow runs, False once
    # it has closed (or is gone), None when Temporal could not say (unreachable).
    window_open: bool | None = True


@dataclass(frozen=True)
class Submission:
    """One call to `submit`: its own random ID, the application's fingerprint, the client's key."""

    id: str
    fingerprint: str
    idempotency_key: str | None

    def memo(self) -> dict[str, str]:
        memo = {"submission": self.id, "fingerprint": self.fingerprint}
        return memo | ({"idempotency_key": self.idempotency_key} if self.idempotency_key else {})

    def retries(self, memo: Mapping[str, Any]) -> bool:
        """Whether the workflow with this memo was started by the same application under the same key."""
        key = self.idempotency_key
        return key is not None and memo.get("idempotency_key") == key and memo.get("fingerprint") == self.fingerprint


@dataclass(frozen=True)
class Pending:
    workflow_id: str


@dataclass(frozen=True)
class Duplicate:
    """An application from this email is still in its window; a new one is possible in `days_remaining`."""

    days_remaining: int


class NotFound(Exception):
    pass


class WindowClosed(Exception):
    """The application exists but its workflow is no longer running (its window ended)."""


class AnsweredTooOften(Exception):
    """The application's contact answer was recorded MAX_CONTACT_ANSWERS times: no more (each one
    grows the workflow's history, which Temporal caps)."""


# Contact answers recorded per application before more are refused; with the per-client
# limit on answers (web/limits.py), a few more may be in flight when it is reached.
MAX_CONTACT_ANSWERS = 20


class LoanService:
    def __init__(self, settings: Settings, rules: Rules, temporal: ProcessClient, store: Store):
        self.settings = settings
        self.rules = rules
        self.temporal = temporal
        self.store = store
        self.namespace = temporal_connect_config()["namespace"]

    def workflow_id(self, application: LoanApplication) -> str:
        return loan_workflow_id(application.email, self.settings.secret_key.encode())

    async def submit(self, application: LoanApplication, idempotency_key: str | None = None) -> Decided | Pending | Duplicate:
        """Start the application's workflow and wait a short while for its decision.

        The start and the wait are one call (update-with-start). The server
        refuses a second start while the email's workflow runs (conflict policy
        FAIL): that refusal, not a look-up, is what makes duplicates impossible.

        Every answer is true. The workflow's memo names the submission that started
        it (a random ID per call), the application's fingerprint and the client's
        idempotency key, so after an error or a refusal the workflow that exists
        says whose it is: this submission's (an answer lost on the way: 202, or its
        decision), a retry of the same application under the same key (its
        decision), the same key with another application (`IdempotencyKeyReused`),
        or another application from this email (`Duplicate`). "Not submitted"
        (TemporalUnavailable) only when known: no connection, or no such workflow
        after the error; `OutcomeUnknown` when Temporal cannot say.
        """
        workflow_id = self.workflow_id(application)
        submission = Submission(uuid.uuid4().hex, fingerprint(application), idempotency_key)
        band = amount_band(application.loan_amount, self.rules.amount_bands)
        start = WithStartWorkflowOperation(
            LoanApplicationWorkflow.run,
            LoanRequest(application, self.rules.duplicate_window_days, band, persist_sends_email=True),
            id=workflow_id,
            task_queue=self.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            search_attributes=TypedSearchAttributes([SearchAttributePair(LOAN_AMOUNT_BAND, band)]),
            memo={"duplicate_window_days": self.rules.duplicate_window_days, **submission.memo()},
            static_summary=f"Loan application, amount {band}",
        )
        waited = False
        try:
            # The margin covers connecting and the duplicate look-up; the decision has its own wait.
            async with asyncio.timeout(self.settings.decision_wait_seconds + 5):
                try:
                    result: LoanOutcome | Decided | Pending | Duplicate | None = await self._execute(start)
                except WorkflowAlreadyStartedError:
                    result = await self._existing(workflow_id, submission)
                except (WorkflowUpdateRPCTimeoutOrCancelledError, TimeoutError):
                    result, waited = None, True  # no decision in time (no worker?); checked below
        except TimeoutError:
            result = None
        except WorkflowUpdateFailedError as err:
            inner = getattr(err.cause, "cause", None)
            cause = inner if isinstance(inner, ApplicationError) else err.cause
            fields = cause.details[0] if isinstance(cause, ApplicationError) and cause.details else {}
            raise InvalidApplication(fields or {"application": str(cause)}) from err
        except RPCError:
            result = None  # sent, then failed (a deadline, a dropped connection): it may have started
        if result is None:
            return await self._after_no_answer(workflow_id, submission, waited)
        if isinstance(result, LoanOutcome):
            return self._answer(result)
        return result

    def _answer(self, outcome: LoanOutcome) -> Decided:
        """The decision, as the update answered it. The answer leaves with the decision's workflow
        task, which usually ends after the persist step and the email it sends: then the record is
        there, and it is the answer, with how the email went. Without it (the step outlasted the
        task, or the store is down), the update's outcome, not persisted yet."""
        with contextlib.suppress(StoreUnavailable):
            record = self.store.get(APPLICATIONS, record_key(outcome.workflow_id, outcome.run_id))
            if record is not None:
                return Decided(record, persisted=True)
        return Decided(dataclasses.asdict(outcome), persisted=False)

    async def _execute(self, start: WithStartWorkflowOperation) -> LoanOutcome:
        client = await self.temporal.get()
        try:
            # The SDK asks again until the update is accepted, then polls for its outcome: bound it all.
            async with asyncio.timeout(self.settings.decision_wait_seconds):
                return await client.execute_update_with_start_workflow(
                    LoanApplicationWorkflow.wait_for_decision,
                    start_workflow_operation=start,
                    rpc_timeout=timedelta(seconds=self.settings.decision_wait_seconds),
                )
        except BaseException:
            # The operation's own future holds the same error: retrieve it, or
            # asyncio logs it as "never retrieved" when the loop closes.
            with contextlib.suppress(BaseException):
                await start.workflow_handle()
            raise

    async def _after_no_answer(
        self, workflow_id: str, submission: Submission, waited: bool = False
    ) -> Decided | Pending | Duplicate:
        """After an error or a timeout on the start: whatever workflow now exists says what happened.

        `waited`: the decision did not come within the wait, so this submission's workflow is
        answered as pending at once (asking it again would wait for a worker that may be down)."""
        try:
            description = await self._describe(workflow_id)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise TemporalUnavailable(f"no workflow {workflow_id} after the error") from err
            raise OutcomeUnknown(workflow_id) from err
        except (TimeoutError, TemporalUnavailable) as err:
            raise OutcomeUnknown(workflow_id) from err
        return await self._answer_for(description, submission, ask=not waited)

    async def _existing(self, workflow_id: str, submission: Submission) -> Decided | Pending | Duplicate:
        """The server refused the start: a workflow of this email runs."""
        return await self._answer_for(await self._describe(workflow_id), submission)

    async def _answer_for(
        self, description: WorkflowExecutionDescription, submission: Submission, ask: bool = True
    ) -> Decided | Pending | Duplicate:
        memo = await description.memo()
        if memo.get("submission") == submission.id and not ask:
            return Pending(description.id)
        if memo.get("submission") == submission.id or submission.retries(memo):
            # This submission's workflow (its answer was lost), or the same application under the same key.
            try:
                return await self.status(description.id)
            except (NotFound, TemporalUnavailable):
                return Pending(description.id)
        if submission.idempotency_key is not None and memo.get("idempotency_key") == submission.idempotency_key:
            raise IdempotencyKeyReused(description.id)
        window = timedelta(days=memo.get("duplicate_window_days", self.rules.duplicate_window_days))
        left = description.start_time + window - datetime.now(UTC)
        days = min(max(math.ceil(left / timedelta(days=1)), 1), window.days)
        return Duplicate(days_remaining=days)

    async def _describe(self, workflow_id: str) -> WorkflowExecutionDescription:
        async with asyncio.timeout(STATUS_QUERY_TIMEOUT):
            client = await self.temporal.get()
            return await client.get_workflow_handle(workflow_id).describe()

    async def status(self, workflow_id: str) -> Decided | Pending:
        """The latest application of this workflow ID.

        The workflow says which run is the latest, and that run's record is read
        (else the live workflow is queried). Without the workflow — gone, or
        Temporal unreachable — the newest stored record of the ID is the answer;
        with no record either, NotFound or TemporalUnavailable.
        """
        if not LOAN_WORKFLOW_ID.match(workflow_id):
            raise NotFound(workflow_id)
        try:
            description = await self._describe(workflow_id)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                return self._stored(workflow_id, NotFound(workflow_id), window_open=False)
            return self._stored(workflow_id, TemporalUnavailable(str(err)))
        except TimeoutError:
            return self._stored(workflow_id, TemporalUnavailable("timed out describing the workflow"))
        except TemporalUnavailable as err:
            return self._stored(workflow_id, err)
        if description.workflow_type != "LoanApplicationWorkflow":
            raise NotFound(workflow_id)
        running = description.status == WorkflowExecutionStatus.RUNNING
        record = self.store.get(APPLICATIONS, record_key(workflow_id, description.run_id))
        if record is not None:
            return Decided(record, persisted=True, window_open=running)
        if not running:
            # Closed without a record: it failed validation (the web layer
            # validates first, so only a workflow started by other means).
            raise NotFound(workflow_id)
        try:
            async with asyncio.timeout(STATUS_QUERY_TIMEOUT):
                client = await self.temporal.get()
                handle = client.get_workflow_handle(workflow_id, run_id=description.run_id)
                status = await handle.query(LoanApplicationWorkflow.status)
        except (TimeoutError, RPCError, TemporalUnavailable):
            return Pending(workflow_id)  # no worker right now: the workflow waits for one
        if status.outcome is None:
            return Pending(workflow_id)
        record = dataclasses.asdict(status.outcome)
        record["contact_preference"] = status.contact_preference
        return Decided(record, persisted=status.stage == "persisted")

    def _stored(self, workflow_id: str, missing: Exception, window_open: bool | None = None) -> Decided:
        """The newest stored record of the workflow ID, when the workflow cannot be asked; else raise `missing`."""
        record = self.store.newest_in_group(APPLICATIONS, workflow_id)
        if record is None:
            raise missing
        return Decided(record, persisted=True, window_open=window_open)

    async def record_contact(self, workflow_id: str, answer: str) -> None:
        """Signal the answer to the running workflow; WindowClosed if the application exists but its
        workflow has closed (or is gone), NotFound if nothing is known of it."""
        if not LOAN_WORKFLOW_ID.match(workflow_id):
            raise NotFound(workflow_id)
        recorded = self.store.newest_in_group(APPLICATIONS, workflow_id)
        if recorded is not None and recorded.get("contact_answers", 0) >= MAX_CONTACT_ANSWERS:
            raise AnsweredTooOften(workflow_id)
        try:
            async with asyncio.timeout(STATUS_QUERY_TIMEOUT):
                client = await self.temporal.get()
                await client.get_workflow_handle(workflow_id).signal(LoanApplicationWorkflow.contact_preference, answer)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                if self.store.newest_in_group(APPLICATIONS, workflow_id) is None:
                    raise NotFound(workflow_id) from err
                raise WindowClosed(workflow_id) from err
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable("timed out sending the answer") from err

    def temporal_url(self, workflow_id: str, run_id: str | None = None) -> str:
        return workflow_ui_url(self.settings.temporal_ui_url, self.namespace, workflow_id, run_id)

    def listing(self, page: int, chosen: tuple[str, str] | None = None, after: str | None = None) -> Listing:
        """One page of applications, newest first, or those `chosen` (LIST_FILTERS) has: a decision,
        an applicant's name or email (the search box: an email address if it has an @)."""
        key_of = lambda record: record_key(record["workflow_id"], record["run_id"])  # noqa: E731
        return list_page(self.store, APPLICATIONS, "decision", LIST_FIELDS, "name", page, chosen, key_of, after)

    def decisions_by_day(self, days: int = CHART_DAYS) -> dict[str, dict[str, int]]:
        """The last `days` days' applications by decision, {day: {decision: count}}: counts the store keeps."""
        return counts_by_day(self.store.count_by(APPLICATIONS, "day_decision"), last_days(days))
