"""How both halves' workflows retry an email: the names of its failures and its retry policy.

Workflow-safe (no I/O): imported by the workflows and by `core.mail`.
SMTP down or a 4xx is retried with backoff for a day; a 5xx is final
(non-retryable, recorded). The initial interval and the attempt's timeout are
read once when the worker starts (the tests shorten them); they only shape
retries, which are not part of a workflow's history, so replay is unaffected.
"""

import os
from datetime import timedelta

from temporalio.common import RetryPolicy

# A refusal for good (5xx, or a message that cannot be addressed): not retried.
EMAIL_REFUSED = "EmailRefused"
# SMTP down, a timeout or a 4xx: retried by the activity's retry policy.
EMAIL_NOT_SENT_YET = "EmailNotSentYet"

EMAIL_RETRY_INITIAL = timedelta(seconds=float(os.environ.get("EMAIL_RETRY_INITIAL_SECONDS", "5")))
EMAIL_RETRY = RetryPolicy(
    initial_interval=EMAIL_RETRY_INITIAL,
    backoff_coefficient=2.0,
    maximum_interval=min(timedelta(minutes=10), EMAIL_RETRY_INITIAL * 120),
    maximum_attempts=0,
    non_retryable_error_types=[EMAIL_REFUSED],
)
EMAIL_TIMEOUT = timedelta(seconds=float(os.environ.get("EMAIL_ATTEMPT_TIMEOUT_SECONDS", "30")))
EMAIL_GIVE_UP = timedelta(hours=24)
