"""Taking an order's money and giving it back: one payment per order, through Stripe's API.

The payment steps (orders/activities.py) call `Payments`, which keeps the order's
payment record in the store (collection `payments`, one per payment key) under a
lock, and talks to the provider through `StripeProvider`, Stripe's official SDK
(`stripe`). `make run` and the tests point it at a local Stripe (localstripe, on
loopback: tools/stripe_server.py); production sets `STRIPE_API_KEY` and nothing
else.

What is charged: the card the shopper entered at checkout (a payment method set
up for their Stripe customer, shop/card.py), or, for orders placed by operators
and with no card entry configured, Stripe's test card that pays.

Why a charge is never made twice, whatever is retried or lost:
- A charge is a PaymentIntent created, recorded (its ID, status "pending"),
  then confirmed. A retry with a recorded intent looks it up and confirms it
  only if it is not confirmed yet, so however often a charge runs, one intent
  is confirmed. An answer lost after Stripe created an intent leaves that
  intent unconfirmed, and unconfirmed intents take no money.
- Each request carries an idempotency key derived from the order, so where
  the provider honours them (Stripe does, localstripe does not) a repeated
  create or confirm is answered with the first one's result.
- The record's lock serialises a charge and a refund of the same order: a
  refund that finds no charge voids the payment key, so a charge arriving
  after the order stopped is refused; one that finds a pending intent cancels
  it, or refunds it if it was confirmed after all.
- A refund is recorded with its ID; a second refund finds it and does nothing.

With no `STRIPE_API_KEY` (a worker started by hand with no provider configured),
there is no provider: the record alone stands for the payment, as it did before
this module, and the docs say so.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe
from stripe.params import PaymentIntentCreateParams

from core.formatting import utc_now
from core.store import Store
from orders.model import PAYMENT_REQUESTS, PAYMENTS, Card, Payment, payment_key

# Stripe's test payment methods (localstripe knows them too): a card that pays, and one whose charges are declined.
PAYING_CARD = "pm_card_visa"
DECLINED_CARD = "pm_card_chargeCustomerFail"  # attaches, then its charges fail
PROVIDER_TIMEOUT_SECONDS = 10  # within the payment step's attempt timeout (orders/policies.py)


class PaymentDeclined(Exception):
    """The provider refused the payment: a business answer, not a fault. Its message is the provider's."""


def cents(amount: float) -> int:
    return round(amount * 100)


# The faults the failure simulation acts out at the network (`NetworkWithFaults`).
NETWORK_FAULTS = ("unreached", "lost_answer", "timed_out", "server_error")


class NetworkWithFaults(stripe.HTTPXClient):
    """Stripe's HTTP client (httpx) that can act out one fault at the network, for the failure
    simulation: the payment step arms the fault its attempt meets (per thread), and the attempt's
    first call that confirms or reads the payment meets it. A request that never reaches the
    provider, an answer lost after the provider acted, no answer within the timeout (the provider
    acted), a 500. Creating the intent is left alone: its answer is what the retry looks up by."""

    name = "httpx-with-faults"

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout=timeout, allow_sync_methods=True)
        self._armed = threading.local()

    def arm(self, fault: str | None, note: str = "") -> None:
        """The fault this thread's next call meets (None: none), and what the failure says of it."""
        self._armed.fault, self._armed.note, self._armed.met = fault, f" ({note})" if note else "", False

    def disarm(self) -> None:
        """No fault for the next calls; whether the last one was met stays known (`met_fault`)."""
        self._armed.fault = None

    def met_fault(self) -> bool:
        """Whether this thread's armed fault was acted out: the error the call raised is simulated."""
        return bool(getattr(self._armed, "met", False))

    def request(  # type: ignore[override]  # HTTPXClient's own signature (bytes), which it overrides the same way
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        fault = getattr(self._armed, "fault", None)
        if fault is None or (method.lower() == "post" and urlsplit(url).path == "/v1/payment_intents"):
            return super().request(method, url, headers, post_data)
        self._armed.fault, self._armed.met = None, True
        note = self._armed.note
        if fault == "unreached":
            raise stripe.APIConnectionError(f"simulated: the request never reached the provider{note}", should_retry=True)
        if fault == "server_error":
            error = {"error": {"type": "api_error", "message": f"simulated: the provider answered 500{note}"}}
            return json.dumps(error).encode(), 500, {}
        super().request(method, url, headers, post_data)  # the provider acts; its answer goes nowhere
        what = "the answer was lost" if fault == "lost_answer" else f"no answer within {PROVIDER_TIMEOUT_SECONDS} s"
        raise stripe.APIConnectionError(f"simulated: {what} after the provider acted{note}", should_retry=True)


class StripeProvider:
    """The calls the payment steps make, through Stripe's SDK; network faults raise `stripe.StripeError`s."""

    def __init__(self, api_key: str, api_base: str | None = None) -> None:
        self.network = NetworkWithFaults(PROVIDER_TIMEOUT_SECONDS)
        self.client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            http_client=self.network,
            max_network_retries=0,  # the activity's retry policy retries, visibly, with its backoff
        )

    def create_intent(self, key: str, order_id: str, amount: float, payment_method: str, customer: str | None) -> Any:
        params: PaymentIntentCreateParams = {
            "amount": cents(amount),
            "currency": "usd",
            "payment_method": payment_method,
            "metadata": {"order_id": order_id, "payment_key": key},
        }
        if customer is not None:  # a card entered at checkout is set up for its customer (shop/card.py)
            params["customer"] = customer
        return self.client.v1.payment_intents.create(
            params=params,
            options={"idempotency_key": f"{key}-create"},
        )

    def intent(self, intent_id: str) -> Any:
        return self.client.v1.payment_intents.retrieve(intent_id)

    def confirm(self, key: str, intent_id: str) -> Any:
        try:
            return self.client.v1.payment_intents.confirm(intent_id, options={"idempotency_key": f"{key}-confirm"})
        except stripe.CardError as err:
            raise PaymentDeclined(err.user_message or str(err)) from None

    def cancel(self, intent_id: str) -> None:
        intent = self.intent(intent_id)
        if intent.status in ("requires_payment_method", "requires_confirmation", "requires_action", "requires_capture"):
            self.client.v1.payment_intents.cancel(intent_id)

    def refund(self, key: str, intent_id: str) -> str:
        """The intent's refund: the one it has already (an answer lost after the provider refunded), or a new one."""
        intent = self.client.v1.payment_intents.retrieve(intent_id, params={"expand": ["latest_charge"]})
        charge = intent.latest_charge
        if charge is not None and not isinstance(charge, str) and charge.refunds and charge.refunds.data:
            return charge.refunds.data[0].id
        refund = self.client.v1.refunds.create(params={"payment_intent": intent_id}, options={"idempotency_key": f"{key}-refund"})
        return refund.id


class Payments:
    """The order's payment record in the store and, with a provider, the money at the provider."""

    def __init__(self, store: Store, provider: StripeProvider | None = None):
        self.store = store
        self.provider = provider

    def charge(
        self,
        order_id: str,
        amount: float,
        attempt: int,
        declined: bool,
        fault: str | None = None,
        note: str = "",
        card: Card | None = None,
        alive: Callable[[], None] = lambda: None,
    ) -> Payment:
        """Charge the order once, however often this runs (see the module's docstring); a decline raises
        PaymentDeclined. `fault`: one of NETWORK_FAULTS for this attempt to meet (the failure simulation).
        `card`: the one the shopper entered (None: the shop's test card; a simulated decline: the declining one).
        `alive` is called before each call to the provider (the activity's heartbeat)."""
        key = payment_key(order_id)
        if self.provider is not None:
            self.provider.network.arm(fault, note)
        try:
            return self._charge_once(key, order_id, amount, attempt, declined, card, alive)
        finally:
            if self.provider is not None:
                self.provider.network.disarm()

    def _charge_once(
        self, key: str, order_id: str, amount: float, attempt: int, declined: bool, card: Card | None, alive: Callable[[], None]
    ) -> Payment:
        with self.store.locked(PAYMENTS, key):
            alive()
            record = self.store.get(PAYMENTS, key)
            if record is not None and record["status"] == "voided":
                outcome = "refused"  # refunded before any charge: the order has stopped
            elif record is not None and record["status"] in ("charged", "refunded"):
                outcome = "found"
            else:
                record = self._charge(key, order_id, amount, record, declined, card, alive)
                outcome = "charged"
            self._log(key, attempt, amount, outcome)
            return payment_of(record)

    def _charge(
        self,
        key: str,
        order_id: str,
        amount: float,
        record: dict | None,
        declined: bool,
        card: Card | None,
        alive: Callable[[], None],
    ) -> dict:
        charged = {"payment_key": key, "order_id": order_id, "amount": amount, "refunded_at": None}
        if self.provider is None:
            if declined:
                raise PaymentDeclined("")
            charged.update(status="charged", charged_at=utc_now("milliseconds"))
            self.store.write_locked(PAYMENTS, key, charged, sort_key=key)
            return charged
        intent_id = record.get("intent_id") if record else None
        if intent_id is None:
            method, customer = (card.payment_method, card.stripe_customer) if card else (PAYING_CARD, None)
            if declined:  # the failure simulation's decline: Stripe's test card that declines, no customer's
                method, customer = DECLINED_CARD, None
            intent = self.provider.create_intent(key, order_id, amount, method, customer)
            intent_id = intent.id
            pending = {**charged, "status": "pending", "intent_id": intent_id, "charged_at": None}
            self.store.write_locked(PAYMENTS, key, pending, sort_key=key)
        else:  # a retry: the intent may have been confirmed since (the answer was lost)
            intent = self.provider.intent(intent_id)
        if intent.status == "requires_confirmation":
            alive()
            intent = self.provider.confirm(key, intent_id)
        if intent.status != "succeeded":
            raise PaymentDeclined(f"the payment is {intent.status.replace('_', ' ')}")
        charged.update(status="charged", charged_at=utc_now("milliseconds"), intent_id=intent_id)
        self.store.write_locked(PAYMENTS, key, charged, sort_key=key)
        return charged

    def refund(self, order_id: str) -> Payment | None:
        """Give the order's money back (a compensation); a second call changes nothing. With no charge
        yet, the payment key is voided, so a charge arriving late is refused. None: nothing was charged."""
        key = payment_key(order_id)
        with self.store.locked(PAYMENTS, key):
            record = self.store.get(PAYMENTS, key)
            if record is not None and record["status"] == "pending":
                record = self._settle_pending(key, record)
            if record is None or record["status"] == "pending":
                void = {"payment_key": key, "order_id": order_id, "amount": 0.0, "status": "voided", "charged_at": None}
                self.store.write_locked(PAYMENTS, key, {**void, "refunded_at": utc_now("milliseconds")}, sort_key=key)
                return None
            if record["status"] == "voided":
                return None  # voided by an earlier call: still nothing charged, the same answer as then
            if record["status"] == "charged":
                refund_id = self.provider.refund(key, record["intent_id"]) if self.provider and record.get("intent_id") else None
                record = {**record, "status": "refunded", "refunded_at": utc_now("milliseconds"), "refund_id": refund_id}
                self.store.write_locked(PAYMENTS, key, record)
        return payment_of(record)

    def _settle_pending(self, key: str, record: dict) -> dict | None:
        """An intent created and maybe confirmed, whose answer the charge never had: recorded as charged
        if it took the money (the caller refunds it), else cancelled at the provider (None)."""
        if self.provider is None:
            return None
        intent = self.provider.intent(record["intent_id"])
        if intent.status == "succeeded":
            charged = {**record, "status": "charged", "charged_at": utc_now("milliseconds")}
            self.store.write_locked(PAYMENTS, key, charged)
            return charged
        self.provider.cancel(record["intent_id"])
        return None

    def _log(self, key: str, attempt: int, amount: float, outcome: str) -> None:
        """What each attempt did, for the audit: the same attempt logs the same record (idempotent).
        Written under the payment key's lock (held by the caller)."""
        self.store.write_locked(
            PAYMENT_REQUESTS,
            f"{key}.attempt-{attempt}",
            {"payment_key": key, "attempt": attempt, "amount": amount, "outcome": outcome, "at": utc_now("milliseconds")},
        )


def payment_of(record: dict) -> Payment:
    return Payment(
        record["payment_key"],
        record["amount"],
        record["status"],
        record["charged_at"],
        record["refunded_at"],
        record.get("intent_id"),
        record.get("refund_id"),
    )
