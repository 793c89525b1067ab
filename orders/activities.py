"""The order steps' side effects: validate, reserve and release stock, charge and refund, the carrier, records.

`OrderActivities` (the order's steps and its recorded projection), `ShippingActivities` (the carrier's) and
`RewardsActivities` (the customer's points) are bound to the store. Each step is idempotent under retries and
each undo is safe to run twice: a second release or refund changes nothing. Failures can be injected per
order (demos and tests) or at a seeded random rate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
from typing import Any

import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory

from core.formatting import day_value, format_amount, sort_key_for, utc_now
from core.rules import Rules
from core.store import Store
from orders.emails import OrderEmailActivities, with_dispatch
from orders.model import (
    FAILURE_STEPS,
    INJECTED_FAILURE,
    INVALID_ORDER,
    INVENTORY,
    NOTIFICATIONS,
    ORDERS,
    OUT_OF_STOCK,
    PAYMENT_DECLINED,
    RESERVATIONS,
    SHIPMENTS,
    SHIPPING_FAILED,
    STOCK,
    AwardRequest,
    ChargeRequest,
    ChargeResult,
    DispatchResult,
    InventoryRequest,
    NotificationRequest,
    OrderEmailRequest,
    OrderEmailState,
    OrderEvent,
    Payment,
    PricedLine,
    ProgressRecord,
    ShipmentStepRequest,
    StepRequest,
    StepResult,
    ValidatedOrder,
    ValidateOrderRequest,
    order_events_collection,
)
from orders.payments import NETWORK_FAULTS, PaymentDeclined, Payments
from orders.review_queue import in_review_queue, sync_review_queue
from orders.rewards_model import AwardPoints, RewardsSave, RewardTierRule, count_awards

log = logging.getLogger(__name__)

# --- orders ------------------------------------------------------------------

# Permanent injected failures become these business failures.
PERMANENT_FAILURE_TYPES = {"inventory": OUT_OF_STOCK, "payment": PAYMENT_DECLINED, "shipping": SHIPPING_FAILED}


def write_event(store: Store, event: OrderEvent) -> None:
    """Append one event to an order's audit trail; the same key writes the same file (idempotent)."""
    store.put(order_events_collection(event.order_id), event.key, dataclasses.asdict(event))


def write_progress(store: Store, record: ProgressRecord) -> None:
    """Write an order's record: its new events and notices (written late or twice, the same), then
    its projection, unless a newer revision is stored already (an attempt that ends after its order
    moved on never hides the newer state)."""
    status = record.status
    if record.events:
        # One document for the record's events, named by the first and last: one write however many.
        # A record's events can go again in a later record (orders/timeline.py): the reader keeps one of each.
        keys = f"{record.events[0].key}..{record.events[-1].key}"
        store.put(order_events_collection(status.order_id), keys, {"events": [dataclasses.asdict(e) for e in record.events]})
    for notice in record.notices:
        write_notice(store, notice)
    stored = store.get(ORDERS, status.order_id)
    if stored is None or stored.get("revision", 0) < status.revision:  # else a newer record (or this one) is stored
        projection = dataclasses.asdict(status)
        # The dashboard's chart counts orders by the day they were placed and their status now.
        projection["day_status"] = day_value(status.placed_at or status.updated_at or "", status.status)
        store.update(
            ORDERS,
            status.order_id,
            lambda current: projection if current is None or current.get("revision", 0) < status.revision else current,
            sort_key=sort_key_for(status.placed_at or status.updated_at or ""),
        )
    if status.needs_review and in_review_queue(store, status.order_id) != (status.status == "awaiting_review"):
        sync_review_queue(store, status.order_id)  # also on a retry after a crash between the two writes


# Fields of the stored record that are the store's (the chart's count: `write_progress`), not the order's.
STORE_ONLY_FIELDS = ("day_status",)


def stored_order(record: dict[str, Any]) -> dict[str, Any]:
    """An order's stored record as the order's own: without what the store counts it by."""
    return {key: value for key, value in record.items() if key not in STORE_ONLY_FIELDS}


def write_notice(store: Store, request: NotificationRequest) -> None:
    """Record a customer notification (the stand-in for an email); once per order and kind."""
    store.put(
        NOTIFICATIONS, f"{request.order_id}-{request.kind}", {**dataclasses.asdict(request), "sent_at": utc_now("milliseconds")}
    )


def order_events(store: Store, order_id: str) -> list[dict]:
    """An order's audit trail, oldest first: single events (a step's failed attempt) and the records' batches."""
    events: dict[str, dict] = {}
    for document in store.list_all(order_events_collection(order_id)):
        for event in document["events"] if "events" in document else [document]:
            events[event["key"]] = event
    return sorted(events.values(), key=lambda e: (e["at"], e["key"]))


def simulated(message: str) -> ApplicationError:
    """A failure the failure simulation asked for: retried like any, but expected, so the SDK logs it at
    DEBUG with no traceback (BENIGN) and the order's own line (`_audited`) is the one the log shows."""
    return ApplicationError(message, type=INJECTED_FAILURE, category=ApplicationErrorCategory.BENIGN)


class _OrderStepActivities:
    """What every order step shares: simulated failures and recording failed attempts."""

    def __init__(self, store: Store, rules: Rules, texts: dict[str, str]):
        self.store = store
        self.rules = rules
        self.texts = texts

    # The steps' names in a failed attempt's line, as the order page names them (orders/display.py).
    AUDITED_STEP_NAMES = {"inventory": "Reserve inventory", "payment": "Charge payment", "shipping": "Prepare package"}

    @contextlib.contextmanager
    def _audited(self, step: StepRequest, name: str):
        """Record a failed attempt in the order's audit trail, then let it fail (retried, or not, by the policy)."""
        attempt = activity.info().attempt
        try:
            yield attempt
        except Exception as err:
            final = isinstance(err, ApplicationError) and err.non_retryable
            message = self._text(
                "attempt_failed" if final else "attempt_retrying",
                step=self.AUDITED_STEP_NAMES.get(name, name),
                attempt=attempt,
                # An ApplicationError's str() leads with its type ("InjectedFailure: …"): its message is what happened.
                reason=(err.message if isinstance(err, ApplicationError) else str(err)).rstrip(".") or type(err).__name__,
            )
            write_event(
                self.store,
                OrderEvent(
                    order_id=step.order_id,
                    key=f"{name}-attempt-{attempt}-failed",
                    kind="failure" if final else "retry",
                    message=message,
                    at=utc_now("milliseconds"),
                    attempt=attempt,
                ),
            )
            if isinstance(err, ApplicationError) and err.category == ApplicationErrorCategory.BENIGN:
                log.info("Order %s: %s", step.order_id, message)  # expected: one line, no traceback
            raise

    def _write_carried_record(self, step: StepRequest) -> None:
        """The order's record as this step starts, if the workflow sent one (lean bookkeeping)."""
        if step.record is not None:
            write_progress(self.store, step.record)

    def _inject(self, step: StepRequest, name: str, attempt: int, permanent_message: str) -> None:
        """Fail like the real thing would, if this step has a failure injected or drawn."""
        assert name in FAILURE_STEPS
        for failure in step.failures:
            if failure.step != name:
                continue
            if failure.permanent:
                raise ApplicationError(permanent_message, type=PERMANENT_FAILURE_TYPES[name], non_retryable=True)
            if attempt <= failure.times:
                raise simulated(f"simulated {name} failure ({attempt} of {failure.times})")
        rate = step.policy.random_failure_rate
        # Seeded per order, step and attempt: the same run fails the same way every time.
        draw = random.Random(f"{step.policy.random_failure_seed}:{step.workflow_id}:{name}:{attempt}").random()
        if rate and draw < rate:
            raise simulated(f"random {name} failure (rate {rate})")

    def _text(self, key: str, **values) -> str:
        return self.texts[key].format(**values)


class OrderActivities(_OrderStepActivities):
    """The order steps: validation, inventory, payment, projections, notifications, rewards."""

    def __init__(
        self,
        store: Store,
        rules: Rules,
        texts: dict[str, str],
        emails: OrderEmailActivities | None = None,
        payments: Payments | None = None,
    ):
        super().__init__(store, rules, texts)
        # Sends the emails a step carries (v10); without it, each goes by its own activity.
        self.emails = emails
        self.payments = payments or Payments(store)

    def _send_carried(self, email: OrderEmailRequest | None) -> OrderEmailState | None:
        return self.emails.send_carried(email) if email is not None and self.emails is not None else None

    @activity.defn
    def record_progress(self, record: ProgressRecord) -> None:
        """The order's projection (for the dashboard) and its new audit events."""
        write_progress(self.store, record)

    @activity.defn
    def validate_order(self, request: ValidateOrderRequest) -> ValidatedOrder:
        self._write_carried_record(request.step)
        email = self._send_carried(request.email)  # the "received" email goes whatever the validation finds
        catalog = self.rules.orders
        problems = []
        lines = []
        for line in request.lines:
            item = catalog.item(line.sku)
            if item is None:
                problems.append(f"unknown product {line.sku}")
            elif line.quantity < 1:
                problems.append(f"quantity of {line.sku} must be at least 1")
            else:
                lines.append(PricedLine(item.sku, item.name, line.quantity, item.price, round(item.price * line.quantity, 2)))
        if not request.lines:
            problems.append("no items")
        missing = request.address.missing_fields()
        if missing:
            problems.append(f"address incomplete: {', '.join(missing)}")
        total = round(sum(line.line_total for line in lines), 2)
        if not problems and total > request.step.policy.max_order_total:
            problems.append(
                self._text("over_maximum", total=format_amount(total), maximum=format_amount(request.step.policy.max_order_total))
            )
        if problems:
            raise ApplicationError("; ".join(problems), type=INVALID_ORDER, non_retryable=True)
        return ValidatedOrder(lines, total, activity.info().attempt, email)

    @activity.defn
    def reserve_inventory(self, request: InventoryRequest) -> StepResult:
        """Take the order's items out of stock, all or none, never below zero.

        One lock guards the stock document; the per-order reservation document
        makes a retry a no-op. The stock document names its last change, and
        every change first completes the previous one's reservation document,
        so a crash between the two writes never double-counts.
        """
        self._write_carried_record(request.step)
        with self._audited(request.step, "inventory") as attempt:
            self._inject(request.step, "inventory", attempt, "inventory unavailable")
            order_id = request.step.order_id
            with self.store.locked(INVENTORY, STOCK):
                stock = self._stock_document()
                reservation = self.store.get(RESERVATIONS, order_id)
                # Reserved already (a retry), or released already: an attempt that
                # ends after its order stopped and undid it must not take stock again.
                if reservation is not None and reservation["status"] in ("reserved", "released"):
                    return StepResult(attempt)
                levels = stock["levels"]
                for line in request.lines:
                    available = levels.get(line.sku, 0)
                    if line.quantity > available:
                        message = self._text("out_of_stock", sku=line.sku, requested=line.quantity, available=available)
                        raise ApplicationError(message, type=OUT_OF_STOCK, non_retryable=True)
                for line in request.lines:
                    levels[line.sku] -= line.quantity
                lines = [dataclasses.asdict(line) for line in request.lines]
                stock["last_change"] = {"order_id": order_id, "status": "reserved", "lines": lines}
                self.store.write_locked(INVENTORY, STOCK, stock)
                self.store.write_locked(RESERVATIONS, order_id, stock["last_change"])
            return StepResult(attempt)

    @activity.defn
    def release_inventory(self, request: InventoryRequest) -> StepResult:
        """Put a reservation back in stock (a compensation); a second call changes nothing."""
        order_id = request.step.order_id
        with self.store.locked(INVENTORY, STOCK):
            stock = self._stock_document()
            reservation = self.store.get(RESERVATIONS, order_id)
            if reservation is None:
                # Nothing reserved (the step never happened, or is still in flight):
                # leave a released mark so a late reservation changes nothing.
                self.store.write_locked(RESERVATIONS, order_id, {"order_id": order_id, "status": "released", "lines": []})
                return StepResult(activity.info().attempt, changed=False)
            if reservation["status"] != "reserved":
                return StepResult(activity.info().attempt, changed=False)
            for line in reservation["lines"]:
                stock["levels"][line["sku"]] += line["quantity"]
            stock["last_change"] = {**reservation, "status": "released"}
            self.store.write_locked(INVENTORY, STOCK, stock)
            self.store.write_locked(RESERVATIONS, order_id, stock["last_change"])
        return StepResult(activity.info().attempt)

    def _stock_document(self) -> dict:
        """The stock document, created from the catalog on first use; repairs an
        interrupted change (held lock required)."""
        stock = self.store.get(INVENTORY, STOCK)
        if stock is None:
            stock = {"levels": {}, "last_change": None}
        for item in self.rules.orders.catalog:
            stock["levels"].setdefault(item.sku, item.stock)
        change = stock["last_change"]
        if change is not None:
            reservation = self.store.get(RESERVATIONS, change["order_id"])
            if reservation is None or reservation["status"] != change["status"]:
                self.store.write_locked(RESERVATIONS, change["order_id"], change)
        return stock

    # It heartbeats, so it hears of a cancel: no exception in its thread for that, as one landing after the
    # provider took the money would roll the record back (PostgreSQL) and leave the refund nothing to find.
    @activity.defn(no_thread_cancel_exception=True)
    def charge_payment(self, request: ChargeRequest) -> ChargeResult:
        """Charge the order's one payment: however often this runs, one charge (orders/payments.py).
        A decline (or a request the provider refuses, 4xx) is not retried. An injected transient failure
        strikes after the provider has answered, like an answer lost: the retry finds the charge."""
        self._write_carried_record(request.step)
        with self._audited(request.step, "payment") as attempt:
            declined = any(f.step == "payment" and f.permanent for f in request.step.failures)
            # With a provider, a simulated failure is a fault at the network (orders/payments.py): an injected one loses
            # the answer (it must not charge twice), a drawn one is any. Without, it strikes after the record is written.
            fault, note = self._network_fault(request.step, attempt) if self.payments.provider else (None, "")
            try:
                payment = self.payments.charge(
                    request.step.order_id, request.amount, attempt, declined, fault, note, request.card, activity.heartbeat
                )
            except stripe.InvalidRequestError as err:  # a request the provider refuses: sent again, refused again
                refused = f"{self._text('declined')} ({err.user_message or err.code or err.http_status})"
                raise ApplicationError(refused, type=PAYMENT_DECLINED, non_retryable=True) from None
            except stripe.StripeError as err:
                provider = self.payments.provider
                if provider is None or not provider.network.met_fault():
                    raise  # a real fault at the network: retried, and logged with its traceback
                raise simulated(str(err)) from None
            except PaymentDeclined as err:
                raise ApplicationError(str(err) or self._text("declined"), type=PAYMENT_DECLINED, non_retryable=True) from None
            if not self.payments.provider:
                self._inject(request.step, "payment", attempt, self._text("declined"))
            return ChargeResult(payment, attempt)

    def _network_fault(self, step: StepRequest, attempt: int) -> tuple[str | None, str]:
        """The fault at the network this payment attempt meets, if any (seeded like `_inject`), and its note."""
        for failure in step.failures:
            if failure.step == "payment" and not failure.permanent and attempt <= failure.times:
                return "lost_answer", f"{attempt} of {failure.times}"
        rate = step.policy.random_failure_rate
        draw = random.Random(f"{step.policy.random_failure_seed}:{step.workflow_id}:payment:{attempt}")
        if rate and draw.random() < rate:
            return draw.choice(NETWORK_FAULTS), f"rate {rate}"
        return None, ""

    @activity.defn
    def refund_payment(self, request: ChargeRequest) -> Payment | None:
        """Refund the order's payment (a compensation; orders/payments.py); a second call changes nothing."""
        return self.payments.refund(request.step.order_id)

    @activity.defn
    def notify_customer(self, request: NotificationRequest) -> None:
        """Record a customer notification (the stand-in for an email); once per order and kind."""
        write_notice(self.store, request)

    @activity.defn
    def award_rewards(self, request: AwardRequest) -> OrderEmailState | None:
        """Count the order's points in the customer's rewards record, once per order. Then (v10) send
        the email the request carries and write the completed order's record, saying how the email
        went; returns that (None: not sent, or no email)."""
        award = AwardPoints(request.order_id, request.points)
        count_awards(self.store, request.customer_id, [award], reward_tiers(self.rules), utc_now())
        email = self._send_carried(request.email)
        record = request.record
        if record is not None:
            if email is not None and request.email is not None:
                emails = {**record.status.emails, request.email.kind: email}
                record = dataclasses.replace(record, status=dataclasses.replace(record.status, emails=emails))
            write_progress(self.store, record)
        return email


class ShippingActivities(_OrderStepActivities):
    """The carrier: prepare, dispatch, deliver. Runs on the shipping task queue. `emails`: how the
    dispatch sends the "shipped" email (v12); without it (no SMTP_URL here) the order's own activity does."""

    def __init__(self, store: Store, rules: Rules, texts: dict[str, str], emails: OrderEmailActivities | None = None):
        super().__init__(store, rules, texts)
        self.emails = emails

    @activity.defn
    def prepare_package(self, request: ShipmentStepRequest) -> StepResult:
        self._write_carried_record(request.step)  # a step of the order's since order version 11
        with self._audited(request.step, "shipping") as attempt:
            self._inject(request.step, "shipping", attempt, self._text("shipping_failed"))
            return StepResult(attempt)

    @activity.defn
    def dispatch_carrier(self, request: ShipmentStepRequest) -> DispatchResult:
        # The tracking number derives from the order, so a retried dispatch books the same parcel.
        carrier = "Express Air" if request.expedited else "Ground Freight"
        tracking = "TRK" + hashlib.sha256(request.step.order_id.encode()).hexdigest()[:12].upper()
        label = {
            "order_id": request.step.order_id,
            "carrier": carrier,
            "tracking_number": tracking,
            "address": dataclasses.asdict(request.address),
            "expedited": request.expedited,
        }
        self.store.put(SHIPMENTS, request.step.order_id, label)
        email = None
        if request.email is not None and self.emails is not None:  # v12: once dispatched, the "shipped" email
            email = self.emails.send_carried(with_dispatch(request.email, carrier, tracking))
        return DispatchResult(carrier, tracking, activity.info().attempt, email)

    @activity.defn
    def deliver(self, request: ShipmentStepRequest) -> StepResult:
        return StepResult(activity.info().attempt)


def reward_tiers(rules: Rules) -> list[RewardTierRule]:
    """The tiers as the rules say now: the award and an open rewards workflow's save count by the same ones."""
    return [RewardTierRule(t.name, t.min_points) for t in rules.orders.rewards.tiers]


class RewardsActivities:
    def __init__(self, store: Store, rules: Rules):
        self.store = store
        self.rules = rules

    @activity.defn
    def save_rewards(self, save: RewardsSave) -> None:
        """An open rewards workflow's awards, counted in the customer's record by the award's own rule."""
        state = save.state
        count_awards(
            self.store, state.customer_id, save.awards, reward_tiers(self.rules), utc_now(), closed=state.closed, base=state
        )
