"""TODO docstring (from workflows.py)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
)
from temporalio.workflow import ActivityCancellationType, ChildWorkflowCancellationType

from core.email_policy import EMAIL_GIVE_UP, EMAIL_REFUSED, EMAIL_RETRY, EMAIL_TIMEOUT
from core.workflow_helpers import business_error, root_message, uninterrupted
from orders.policies import (
    BOOKKEEPING_TIMEOUT,
    MUST_FINISH_RETRY,
    ORDER_STEP_RETRY,
    ORDER_STEP_TIMEOUT,
)
from orders.shipping import PROGRESS_SIGNAL, READY_SIGNAL, ShippingWorkflow

with workflow.unsafe.imports_passed_through():
    from orders.activities import OrderActivities
    from orders.emails import OrderEmailActivities
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
        NotificationRequest,
        OrderEmailRequest,
        OrderEmailState,
        OrderEvent,
        OrderRequest,
        OrderStatus,
        Payment,
        ProgressRecord,
        Shipment,
        ShipmentProgress,
        ShippingRequest,
        StepRequest,
        ValidatedOrder,
        ValidateOrderRequest,
        shipping_workflow_id,
    )


CONFIRM_RECEIPT_PATCH = "confirm-receipt-to-customer"
# Version 3: the order, not the shipment, decides the dispatch (see OrderWorkflow).
ORDER_RELEASES_DISPATCH_PATCH = "order-releases-dispatch"
# Orders since the status pages read the stored projection: after the release,
# each stage the carrier reports (dispatched, with its tracking number) is
# recorded as it comes, not only at the end.
RECORD_IN_TRANSIT_PATCH = "record-stages-in-transit"
# Version 4: the customer is emailed at each milestone (when the order has an address).
# Orders started before (histories/order_workflow_v3_*.json) replay without the emails.
ORDER_EMAILS_PATCH = "order-customer-emails"
# Version 5: the customer's notices (`notify_customer`, a record written in milliseconds) run as
# local activities, in the workflow tasks that happen anyway, and the record after the reservation
# is left to the auto-approval's record in the same task: an auto-approved order takes 2 workflow
# tasks and a record fewer. Orders started before (histories/order_workflow_v4_*.json) replay as they ran.
LOCAL_BOOKKEEPING_PATCH = "order-bookkeeping-local"
# Version 7: an order that stops records its decided outcome (no actions left, the
# "Order cancelled" event) before its undo steps run. Before, pages reading the
# record kept offering a cancel the order had already taken until the refund or
# the release was done. Orders started before
# (histories/order_workflow_v6_*.json) replay as they ran.
RECORD_STOP_DECIDED_PATCH = "record-stop-decided"
# Shipment stages from which an order can no longer be changed or cancelled.
HANDED_TO_CARRIER = ("dispatching", "dispatched", "delivered")


class OrderStopped(Exception):
    """Ends the order early: rejected, cancelled or failed, with the reason shown to people."""

    def __init__(self, status: str, reason: str, email_kind: str | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.email_kind = email_kind or status  # which email tells the customer (ORDER_EMAIL_KINDS)


@workflow.defn(sandboxed=False)
class OrderWorkflow:
    """One order, from receipt to delivery, or to its undoing.

    The rule for every exit: until the order releases the parcel to the
    carrier, whatever stops it (a business refusal, a step out of retries, an
    operator's cancel, a cancellation requested through Temporal) ends it in a
    named status (rejected, failed, cancelled) after undoing, newest first,
    everything it started. Each undo is registered before its step starts and is
    harmless if the step never happened. From the release on, nothing stops the
    order: it runs to delivery. An accepted cancel always wins, because the
    release is decided here, in the same single thread that accepts cancels:
    the shipment waits at the carrier's pickup for the order's word.
    """

    @workflow.init
    def __init__(self, order: OrderRequest) -> None:
        self._order = order
        self._status = OrderStatus.accepted(order)
        self._failures: list[FailureInjection] = list(order.failures)
        self._new_events: list[OrderEvent] = []
        self._event_count = 0
        self._cancel_request: CancelRequest | None = None
        # Undo steps of what has been started, run in reverse when the order stops.
        self._undos: list[tuple[str, Callable[[], Awaitable[bool]]]] = []
        self._shipping: workflow.ChildWorkflowHandle | None = None
        self._shipment_ready = False  # the shipment waits at pickup for the order's word
        self._shipment_news = False
        self._released_to_carrier = False
        self._shipment_followed_to_the_end = False  # version 2 orders: the shipment dispatched on its own
        self._ending = False
        self._ending_as: str | None = None  # the final status the undo steps lead to
        self._late_cancel_noted = False
        self._record_lock = asyncio.Lock()
        self._records_in_transit = False  # set by run (RECORD_IN_TRANSIT_PATCH)
        self._local_bookkeeping = False  # set by run (LOCAL_BOOKKEEPING_PATCH)
        self._records_stop_decided = False  # set by run (RECORD_STOP_DECIDED_PATCH)
        self._email_to: str | None = None  # set in run when the order emails its customer
        self._emailing: list[asyncio.Task] = []

    @workflow.run
    async def run(self, order: OrderRequest) -> OrderStatus:
        # Asked first, before any command: asked after a local activity, the
        # marker's place in history can differ on replay (a nondeterminism error).
        confirm_receipt = workflow.patched(CONFIRM_RECEIPT_PATCH)
        order_releases_dispatch = workflow.patched(ORDER_RELEASES_DISPATCH_PATCH)
        self._records_in_transit = workflow.patched(RECORD_IN_TRANSIT_PATCH)
        emails_versioned = workflow.patched(ORDER_EMAILS_PATCH)
        self._local_bookkeeping = workflow.patched(LOCAL_BOOKKEEPING_PATCH)
        self._records_stop_decided = workflow.patched(RECORD_STOP_DECIDED_PATCH)
        self._email_to = order.customer_email if emails_versioned else None
        try:
            await self._receive(confirm_receipt, emails_versioned)
            validated = await self._validate()
            await self._reserve_inventory(validated)
            await self._review(validated)
            await self._charge(validated)
            await self._prepare_shipment(order_releases_dispatch)
        except (Exception, asyncio.CancelledError) as err:
            await uninterrupted(self._stop(self._why_stopped(err)), self._cancelled_through_temporal)
        else:
            await uninterrupted(self._deliver_and_complete(validated), self._cancelled_through_temporal)
        await uninterrupted(workflow.wait_condition(workflow.all_handlers_finished), self._cancelled_through_temporal)
        await uninterrupted(self._emails_finished(), self._cancelled_through_temporal)
        return self._status

    # --- steps, in order -----------------------------------------------------

    async def _receive(self, confirm_receipt: bool, emails_versioned: bool = False) -> None:
        self._reach("received", f"Order received: {len(self._order.lines)} line(s) for customer {self._order.customer_id}")
        if emails_versioned and self._email_to is None:
            self._event("step", "No customer email on this order: the customer is not emailed")
        await self._record()
        # Version 2 confirms the order to the customer. Orders started before this
        # change (histories/order_workflow_v1.json) replay without the step.
        if confirm_receipt:
            await self._notify("received", self._text("notify_received", order_id=self._order.order_id, lines=len(self._order.lines)))
        address = self._order.address
        self._email("received", lines=len(self._order.lines), ship_to=f"{address.name}, {address.city}, {address.country}")

    async def _validate(self) -> ValidatedOrder:
        self._begin("validate")
        try:
            validated = await self._business_step(
                OrderActivities.validate_order,
                ValidateOrderRequest(self._step_request(), self._order.lines, self._status.address),
                summary="Validate: products, quantities, address, order total",
            )
        except ActivityError as err:
            raise refusal_as_stop(err, INVALID_ORDER, "rejected")
        self._status.lines = validated.lines
        self._status.total = validated.total
        self._status.attempts["validate"] = validated.attempt
        self._reach("validated", f"Validated: total {validated.total:,.2f}")
        await self._record()
        return validated

    async def _reserve_inventory(self, validated: ValidatedOrder) -> None:
        self._begin("reserve_inventory")
        request = InventoryRequest(self._step_request(), self._order.lines)
        self._undo_on_stop("release inventory", lambda: self._release(request))
        try:
            result = await self._business_step(OrderActivities.reserve_inventory, request, summary="Reserve inventory")
        except ActivityError as err:
            raise refusal_as_stop(err, OUT_OF_STOCK, "rejected")
        self._status.attempts["reserve_inventory"] = result.attempt
        self._event("step", "Inventory reserved")
        if self._local_bookkeeping and validated.total <= self._order.policy.auto_approve_limit:
            return  # the auto-approval records it, next in this workflow task
        await self._record()

    async def _review(self, validated: ValidatedOrder) -> None:
        self._check_cancelled()
        policy = self._order.policy
        if validated.total <= policy.auto_approve_limit:
            self._approve("auto")
            self._event("step", f"Approved automatically (total within {policy.auto_approve_limit:,.2f})")
            await self._record()
            return
        sla = timedelta(seconds=policy.review_sla_seconds)
        self._status.step = "review"
        self._status.status = "awaiting_review"
        self._status.needs_review = True
        self._status.review_deadline = (workflow.now() + sla).isoformat()
        self._event("step", f"Awaiting operator review (total above {policy.auto_approve_limit:,.2f})")
        await self._record()
        self._email("awaiting_review", total=f"${validated.total:,.2f}", minutes=max(1, round(policy.review_sla_seconds / 60)))
        try:
            await workflow.wait_condition(
                lambda: self._status.approved or self._cancel_request is not None,
                timeout=sla,
                timeout_summary="Review SLA",
            )
        except asyncio.TimeoutError:
            pass
        self._check_cancelled()
        # An approval accepted in the same workflow task as the deadline counts:
        # the operator was told "approved".
        if not self._status.approved:
            minutes = max(1, round(policy.review_sla_seconds / 60))
            raise OrderStopped("cancelled", self._text("review_timeout", minutes=minutes), email_kind="review_expired")
        self._status.status = "processing"
        await self._record()

    async def _charge(self, validated: ValidatedOrder) -> None:
        self._begin("charge_payment")
        request = ChargeRequest(self._step_request(), validated.total)
        self._undo_on_stop("refund payment", lambda: self._refund(request))
        try:
            result = await self._business_step(
                OrderActivities.charge_payment, request, summary=f"Charge payment {validated.total:,.2f}"
            )
        except ActivityError as err:
            raise refusal_as_stop(err, PAYMENT_DECLINED, "failed")
        self._status.payment = result.payment
        self._status.attempts["charge_payment"] = result.attempt
        self._reach("charged", f"Payment charged: {validated.total:,.2f} (key {result.payment.payment_key})")
        await self._record()

    async def _prepare_shipment(self, order_releases_dispatch: bool) -> None:
        """Start the shipment and wait until the package is at the carrier's pickup;
        then release it to the carrier. The point of no return is the release."""
        self._begin("ship")
        self._status.status = "shipping"
        request = ShippingRequest(
            order_id=self._order.order_id,
            parent_workflow_id=workflow.info().workflow_id,
            address=self._status.address,
            expedited=self._status.expedited,
            timing=self._order.shipping,
            failures=list(self._failures),
            policy=self._order.policy,
            order_releases_dispatch=order_releases_dispatch,
        )
        self._undo_on_stop("stop shipment", self._stop_shipment)
        # The start runs to its end even if the order is cancelled meanwhile, so a
        # started shipment always has a handle to be stopped by.
        self._shipping = await uninterrupted(
            workflow.start_child_workflow(
                ShippingWorkflow.run,
                request,
                id=shipping_workflow_id(self._order.order_id),
                task_queue=self._order.shipping_task_queue,
                static_summary=f"Shipping for order {self._order.order_id}",
                # The order stops its shipment by message, never by Temporal cancellation.
                cancellation_type=ChildWorkflowCancellationType.ABANDON,
            ),
            self._cancelled_through_temporal,
        )
        if not order_releases_dispatch:
            await self._ship_as_version_2(request)
            return
        self._event("step", "Shipping started")
        await self._record()
        shipment = self._shipping
        while True:
            await workflow.wait_condition(
                lambda: self._shipment_ready or shipment.done() or self._shipment_news or self._cancel_request is not None
            )
            self._check_cancelled()
            if self._shipment_news:
                self._shipment_news = False
                await self._record()
            elif shipment.done():
                raise self._shipment_ended(await uninterrupted(self._shipment_outcome(), self._cancelled_through_temporal))
            elif self._shipment_ready:
                break
        # The point of no return, decided in the same step as the last cancel check.
        self._released_to_carrier = True
        self._status.shipment = dataclasses.replace(self._status.shipment, stage="dispatching")
        self._event("step", "Released to the carrier")

    async def _deliver_and_complete(self, validated: ValidatedOrder) -> None:
        """After the release: the carrier delivers, then points and the customer's notice."""
        if not self._shipment_followed_to_the_end:
            permit = DispatchPermit(self._status.address, self._status.expedited)
            await self._tell_shipment(ShippingWorkflow.dispatch, permit)
            await self._record()
            outcome = await (self._follow_shipment() if self._records_in_transit else self._shipment_outcome())
            if not isinstance(outcome, Shipment) or outcome.stage != "delivered":
                # Only if someone terminated or cancelled the shipment itself.
                await self._stop(self._shipment_ended(outcome))
                return
        await self._complete(validated)

    async def _complete(self, validated: ValidatedOrder) -> None:
        self._status.step = "complete"
        points = int(validated.total * self._order.policy.reward_points_per_dollar)
        # An activity, not a local one: it calls the Temporal server, which can be slow, and a local
        # activity holds the order's workflow task (an operator's message would wait for it).
        await workflow.execute_activity_method(
            OrderActivities.award_rewards,
            AwardRequest(self._order.customer_id, self._order.order_id, points),
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary=f"Award {points} reward points",
        )
        self._status.points_awarded = points
        await self._notify("completed", self._text("notify_completed", order_id=self._order.order_id, points=points))
        self._status.status = "completed"
        self._event("status", f"Order completed; {points} reward points awarded")
        await self._record()
        self._email("delivered", points=points)

    async def _stop(self, stop: OrderStopped) -> None:
        """Undo what was started, newest first, then record why the order ended."""
        self._ending, self._ending_as = True, stop.status
        self._status.cancelled = stop.status == "cancelled"
        self._status.cancel_reason = stop.reason if self._status.cancelled else None
        self._status.reason = stop.reason
        self._event("status", f"Order {stop.status}: {stop.reason}")
        if self._records_stop_decided:
            # An activity, not a local one: the stop's workflow task may carry the
            # cancel of the step in flight, and a local activity would hold that task
            # open while it writes; an attempt finishing meanwhile then has the test
            # server refuse the task (ACTIVITY_UNKNOWN), and operators' messages wait.
            await self._record(local=False)
        for name, undo in reversed(self._undos):
            if not await undo():
                continue  # the step never happened (or ended by itself): nothing to undo
            self._status.compensations.append(name)
            self._event("compensation", f"Compensation: {name}")
            await self._record()
        self._undos.clear()
        self._status.status = stop.status
        await self._record()
        payment = self._status.payment
        if payment is None or payment.status == "voided":
            money = self._order.texts.get("email_not_charged", "")
        elif payment.status == "refunded":
            money = self._order.texts.get("email_refunded", "").format(amount=f"${payment.amount:,.2f}")
        else:
            money = ""  # charged and not refunded: not a stop this workflow makes, and nothing true to add
        minutes = max(1, round(self._order.policy.review_sla_seconds / 60))
        self._email(stop.email_kind, reason=stop.reason, minutes=minutes, after=money)

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
            return OrderStopped("failed", self._text("step_failed", step=self._status.step.replace("_", " "), error=root_message(err)))
        raise err

    # --- shipment ------------------------------------------------------------

    async def _ship_as_version_2(self, request: ShippingRequest) -> None:
        """Orders started before the order decided the dispatch (and their replays):
        the shipment dispatches on its own; the order follows it to the end."""
        if self._status.expedited and not request.expedited:
            await self._tell_shipment(ShippingWorkflow.expedite)
        if self._status.address != request.address:
            await self._tell_shipment(ShippingWorkflow.update_address, self._status.address)
        self._event("step", "Shipping started")
        await self._record()
        shipment = self._shipping
        while not shipment.done():
            await workflow.wait_condition(lambda: shipment.done() or self._shipment_news or self._cancel_request is not None)
            if self._shipment_news:
                self._shipment_news = False
                await self._record()
            if self._cancel_request is not None and not shipment.done():
                self._check_cancelled()
        outcome = await self._shipment_outcome()
        if not isinstance(outcome, Shipment):
            raise self._shipment_ended(outcome)
        self._released_to_carrier = self._shipment_followed_to_the_end = True
        if self._shipment_news:
            self._shipment_news = False
            await self._record()

    async def _follow_shipment(self) -> Shipment | BaseException:
        """After the release: record each stage the carrier reports until the shipment ends
        (the pages read the record, so the tracking number shows during transit)."""
        shipment = self._shipping
        while True:
            await workflow.wait_condition(lambda: shipment.done() or self._shipment_news)
            if shipment.done():
                return await self._shipment_outcome()  # the completion step records the last stage
            self._shipment_news = False
            await self._record()

    async def _shipment_outcome(self) -> Shipment | BaseException:
        """The shipment's result, or what ended it."""
        try:
            return await self._shipping
        except (Exception, asyncio.CancelledError) as err:
            if isinstance(err, asyncio.CancelledError) and workflow.cancellation_reason() is None:
                raise
            return err

    def _shipment_ended(self, outcome: Shipment | BaseException) -> OrderStopped:
        if isinstance(outcome, Shipment):
            return OrderStopped("cancelled", self._text("shipment_stopped"))
        if isinstance(outcome, ChildWorkflowError):
            return OrderStopped("failed", root_message(outcome))
        return OrderStopped("failed", str(outcome))

    async def _stop_shipment(self) -> bool:
        """Undo of starting the shipment: tell it to stop and wait until it has."""
        if self._shipping is None or self._released_to_carrier or self._shipping.done():
            return False
        await self._tell_shipment(ShippingWorkflow.stop)
        outcome = await self._shipment_outcome()
        if isinstance(outcome, Shipment):
            self._status.shipment = dataclasses.replace(self._status.shipment, stage=outcome.stage, updated_at=outcome.updated_at)
        return True

    async def _tell_shipment(self, signal, *args) -> None:
        """Signal the shipment if it still runs; a shipment that has just ended is
        no reason to fail the order (it checks, then signals: it may end between)."""
        if self._shipping is None or self._shipping.done():
            return
        try:
            await self._shipping.signal(signal, *args)
        except Exception as err:  # noqa: BLE001 - a closed shipment rejects signals; the order carries on
            workflow.logger.info("Shipment did not take %s: %s", getattr(signal, "__name__", signal), err)

    # --- operator messages ---------------------------------------------------

    @workflow.update
    async def approve(self, request: ApproveRequest) -> OrderStatus:
        if self._status.approved:
            # Two approves accepted in one workflow task pass both validators (they run
            # before any handler): the second is refused here, so one approve counts.
            raise self._refused(self._text("already_approved", operator=self._status.approved_by))
        self._approve(request.operator)
        self._event("operator", f"Approved by {request.operator}")
        await self._record()
        return self._status

    @approve.validator
    def _check_approve(self, request: ApproveRequest) -> None:
        # An operator approved it (in review, or since: processing, shipping): say so and by whom.
        # Auto-approved orders were never in review; ended ones say how they ended.
        reviewed_and_approved = self._status.approved and self._status.needs_review
        if reviewed_and_approved and self._status.status not in FINAL_ORDER_STATUSES:
            raise self._refused(self._text("already_approved", operator=self._status.approved_by))
        if self._status.status == "awaiting_review":
            self._refuse_unless_possible("approve")
        else:
            raise self._refused(self._text("not_awaiting_review", status=self._status.status.replace("_", " ")))

    @workflow.update
    async def cancel(self, request: CancelRequest) -> OrderStatus:
        """Cancels and waits for the undo steps, so the answer shows them. Once
        accepted, the cancel wins: the order ends cancelled."""
        if self._cancel_request is None:
            self._cancel_request = request
            self._event("operator", f"Cancel requested by {request.operator}: {request.reason}")
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
        self._event("operator", f"Shipping address changed by {change.operator} to {change.address.city}, {change.address.country}")
        await self._record()
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
        self._event("operator", "Expedited shipping requested")
        if self._released_to_carrier:
            await self._tell_shipment(ShippingWorkflow.expedite)
        await self._record()

    @workflow.signal
    async def inject_failure(self, failure: FailureInjection) -> None:
        """Simulate trouble in a later step (for demos and tests)."""
        if "simulate-failure" not in self._actions():
            return
        if len(self._failures) >= MAX_FAILURES_PER_ORDER and workflow.patched("bounded-injected-failures"):
            # Signals are not validated; a bound keeps a scripted client from growing the state for ever.
            self._event("operator", self._text("failures_full", maximum=MAX_FAILURES_PER_ORDER))
            await self._record()
            return
        self._failures.append(failure)
        kind = "permanent" if failure.permanent else f"{failure.times} attempt(s)"
        self._event("operator", f"Failure injected: {failure.step}, {kind}")
        await self._tell_shipment(ShippingWorkflow.inject_failure, failure)
        await self._record()

    @workflow.signal(name=PROGRESS_SIGNAL)
    def shipment_progress(self, progress: ShipmentProgress) -> None:
        self._status.shipment = Shipment(
            stage=progress.stage,
            carrier=progress.carrier or self._status.shipment.carrier,
            tracking_number=progress.tracking_number or self._status.shipment.tracking_number,
            expedited=self._status.expedited,
            updated_at=progress.at,
        )
        self._status.attempts[progress.stage] = progress.attempt
        if progress.stage == "dispatched":
            self._reach("shipped", f"Dispatched with {progress.carrier}, tracking {progress.tracking_number}")
            self._email("shipped", carrier=progress.carrier, tracking_number=progress.tracking_number)
        elif progress.stage == "delivered":
            self._reach("delivered", "Delivered")
        else:
            self._event("step", f"Shipment {progress.stage}")
        self._shipment_news = True

    @workflow.signal(name=READY_SIGNAL)
    def shipment_ready(self) -> None:
        """The package is at the carrier's pickup: the shipment waits for dispatch or stop."""
        self._shipment_ready = True

    @workflow.query
    def status(self) -> OrderStatus:
        return dataclasses.replace(self._status, actions=self._actions())

    # --- what the order can still do ------------------------------------------

    def _actions(self) -> list[str]:
        """The operator actions that can still take effect (see ORDER_ACTIONS)."""
        status = self._status
        if self._ending or status.status in FINAL_ORDER_STATUSES or self._cancel_request is not None:
            return []
        actions = []
        if status.status == "awaiting_review":
            actions.append("approve")
        if not self._released_to_carrier and status.shipment.stage not in HANDED_TO_CARRIER:
            actions += ["cancel", "address"]
        if not status.expedited and status.shipment.stage != "delivered":
            actions.append("expedite")
        if not self._released_to_carrier:
            actions.append("simulate-failure")
        return actions

    def _refuse_unless_possible(self, action: str) -> None:
        if action in self._actions():
            return
        if self._status.status in FINAL_ORDER_STATUSES:
            raise self._refused(self._text("already_final", status=self._status.status))
        if self._ending and self._ending_as != "cancelled":
            # Undoing: the outcome is decided, though the status still shows the step.
            raise self._refused(self._text("already_final", status=self._ending_as))
        if self._ending or self._cancel_request is not None:
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
        if self._ending:
            return  # already undoing: the outcome is the same
        if self._released_to_carrier:
            if not self._late_cancel_noted:
                self._late_cancel_noted = True
                self._event("operator", self._text("cancel_too_late"))
            return
        if self._cancel_request is None:
            reason = workflow.cancellation_reason() or ""
            self._cancel_request = CancelRequest(self._text("cancelled_through_temporal", reason=reason).strip(), "Temporal")
            self._event("operator", f"Cancel requested through Temporal: {self._cancel_request.reason}")

    # --- bookkeeping -------------------------------------------------------------

    def _begin(self, step: str) -> None:
        self._check_cancelled()
        self._status.step = step

    def _undo_on_stop(self, name: str, undo: Callable[[], Awaitable[bool]]) -> None:
        """Registered before the step starts: the undo is safe when the step never happened."""
        self._undos.append((name, undo))

    def _step_request(self) -> StepRequest:
        return StepRequest(self._order.order_id, workflow.info().workflow_id, list(self._failures), self._order.policy)

    async def _business_step(self, activity, request, summary: str):
        """Run one step; a cancel stops it at once (even between retries), so an
        accepted cancel is answered within seconds.

        TRY_CANCEL rather than waiting for the attempt in flight: the undo is
        safe either way (see ORDER_STEP_RETRY), and waiting hung the
        time-skipping test server when the attempt completed during the cancel."""
        step = workflow.start_activity_method(
            activity,
            request,
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=ORDER_STEP_RETRY,
            summary=summary,
            cancellation_type=ActivityCancellationType.TRY_CANCEL,
        )
        try:
            await workflow.wait_condition(lambda: step.done() or self._cancel_request is not None)
        except asyncio.CancelledError:
            self._cancelled_through_temporal()
        if not step.done():
            step.cancel()
        return await uninterrupted(step, self._cancelled_through_temporal)

    async def _release(self, request: InventoryRequest) -> bool:
        released = await workflow.execute_activity_method(
            OrderActivities.release_inventory, request, start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY, summary="Compensate: release inventory",
        )
        return released.changed

    async def _refund(self, request: ChargeRequest) -> bool:
        payment: Payment | None = await workflow.execute_activity_method(
            OrderActivities.refund_payment, request, start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY, summary="Compensate: refund payment",
        )
        if payment is not None:
            self._status.payment = payment
        return payment is not None

    async def _notify(self, kind: str, message: str) -> None:
        request = NotificationRequest(self._order.order_id, self._order.customer_id, kind, message)
        if self._local_bookkeeping:
            # A record written in milliseconds: run in the workflow task it is reached in, instead of
            # a round trip through the task queue and a workflow task for its result.
            await workflow.execute_local_activity_method(
                OrderActivities.notify_customer, request, start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=MUST_FINISH_RETRY, summary=f"Notify customer: {kind}",
            )
            return
        await workflow.execute_activity_method(
            OrderActivities.notify_customer,
            request,
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary=f"Notify customer: {kind}",
        )

    def _email(self, kind: str, after: str = "", **values) -> None:
        """Start the customer's `kind` email (once per order), without waiting for it:
        the order moves on, and `_emails_finished` waits for it before the order closes.
        `after` is a paragraph added to the text (the refund)."""
        if self._email_to is None or kind in self._status.emails:
            return
        subject = self._order.texts.get(f"email_{kind}_subject")
        text = self._order.texts.get(f"email_{kind}")
        values["order_id"] = self._order.order_id
        try:
            request = OrderEmailRequest(self._order.order_id, kind, self._email_to, subject.format(**values),
                                        text.format(**values) + (f"\n\n{after}" if after else ""))
        except (AttributeError, KeyError, IndexError, ValueError) as err:
            # The texts are the order's own (copied when placed): one missing or malformed
            # there is recorded, never a failed workflow task.
            self._email_state(kind, OrderEmailState("failed", f"no usable text for the {kind} email ({err!r})",
                                                    workflow.now().isoformat()))
            return
        self._email_state(kind, OrderEmailState("sending", at=workflow.now().isoformat()))
        self._emailing.append(asyncio.ensure_future(self._send_email(request)))

    async def _send_email(self, request: OrderEmailRequest) -> None:
        try:
            status = await workflow.execute_activity_method(
                OrderEmailActivities.send_order_email,
                request,
                start_to_close_timeout=EMAIL_TIMEOUT,
                schedule_to_close_timeout=EMAIL_GIVE_UP,
                retry_policy=EMAIL_RETRY,
                summary=f"Email the customer: {request.kind}",
            )
            state = OrderEmailState(status, at=workflow.now().isoformat())
        except ActivityError as err:
            # Refused for good, or given up after a day: recorded; the order's outcome is unchanged.
            refusal = business_error(err, EMAIL_REFUSED)
            reason = str(refusal.details[0]) if refusal is not None and refusal.details else root_message(err)
            state = OrderEmailState("refused" if refusal else "failed", reason, workflow.now().isoformat())
            # The kind and status only: the reason can quote the customer's address.
            workflow.logger.warning("Order email %s not delivered: %s", request.kind, state.status)
            self._event("failure", f"Email to the customer ({request.kind}) {state.status}: {state.reason}")
        self._email_state(request.kind, state)
        await self._record()  # the pages read the record: they show how each email went as soon as it is known

    def _email_state(self, kind: str, state: OrderEmailState) -> None:
        # A new dict, not a change in place: a projection being recorded keeps its own.
        self._status.emails = {**self._status.emails, kind: state}

    async def _emails_finished(self) -> None:
        """Wait for the emails still being sent (each records how it went)."""
        await asyncio.gather(*self._emailing)

    async def _record(self, local: bool = True) -> None:
        """Write the projection and new events. Serialized, so the last write is the newest state."""
        async with self._record_lock:
            events, self._new_events = self._new_events, []
            self._status.updated_at = workflow.now().isoformat()
            self._status.actions = self._actions()
            execute = workflow.execute_local_activity_method if local else workflow.execute_activity_method
            await execute(
                OrderActivities.record_progress,
                ProgressRecord(dataclasses.replace(self._status), events),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=MUST_FINISH_RETRY,
                summary=f"Record progress: {self._status.step}",
            )

    def _event(self, kind: str, message: str) -> None:
        self._event_count += 1
        self._new_events.append(
            OrderEvent(self._order.order_id, f"wf-{self._event_count:04d}", kind, message, workflow.now().isoformat())
        )

    def _reach(self, milestone: str, message: str) -> None:
        self._status.milestones[milestone] = workflow.now().isoformat()
        self._event("step", message)

    def _approve(self, approved_by: str) -> None:
        self._status.approved = True
        self._status.approved_by = approved_by
        # The caller records who approved and why, once, in the timeline.
        self._status.milestones["approved"] = workflow.now().isoformat()

    def _refused(self, message: str) -> ApplicationError:
        """An operator action the order cannot take now; the caller is told why."""
        return ApplicationError(message, type=ACTION_REFUSED, non_retryable=True)

    def _text(self, key: str, **values) -> str:
        return self._order.texts[key].format(**values)


def refusal_as_stop(err: ActivityError, error_type: str, status: str) -> Exception:
    """A step's business refusal of `error_type` as the order's stop; any other error as it is."""
    refusal = business_error(err, error_type)
    return OrderStopped(status, refusal.message) if refusal is not None else err

