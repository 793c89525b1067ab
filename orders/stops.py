"""How an order stops early: the stop itself (rejected, cancelled or failed, with the reason), and a refusal seen as one."""

from __future__ import annotations

from temporalio.exceptions import ActivityError

from core.workflow_helpers import business_error


class OrderStopped(Exception):
    """Ends the order early: rejected, cancelled or failed, with the reason shown to people."""

    def __init__(self, status: str, reason: str, email_kind: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.email_kind = email_kind or status  # which email tells the customer (ORDER_EMAIL_KINDS)


def refusal_as_stop(err: ActivityError, error_type: str, status: str) -> Exception:
    """A step's business refusal of `error_type` as the order's stop; any other error as it is."""
    refusal = business_error(err, error_type)
    return OrderStopped(status, refusal.message) if refusal is not None else err
