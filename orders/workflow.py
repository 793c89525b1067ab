"""OrderWorkflow: one order, from receipt to delivery, or to its undoing.

receive -> validate -> reserve inventory -> review -> charge -> prepare the
shipment (a child ShippingWorkflow on its own task queue) -> release it to the
carrier -> deliver -> complete (rewards, notification). `run` is the process;
the helpers it leans on depend one way: the undo stack (orders/compensation.py),
the link to the shipment (orders/shipment_link.py), the steps' activities
(orders/steps.py), the timeline and record (orders/timeline.py), the customer's
emails (orders/customer_emails.py) and the actions an order offers
(orders/actions.py). What operators and the shipment tell the order arrives
through its message handlers (orders/messages.py, the class's base).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ChildWorkflowError

from core.workflow_helpers import root_message, uninterrupted
from orders.activities import OrderActivities, ShippingActivities
from orders.compensation import UndoStack
from orders.customer_emails import CustomerEmails
from orders.messages import OrderMessages
from orders.model import (
    INVALID_ORDER,
    OUT_OF_STOCK,
    PAYMENT_DECLINED,
    SHIPPING_FAILED,
    AwardRequest,
    CancelRequest,
    ChargeRequest,
    DispatchPermit,
    FailureInjection,
    InventoryRequest,
    OrderEmailRequest,
    OrderEmailState,
    OrderRequest,
    OrderStatus,
    Shipment,
    ShipmentStepRequest,
    ShippingRequest,
    ValidatedOrder,
    ValidateOrderRequest,
    shipping_workflow_id,
)
from orders.policies import CHARGE_HEARTBEAT_TIMEOUT, MUST_FINISH_RETRY, ORDER_STEP_TIMEOUT
from orders.shipment_link import ORDER, ShipmentLink
from orders.shipping import ShippingWorkflow
from orders.steps import OrderSteps
from orders.stops import OrderStopped, refusal_as_stop
from orders.timeline import Timeline

# The order's versions, each a patch (what each changed: docs/versioning.md, "The patches in the code today").
LEAN_BOOKKEEPING_PATCH = "order-lean-bookkeeping"  # v9: the step after a change carries the order's record
FEWER_TASKS_PATCH = "order-fewer-tasks"  # v10: the "received" and "delivered" emails ride with steps
PREPARES_PACKAGE_PATCH = "order-prepares-package"  # v11: the order prepares the package, no handshake
SHIPPED_WITH_DISPATCH_PATCH = "order-shipped-email-with-dispatch"  # v12: the dispatch sends the "shipped" email


@workflow.defn(sandboxed=False)
class OrderWorkflow(OrderMessages):
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
        self._lean = False  # v9 bookkeeping, decided when the run starts (LEAN_BOOKKEEPING_PATCH)
        self._fewer_tasks = False  # v10 (FEWER_TASKS_PATCH), decided when the run starts
        self._prepares = False  # v11 (PREPARES_PACKAGE_PATCH), decided when the run starts
        self._ships_email = False  # v12 (SHIPPED_WITH_DISPATCH_PATCH), decided when the run starts
        self._shipped_email: OrderEmailRequest | None = None  # v12: carried by the shipment's dispatch
        self._received_email: OrderEmailRequest | None = None  # v10: carried by the validation step
        self._undos = UndoStack()
        self._shipment = ShipmentLink()
        self._timeline = Timeline(self._status, self._actions)
        self._emails = CustomerEmails(order, self._status, self._timeline)
        self._steps = OrderSteps(
            order, self._failures, lambda: self._cancel_request is not None, self._cancelled_through_temporal, self._timeline
        )

    @workflow.run
    async def run(self, order: OrderRequest) -> OrderStatus:
        # A new run records one marker; older runs replay through the later checks, v8 runs through none.
        self._ships_email = workflow.patched(SHIPPED_WITH_DISPATCH_PATCH)
        self._prepares = self._ships_email or workflow.patched(PREPARES_PACKAGE_PATCH)
        self._fewer_tasks = self._prepares or workflow.patched(FEWER_TASKS_PATCH)
        self._lean = self._timeline.lean = self._fewer_tasks or workflow.patched(LEAN_BOOKKEEPING_PATCH)
        try:
            await self._receive()
            validated = await self._validate()
            await self._reserve_inventory(validated)
            await self._review(validated)
            await self._charge(validated)
            await (self._prepare_and_release() if self._prepares else self._prepare_shipment())
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
        await self._timeline.record_soon()
        await self._steps.notify("received", self._text("notify_received", order_id=self._order.order_id, lines=lines))
        address = self._order.address
        values: dict[str, Any] = {"lines": lines, "ship_to": f"{address.name}, {address.city}, {address.country}"}
        if self._fewer_tasks:
            self._received_email = self._emails.prepare("received", **values)
        else:
            self._emails.start("received", **values)

    async def _validate(self) -> ValidatedOrder:
        email, self._received_email = self._received_email, None
        sent: OrderEmailState | None = None
        try:
            self._begin("validate")
            request = ValidateOrderRequest(self._steps.request(), self._order.lines, self._status.address, email)
            try:
                validated = await self._steps.run(
                    OrderActivities.validate_order, request, summary="Validate: products, quantities, address, order total"
                )
            except ActivityError as err:
                raise refusal_as_stop(err, INVALID_ORDER, "rejected")
            sent = validated.email
        finally:
            if email is not None:  # whatever became of the step, the email goes (its own activity if need be)
                self._emails.carried(email, sent)
        self._status.lines, self._status.total = validated.lines, validated.total
        self._status.attempts["validate"] = validated.attempt
        self._timeline.reach("validated", f"Validated: total {validated.total:,.2f}")
        await self._timeline.record_soon()
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
            await self._timeline.record_soon()  # otherwise the auto-approval records it, next in this workflow task

    async def _review(self, validated: ValidatedOrder) -> None:
        self._check_cancelled()
        policy = self._order.policy
        if validated.total <= policy.auto_approve_limit:
            self._approve("auto")
            self._timeline.event("step", f"Approved automatically (total within {policy.auto_approve_limit:,.2f})")
            await self._timeline.record_soon()
            return
        sla, minutes = timedelta(seconds=policy.review_sla_seconds), max(1, round(policy.review_sla_seconds / 60))
        self._status.step, self._status.status, self._status.needs_review = "review", "awaiting_review", True
        self._status.review_deadline = (workflow.now() + sla).isoformat()
        self._timeline.event("step", f"Awaiting operator review (total above {policy.auto_approve_limit:,.2f})")
        await self._timeline.record()
        self._emails.start("awaiting_review", total=f"${validated.total:,.2f}", minutes=minutes)
        try:
            await workflow.wait_condition(
                lambda: self._status.approved or self._cancel_request is not None, timeout=sla, timeout_summary="Review SLA"
            )
        except asyncio.TimeoutError:
            pass
        self._check_cancelled()
        # An approval accepted in the same workflow task as the deadline counts: the operator was told "approved".
        if not self._status.approved:
            raise OrderStopped("cancelled", self._text("review_timeout", minutes=minutes), email_kind="review_expired")
        self._status.status = "processing"
        await self._timeline.record_soon()

    async def _charge(self, validated: ValidatedOrder) -> None:
        self._begin("charge_payment")
        request = ChargeRequest(self._steps.request(), validated.total, self._order.card)
        self._undos.push("refund payment", lambda: self._refund(request))
        try:
            result = await self._steps.run(
                OrderActivities.charge_payment,
                request,
                summary=f"Charge payment {validated.total:,.2f}",
                heartbeat_timeout=CHARGE_HEARTBEAT_TIMEOUT,
            )
        except ActivityError as err:
            raise refusal_as_stop(err, PAYMENT_DECLINED, "failed")
        self._status.payment = result.payment
        self._status.attempts["charge_payment"] = result.attempt
        self._timeline.reach("charged", f"Payment charged: {validated.total:,.2f} (key {result.payment.payment_key})")
        await self._timeline.record_soon()

    async def _prepare_shipment(self) -> None:
        """Start the shipment and wait until the package is at the carrier's pickup;
        then release it to the carrier. The point of no return is the release."""
        self._begin("ship")
        self._status.status = "shipping"
        self._undos.push("stop shipment", self._stop_shipment)
        await self._start_shipment()
        self._timeline.event("step", "Shipping started")
        await self._timeline.record()
        shipment = self._shipment
        while True:
            await workflow.wait_condition(
                lambda: shipment.ready or shipment.done or shipment.news or self._cancel_request is not None
            )
            self._check_cancelled()
            if shipment.news and shipment.ready and self._fewer_tasks:
                shipment.news = False  # v10: at the pickup at once; the carrier's first news records both
            elif shipment.news:
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

    async def _prepare_and_release(self) -> None:
        """v11: the package is prepared by a step of the order's; the order waits for the carrier's
        pickup itself, then releases the parcel: it starts the shipment with its word to dispatch."""
        self._begin("ship")
        self._status.status = "shipping"
        self._undos.push("stop shipment", self._stop_shipment)
        self._timeline.event("step", "Shipping started")
        request = ShipmentStepRequest(self._steps.request(), self._status.address, self._status.expedited)
        try:
            prepared = await self._steps.run(
                ShippingActivities.prepare_package, request, "Prepare package", task_queue=self._order.shipping_task_queue
            )
        except ActivityError as err:
            self._shipment.preparation_failed = self._cancel_request is None  # not stopped: it ended by itself
            raise refusal_as_stop(err, SHIPPING_FAILED, "failed")
        self._status.shipment = dataclasses.replace(
            self._status.shipment, stage="prepared", updated_at=workflow.now().isoformat()
        )
        self._status.attempts["prepared"] = prepared.attempt
        self._timeline.event("step", "Shipment prepared")
        pickup_wait = self._order.shipping.prepare_seconds
        if pickup_wait > 0:  # the order shows "prepared" while the parcel waits; it can still change or stop
            await self._timeline.record()
            with contextlib.suppress(asyncio.TimeoutError):
                await workflow.wait_condition(
                    lambda: self._cancel_request is not None,
                    timeout=timedelta(seconds=pickup_wait),
                    timeout_summary="Awaiting carrier pickup",
                )
        # The point of no return, decided in the same step as the last cancel check.
        self._check_cancelled()
        self._shipment.released = True
        self._status.shipment = dataclasses.replace(self._status.shipment, stage="dispatching")
        self._timeline.event("step", "Released to the carrier")
        self._shipped_email = self._emails.for_dispatch() if self._ships_email else None
        permit = DispatchPermit(self._status.address, self._status.expedited, self._shipped_email)
        await self._start_shipment(permit)
        if self._status.expedited and not permit.expedited:  # expedited while the shipment started
            await self._shipment.tell(ShippingWorkflow.expedite, ORDER)

    async def _start_shipment(self, permit: DispatchPermit | None = None) -> None:
        request = ShippingRequest(
            order_id=self._order.order_id,
            parent_workflow_id=workflow.info().workflow_id,
            address=self._status.address,
            expedited=self._status.expedited,
            timing=self._order.shipping,
            failures=list(self._failures),
            policy=self._order.policy,
            order_releases_dispatch=True,
            report_delivered=not self._lean,
            ready_carries_progress=self._fewer_tasks,
            messages_need_sender=True,  # the input only, no command: every order's new shipments
            ready_carries_sender=self._order.messages_need_sender,
            permit=permit,
        )
        shipment_id, queue = shipping_workflow_id(self._order.order_id), self._order.shipping_task_queue
        with self._timeline.moving():
            await self._shipment.start(request, shipment_id, queue, self._cancelled_through_temporal)

    async def _deliver_and_complete(self, validated: ValidatedOrder) -> None:
        """After the release: the carrier delivers, then points and the customer's notice."""
        if not self._prepares:  # v11 shipments start with the permit
            await self._shipment.tell(ShippingWorkflow.dispatch, DispatchPermit(self._status.address, self._status.expedited))
        await self._timeline.record_soon()  # v9: the carrier's first news records it
        outcome = await self._shipment.follow(self._timeline.record)
        if not isinstance(outcome, Shipment) or outcome.stage != "delivered":
            await self._stop(self._shipment_ended(outcome))  # only if someone ended the shipment itself
            return
        if self._lean:  # the shipment's result tells the delivery (v8: its progress signal did)
            self._status.shipment = Shipment(
                "delivered", outcome.carrier, outcome.tracking_number, self._status.expedited, outcome.updated_at
            )
            if outcome.delivered_attempt is not None:
                self._status.attempts["delivered"] = outcome.delivered_attempt
            self._timeline.reach("delivered", "Delivered")
        self._status.step = "complete"
        points = int(validated.total * self._order.policy.reward_points_per_dollar)
        if self._fewer_tasks:
            await self._complete(points)
            return
        # An activity, not a local one: it may wait for the rewards record's lock, and a local one
        # holds the order's workflow task (an operator's message would wait).
        with self._timeline.moving():
            await workflow.execute_activity_method(
                OrderActivities.award_rewards,
                AwardRequest(self._order.customer_id, self._order.order_id, points),
                start_to_close_timeout=ORDER_STEP_TIMEOUT,
                retry_policy=MUST_FINISH_RETRY,
                summary=f"Award {points} reward points",
            )
        self._status.points_awarded = points
        await self._steps.notify("completed", self._text("notify_completed", order_id=self._order.order_id, points=points))
        self._status.status = "completed"
        self._timeline.event("status", f"Order completed; {points} reward points awarded")
        await self._timeline.record()
        self._emails.start("delivered", points=points)

    async def _complete(self, points: int) -> None:
        """v10: the award of points writes the completed order's record and sends the "delivered"
        email once the points are awarded; the order records again only for news that came meanwhile."""
        await self._steps.notify("completed", self._text("notify_completed", order_id=self._order.order_id, points=points))
        self._timeline.event("status", f"Order completed; {points} reward points awarded")
        email = self._emails.prepare("delivered", points=points)
        # The record says completed; the order itself is, once the points are awarded.
        record = self._timeline.carry(status="completed", points_awarded=points)
        award = AwardRequest(self._order.customer_id, self._order.order_id, points, record, email)
        with self._timeline.moving():
            sent = await workflow.execute_activity_method(
                OrderActivities.award_rewards,
                award,
                start_to_close_timeout=ORDER_STEP_TIMEOUT,
                retry_policy=MUST_FINISH_RETRY,
                summary=f"Award {points} reward points, then record and email the completion",
            )
        self._status.status, self._status.points_awarded = "completed", points
        if email is not None:
            self._emails.carried(email, sent)
        if self._timeline.pending:  # an email's news meanwhile, or the carried email refused
            await self._timeline.record()

    async def _stop(self, stop: OrderStopped) -> None:
        """Record the decided outcome, undo what was started (newest first), then the final status."""
        self._ending_as = stop.status
        self._status.cancelled = stop.status == "cancelled"
        self._status.cancel_reason = stop.reason if self._status.cancelled else None
        self._status.reason = stop.reason
        self._timeline.event("status", f"Order {stop.status}: {stop.reason}")
        # An activity, not a local one: this workflow task may carry the cancel of the step in flight, and a
        # local one would hold it open while it writes (an attempt finishing meanwhile: the task refused).
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
        if self._prepares and not self._shipment.released:  # v11: no shipment yet; the package stays
            if self._shipment.preparation_failed:
                return False
            self._status.shipment = dataclasses.replace(
                self._status.shipment, stage="cancelled", updated_at=workflow.now().isoformat()
            )
            return True
        outcome = await self._shipment.stop()
        if isinstance(outcome, Shipment):
            self._status.shipment = dataclasses.replace(self._status.shipment, stage=outcome.stage, updated_at=outcome.updated_at)
        return outcome is not None

    def _shipment_ended(self, outcome: Shipment | BaseException) -> OrderStopped:
        if isinstance(outcome, Shipment):
            return OrderStopped("cancelled", self._text("shipment_stopped"))
        if isinstance(outcome, ChildWorkflowError):
            return OrderStopped("failed", root_message(outcome))
        return OrderStopped("failed", str(outcome))

    # --- small helpers -----------------------------------------------------------

    async def _must_finish(self, awaitable: Any) -> Any:
        return await uninterrupted(awaitable, self._cancelled_through_temporal)

    def _begin(self, step: str) -> None:
        self._check_cancelled()
        self._status.step = step
