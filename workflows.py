"""The workflows: the loan application, and the order process (order, shipping, rewards).

LoanApplicationWorkflow: validate -> decide -> persist -> notify, then hold the email's slot.

One workflow per applicant email (the ID comes from `shared.loan_workflow_id`).
The application is the workflow's start input, so it is durable the moment the
server accepts the start; the web layer attaches a `wait_for_decision` update
to that start (update-with-start) to answer the applicant as soon as the
decision exists, while persisting and notifying carry on durably afterwards.

After the decision the workflow stays open for the duplicate window (7 days by
default): while it runs, the server itself refuses a second start with the
same ID, which is how duplicates are refused without a look-up. During the
window the applicant's "contact me" answer arrives as a signal.

OrderWorkflow: receive -> validate -> reserve inventory -> review -> charge ->
ship (a child ShippingWorkflow on its own task queue) -> complete (rewards,
notification), undoing what was done, in reverse, when the order stops.
RewardsWorkflow: one per customer, long-running, continues as new.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError

with workflow.unsafe.imports_passed_through():
    from activities import LoanActivities, OrderActivities, RewardsActivities, ShippingActivities
    from shared import (
        ACTION_REFUSED,
        FINAL_ORDER_STATUSES,
        INVALID_ORDER,
        OUT_OF_STOCK,
        PAYMENT_DECLINED,
        SHIPPING_FAILED,
        Address,
        AddressChange,
        ApproveRequest,
        AwardPoints,
        AwardRequest,
        CancelRequest,
        ChargeRequest,
        FailureInjection,
        InventoryRequest,
        NotificationRequest,
        OrderEvent,
        OrderRequest,
        OrderStatus,
        Payment,
        ProgressRecord,
        RewardsInput,
        RewardsState,
        Shipment,
        ShipmentProgress,
        ShipmentStepRequest,
        ShippingRequest,
        StepRequest,
        ValidatedOrder,
        ValidateOrderRequest,
        shipping_workflow_id,
        INVALID_APPLICATION,
        LOAN_DECISION,
        AgentNotificationRequest,
        ApplicationStatus,
        ContactPreferenceRequest,
        CreditDecision,
        LoanApplication,
        LoanOutcome,
        LoanRequest,
        PersistRequest,
    )

# Pure, fast steps run as local activities: recorded in history (visible in the
# UI as markers) without a round trip through the task queue.
PURE_STEP_TIMEOUT = timedelta(seconds=5)
PURE_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    maximum_attempts=3,
    non_retryable_error_types=[INVALID_APPLICATION],
)
# Steps with I/O retry until they succeed: an application once decided must be
# recorded, however long the disk or a worker is away. Backoff is capped so a
# recovered store is used within 30 seconds.
IO_STEP_TIMEOUT = timedelta(seconds=10)
IO_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
CONTACT_ANSWERS = ("yes", "not_yet")


def business_error(err: Exception, *error_types: str) -> ApplicationError | None:
    """The activity's ApplicationError of one of `error_types`, if that is what `err` is.

    A failed activity arrives as ActivityError(cause=ApplicationError); a failed
    local activity arrives as the ApplicationError itself.
    """
    cause = err.cause if isinstance(err, ActivityError) else err
    return cause if isinstance(cause, ApplicationError) and cause.type in error_types else None


@workflow.defn(sandboxed=False)
class LoanApplicationWorkflow:
    @workflow.init
    def __init__(self, request: LoanRequest) -> None:
        self._stage = "received"
        self._outcome: LoanOutcome | None = None
        self._error: str | None = None
        self._error_fields: dict[str, str] = {}
        self._contact_preference: str | None = None
        self._pending_contact: str | None = None
        self._window_ends_at = workflow.info().workflow_start_time + timedelta(days=request.duplicate_window_days)

    @workflow.run
    async def run(self, request: LoanRequest) -> LoanOutcome:
        try:
            application = await self._validate(request.application)
        except (ActivityError, ApplicationError) as err:
            invalid = business_error(err, INVALID_APPLICATION)
            if invalid is None:
                raise
            self._stage = "failed"
            self._error = invalid.message
            self._error_fields = invalid.details[0] if invalid.details else {}
            # Let a waiting update see the failure before the workflow closes.
            await workflow.wait_condition(workflow.all_handlers_finished)
            raise ApplicationError(self._error, self._error_fields, type=INVALID_APPLICATION) from err
        decision = await self._decide(application)
        outcome = self._announce(application, decision, request)
        follow_ups = [self._persist(outcome)]
        if outcome.decision == "conditional":
            follow_ups.append(self._notify_agent(outcome, "conditional_review"))
        # Independent steps, scheduled together: one workflow task instead of two.
        await asyncio.gather(*follow_ups)
        await self._hold_duplicate_window(outcome)
        return outcome

    # --- steps -------------------------------------------------------------

    async def _validate(self, application: LoanApplication) -> LoanApplication:
        validated = await workflow.execute_local_activity_method(
            LoanActivities.validate_application,
            application,
            start_to_close_timeout=PURE_STEP_TIMEOUT,
            retry_policy=PURE_STEP_RETRY,
            summary="Validate the application",
        )
        self._stage = "validated"
        return validated

    async def _decide(self, application: LoanApplication) -> CreditDecision:
        return await workflow.execute_local_activity_method(
            LoanActivities.decide,
            application,
            start_to_close_timeout=PURE_STEP_TIMEOUT,
            retry_policy=PURE_STEP_RETRY,
            summary="Decide: compliance limits, then credit rules",
        )

    def _announce(self, application: LoanApplication, decision: CreditDecision, request: LoanRequest) -> LoanOutcome:
        """Make the decision visible: to the waiting update, the query and the UI."""
        info = workflow.info()
        self._outcome = LoanOutcome(
            workflow_id=info.workflow_id,
            run_id=info.run_id,
            submitted_at=info.workflow_start_time.isoformat(timespec="microseconds"),
            application=application,
            decision=decision.decision,
            reason=decision.reason,
            loan_to_income_ratio=decision.loan_to_income_ratio,
            message=decision.message,
            decided_by=decision.decided_by,
        )
        self._stage = "decided"
        workflow.upsert_search_attributes([LOAN_DECISION.value_set(decision.decision)])
        workflow.set_current_details(
            f"Decision: **{decision.decision}** ({decision.reason}); amount band {request.amount_band}."
        )
        return self._outcome

    async def _persist(self, outcome: LoanOutcome) -> None:
        await workflow.execute_local_activity_method(
            LoanActivities.persist_application,
            PersistRequest(outcome),
            start_to_close_timeout=IO_STEP_TIMEOUT,
            retry_policy=IO_STEP_RETRY,
            summary="Persist the application record",
        )
        self._stage = "persisted"

    async def _notify_agent(self, outcome: LoanOutcome, kind: str) -> None:
        await workflow.execute_local_activity_method(
            LoanActivities.notify_agent,
            AgentNotificationRequest(outcome, kind),
            start_to_close_timeout=IO_STEP_TIMEOUT,
            retry_policy=IO_STEP_RETRY,
            summary=f"Notify a loan agent ({kind})",
        )

    async def _hold_duplicate_window(self, outcome: LoanOutcome) -> None:
        """Stay open until the window ends, recording contact answers as they come."""
        while True:
            remaining = self._window_ends_at - workflow.now()
            if remaining <= timedelta(0):
                break
            try:
                await workflow.wait_condition(lambda: self._pending_contact is not None, timeout=remaining)
            except asyncio.TimeoutError:
                break
            answer, self._pending_contact = self._pending_contact, None
            await workflow.execute_activity_method(
                LoanActivities.record_contact_preference,
                ContactPreferenceRequest(outcome.workflow_id, outcome.run_id, answer, workflow.now().isoformat()),
                start_to_close_timeout=IO_STEP_TIMEOUT,
                retry_policy=IO_STEP_RETRY,
                summary=f"Record contact preference: {answer}",
            )
            if answer == "yes" and self._contact_preference != "yes":
                await self._notify_agent(outcome, "contact_requested")
            self._contact_preference = answer

    # --- messages ------------------------------------------------------------

    @workflow.update
    async def wait_for_decision(self) -> LoanOutcome:
        """Returns as soon as the decision exists (before persisting finishes)."""
        await workflow.wait_condition(lambda: self._outcome is not None or self._error is not None)
        if self._outcome is None:
            raise ApplicationError(self._error or "invalid application", self._error_fields, type=INVALID_APPLICATION)
        return self._outcome

    @workflow.signal
    def contact_preference(self, answer: str) -> None:
        if answer not in CONTACT_ANSWERS:
            workflow.logger.warning("Ignoring unknown contact answer %r", answer)
            return
        self._pending_contact = answer

    @workflow.query
    def status(self) -> ApplicationStatus:
        return ApplicationStatus(
            stage=self._stage,
            outcome=self._outcome,
            contact_preference=self._pending_contact or self._contact_preference,
            error=self._error,
            window_ends_at=self._window_ends_at.isoformat(),
        )


# --- orders ------------------------------------------------------------------

# Business steps: retried with backoff for transient trouble (an injected
# failure, a busy disk), never for a business failure.
ORDER_STEP_TIMEOUT = timedelta(seconds=30)
ORDER_STEP_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=8,
    non_retryable_error_types=[INVALID_ORDER, OUT_OF_STOCK, PAYMENT_DECLINED, SHIPPING_FAILED],
)
# Undoing (release, refund) and bookkeeping must finish, however long it takes.
MUST_FINISH_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=0,
)
BOOKKEEPING_TIMEOUT = timedelta(seconds=10)
CONFIRM_RECEIPT_PATCH = "confirm-receipt-to-customer"
# Shipment stages from which an order can no longer be changed or cancelled.
HANDED_TO_CARRIER = ("dispatched", "delivered")


class OrderStopped(Exception):
    """Ends the order early: rejected, cancelled or failed, with the reason shown to people."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def refused(message: str) -> ApplicationError:
    """An operator action the order cannot take now; the caller is told why."""
    return ApplicationError(message, type=ACTION_REFUSED, non_retryable=True)


@workflow.defn
class OrderWorkflow:
    @workflow.init
    def __init__(self, order: OrderRequest) -> None:
        self._order = order
        self._status = OrderStatus.accepted(order)
        self._failures: list[FailureInjection] = list(order.failures)
        self._new_events: list[OrderEvent] = []
        self._event_count = 0
        self._cancel_request: CancelRequest | None = None
        # Undo steps for what has been done so far, run in reverse when the order stops.
        self._compensations: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self._shipping: workflow.ChildWorkflowHandle | None = None
        self._shipment_news = False
        self._record_lock = asyncio.Lock()

    @workflow.run
    async def run(self, order: OrderRequest) -> OrderStatus:
        # Asked first, before any command: asked after a local activity, the
        # marker's place in history can differ on replay (a nondeterminism error).
        confirm_receipt = workflow.patched(CONFIRM_RECEIPT_PATCH)
        try:
            await self._receive(confirm_receipt)
            validated = await self._validate()
            await self._reserve_inventory(validated)
            await self._review(validated)
            await self._charge(validated)
            await self._ship()
            await self._complete(validated)
        except OrderStopped as stop:
            await self._stop(stop)
        except asyncio.CancelledError:
            # Cancelled from the Temporal UI or CLI: undo like an operator's cancel.
            await self._stop(OrderStopped("cancelled", "workflow cancelled"))
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self._status

    # --- steps, in order -----------------------------------------------------

    async def _receive(self, confirm_receipt: bool) -> None:
        self._reach("received", f"Order received: {len(self._order.lines)} line(s) for customer {self._order.customer_id}")
        await self._record()
        # Version 2 confirms the order to the customer. Orders started before this
        # change (histories/order_workflow_v1.json) replay without the step.
        if confirm_receipt:
            await self._notify("received", self._text("notify_received", order_id=self._order.order_id, lines=len(self._order.lines)))

    async def _validate(self) -> ValidatedOrder:
        self._status.step = "validate"
        try:
            validated, attempt = await self._attempted(
                OrderActivities.validate_order,
                ValidateOrderRequest(self._step_request(), self._order.lines, self._status.address),
                summary="Validate: products, quantities, address, order total",
            )
        except ActivityError as err:
            invalid = business_error(err, INVALID_ORDER)
            if invalid is None:
                raise
            raise OrderStopped("rejected", invalid.message) from err
        self._status.lines = validated.lines
        self._status.total = validated.total
        self._status.attempts["validate"] = attempt
        self._reach("validated", f"Validated: total {validated.total:,.2f}")
        await self._record()
        return validated

    async def _reserve_inventory(self, validated: ValidatedOrder) -> None:
        self._status.step = "reserve_inventory"
        request = InventoryRequest(self._step_request(), self._order.lines)
        try:
            result, attempt = await self._attempted(OrderActivities.reserve_inventory, request, summary="Reserve inventory")
        except ActivityError as err:
            out_of_stock = business_error(err, OUT_OF_STOCK)
            if out_of_stock is None:
                raise
            raise OrderStopped("rejected", out_of_stock.message) from err
        self._status.attempts["reserve_inventory"] = attempt
        self._compensations.append(("release inventory", lambda: self._undo(OrderActivities.release_inventory, request)))
        self._event("step", "Inventory reserved")
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
        try:
            await workflow.wait_condition(
                lambda: self._status.approved or self._cancel_request is not None,
                timeout=sla,
                timeout_summary="Review SLA",
            )
        except asyncio.TimeoutError:
            minutes = max(1, round(policy.review_sla_seconds / 60))
            raise OrderStopped("cancelled", self._text("review_timeout", minutes=minutes)) from None
        self._check_cancelled()
        self._status.status = "processing"
        await self._record()

    async def _charge(self, validated: ValidatedOrder) -> None:
        self._check_cancelled()
        self._status.step = "charge_payment"
        request = ChargeRequest(self._step_request(), validated.total)
        try:
            result, attempt = await self._attempted(
                OrderActivities.charge_payment, request, summary=f"Charge payment {validated.total:,.2f}"
            )
        except ActivityError as err:
            declined = business_error(err, PAYMENT_DECLINED)
            if declined is None:
                raise
            raise OrderStopped("failed", declined.message) from err
        self._status.payment = result.payment
        self._status.attempts["charge_payment"] = attempt
        self._compensations.append(("refund payment", lambda: self._refund(request)))
        self._reach("charged", f"Payment charged: {validated.total:,.2f} (key {result.payment.payment_key})")
        await self._record()

    async def _ship(self) -> None:
        self._check_cancelled()
        self._status.step = "ship"
        self._status.status = "shipping"
        shipping_request = ShippingRequest(
            order_id=self._order.order_id,
            parent_workflow_id=workflow.info().workflow_id,
            address=self._status.address,
            expedited=self._status.expedited,
            timing=self._order.shipping,
            failures=list(self._failures),
            policy=self._order.policy,
        )
        self._shipping = await workflow.start_child_workflow(
            ShippingWorkflow.run,
            shipping_request,
            id=shipping_workflow_id(self._order.order_id),
            task_queue=self._order.shipping_task_queue,
            static_summary=f"Shipping for order {self._order.order_id}",
        )
        # An operator may have changed the order while the child was starting.
        if self._status.expedited and not shipping_request.expedited:
            await self._shipping.signal(ShippingWorkflow.expedite)
        if self._status.address != shipping_request.address:
            await self._shipping.signal(ShippingWorkflow.update_address, self._status.address)
        self._event("step", "Shipping started")
        await self._record()
        # The child handle is a task: done when the shipment ends, cancel() stops it.
        shipment = self._shipping
        while not shipment.done():
            await workflow.wait_condition(lambda: shipment.done() or self._shipment_news or self._cancel_requested_now())
            if self._shipment_news:
                self._shipment_news = False
                await self._record()
            if self._cancel_requested_now() and not shipment.done():
                # Still before dispatch (the cancel validator saw to that): stop the shipment.
                shipment.cancel()
                break
        try:
            await shipment
        except (ChildWorkflowError, asyncio.CancelledError) as err:
            if self._cancel_request is not None:
                raise OrderStopped("cancelled", self._cancel_request.reason) from err
            failure = err.cause.cause if isinstance(err.cause, ActivityError) else err.cause
            reason = failure.message if isinstance(failure, ApplicationError) else str(err)
            raise OrderStopped("failed", reason) from err
        if self._shipment_news:
            self._shipment_news = False
            await self._record()

    async def _complete(self, validated: ValidatedOrder) -> None:
        self._status.step = "complete"
        points = int(validated.total * self._order.policy.reward_points_per_dollar)
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

    async def _stop(self, stop: OrderStopped) -> None:
        """Undo what was done, newest first, then record why the order ended."""
        self._status.cancelled = stop.status == "cancelled"
        self._status.cancel_reason = stop.reason if self._status.cancelled else None
        self._status.reason = stop.reason
        self._event("status", f"Order {stop.status}: {stop.reason}")
        for name, undo in reversed(self._compensations):
            await undo()
            self._status.compensations.append(name)
            self._event("compensation", f"Compensation: {name}")
            await self._record()
        self._compensations.clear()
        self._status.status = stop.status
        await self._record()

    # --- operator messages ---------------------------------------------------

    @workflow.update
    async def approve(self, request: ApproveRequest) -> OrderStatus:
        self._approve(request.operator)
        self._event("operator", f"Approved by {request.operator}")
        await self._record()
        return self._status

    @approve.validator
    def _check_approve(self, request: ApproveRequest) -> None:
        if self._status.status != "awaiting_review" or self._cancel_request is not None:
            raise refused(self._text("not_awaiting_review", status=self._status.status.replace("_", " ")))

    @workflow.update
    async def cancel(self, request: CancelRequest) -> OrderStatus:
        """Cancels and waits for the undo steps, so the answer shows them."""
        if self._cancel_request is None:
            self._cancel_request = request
            self._event("operator", f"Cancel requested by {request.operator}: {request.reason}")
        await workflow.wait_condition(lambda: self._status.status in FINAL_ORDER_STATUSES)
        if self._status.status != "cancelled":
            # The carrier took the parcel between the request and the shipment's stop.
            raise refused(self._text("already_dispatched"))
        return self._status

    @cancel.validator
    def _check_cancel(self, request: CancelRequest) -> None:
        self._refuse_if_final_or_shipped()
        if not request.reason.strip():
            raise refused(self._text("cancel_reason"))

    @workflow.update
    async def update_address(self, change: AddressChange) -> OrderStatus:
        self._status.address = change.address
        self._event("operator", f"Shipping address changed by {change.operator} to {change.address.city}, {change.address.country}")
        if self._shipping is not None:
            await self._shipping.signal(ShippingWorkflow.update_address, change.address)
        await self._record()
        return self._status

    @update_address.validator
    def _check_address(self, change: AddressChange) -> None:
        self._refuse_if_final_or_shipped()
        if change.address.missing_fields():
            raise refused(self._text("address_field") + f" ({', '.join(change.address.missing_fields())})")

    @workflow.signal
    async def expedite(self) -> None:
        if self._status.expedited or self._status.status in FINAL_ORDER_STATUSES:
            return
        self._status.expedited = True
        self._event("operator", "Expedited shipping requested")
        if self._shipping is not None:
            await self._shipping.signal(ShippingWorkflow.expedite)
        await self._record()

    @workflow.signal
    async def inject_failure(self, failure: FailureInjection) -> None:
        """Simulate trouble in a later step (for demos and tests)."""
        self._failures.append(failure)
        kind = "permanent" if failure.permanent else f"{failure.times} attempt(s)"
        self._event("operator", f"Failure injected: {failure.step}, {kind}")
        if self._shipping is not None and not self._shipping.done():
            await self._shipping.signal(ShippingWorkflow.inject_failure, failure)
        await self._record()

    @workflow.signal
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
        elif progress.stage == "delivered":
            self._reach("delivered", "Delivered")
        else:
            self._event("step", f"Shipment {progress.stage}")
        self._shipment_news = True

    @workflow.query
    def status(self) -> OrderStatus:
        return self._status

    # --- helpers ---------------------------------------------------------------

    def _step_request(self) -> StepRequest:
        return StepRequest(self._order.order_id, workflow.info().workflow_id, list(self._failures), self._order.policy)

    async def _attempted(self, activity, request, summary: str):
        """Run one business step; returns its result and the attempt that succeeded."""
        result = await workflow.execute_activity_method(
            activity, request, start_to_close_timeout=ORDER_STEP_TIMEOUT, retry_policy=ORDER_STEP_RETRY, summary=summary
        )
        return result, result.attempt

    async def _undo(self, activity, request) -> None:
        await workflow.execute_activity_method(
            activity, request, start_to_close_timeout=ORDER_STEP_TIMEOUT, retry_policy=MUST_FINISH_RETRY,
            summary=f"Compensate: {activity.__name__.replace('_', ' ')}",
        )

    async def _refund(self, request: ChargeRequest) -> None:
        payment: Payment | None = await workflow.execute_activity_method(
            OrderActivities.refund_payment, request, start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY, summary="Compensate: refund payment",
        )
        self._status.payment = payment

    async def _notify(self, kind: str, message: str) -> None:
        await workflow.execute_activity_method(
            OrderActivities.notify_customer,
            NotificationRequest(self._order.order_id, self._order.customer_id, kind, message),
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary=f"Notify customer: {kind}",
        )

    async def _record(self) -> None:
        """Write the projection and new events. Serialized, so the last write is the newest state."""
        async with self._record_lock:
            events, self._new_events = self._new_events, []
            self._status.updated_at = workflow.now().isoformat()
            await workflow.execute_local_activity_method(
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

    def _check_cancelled(self) -> None:
        if self._cancel_request is not None:
            raise OrderStopped("cancelled", self._cancel_request.reason)

    def _cancel_requested_now(self) -> bool:
        return self._cancel_request is not None

    def _refuse_if_final_or_shipped(self) -> None:
        if self._status.status in FINAL_ORDER_STATUSES:
            raise refused(self._text("already_final", status=self._status.status))
        if self._status.shipment.stage in HANDED_TO_CARRIER:
            raise refused(self._text("already_dispatched"))

    def _text(self, key: str, **values) -> str:
        return self._order.texts[key].format(**values)


@workflow.defn
class ShippingWorkflow:
    """prepare package -> (packing time) -> dispatch carrier -> (transit) -> deliver.

    Reports each stage to the order. Cancellable until dispatched; after that the
    parcel is with the carrier and the shipment runs to delivery.
    """

    @workflow.init
    def __init__(self, request: ShippingRequest) -> None:
        self._request = request
        self._address = request.address
        self._expedited = request.expedited
        self._failures = list(request.failures)
        self._speed_changed = False
        self._dispatched = False

    @workflow.run
    async def run(self, request: ShippingRequest) -> Shipment:
        prepared = await self._step(ShippingActivities.prepare_package, "Prepare package")
        await self._report(ShipmentProgress("prepared", prepared.attempt, workflow.now().isoformat()))
        # Until the carrier collects the parcel, the order can still change or be cancelled.
        await workflow.sleep(timedelta(seconds=request.timing.prepare_seconds), summary="Awaiting carrier pickup")
        dispatch = await self._step(ShippingActivities.dispatch_carrier, "Dispatch carrier")
        self._dispatched = True
        await self._report(
            ShipmentProgress("dispatched", dispatch.attempt, workflow.now().isoformat(), dispatch.carrier, dispatch.tracking_number)
        )
        dispatched_at = workflow.now()
        while True:
            transit = request.timing.expedited_transit_seconds if self._expedited else request.timing.transit_seconds
            remaining = dispatched_at + timedelta(seconds=transit) - workflow.now()
            if remaining <= timedelta(0):
                break
            try:
                await workflow.wait_condition(lambda: self._speed_changed, timeout=remaining, timeout_summary="In transit")
            except asyncio.TimeoutError:
                break
            except asyncio.CancelledError:
                continue  # with the carrier: a cancel comes too late
            self._speed_changed = False
        delivered = await self._step(ShippingActivities.deliver, "Deliver")
        await self._report(ShipmentProgress("delivered", delivered.attempt, workflow.now().isoformat()))
        return Shipment("delivered", dispatch.carrier, dispatch.tracking_number, self._expedited, workflow.now().isoformat())

    async def _step(self, activity, summary: str):
        request = self._request
        step = StepRequest(request.order_id, request.parent_workflow_id, list(self._failures), request.policy)
        return await workflow.execute_activity_method(
            activity,
            ShipmentStepRequest(step, self._address, self._expedited),
            start_to_close_timeout=ORDER_STEP_TIMEOUT,
            retry_policy=ORDER_STEP_RETRY,
            summary=summary,
        )

    async def _report(self, progress: ShipmentProgress) -> None:
        parent = workflow.get_external_workflow_handle(self._request.parent_workflow_id)
        await parent.signal(OrderWorkflow.shipment_progress, progress)

    @workflow.signal
    def expedite(self) -> None:
        self._expedited = True
        self._speed_changed = True

    @workflow.signal
    def update_address(self, address: Address) -> None:
        if not self._dispatched:
            self._address = address

    @workflow.signal
    def inject_failure(self, failure: FailureInjection) -> None:
        self._failures.append(failure)


@workflow.defn
class RewardsWorkflow:
    """One per customer: points per dollar, tiers, open for as long as the customer is.

    Awards arrive by signal-with-start from the order's completion step; each
    order counts once. Continues as new before its history grows large.
    """

    @workflow.init
    def __init__(self, rewards: RewardsInput) -> None:
        self._state = rewards.state
        self._tiers = sorted(rewards.tiers, key=lambda tier: tier.min_points)
        self._max_history_events = rewards.max_history_events
        self._awards: list[AwardPoints] = []
        self._close_requested = False

    @workflow.run
    async def run(self, rewards: RewardsInput) -> RewardsState:
        while True:
            await workflow.wait_condition(lambda: bool(self._awards) or self._close_requested or self._history_is_long())
            if self._awards:
                self._apply_awards()
                await self._save()
                continue  # more awards may have come in meanwhile
            if self._close_requested:
                self._state.closed = True
                await self._save()
                return self._state
            await workflow.wait_condition(workflow.all_handlers_finished)
            workflow.continue_as_new(RewardsInput(self._state, self._tiers, self._max_history_events))

    def _apply_awards(self) -> None:
        while self._awards:
            award = self._awards.pop(0)
            if award.order_id in self._state.recent_order_ids:
                continue
            self._state.points += award.points
            self._state.orders += 1
            self._state.recent_order_ids = (self._state.recent_order_ids + [award.order_id])[-RECENT_AWARDS_KEPT:]
        self._state.tier = next(
            (tier.name for tier in reversed(self._tiers) if self._state.points >= tier.min_points), self._tiers[0].name
        )
        self._state.updated_at = workflow.now().isoformat()

    async def _save(self) -> None:
        await workflow.execute_local_activity_method(
            RewardsActivities.save_rewards,
            self._state,
            start_to_close_timeout=BOOKKEEPING_TIMEOUT,
            retry_policy=MUST_FINISH_RETRY,
            summary=f"Save rewards: {self._state.points} points, {self._state.tier}",
        )

    def _history_is_long(self) -> bool:
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= self._max_history_events

    @workflow.signal
    def award(self, award: AwardPoints) -> None:
        self._awards.append(award)

    @workflow.query
    def summary(self) -> RewardsState:
        return self._state

    @workflow.update
    async def close(self) -> RewardsState:
        self._close_requested = True
        await workflow.wait_condition(lambda: self._state.closed)
        return self._state


# Order IDs remembered per customer to count a repeated award once.
RECENT_AWARDS_KEPT = 500
