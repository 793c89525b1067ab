"""ShippingWorkflow: an order's shipment, a child workflow on its own task queue."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    is_cancelled_exception,
)

from core.workflow_helpers import uninterrupted
from orders.policies import MUST_FINISH_RETRY, ORDER_STEP_RETRY, ORDER_STEP_TIMEOUT

with workflow.unsafe.imports_passed_through():
    from orders.activities import ShippingActivities
    from orders.model import (
        DispatchPermit,
        FailureInjection,
        MessageFrom,
        Shipment,
        ShipmentProgress,
        ShipmentStepRequest,
        ShippingRequest,
        StepRequest,
    )


# The signals a shipment sends the order that started it. The shipment owns their
# names; the order's handlers take them (orders/workflow.py imports this module, never the reverse).
PROGRESS_SIGNAL = "shipment_progress"  # a stage reached (ShipmentProgress)
SHIPMENT = MessageFrom("shipment")  # the sender of the shipment's `shipment_ready` (ready_carries_sender)


@dataclass(frozen=True)
class ShipmentReady:
    """`shipment_ready`'s argument from a shipment with `ready_carries_sender`: who sends it, and
    the "prepared" progress when it comes along (no wait before the pickup)."""

    sender: MessageFrom
    progress: ShipmentProgress | None = None


READY_SIGNAL = "shipment_ready"  # at the carrier's pickup, waiting for the order's word


@workflow.defn(sandboxed=False)
class ShippingWorkflow:
    """prepare package -> wait for the carrier's pickup -> the order's word -> dispatch -> transit -> deliver.

    Since order version 11 the order prepares the package itself (the same activity, on this
    task queue) and starts the shipment at the release with its word: dispatch -> transit ->
    deliver. What follows is the shipment of an earlier order.

    Until dispatch the shipment is the order's: at pickup it tells the order it
    is ready (`shipment_ready`) and dispatches only on the order's `dispatch`
    message, which brings the final address and speed; a `stop` message (or a
    cancellation through Temporal) ends it before the next step, as "cancelled".
    After dispatch the parcel is the carrier's: nothing stops it.
    """

    @workflow.init
    def __init__(self, request: ShippingRequest) -> None:
        self._request = request
        self._address = request.address
        self._expedited = request.expedited
        self._failures = list(request.failures)
        self._permit: DispatchPermit | None = request.permit  # v11 orders start the shipment with it
        self._stop_requested = False
        self._speed_changed = False
        self._preparing: workflow.ActivityHandle | None = None

    @workflow.run
    async def run(self, request: ShippingRequest) -> Shipment:
        if request.permit is not None:  # v11 orders: prepared by the order, released at the pickup
            return await uninterrupted(self._dispatch_and_deliver(request.permit))
        try:
            permit = await self._prepare_and_wait_for_pickup()
        except (Exception, asyncio.CancelledError) as err:
            if not is_cancelled_exception(err):
                raise
            permit = None  # cancelled through Temporal before dispatch: a stop
        if permit is None:
            await uninterrupted(self._abandon_preparation())
            return Shipment("cancelled", updated_at=workflow.now().isoformat())
        return await uninterrupted(self._dispatch_and_deliver(permit))

    async def _prepare_and_wait_for_pickup(self) -> DispatchPermit | None:
        """None when stopped before dispatch."""
        prepare = self._preparing = workflow.start_activity_method(
            ShippingActivities.prepare_package,
            self._step_request(),
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=ORDER_STEP_RETRY,
            summary="Prepare package",
        )
        await workflow.wait_condition(lambda: prepare.done() or self._stop_requested)
        if not prepare.done():
            return None
        prepared = prepare.result()
        prepared_at = ShipmentProgress("prepared", prepared.attempt, workflow.now().isoformat())
        pickup_wait = self._request.timing.prepare_seconds
        progress: ShipmentProgress | None = prepared_at
        if pickup_wait > 0 or not self._request.ready_carries_progress:
            await self._report(prepared_at)  # the order shows "prepared" while the parcel waits
            progress = None
        # Until the carrier collects the parcel, the order can still change or be cancelled.
        try:
            await workflow.wait_condition(
                lambda: self._stop_requested,
                timeout=timedelta(seconds=pickup_wait),
                timeout_summary="Awaiting carrier pickup",
            )
        except asyncio.TimeoutError:
            pass
        if self._stop_requested:
            return None
        await self._report_ready(progress)
        await workflow.wait_condition(lambda: self._permit is not None or self._stop_requested)
        return self._permit

    async def _dispatch_and_deliver(self, permit: DispatchPermit) -> Shipment:
        self._address = permit.address
        self._expedited = self._expedited or permit.expedited
        # v12 orders: the dispatch also sends the "shipped" email (the order's own activity sends it if not).
        step = dataclasses.replace(self._step_request(), email=permit.email)
        summary = "Dispatch carrier, then email the customer" if permit.email else "Dispatch carrier"
        dispatch = await self._must_finish(ShippingActivities.dispatch_carrier, summary, step)
        await self._report(
            ShipmentProgress(
                "dispatched",
                dispatch.attempt,
                workflow.now().isoformat(),
                dispatch.carrier,
                dispatch.tracking_number,
                dispatch.email,
            )
        )
        dispatched_at = workflow.now()
        while True:
            transit = self._request.timing.expedited_transit_seconds if self._expedited else self._request.timing.transit_seconds
            remaining = dispatched_at + timedelta(seconds=transit) - workflow.now()
            if remaining <= timedelta(0):
                break
            try:
                await workflow.wait_condition(lambda: self._speed_changed, timeout=remaining, timeout_summary="In transit")
            except asyncio.TimeoutError:
                break
            self._speed_changed = False
        delivered = await self._must_finish(ShippingActivities.deliver, "Deliver")
        if self._request.report_delivered:  # v8 orders; v9 orders read the delivery from the result
            await self._report(ShipmentProgress("delivered", delivered.attempt, workflow.now().isoformat()))
        return Shipment(
            "delivered",
            dispatch.carrier,
            dispatch.tracking_number,
            self._expedited,
            workflow.now().isoformat(),
            delivered_attempt=delivered.attempt,
        )

    async def _abandon_preparation(self) -> None:
        if self._preparing is not None and not self._preparing.done():
            self._preparing.cancel()
            with contextlib.suppress(ActivityError, asyncio.CancelledError):
                await self._preparing

    def _step_request(self) -> ShipmentStepRequest:
        request = self._request
        step = StepRequest(request.order_id, request.parent_workflow_id, list(self._failures), request.policy)
        return ShipmentStepRequest(step, self._address, self._expedited)

    async def _must_finish(self, activity, summary: str, request: ShipmentStepRequest | None = None):
        """Steps after dispatch: the parcel is with the carrier, so they retry until done. Local
        activities (milliseconds, nothing stops them), in the shipment's own workflow tasks."""
        return await workflow.execute_local_activity_method(
            activity,
            request or self._step_request(),
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary=summary,
        )

    async def _report(self, progress: ShipmentProgress) -> None:
        parent = workflow.get_external_workflow_handle(self._request.parent_workflow_id)
        await parent.signal(PROGRESS_SIGNAL, progress)

    async def _report_ready(self, progress: ShipmentProgress | None) -> None:
        """At the pickup; with no wait before it, the same signal carries the "prepared" progress (v10 orders)."""
        parent = workflow.get_external_workflow_handle(self._request.parent_workflow_id)
        if self._request.ready_carries_sender:  # the order ignores a `shipment_ready` with no sender
            await parent.signal(READY_SIGNAL, ShipmentReady(SHIPMENT, progress))
        else:
            await parent.signal(READY_SIGNAL, *([progress] if progress is not None else []))

    @workflow.signal
    def dispatch(self, permit: DispatchPermit) -> None:
        self._permit = permit

    @workflow.signal
    def stop(self, sender: MessageFrom | None = None) -> None:
        if self._permit is None and self._from_someone("stop", sender):
            self._stop_requested = True

    @workflow.signal
    def expedite(self, sender: MessageFrom | None = None) -> None:
        if self._from_someone("expedite", sender):
            self._expedited = True
            self._speed_changed = True

    def _from_someone(self, message: str, sender: MessageFrom | None) -> bool:
        """A message with no sender is a plain one sent straight to Temporal (ours carry one, encrypted):
        ignored by a shipment started since messages carry their sender."""
        if sender is None and self._request.messages_need_sender:
            workflow.logger.warning("Ignoring %s without a sender (not sent by the order)", message)
            return False
        return True

    @workflow.signal
    def inject_failure(self, failure: FailureInjection) -> None:
        self._failures.append(failure)
