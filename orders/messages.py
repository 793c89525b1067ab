"""What people and the shipment tell a running order: the operator's updates and signals, and the status query.

OrderMessages is the message half of OrderWorkflow (its base class): the
handlers, their validators, and the rules they share with the process (which
actions are still possible, a cancel through Temporal, the order's texts). The
order's state is OrderWorkflow's, set in its `__init__`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from orders.actions import available_actions
from orders.customer_emails import CustomerEmails
from orders.model import (
    ACTION_REFUSED,
    FINAL_ORDER_STATUSES,
    MAX_FAILURES_PER_ORDER,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    FailureInjection,
    MessageFrom,
    OrderEmailRequest,
    OrderRequest,
    OrderStatus,
    Shipment,
    ShipmentProgress,
)
from orders.shipment_link import ORDER, ShipmentLink
from orders.shipping import PROGRESS_SIGNAL, READY_SIGNAL, ShipmentReady, ShippingWorkflow
from orders.stops import OrderStopped
from orders.timeline import Timeline


class OrderMessages:
    _order: OrderRequest
    _status: OrderStatus
    _failures: list[FailureInjection]
    _cancel_request: CancelRequest | None
    _ending_as: str | None
    _late_cancel_noted: bool
    _shipment: ShipmentLink
    _timeline: Timeline
    _emails: CustomerEmails
    _shipped_email: OrderEmailRequest | None

    @workflow.update
    async def approve(self, request: ApproveRequest) -> OrderStatus:
        if self._status.approved:
            # Two approves accepted in one workflow task pass both validators (they run
            # before any handler): the second is refused here, so one approve counts.
            raise self._refused(self._text("already_approved", operator=self._status.approved_by))
        self._approve(request.operator)
        self._timeline.event("operator", f"Approved by {request.operator}")
        await self._timeline.record()
        return self._status

    @approve.validator
    def _check_approve(self, request: ApproveRequest) -> None:
        # An operator approved it (in review, or since: processing, shipping): say so and by whom.
        # Auto-approved orders were never in review; ended ones say how they ended.
        reviewed_and_approved = self._status.approved and self._status.needs_review
        if reviewed_and_approved and self._status.status not in FINAL_ORDER_STATUSES:
            raise self._refused(self._text("already_approved", operator=self._status.approved_by))
        if self._status.status != "awaiting_review":
            raise self._refused(self._text("not_awaiting_review", status=self._status.status.replace("_", " ")))
        self._refuse_unless_possible("approve")

    @workflow.update
    async def cancel(self, request: CancelRequest) -> OrderStatus:
        """Cancels and waits for the undo steps, so the answer shows them. Once
        accepted, the cancel wins: the order ends cancelled."""
        if self._cancel_request is None:
            self._cancel_request = request
            self._timeline.event("operator", f"Cancel requested by {request.operator}: {request.reason}")
        await workflow.wait_condition(lambda: self._status.status in FINAL_ORDER_STATUSES)
        return self._status

    @cancel.validator
    def _check_cancel(self, request: CancelRequest) -> None:
        self._refuse_unless_possible("cancel")
        if not request.reason.strip():
            raise self._refused(self._text("cancel_reason"))

    @workflow.update
    async def update_address(self, change: AddressChange) -> OrderStatus:
        # Taken by the shipment with the dispatch permit, so it cannot race the dispatch.
        self._status.address = change.address
        where = f"{change.address.city}, {change.address.country}"
        self._timeline.event("operator", f"Shipping address changed by {change.operator} to {where}")
        await self._timeline.record()
        return self._status

    @update_address.validator
    def _check_address(self, change: AddressChange) -> None:
        self._refuse_unless_possible("address")
        if change.address.missing_fields():
            raise self._refused(self._text("address_field") + f" ({', '.join(change.address.missing_fields())})")

    @workflow.signal
    async def expedite(self, sender: MessageFrom | None = None) -> None:
        if "expedite" not in self._actions() or not self._from_someone("expedite", sender):
            return
        self._status.expedited = True
        self._timeline.event("operator", "Expedited shipping requested" + (f" by {sender.sender}" if sender else ""))
        if self._shipment.released:
            await self._shipment.tell(ShippingWorkflow.expedite, ORDER)
        await self._timeline.record()

    @workflow.signal
    async def inject_failure(self, failure: FailureInjection) -> None:
        """Simulate trouble in a later step (for demos and tests)."""
        if "simulate-failure" not in self._actions():
            return
        if len(self._failures) >= MAX_FAILURES_PER_ORDER:
            # Signals are not validated; a bound keeps a scripted client from growing the state for ever.
            self._timeline.event("operator", self._text("failures_full", maximum=MAX_FAILURES_PER_ORDER))
            await self._timeline.record()
            return
        self._failures.append(failure)
        kind = "permanent" if failure.permanent else f"{failure.times} attempt(s)"
        self._timeline.event("operator", f"Failure injected: {failure.step}, {kind}")
        await self._shipment.tell(ShippingWorkflow.inject_failure, failure)
        await self._timeline.record()

    @workflow.signal(name=PROGRESS_SIGNAL)
    def shipment_progress(self, progress: ShipmentProgress) -> None:
        shipment = self._status.shipment
        self._status.shipment = Shipment(
            stage=progress.stage,
            carrier=progress.carrier or shipment.carrier,
            tracking_number=progress.tracking_number or shipment.tracking_number,
            expedited=self._status.expedited,
            updated_at=progress.at,
        )
        self._status.attempts[progress.stage] = progress.attempt
        if progress.stage == "dispatched":
            self._timeline.reach("shipped", f"Dispatched with {progress.carrier}, tracking {progress.tracking_number}")
            if self._shipped_email is not None:  # v12: the dispatch sent it, or says it did not
                self._emails.dispatched(self._shipped_email, progress)
            else:
                self._emails.start("shipped", carrier=progress.carrier, tracking_number=progress.tracking_number)
        elif progress.stage == "delivered":
            self._timeline.reach("delivered", "Delivered")
        else:
            self._timeline.event("step", f"Shipment {progress.stage}")
        self._shipment.news = True

    @workflow.signal(name=READY_SIGNAL)
    def shipment_ready(self, ready: ShipmentReady | ShipmentProgress | None = None) -> None:
        """The package is at the carrier's pickup: the shipment waits for dispatch or stop.
        With no wait before the pickup, the "prepared" progress comes with it (v10 orders);
        from a shipment with `ready_carries_sender`, inside a ShipmentReady with its sender."""
        sender = ready.sender if isinstance(ready, ShipmentReady) else None
        progress = ready.progress if isinstance(ready, ShipmentReady) else ready
        if not self._from_someone("shipment_ready", sender):
            return
        if progress is not None:
            self.shipment_progress(progress)
        self._shipment.ready = True

    def _from_someone(self, message: str, sender: MessageFrom | None) -> bool:
        """A message with no sender is a plain one sent straight to Temporal (ours carry one,
        encrypted): ignored by an order placed since its messages carry their sender."""
        if sender is None and self._order.messages_need_sender:
            workflow.logger.warning("Ignoring %s without a sender (not sent by the app or the shipment)", message)
            return False
        return True

    @workflow.query
    def status(self) -> OrderStatus:
        return dataclasses.replace(self._status, actions=self._actions())

    # --- what the order can still do ------------------------------------------

    def _actions(self) -> list[str]:
        status = self._status
        return available_actions(
            status.status,
            status.shipment.stage,
            status.expedited,
            ending=self._ending_as is not None,
            cancel_requested=self._cancel_request is not None,
            released=self._shipment.released,
        )

    def _refuse_unless_possible(self, action: str) -> None:
        if action in self._actions():
            return
        if self._status.status in FINAL_ORDER_STATUSES:
            raise self._refused(self._text("already_final", status=self._status.status))
        if self._ending_as not in (None, "cancelled"):
            # Undoing: the outcome is decided, though the status still shows the step.
            raise self._refused(self._text("already_final", status=self._ending_as))
        if self._ending_as is not None or self._cancel_request is not None:
            raise self._refused(self._text("being_cancelled"))
        raise self._refused(self._text("already_dispatched"))

    def _check_cancelled(self) -> None:
        if workflow.cancellation_reason() is not None:
            self._cancelled_through_temporal()
        if self._cancel_request is not None:
            raise OrderStopped("cancelled", self._cancel_request.reason)

    def _cancelled_through_temporal(self) -> None:
        """A cancellation requested through Temporal (UI, CLI, API) follows the
        cancel update's rule: before the release it is a cancel request; after
        it, too late (the order completes, and says so in its timeline)."""
        if self._ending_as is not None:
            return  # already undoing: the outcome is the same
        if self._shipment.released:
            if not self._late_cancel_noted:
                self._late_cancel_noted = True
                self._timeline.event("operator", self._text("cancel_too_late"))
            return
        if self._cancel_request is None:
            reason = workflow.cancellation_reason() or ""
            self._cancel_request = CancelRequest(self._text("cancelled_through_temporal", reason=reason).strip(), "Temporal")
            self._timeline.event("operator", f"Cancel requested through Temporal: {self._cancel_request.reason}")

    # --- shared with the process ------------------------------------------------

    def _approve(self, approved_by: str) -> None:
        self._status.approved, self._status.approved_by = True, approved_by
        # The caller records who approved and why, once, in the timeline.
        self._status.milestones["approved"] = workflow.now().isoformat()

    def _refused(self, message: str) -> ApplicationError:
        """An operator action the order cannot take now; the caller is told why."""
        return ApplicationError(message, type=ACTION_REFUSED, non_retryable=True)

    def _text(self, key: str, **values: Any) -> str:
        return self._order.texts[key].format(**values)
