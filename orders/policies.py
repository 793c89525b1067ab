"""How the order process retries: business steps, the steps that must finish, and bookkeeping.

Business steps retry transient trouble with backoff, never a business failure.
When the order stops while one runs, it does not wait for the attempt in flight:
the undo may run first, and the activities make a step that arrives after its
undo a no-op (a refund voids the payment key, a release marks the reservation
released). Undoing, bookkeeping and what follows the carrier's pickup retry
until they are done.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from orders.model import (
        INVALID_ORDER,
        OUT_OF_STOCK,
        PAYMENT_DECLINED,
        SHIPPING_FAILED,
    )


# --- orders ------------------------------------------------------------------

# Business steps: retried with backoff for transient trouble (an injected
# failure, a busy disk), never for a business failure. When the order stops
# while one runs, it does not wait for the attempt in flight: the undo may run
# first, and the activities make a step that arrives after its undo a no-op
# (a refund voids the payment key, a release marks the reservation released).
ORDER_STEP_TIMEOUT = timedelta(seconds=30)
# The charge says it is alive before each call to the provider (orders/payments.py): a
# worker killed mid-charge is noticed within this, not at the attempt's end. A call slower
# than this (its timeout is 10 s per phase) costs an attempt, never a second charge: the
# retry waits for the payment record's lock and finds the charge.
CHARGE_HEARTBEAT_TIMEOUT = timedelta(seconds=12)
ORDER_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=8,
    non_retryable_error_types=[INVALID_ORDER, OUT_OF_STOCK, PAYMENT_DECLINED, SHIPPING_FAILED],
)
# Undoing (release, refund), bookkeeping and what follows the carrier's pickup
# must finish, however long it takes.
MUST_FINISH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
BOOKKEEPING_TIMEOUT = timedelta(seconds=10)
