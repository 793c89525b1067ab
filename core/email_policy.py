"""How both halves' workflows retry an email: the names of its failures, its retry policy, and
`execute_email_activity`, which every workflow that sends an email runs it with.

Workflow-safe (no I/O): imported by the workflows and by `core.mail`.
SMTP down or a 4xx is retried with backoff for a day; a 5xx is final
(non-retryable, recorded). The initial interval and the attempt's timeout are
set once when the worker starts, from its Settings (the tests shorten them); they
only shape retries, which are not part of a workflow's history, so replay is
unaffected.
"""

from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy

# A refusal for good (5xx, or a message that cannot be addressed): not retried.
EMAIL_REFUSED = "EmailRefused"
# SMTP down, a timeout or a 4xx: retried by the activity's retry policy.
EMAIL_NOT_SENT_YET = "EmailNotSentYet"

EMAIL_GIVE_UP = timedelta(hours=24)
# Set once by the worker from its Settings (EMAIL_RETRY_INITIAL_SECONDS, EMAIL_ATTEMPT_TIMEOUT_SECONDS).
_timing = {"initial": timedelta(seconds=5), "attempt": timedelta(seconds=30)}


def configure(initial_seconds: float, attempt_timeout_seconds: float) -> None:
    """The first retry's interval and one attempt's timeout, for every email scheduled from now on."""
    _timing["initial"] = timedelta(seconds=initial_seconds)
    _timing["attempt"] = timedelta(seconds=attempt_timeout_seconds)


def email_retry() -> RetryPolicy:
    initial = _timing["initial"]
    return RetryPolicy(
        initial_interval=initial,
        backoff_coefficient=2.0,
        maximum_interval=min(timedelta(minutes=10), initial * 120),
        maximum_attempts=0,
        non_retryable_error_types=[EMAIL_REFUSED],
    )


def email_timeout() -> timedelta:
    return _timing["attempt"]


async def execute_email_activity(activity: str, request: Any, summary: str) -> str:
    """Workflow code: the email activity `activity` with the email policy (one attempt's timeout, a day of
    retries with backoff, a refusal final); its status ("sent", "refused", ...) or an ActivityError."""
    return await workflow.execute_activity(
        activity,
        request,
        result_type=str,
        start_to_close_timeout=email_timeout(),
        schedule_to_close_timeout=EMAIL_GIVE_UP,
        retry_policy=email_retry(),
        summary=summary,
    )
