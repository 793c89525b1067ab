"""The workflow that sends an account's email (shop/account_emails.py): one activity, retried through a mail outage.

Workflow code only (no I/O): the request names what was asked for and the
address; the activity decides, from the account as it is when it runs, what to
send, or that there is nothing to send. A mail server that is down, or a 4xx,
is retried with backoff for a day, as every email of the product is; a 5xx is final.
"""

from dataclasses import dataclass

from temporalio import workflow

from core.email_policy import execute_email_activity

SEND_ACCOUNT_EMAIL = "send_account_email"
# What a request asks for: a sign-up's email (confirm the address, or "you have an account" to its
# owner), the confirmation link again, a password reset.
ACCOUNT_EMAIL_PURPOSES = ("register", "verify", "reset")


def account_email_workflow_id(request_id: str) -> str:
    """The workflow's ID: a random one per request, never the address (IDs are not encrypted)."""
    return f"account-email-{request_id}"


@dataclass(frozen=True)
class AccountEmailRequest:
    purpose: str  # one of ACCOUNT_EMAIL_PURPOSES
    email: str  # normalised
    requested_at: str  # the Date header: the same whichever attempt sends it
    # A sign-up's: the version of the claim it made. A later claim on the address (registered before this
    # email went) replaces it, and its link would confirm that claim's password: nothing is sent then.
    version: int | None = None


@workflow.defn(sandboxed=False)  # as every workflow here (docs/performance.md); its email policy is the worker's
class AccountEmailWorkflow:
    @workflow.run
    async def run(self, request: AccountEmailRequest) -> str:
        """What was sent ("verify", "exists", "reset"), "nothing", or "not_configured" (no SMTP_URL)."""
        return await execute_email_activity(SEND_ACCOUNT_EMAIL, request, f"Send the account's {request.purpose} email")
