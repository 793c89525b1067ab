"""How the order runs its steps: each business step an activity that a cancel stops at once, each undo one that must finish.

Workflow code, used by OrderWorkflow. Business steps retry transient trouble
and never a business refusal (orders/policies.py); the undos (release, refund)
and the bookkeeping retry until they are done.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.workflow import ActivityCancellationType

from core.workflow_helpers import uninterrupted
from orders.activities import OrderActivities
from orders.model import (
    ChargeRequest,
    FailureInjection,
    InventoryRequest,
    NotificationRequest,
    OrderRequest,
    Payment,
    StepRequest,
)
from orders.policies import (
    BOOKKEEPING_TIMEOUT,
    MUST_FINISH_RETRY,
    ORDER_STEP_RETRY,
    ORDER_STEP_TIMEOUT,
)
from orders.timeline import Timeline


class OrderSteps:
    def __init__(
        self,
        order: OrderRequest,
        failures: list[FailureInjection],
        cancel_requested: Callable[[], bool],
        on_temporal_cancel: Callable[[], None],
        timeline: Timeline,
    ):
        self._order = order
        self._timeline = timeline
        self._failures = failures  # shared with the workflow: injected failures reach later steps
        self._cancel_requested = cancel_requested
        self._on_temporal_cancel = on_temporal_cancel

    def request(self) -> StepRequest:
        return StepRequest(self._order.order_id, workflow.info().workflow_id, list(self._failures), self._order.policy)

    async def run(
        self, activity: Any, request: Any, summary: str, task_queue: str | None = None, heartbeat_timeout: timedelta | None = None
    ) -> Any:
        """Run one step; a cancel stops it at once (even between retries), so an
        accepted cancel is answered within seconds.

        TRY_CANCEL rather than waiting for the attempt in flight: the undo is
        safe either way (see ORDER_STEP_RETRY), and waiting hung the
        time-skipping test server when the attempt completed during the cancel.

        With lean bookkeeping the step's activity writes the order's record first. A step of
        another worker's (the package's preparation) runs on that worker's `task_queue`."""
        record = self._timeline.carry()
        if record is not None:
            request = dataclasses.replace(request, step=dataclasses.replace(request.step, record=record))
        step = workflow.start_activity_method(
            activity,
            request,
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            heartbeat_timeout=heartbeat_timeout,
            retry_policy=ORDER_STEP_RETRY,
            summary=summary,
            cancellation_type=ActivityCancellationType.TRY_CANCEL,
            task_queue=task_queue,
        )
        with self._timeline.moving():
            try:
                await workflow.wait_condition(lambda: step.done() or self._cancel_requested())
            except asyncio.CancelledError:  # a cancellation through Temporal
                self._on_temporal_cancel()
            if not step.done():
                step.cancel()
            try:
                return await uninterrupted(step, self._on_temporal_cancel)
            except BaseException:
                self._timeline.not_carried(record)
                raise

    async def release(self, request: InventoryRequest) -> bool:
        released = await workflow.execute_activity_method(
            OrderActivities.release_inventory,
            request,
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary="Compensate: release inventory",
        )
        return released.changed

    async def refund(self, request: ChargeRequest) -> Payment | None:
        return await workflow.execute_activity_method(
            OrderActivities.refund_payment,
            request,
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary="Compensate: refund payment",
        )

    async def notify(self, kind: str, message: str) -> None:
        """The customer's notice: a record written in milliseconds, run in the workflow task it is
        reached in (v8); with lean bookkeeping, written with the order's next record."""
        notice = NotificationRequest(self._order.order_id, self._order.customer_id, kind, message)
        if self._timeline.lean:
            self._timeline.notice(notice)
            return
        await workflow.execute_local_activity_method(
            OrderActivities.notify_customer,
            notice,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary=f"Notify customer: {kind}",
        )
