"""Payments against the session's local Stripe (orders/payments.py): one charge per order whatever the network does.

Each fault the failure simulation acts out at the network (a request that never
reaches the provider, an answer lost after it acted, no answer in time, a 500)
is met by two attempts, then the third succeeds; the provider's own records
then hold exactly one succeeded PaymentIntent. The undo is checked the same
way: a refund after a lost answer finds the money taken and gives it back once.
"""

from __future__ import annotations

import os
import uuid

import pytest
import stripe

from core.store.files import JsonStore
from orders.model import PAYMENTS, payment_key
from orders.payments import NETWORK_FAULTS, Payments, StripeProvider
from tests.fixtures import provider_payments


@pytest.fixture
def payments(tmp_path, local_stripe) -> Payments:
    return Payments(JsonStore(tmp_path), StripeProvider(os.environ["STRIPE_API_KEY"], local_stripe))


def new_order() -> str:
    return uuid.uuid4().hex[:12]


@pytest.mark.parametrize("fault", NETWORK_FAULTS)
def test_each_network_fault_is_retried_into_exactly_one_charge(payments, fault):
    order = new_order()
    for attempt in (1, 2):
        with pytest.raises(stripe.StripeError, match="simulated"):
            payments.charge(order, 19.99, attempt, declined=False, fault=fault)
    charged = payments.charge(order, 19.99, 3, declined=False)
    assert charged.status == "charged"
    assert [(state, amount) for state, amount, _ in provider_payments(order)] == [("succeeded", 1999)]
    assert payments.charge(order, 19.99, 4, declined=False).charged_at == charged.charged_at  # found, not charged again


def test_an_undo_after_a_lost_answer_refunds_the_money_taken_once_and_a_late_charge_finds_it(payments):
    order = new_order()
    with pytest.raises(stripe.StripeError, match="answer was lost"):
        payments.charge(order, 50.0, 1, declined=False, fault="lost_answer")  # the provider took the money
    refunded = payments.refund(order)
    assert refunded is not None and refunded.status == "refunded"
    assert payments.refund(order) == refunded  # a second undo changes nothing
    late = payments.charge(order, 50.0, 2, declined=False)  # the step's attempt, still retrying
    assert late.status == "refunded"
    assert provider_payments(order) == [("succeeded", 5000, 5000)]


def test_an_undo_before_any_charge_voids_the_key_and_a_late_charge_takes_nothing(payments):
    order = new_order()
    assert payments.refund(order) is None
    assert payments.charge(order, 50.0, 1, declined=False).status == "voided"
    assert provider_payments(order) == []


def test_an_undo_of_an_intent_never_confirmed_cancels_it(payments):
    order = new_order()
    with pytest.raises(stripe.StripeError, match="never reached"):
        payments.charge(order, 12.0, 1, declined=False, fault="unreached")  # created, the confirmation lost on the way
    assert payments.store.get(PAYMENTS, payment_key(order))["status"] == "pending"
    assert payments.refund(order) is None
    assert [state for state, _, _ in provider_payments(order)] == ["canceled"]
