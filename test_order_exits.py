"""Every way an order can end leaves money and stock right (time-skipping server).

One table: each step of the order × each way it can stop there (a business
refusal, retries running out, a cancellation through Temporal, the operator's
cancel, messages to a shipment that has closed). After each row the order is
checked from outside by `order_invariants`: a named final status, charged ⇒
refunded unless delivered, reserved ⇒ released unless delivered, no workflow
FAILED or CANCELED, the stored view equal to the workflow's.

Steps are held or broken by `Faults`: the worker's activity classes are swapped
for subclasses whose activities can be held at their start (to act while the
step runs) or fail every attempt (retries run out).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.exceptions import ApplicationError

import worker
from activities import OrderActivities, ShippingActivities
from config import load_rules
from order_invariants import assert_orders_right, order_problems
from shared import ACTION_REFUSED, AddressChange, CancelRequest, FailureInjection, OrderLine, OrderStatus
from store import JsonStore
from test_order_workflows import (  # noqa: F401 - order_settings is a fixture
    LARGE,
    NEW_ADDRESS,
    SMALL,
    order_request,
    order_settings,
    running_order_workers,
    start,
    wait_for,
)
from workflows import OrderWorkflow

UPDATE_DEADLINE = 10  # seconds: an update the workflow accepted must answer within the web layer's wait


class Faults:
    """Activities the test holds at their start, or makes fail on every attempt."""

    def __init__(self) -> None:
        self.failing: set[str] = set()
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}

    def hold(self, name: str) -> None:
        self.gates[name] = threading.Event()

    def release_all(self) -> None:
        for gate in self.gates.values():
            gate.set()

    def _entered(self, name: str) -> threading.Event:
        return self.entered.setdefault(name, threading.Event())

    async def wait_entered(self, name: str) -> None:
        entered = await asyncio.to_thread(self._entered(name).wait, 10)
        assert entered, f"{name} was never started"

    def before(self, name: str) -> None:
        self._entered(name).set()
        if name in self.gates:
            assert self.gates[name].wait(30), f"{name} held for too long"
        if name in self.failing:
            raise ApplicationError(f"test outage of {name}", type="TestOutage")

    def subclass(self, base: type) -> type:
        """`base` with every activity passing through `before` first."""
        faults = self
        overrides = {}
        for name, method in inspect.getmembers(base, inspect.isfunction):
            if not hasattr(method, "__temporal_activity_definition"):
                continue
            if inspect.iscoroutinefunction(method):
                async def wrapper(self, request, _method=method, _name=name):
                    await asyncio.to_thread(faults.before, _name)
                    return await _method(self, request)
            else:
                def wrapper(self, request, _method=method, _name=name):
                    faults.before(_name)
                    return _method(self, request)
            wrapped = functools.wraps(method)(wrapper)
            del wrapped.__dict__["__temporal_activity_definition"]  # copied by wraps; defined anew below
            overrides[name] = activity.defn(name=name)(wrapped)
        return type(f"Faulty{base.__name__}", (base,), overrides)


@pytest.fixture
async def faulty_workers(time_skipping_env, order_settings, monkeypatch):
    faults = Faults()
    monkeypatch.setattr(worker, "OrderActivities", faults.subclass(OrderActivities))
    monkeypatch.setattr(worker, "ShippingActivities", faults.subclass(ShippingActivities))
    try:
        async with running_order_workers(time_skipping_env.client, order_settings):
            yield faults
            faults.release_all()
    finally:
        faults.release_all()


# --- how to bring an order to a step, and what to do there ---------------------

ACTIVITY_OF_STEP = {"validate": "validate_order", "reserve": "reserve_inventory", "charge": "charge_payment",
                    "complete": "award_rewards"}


@dataclass
class Row:
    step: str  # validate, reserve, review, charge, prepare, transit, complete
    exit: str  # business, retries, temporal_cancel, operator_cancel, closed_shipment
    expected: str  # the order's final status
    lines: list[OrderLine] | None = None
    failures: list[FailureInjection] | None = None
    reason: str = ""  # part of the expected reason

    @property
    def id(self) -> str:
        return f"{self.step}-{self.exit}"


ROWS = [
    # A business refusal at each step that can refuse.
    Row("validate", "business", "rejected", lines=[OrderLine("LP-140", 9)], reason="above the maximum"),
    Row("reserve", "business", "rejected", lines=[OrderLine("RARE-1", 6)], reason="Not enough stock"),
    Row("review", "business", "cancelled", lines=LARGE, reason="Not reviewed within"),
    Row("charge", "business", "failed", failures=[FailureInjection("payment", permanent=True)], reason="declined"),
    Row("prepare", "business", "failed", failures=[FailureInjection("shipping", permanent=True)], reason="carrier could not"),
    # Retries running out (8 attempts).
    Row("validate", "retries", "failed", reason="test outage of validate_order"),
    Row("reserve", "retries", "failed", failures=[FailureInjection("inventory", times=8)], reason="8 of 8"),
    Row("charge", "retries", "failed", failures=[FailureInjection("payment", times=8)], reason="8 of 8"),
    Row("prepare", "retries", "failed", failures=[FailureInjection("shipping", times=8)], reason="8 of 8"),
    # Cancelled through Temporal (UI, CLI, API) while each step runs (retrying:
    # the payment is charged on the first attempt, its answer lost); after the
    # release to the carrier it is too late and the order completes.
    Row("validate", "temporal_cancel", "cancelled", reason="Cancelled through Temporal"),
    Row("reserve", "temporal_cancel", "cancelled", failures=[FailureInjection("inventory", times=8)], reason="Cancelled through Temporal"),
    Row("review", "temporal_cancel", "cancelled", lines=LARGE, reason="Cancelled through Temporal"),
    Row("charge", "temporal_cancel", "cancelled", failures=[FailureInjection("payment", times=8)], reason="Cancelled through Temporal"),
    Row("prepare", "temporal_cancel", "cancelled", reason="Cancelled through Temporal"),
    Row("transit", "temporal_cancel", "completed"),
    Row("complete", "temporal_cancel", "completed"),
    # The operator's cancel while each step runs (here: while it is retrying, the
    # case where waiting for the step would answer too late); refused once the
    # carrier has the parcel.
    Row("validate", "operator_cancel", "cancelled", reason="operator says stop"),
    Row("reserve", "operator_cancel", "cancelled", failures=[FailureInjection("inventory", times=8)], reason="operator says stop"),
    Row("review", "operator_cancel", "cancelled", lines=LARGE, reason="operator says stop"),
    Row("charge", "operator_cancel", "cancelled", failures=[FailureInjection("payment", times=8)], reason="operator says stop"),
    Row("prepare", "operator_cancel", "cancelled", reason="operator says stop"),
    Row("transit", "operator_cancel", "completed"),
    Row("complete", "operator_cancel", "completed"),
    # Expedite, a simulated failure and an address change sent after the shipment
    # closed: while the order undoes (the carrier failed) and while it completes.
    Row("prepare", "closed_shipment", "failed", failures=[FailureInjection("shipping", permanent=True)]),
    Row("complete", "closed_shipment", "completed"),
]


async def bring_to(row: Row, env, handle, faults: Faults) -> None:
    """Wait until the order is in the middle of `row.step`."""
    if row.step in ("validate", "reserve", "charge", "complete"):
        if row.step == "complete":
            await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
            await env.sleep(timedelta(seconds=601 + 3601))  # pickup, then transit
        await faults.wait_entered(ACTIVITY_OF_STEP[row.step])
    elif row.step == "review":
        await wait_for(handle, lambda s: s.status == "awaiting_review", "review")
    elif row.step == "prepare":
        await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
    elif row.step == "transit":
        await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
        await env.sleep(timedelta(seconds=601))
        await wait_for(handle, lambda s: s.shipment.stage == "dispatched", "dispatch")


async def refusal(awaitable: Awaitable) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await asyncio.wait_for(awaitable, UPDATE_DEADLINE)
    assert isinstance(failed.value.cause, ApplicationError) and failed.value.cause.type == ACTION_REFUSED
    return failed.value.cause.message


async def operator_cancel(row: Row, handle, faults: Faults) -> None:
    if row.expected == "completed":
        message = await refusal(handle.execute_update(OrderWorkflow.cancel, CancelRequest("operator says stop")))
        assert "handed to the carrier" in message or "already" in message
        faults.release_all()
        return
    update = await asyncio.wait_for(
        handle.start_update(OrderWorkflow.cancel, CancelRequest("operator says stop"), wait_for_stage=WorkflowUpdateStage.ACCEPTED),
        UPDATE_DEADLINE,
    )
    faults.release_all()  # the attempt in flight ends; the cancel takes effect
    answer: OrderStatus = await asyncio.wait_for(update.result(), UPDATE_DEADLINE)
    assert answer.status == "cancelled" and answer.cancel_reason == "operator says stop"


async def messages_to_closed_shipment(row: Row, env, handle, faults: Faults) -> None:
    if row.step == "prepare":
        faults.hold("release_inventory")  # the order is undoing: its shipment has failed and closed
        await faults.wait_entered("release_inventory")
    else:
        await bring_to(row, env, handle, faults)  # delivered; the shipment has closed
    assert (await handle.query(OrderWorkflow.status)).actions == []
    await handle.signal(OrderWorkflow.expedite)
    await handle.signal(OrderWorkflow.inject_failure, FailureInjection("shipping"))
    message = await refusal(handle.execute_update(OrderWorkflow.update_address, AddressChange(NEW_ADDRESS)))
    assert "already" in message or "handed to the carrier" in message
    faults.release_all()


@pytest.mark.parametrize("row", ROWS, ids=lambda row: row.id)
async def test_every_exit_leaves_money_and_stock_right(time_skipping_env, order_settings, faulty_workers, row: Row):
    env, faults = time_skipping_env, faulty_workers
    # Steps before the release are cancelled while they retry, never while an
    # attempt runs: a cancelled attempt that completes after its workflow closed
    # leaves the time-skipping test server unable to skip time for the rest of
    # the session (activities make such a late attempt a no-op; see activities.py).
    if row.step == "validate" and row.exit != "business":
        faults.failing.add("validate_order")
    if row.step == "complete" and row.exit != "closed_shipment":
        faults.hold(ACTIVITY_OF_STEP[row.step])
    if row.exit == "closed_shipment" and row.step == "complete":
        faults.hold("award_rewards")
    request = order_request(order_settings, row.lines or SMALL, failures=row.failures)
    handle = await start(env.client, order_settings, request)

    if row.exit == "temporal_cancel":
        await bring_to(row, env, handle, faults)
        await handle.cancel()
        faults.release_all()
    elif row.exit == "operator_cancel":
        await bring_to(row, env, handle, faults)
        await operator_cancel(row, handle, faults)
    elif row.exit == "closed_shipment":
        await messages_to_closed_shipment(row, env, handle, faults)

    status: OrderStatus = await asyncio.wait_for(handle.result(), 30)
    assert status.status == row.expected, f"{row.id}: {status.status} ({status.reason})"
    assert row.reason in (status.reason or ""), status.reason
    catalog = load_rules(order_settings.rules_file).orders.catalog
    assert await assert_orders_right(env.client, order_settings.data_dir, {i.sku: i.stock for i in catalog}) == 1
