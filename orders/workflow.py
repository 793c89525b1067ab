"""OrderWorkflow: one order, from receipt to delivery, or to its undoing.

receive -> validate -> reserve inventory -> review -> charge -> prepare the
shipment (a child ShippingWorkflow on its own task queue) -> release it to the
carrier -> deliver -> complete (rewards, notification). `run` is the process;
the helpers it leans on depend one way: the undo stack (orders/compensation.py),
the link to the shipment (orders/shipment_link.py), the steps' activities
(orders/steps.py), the timeline and record (orders/timeline.py), the customer's
emails (orders/customer_emails.py) and the actions an order offers
(orders/actions.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

from core.workflow_helpers import business_error, root_message, uninterrupted
from orders.actions import available_actions
from orders.activities import OrderActivities
from orders.compensation import UndoStack
from orders.customer_emails import CustomerEmails
from orders.model import (
    ACTION_REFUSED,
    FINAL_ORDER_STATUSES,
    INVALID_ORDER,
    MAX_FAILURES_PER_ORDER,
    OUT_OF_STOCK,
    PAYMENT_DECLINED,
    AddressChange,
    ApproveRequest,
    AwardRequest,
    CancelRequest,
    ChargeRequest,
    DispatchPermit,
    FailureInjection,
    InventoryRequest,
    OrderRequest,
    OrderStatus,
    Shipment,
    ShipmentProgress,
    ShippingRequest,
    ValidatedOrder,
    ValidateOrderRequest,
    shipping_workflow_id,
)
from orders.policies import MUST_FINISH_RETRY, ORDER_STEP_TIMEOUT
from orders.shipment_link import ShipmentLink
from orders.shipping import PROGRESS_SIGNAL, READY_SIGNAL, ShippingWorkflow
from orders.steps import OrderSteps
from orders.timeline import Timeline

# Patches of versions 2 to 7, retired (docs/versioning.md): each branch they chose is
# now the only code, and `deprecate_patch` keeps the histories of version 7 (which
# carry their markers) replaying. Asked in this order, before any command, as
# version 7 asked `patched`. Remove them once no order of version 7 can be open.
RETIRED_PATCHES = (
    "confirm-receipt-to-customer",
    "order-releases-dispatch",
    "record-stages-in-transit",
    "order-customer-emails",
    "order-bookkeeping-local",
    "record-stop-decided",
)
# Asked by `inject_failure` when the order holds MAX_FAILURES_PER_ORDER already (retired too).
BOUNDED_FAILURES_PATCH = "bounded-injected-failures"


class OrderStopped(Exception):
    """Ends the order early: rejected, cancelled or failed, with the reason shown to people."""

    def __init__(self, status: str, reason: str, email_kind: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.email_kind = email_kind or status  # which email tells the customer (ORDER_EMAIL_KINDS)


@workflow.defn(sandboxed=False)
class OrderWorkflow:
    """The rule for every exit: until the order releases the parcel to the
    carrier, whatever stops it (a business refusal, a step out of retries, an
    operator's cancel, a cancellation requested through Temporal) ends it in a
    named status (rejected, failed, cancelled) after undoing, newest first,
    everything it started. From the release on, nothing stops the order: it
    runs to delivery. An accepted cancel always wins, because the release is
    decided here, in the same single thread that accepts cancels: the shipment
    waits at the carrier's pickup for the order's word.
    """

    @workflow.init
    def __init__(self, order: OrderRequest) -> None:
        self._order = order
        self._status = OrderStatus.accepted(order)
        self._failures: list[FailureInjection] = list(order.failures)
        self._cancel_request: CancelRequest | None = None
        self._ending_as: str | None = None  # set when the order stops: the final status its undo steps lead to
        self._late_cancel_noted = False
        self._undos = UndoStack()
        self._shipment = ShipmentLink()
        self._timeline = Timeline(self._status, self._actions)
        self._emails = CustomerEmails(order, self._status, self._timeline)
        self._steps = OrderSteps(order, self._failures, lambda: self._cancel_request is not None,
                                 self._cancelled_through_temporal)

    @workflow.run
    async def run(self, order: OrderRequest) -> OrderStatus:
        for patch_id in RETIRED_PATCHES:
            workflow.deprecate_patch(patch_id)
        try:
            await self._receive()
            validated = await self._validate()
            await self._reserve_inventory(validated)
            await self._review(validated)
            await self._charge(validated)
            await self._prepare_shipment()
        except (Exception, asyncio.CancelledError) as err:
            await self._must_finish(self._stop(self._why_stopped(err)))
        else:
            await self._must_finish(self._deliver_and_complete(validated))
        await self._must_finish(workflow.wait_condition(workflow.all_handlers_finished))
        await self._must_finish(self._emails.finished())
        return self._status

    # --- steps, in order -----------------------------------------------------

    async def _receive(self) -> None:
        lines = len(self._order.lines)
        self._timeline.reach("received", f"Order received: {lines} line(s) for customer {self._order.customer_id}")
        if self._emails.address is None:
            self._timeline.event("step", "No customer email on this order: the customer is not emailed")
        await self._timeline.record()
        await self._steps.notify("received", self._text("notify_received", order_id=self._order.order_id, lines=lines))
        address = self._order.address
        self._emails.start("received", lines=lines, ship_to=f"{address.name}, {address.city}, {address.country}")

    async def _validate(self) -> ValidatedOrder:
        self._begin("validate")
        request = ValidateOrderRequest(self._steps.request(), self._order.lines, self._status.address)
        try:
            validated = await self._steps.run(OrderActivities.validate_order, request,
                                              summary="Validate: products, quantities, address, order total")
        except ActivityError as err:
            raise refusal_as_stop(err, INVALID_ORDER, "rejected")
        self._status.lines, self._status.total = validated.lines, validated.total
        self._status.attempts["validate"] = validated.attempt
        self._timeline.reach("validated", f"Validated: total {validated.total:,.2f}")
        await self._timeline.record()
        return validated

    async def _reserve_inventory(self, validated: ValidatedOrder) -> None:
        self._begin("reserve_inventory")
        request = InventoryRequest(self._steps.request(), self._order.lines)
        self._undos.push("release inventory", lambda: self._steps.release(request))
        try:
            result = await self._steps.run(OrderActivities.reserve_inventory, request, summary="Reserve inventory")
        except ActivityError as err:
            raise refusal_as_stop(err, OUT_OF_STOCK, "rejected")
        self._status.attempts["reserve_inventory"] = result.attempt
        self._timeline.event("step", "Inventory reserved")
        if validated.total > self._order.policy.auto_approve_limit:
            await self._timeline.record()  # otherwise the auto-approval records it, next in this workflow task

    async def _review(self, validated: ValidatedOrder) -> None:
        self._check_cancelled()
        policy = self._order.policy
        if validated.total <= policy.auto_approve_limit:
            self._approve("auto")
            self._timeline.event("step", f"Approved automatically (total within {policy.auto_approve_limit:,.2f})")
            await self._timeline.record()
            return
        sla, minutes = timedelta(seconds=policy.review_sla_seconds), max(1, round(policy.review_sla_seconds / 60))
        self._status.step, self._status.status, self._status.needs_review = "review", "awaiting_review", True
        self._status.review_deadline = (workflow.now() + sla).isoformat()
        self._timeline.event("step", f"Awaiting operator review (total above {policy.auto_approve_limit:,.2f})")
        await self._timeline.record()
        self._emails.start("awaiting_review", total=f"${validated.total:,.2f}", minutes=minutes)
        try:
            await workflow.wait_condition(lambda: self._status.approved or self._cancel_request is not None,
                                          timeout=sla, timeout_summary="Review SLA")
        except asyncio.TimeoutError:
            pass
        self._check_cancelled()
        # An approval accepted in the same workflow task as the deadline counts: the operator was told "approved".
        if not self._status.approved:
            raise OrderStopped("cancelled", self._text("review_timeout", minutes=minutes), email_kind="review_expired")
        self._status.status = "processing"
        await self._timeline.record()

    async def _charge(self, validated: ValidatedOrder) -> None:
        self._begin("charge_payment")
        request = ChargeRequest(self._steps.request(), validated.total)
        self._undos.push("refund payment", lambda: self._refund(request))
        try:
            result = await self._steps.run(OrderActivities.charge_payment, request,
                                           summary=f"Charge payment {validated.total:,.2f}")
        except ActivityError as err:
            raise refusal_as_stop(err, PAYMENT_DECLINED, "failed")
        self._status.payment = result.payment
        self._status.attempts["charge_payment"] = result.attempt
        self._timeline.reach("charged", f"Payment charged: {validated.total:,.2f} (key {result.payment.payment_key})")
        await self._timeline.record()

    async def _prepare_shipment(self) -> None:
        """Start the shipment and wait until the package is at the carrier's pickup;
        then release it to the carrier. The point of no return is the release."""
        self._begin("ship")
        self._status.status = "shipping"
        request = ShippingRequest(
            order_id=self._order.order_id, parent_workflow_id=workflow.info().workflow_id,
            address=self._status.address, expedited=self._status.expedited, timing=self._order.shipping,
            failures=list(self._failures), policy=self._order.policy, order_releases_dispatch=True,
        )
        self._undos.push("stop shipment", self._stop_shipment)
        await self._shipment.start(request, shipping_workflow_id(self._order.order_id),
                                   self._order.shipping_task_queue, self._cancelled_through_temporal)
        self._timeline.event("step", "Shipping started")
        await self._timeline.record()
        shipment = self._shipment
        while True:
            await workflow.wait_condition(
                lambda: shipment.ready or shipment.done or shipment.news or self._cancel_request is not None
            )
            self._check_cancelled()
            if shipment.news:
                shipment.news = False
                await self._timeline.record()
            elif shipment.done:
                raise self._shipment_ended(await self._must_finish(shipment.outcome()))
            elif shipment.ready:
                break
        # The point of no return, decided in the same step as the last cancel check.
        shipment.released = True
        self._status.shipment = dataclasses.replace(self._status.shipment, stage="dispatching")
        self._timeline.event("step", "Released to the carrier")

    async def _deliver_and_complete(self, validated: ValidatedOrder) -> None:
        """After the release: the carrier delivers, then points and the customer's notice."""
        await self._shipment.tell(ShippingWorkflow.dispatch, DispatchPermit(self._status.address, self._status.expedited))
        await self._timeline.record()
        outcome = await self._shipment.follow(self._timeline.record)
        if not isinstance(outcome, Shipment) or outcome.stage != "delivered":
            await self._stop(self._shipment_ended(outcome))  # only if someone ended the shipment itself
            return
        self._status.step = "complete"
        points = int(validated.total * self._order.policy.reward_points_per_dollar)
        # An activity, not a local one: it calls the Temporal server, which can be slow, and a local
        # activity holds the order's workflow task (an operator's message would wait for it).
        await workflow.execute_activity_method(
            OrderActivities.award_rewards, AwardRequest(self._order.customer_id, self._order.order_id, points),
            start_to_close_timeout=ORDER_STEP_TIMEOUT, retry_policy=MUST_FINISH_RETRY,
            summary=f"Award {points} reward points",
        )
        self._status.points_awarded = points
        await self._steps.notify("completed", self._text("notify_completed", order_id=self._order.order_id, points=points))
        self._status.status = "completed"
        self._timeline.event("status", f"Order completed; {points} reward points awarded")
        await self._timeline.record()
        self._emails.start("delivered", points=points)

    async def _stop(self, stop: OrderStopped) -> None:
        """Record the decided outcome, undo what was started (newest first), then the final status."""
        self._ending_as = stop.status
        self._status.cancelled = stop.status == "cancelled"
        self._status.cancel_reason = stop.reason if self._status.cancelled else None
        self._status.reason = stop.reason
        self._timeline.event("status", f"Order {stop.status}: {stop.reason}")
        # An activity, not a local one: this workflow task may carry the cancel of the step in
        # flight, and a local activity would hold it open while it writes; an attempt finishing
        # meanwhile then has the test server refuse the task, and operators' messages wait.
        await self._timeline.record(local=False)
        await self._undos.unwind(self._undone)
        self._status.status = stop.status
        await self._timeline.record()
        payment = self._status.payment
        if payment is None or payment.status == "voided":
            money = self._order.texts.get("email_not_charged", "")
        elif payment.status == "refunded":
            money = self._order.texts.get("email_refunded", "").format(amount=f"${payment.amount:,.2f}")
        else:
            money = ""  # charged and not refunded: not a stop this workflow makes, and nothing true to add
        minutes = max(1, round(self._order.policy.review_sla_seconds / 60))
        self._emails.start(stop.email_kind, reason=stop.reason, minutes=minutes, after=money)

    async def _undone(self, name: str) -> None:
        self._status.compensations.append(name)
        self._timeline.event("compensation", f"Compensation: {name}")
        await self._timeline.record()

    def _why_stopped(self, err: BaseException) -> OrderStopped:
        """The one rule: an accepted cancel wins over whatever else ended the step;
        then a business refusal; then a cancellation through Temporal; then a step
        out of retries. Anything else is a bug: it fails the workflow task, which
        Temporal retries once the code is fixed."""
        if workflow.cancellation_reason() is not None:
            self._cancelled_through_temporal()
        if self._cancel_request is not None:
            return OrderStopped("cancelled", self._cancel_request.reason)
        if isinstance(err, OrderStopped):
            return err
        if isinstance(err, (ActivityError, ChildWorkflowError)):
            step = self._status.step.replace("_", " ")
            return OrderStopped("failed", self._text("step_failed", step=step, error=root_message(err)))
        raise err

    # --- undo steps ------------------------------------------------------------

    async def _refund(self, request: ChargeRequest) -> bool:
        payment = await self._steps.refund(request)
        if payment is not None:
            self._status.payment = payment
        return payment is not None

    async def _stop_shipment(self) -> bool:
        outcome = await self._shipment.stop()
        if isinstance(outcome, Shipment):
            self._status.shipment = dataclasses.replace(self._status.shipment, stage=outcome.stage,
                                                        updated_at=outcome.updated_at)
        return outcome is not None

    def _shipment_ended(self, outcome: Shipment | BaseException) -> OrderStopped:
        if isinstance(outcome, Shipment):
            return OrderStopped("cancelled", self._text("shipment_stopped"))
        if isinstance(outcome, ChildWorkflowError):
            return OrderStopped("failed", root_message(outcome))
        return OrderStopped("failed", str(outcome))

    # --- operator messages ---------------------------------------------------

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
    async def expedite(self) -> None:
        if "expedite" not in self._actions():
            return
        self._status.expedited = True
        self._timeline.event("operator", "Expedited shipping requested")
        if self._shipment.released:
            await self._shipment.tell(ShippingWorkflow.expedite)
        await self._timeline.record()

    @workflow.signal
    async def inject_failure(self, failure: FailureInjection) -> None:
        """Simulate trouble in a later step (for demos and tests)."""
        if "simulate-failure" not in self._actions():
            return
        if len(self._failures) >= MAX_FAILURES_PER_ORDER:
            workflow.deprecate_patch(BOUNDED_FAILURES_PATCH)
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
            stage=progress.stage, carrier=progress.carrier or shipment.carrier,
            tracking_number=progress.tracking_number or shipment.tracking_number,
            expedited=self._status.expedited, updated_at=progress.at,
        )
        self._status.attempts[progress.stage] = progress.attempt
        if progress.stage == "dispatched":
            self._timeline.reach("shipped", f"Dispatched with {progress.carrier}, tracking {progress.tracking_number}")
            self._emails.start("shipped", carrier=progress.carrier, tracking_number=progress.tracking_number)
        elif progress.stage == "delivered":
            self._timeline.reach("delivered", "Delivered")
        else:
            self._timeline.event("step", f"Shipment {progress.stage}")
        self._shipment.news = True

    @workflow.signal(name=READY_SIGNAL)
    def shipment_ready(self) -> None:
        """The package is at the carrier's pickup: the shipment waits for dispatch or stop."""
        self._shipment.ready = True

    @workflow.query
    def status(self) -> OrderStatus:
        return dataclasses.replace(self._status, actions=self._actions())

    # --- what the order can still do ------------------------------------------

    def _actions(self) -> list[str]:
        status = self._status
        return available_actions(status.status, status.shipment.stage, status.expedited,
                                 ending=self._ending_as is not None, cancel_requested=self._cancel_request is not None,
                                 released=self._shipment.released)

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

    # --- small helpers -----------------------------------------------------------

    async def _must_finish(self, awaitable: Any) -> Any:
        return await uninterrupted(awaitable, self._cancelled_through_temporal)

    def _begin(self, step: str) -> None:
        self._check_cancelled()
        self._status.step = step

    def _approve(self, approved_by: str) -> None:
        self._status.approved, self._status.approved_by = True, approved_by
        # The caller records who approved and why, once, in the timeline.
        self._status.milestones["approved"] = workflow.now().isoformat()

    def _refused(self, message: str) -> ApplicationError:
        """An operator action the order cannot take now; the caller is told why."""
        return ApplicationError(message, type=ACTION_REFUSED, non_retryable=True)

    def _text(self, key: str, **values: Any) -> str:
        return self._order.texts[key].format(**values)


def refusal_as_stop(err: ActivityError, error_type: str, status: str) -> Exception:
    """A step's business refusal of `error_type` as the order's stop; any other error as it is."""
    refusal = business_error(err, error_type)
    return OrderStopped(status, refusal.message) if refusal is not None else err
