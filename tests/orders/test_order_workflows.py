"""OrderWorkflow, ShippingWorkflow and RewardsWorkflow on the time-skipping test server.

Real activities on a temporary data folder; the review SLA, packing and transit
times pass in milliseconds. Each test has its own task queues, data and orders.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from unittest import mock

import pytest
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowHistory,
    WorkflowUpdateFailedError,
)
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from core.formatting import day_value
from core.rules import load_messages, load_rules
from core.store.files import JsonStore
from orders import customer_emails as customer_emails_module
from orders import messages as order_messages_module
from orders import workflow as order_workflow_module
from orders.activities import order_events
from orders.model import (
    ACTION_REFUSED,
    INVENTORY,
    NOTIFICATIONS,
    ORDER_EMAIL_KINDS,
    ORDER_MILESTONES,
    ORDERS,
    PAYMENT_REQUESTS,
    PAYMENTS,
    RESERVATIONS,
    SHIPMENTS,
    STOCK,
    Address,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    FailureInjection,
    MessageFrom,
    OrderLine,
    OrderPolicy,
    OrderRequest,
    OrderStatus,
    ShippingTiming,
    order_workflow_id,
    workflow_texts,
)
from orders.review_queue import awaiting_review, in_review_queue
from orders.rewards import RewardsWorkflow
from orders.rewards_model import REWARDS, AwardPoints, RewardsInput, RewardsState, RewardTierRule, rewards_workflow_id
from orders.shipping import ShippingWorkflow
from orders.workflow import OrderWorkflow
from tests.fixtures import plain_history_json, provider_payments
from worker import build_order_workers

HERE = Path(__file__).resolve().parents[2]  # the repository root
ADDRESS = Address("Ada Lovelace", "12 Analytical Way", "London", "N1 9GU", "UK")
NEW_ADDRESS = Address("Ada Lovelace", "1 Engine Street", "Manchester", "M1 1AA", "UK")


@pytest.fixture
def order_settings(settings, tmp_path):
    """Settings with a rules copy: one scarce product, and a long carrier pickup so
    tests can act between the charge and the dispatch."""
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["catalog"].append({"sku": "RARE-1", "name": "Rare item", "price": 10.0, "stock": 5})
    rules["orders"]["shipping"] = {"prepare_seconds": 600, "transit_seconds": 3600, "expedited_transit_seconds": 60}
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    return dataclasses.replace(settings, rules_file=rules_file)


@contextlib.asynccontextmanager
async def running_order_workers(client: Client, settings):
    with ThreadPoolExecutor(max_workers=16) as executor:
        async with contextlib.AsyncExitStack() as running:
            for worker in build_order_workers(client, settings, executor, "worker-test", concurrency=16):
                await running.enter_async_context(worker)
            yield


@pytest.fixture
async def order_workers(time_skipping_env, order_settings):
    async with running_order_workers(time_skipping_env.client, order_settings):
        yield


def store(settings) -> JsonStore:
    return JsonStore(settings.data_dir)


def order_request(
    settings, lines: list[OrderLine], failures: list[FailureInjection] | None = None, expedited: bool = False
) -> OrderRequest:
    rules = load_rules(settings.rules_file).orders
    return OrderRequest(
        order_id=uuid.uuid4().hex[:12],
        customer_id=f"cust-{uuid.uuid4().hex[:8]}",
        lines=lines,
        address=ADDRESS,
        expedited=expedited,
        policy=OrderPolicy(
            rules.max_order_total,
            rules.auto_approve_limit,
            rules.review_sla_seconds,
            reward_points_per_dollar=rules.rewards.points_per_dollar,
        ),
        shipping=ShippingTiming(**rules.shipping.model_dump()),
        placed_at=datetime.now(timezone.utc).isoformat(),
        failures=failures or [],
        shipping_task_queue=settings.shipping_task_queue,
        texts=workflow_texts(load_messages(settings.messages_file).orders),  # what the service sends
        messages_need_sender=True,
    )


SMALL = [OrderLine("KB-100", 2), OrderLine("CB-010", 3)]  # 214.00: approved automatically
LARGE = [OrderLine("LP-140", 2)]  # 2,498.00: needs review


async def start(client: Client, settings, request: OrderRequest) -> WorkflowHandle:
    return await client.start_workflow(
        OrderWorkflow.run, request, id=order_workflow_id(request.order_id), task_queue=settings.order_task_queue
    )


async def wait_for(handle: WorkflowHandle, predicate, what: str, timeout: float = 15.0) -> OrderStatus:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await handle.query(OrderWorkflow.status)
        if predicate(status):
            return status
        assert loop.time() < deadline, (
            f"timed out waiting for {what}; status {status.status}, step {status.step}, shipment {status.shipment.stage}"
        )
        await asyncio.sleep(0.05)


async def update(handle: WorkflowHandle, action, *args, deadline: float = 10.0):
    """An update with a deadline: a validator or handler that never answers fails the test in seconds."""
    try:
        return await asyncio.wait_for(handle.execute_update(action, *args), deadline)
    except asyncio.TimeoutError:
        raise AssertionError(f"update {action.__name__} got no answer within {deadline} s") from None


def stock_of(settings, sku: str) -> int:
    return store(settings).get(INVENTORY, STOCK)["levels"][sku]


def starting_stock(settings, sku: str) -> int:
    return load_rules(settings.rules_file).orders.item(sku).stock


async def test_small_order_runs_every_step_and_awards_points(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, SMALL)
    handle = await start(time_skipping_env.client, order_settings, request)
    status: OrderStatus = await handle.result()

    assert status.status == "completed"
    assert set(status.milestones) == set(ORDER_MILESTONES)
    assert status.total == 214.0 and status.approved_by == "auto" and not status.needs_review
    assert status.payment.status == "charged" and status.payment.amount == 214.0
    assert status.shipment.stage == "delivered" and status.shipment.carrier == "Ground Freight"
    assert status.points_awarded == 214
    assert stock_of(order_settings, "KB-100") == starting_stock(order_settings, "KB-100") - 2
    projection = store(order_settings).get(ORDERS, request.order_id)
    assert projection["status"] == "completed"
    notification = store(order_settings).get(NOTIFICATIONS, f"{request.order_id}-completed")
    assert "214 reward points" in notification["message"]
    rewards = store(order_settings).get(REWARDS, request.customer_id)  # counted by the award itself
    assert (rewards["points"], rewards["tier"], rewards["orders"]) == (214, "silver", 1)
    messages = [e["message"] for e in order_events(store(order_settings), request.order_id)]
    assert messages[0].startswith("Order received") and "Order completed; 214 reward points awarded" in messages


def assert_recorded_in_full(order_settings, status: OrderStatus, expected_events: tuple[str, ...]) -> None:
    """The stored record is the order's final state; each email's outcome is stored (no mail server in
    these tests: "not_configured"), none left "sending"; every expected event is there, numbered without gaps."""
    saved = store(order_settings).get(ORDERS, status.order_id)
    # The order's state, and what the store counts it under for the dashboard's chart.
    assert saved.pop("day_status") == day_value(status.placed_at, "completed")
    assert saved == json.loads(json.dumps(dataclasses.asdict(status)))
    assert {kind: state["status"] for kind, state in saved["emails"].items()} == dict.fromkeys(
        ("received", "shipped", "delivered"), "not_configured"
    )
    messages = [e["message"] for e in order_events(store(order_settings), status.order_id)]
    for expected in expected_events:
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    assert [e["key"] for e in order_events(store(order_settings), status.order_id)] == [
        f"wf-{n:04d}" for n in range(1, len(messages) + 1)
    ]


async def test_lean_bookkeeping_writes_fewer_records_and_loses_nothing(time_skipping_env, order_settings, order_workers):
    """Version 9: the steps that follow a change carry the order's record, the notices ride with
    it, and the delivery comes with the shipment's result. Every event, notice and email outcome
    is still stored, and the stored record is the order's final state."""
    from test_workflows import activity_attempts

    request = dataclasses.replace(order_request(order_settings, SMALL), customer_email="ada@example.com")
    handle = await start(time_skipping_env.client, order_settings, request)
    status: OrderStatus = await handle.result()
    assert status.status == "completed" and status.attempts["delivered"] == 1

    local = [
        name for name, _ in activity_attempts(await handle.fetch_history()) if name in ("record_progress", "notify_customer")
    ]
    assert "notify_customer" not in local
    # Prepared (the pickup's wait), released, dispatched, and the emails' outcomes that arrive while the
    # order waits; "Shipping started" rides with the preparation (v8 wrote 13 records and 2 notices).
    assert 3 <= len(local) <= 6, local
    assert_recorded_in_full(
        order_settings,
        status,
        ("Order received", "Validated", "Inventory reserved", "Approved automatically", "Payment charged")
        + ("Shipping started", "Shipment prepared", "Released to the carrier", "Delivered", "Order completed"),
    )
    for kind in ("received", "completed"):
        assert store(order_settings).get(NOTIFICATIONS, f"{request.order_id}-{kind}") is not None


async def test_versions_10_and_11_run_fewer_tasks_and_lose_nothing(time_skipping_env, order_settings, order_workers, tmp_path):
    """Version 10: validation sends the "received" email, the award of points sends "delivered" and
    writes the completed record. Version 11: the order prepares the package itself (on the shipping
    task queue) and starts the shipment at the release with its word, so the shipment's only signal
    is "dispatched". Each email still goes once, the record is the final state, every event is kept."""
    from test_workflows import activity_attempts

    request = dataclasses.replace(order_request(order_settings, SMALL), customer_email="ada@example.com")
    request = dataclasses.replace(request, shipping=ShippingTiming(0, 0, 0))
    handle = await start(time_skipping_env.client, order_settings, request)
    status: OrderStatus = await handle.result()
    assert status.status == "completed" and status.attempts["prepared"] == 1

    history = await handle.fetch_history()
    names = [name for name, _ in activity_attempts(history)]
    assert names.count("send_order_email") == 1, names  # "shipped" only: the other two rode with steps
    [prepare] = [
        e.activity_task_scheduled_event_attributes
        for e in history.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == "prepare_package"
    ]
    assert prepare.task_queue.name == order_settings.shipping_task_queue
    shipping = await time_skipping_env.client.get_workflow_handle(f"{handle.id}-shipping").fetch_history()
    signals = [
        e.signal_external_workflow_execution_initiated_event_attributes.signal_name
        for e in shipping.events
        if e.HasField("signal_external_workflow_execution_initiated_event_attributes")
    ]
    assert signals == ["shipment_progress"], signals  # dispatched; nothing before the release
    received = [
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in shipping.events
        if e.HasField("workflow_execution_signaled_event_attributes")
    ]
    assert received == [], received  # no word to dispatch: the shipment started with it
    assert_recorded_in_full(
        order_settings, status, ("Order received", "Validated", "Shipment prepared", "Released to the carrier", "Order completed")
    )
    from test_workflows import replay_in_fresh_processes

    (tmp_path / "order.json").write_text(history.to_json())
    (tmp_path / "shipping.json").write_text(shipping.to_json())
    replay_in_fresh_processes([tmp_path / "order.json", tmp_path / "shipping.json"])


def test_an_order_carries_every_text_its_workflow_says_and_only_those():
    """The workflow words its refusals, notices and emails with the texts the order carries: each
    `_text("…")` and `texts.get("…")` of its modules and each email's subject and body is among
    them, and the web's texts are not (they were 6 of an order input's 7 KB)."""
    every = load_messages(HERE / "messages.json").orders
    carried = workflow_texts(every)
    said = {f"email_{kind}{part}" for kind in ORDER_EMAIL_KINDS for part in ("", "_subject")}
    for module in (order_workflow_module, order_messages_module, customer_emails_module):
        said |= set(re.findall(r'(?:_text\(|texts\.get\()f?"([a-z_]+)"', inspect.getsource(module)))
    assert len(said) > 25 and said <= carried.keys(), sorted(said - carried.keys())
    assert "placement_unknown_form" not in carried and "not_found" not in carried
    assert len(json.dumps(carried)) < len(json.dumps(every)) / 2


def test_a_record_never_hides_a_newer_one_and_its_events_are_always_written(tmp_path):
    """An attempt that ends after its order moved on (or a retry) writes its events, which are
    the same whenever written, and never puts its older projection over the newer one."""
    from orders.activities import write_progress
    from orders.model import OrderEvent, ProgressRecord, order_events_collection

    data = JsonStore(tmp_path)
    base = OrderStatus("o1", "c1", "processing", "validate", ADDRESS, False, placed_at="2026-12-04T10:00:00+00:00")

    def record(revision: int, step: str, *keys: str) -> ProgressRecord:
        events = [OrderEvent("o1", key, "step", f"event {key}", "2026-12-04T10:00:00+00:00") for key in keys]
        return ProgressRecord(dataclasses.replace(base, step=step, revision=revision), events)

    write_progress(data, record(2, "reserve_inventory", "wf-0002"))
    write_progress(data, record(1, "validate", "wf-0001"))  # late
    assert (data.get(ORDERS, "o1")["step"], data.get(ORDERS, "o1")["revision"]) == ("reserve_inventory", 2)
    assert [e["key"] for e in order_events(data, "o1")] == ["wf-0001", "wf-0002"]
    write_progress(data, record(2, "reserve_inventory", "wf-0002"))  # a retry
    assert data.get(ORDERS, "o1")["step"] == "reserve_inventory" and len(order_events(data, "o1")) == 2
    write_progress(data, record(3, "charge_payment"))
    assert (data.get(ORDERS, "o1")["step"], data.get(ORDERS, "o1")["revision"]) == ("charge_payment", 3)
    assert data.count_by(ORDERS, "status") == {"processing": 1}
    # A record's events in one document; events sent again with a later record are read once.
    write_progress(data, record(4, "ship", "wf-0002", "wf-0003", "wf-0004"))
    assert [e["key"] for e in order_events(data, "o1")] == ["wf-0001", "wf-0002", "wf-0003", "wf-0004"]
    assert len(data.list_all(order_events_collection("o1"))) == 3


async def test_large_order_waits_for_approval_then_completes(time_skipping_env, order_settings, order_workers):
    handle = await start(time_skipping_env.client, order_settings, order_request(order_settings, LARGE))
    waiting = await wait_for(handle, lambda s: s.status == "awaiting_review", "review")
    assert waiting.needs_review and waiting.review_deadline and not waiting.approved
    # The operators' review queue has it, with its deadline, while it waits (orders/review_queue.py): its
    # record is written in the workflow task that began the wait, which the query's answer came after.
    queued = awaiting_review(store(order_settings))
    assert [(o["order_id"], o["review_deadline"]) for o in queued] == [(waiting.order_id, waiting.review_deadline)]

    approved = await update(handle, OrderWorkflow.approve, ApproveRequest("alice"))
    assert approved.approved and approved.approved_by == "alice"
    status = await handle.result()
    assert status.status == "completed" and status.points_awarded == 2498
    assert not in_review_queue(store(order_settings), status.order_id)


async def test_plain_updates_sent_straight_to_temporal_act_as_no_operator(time_skipping_env, order_settings, order_workers):
    """`temporal workflow update execute --name approve --input '{"operator": "anyone"}'` (a plain
    payload, no key) approved a review-pending order; now such updates are rejected and the order waits."""
    client = time_skipping_env.client
    handle = await start(client, order_settings, order_request(order_settings, LARGE))
    await wait_for(handle, lambda s: s.status == "awaiting_review", "review")
    plain = Client(**{**client.config(), "data_converter": DataConverter.default}).get_workflow_handle(handle.id)
    for name, payload in (
        ("approve", {"operator": "anyone"}),
        ("cancel", {"reason": "forged", "operator": "anyone"}),
        ("update_address", {"address": dataclasses.asdict(ADDRESS), "operator": "anyone"}),
    ):
        with pytest.raises(WorkflowUpdateFailedError):
            await asyncio.wait_for(plain.execute_update(name, payload), 10)
    status = await handle.query(OrderWorkflow.status)
    assert status.status == "awaiting_review" and not status.approved and not status.cancelled
    # The operator's own approval, through a client with the key, still works.
    assert (await update(handle, OrderWorkflow.approve, ApproveRequest("alice"))).approved_by == "alice"
    assert (await handle.result()).status == "completed"


async def test_plain_messages_without_input_act_as_no_one(time_skipping_env, order_settings, order_workers):
    """`temporal workflow signal --name stop` (no input, so nothing for the codec to refuse) stopped a
    shipment, which cancelled its order; `expedite` and `shipment_ready` on the order acted too.
    Those messages now carry their sender, encrypted: without one, the order and its shipment go
    on as before (the rewards' `close`: the next test)."""
    client = time_skipping_env.client
    plain = Client(**{**client.config(), "data_converter": DataConverter.default})
    handle = await start(client, order_settings, order_request(order_settings, SMALL))
    await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
    # The order's own: `expedite`, and `shipment_ready`, which released a version 10 order's parcel
    # before its pickup: the address could no longer change. An update after them sees them handled.
    order = plain.get_workflow_handle(handle.id)
    await order.signal("expedite")
    await order.signal("shipment_ready")
    changed = await update(handle, OrderWorkflow.update_address, AddressChange(NEW_ADDRESS, "test"))
    assert changed.address == NEW_ADDRESS and not changed.expedited
    status = await handle.result()
    assert status.status == "completed" and not status.expedited
    assert not any("Expedited" in e["message"] for e in order_events(store(order_settings), status.order_id))
    # A shipment's, once its order started it at the release (no wait for the pickup here), in transit
    # (20 s, and no time passes until the test asks for the result).
    request = dataclasses.replace(order_request(order_settings, SMALL), shipping=ShippingTiming(0, 20, 5))
    handle = await start(client, order_settings, request)
    await wait_for(handle, lambda s: s.shipment.stage == "dispatched", "the parcel to be dispatched")
    shipment = plain.get_workflow_handle(f"{handle.id}-shipping")
    await shipment.signal("stop")
    await shipment.signal("expedite")
    status = await handle.result()
    assert status.status == "completed" and status.shipment.stage == "delivered"  # not stopped
    assert not status.expedited and not status.shipment.expedited  # nor expedited


async def test_a_plain_close_of_a_customers_rewards_is_rejected(dev_server, order_settings, dev_server_order_workers):
    """`temporal workflow update execute --name close` closed a customer's rewards; `close` now carries
    its sender and one without is rejected. On the dev server: the time-skipping server keeps no
    outcome of a rejected update, so asking for it hung or heard "not found" (4 runs in 6)."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    rewards = RewardsInput(RewardsState(customer, points=7), [RewardTierRule("basic", 0)], 1000, close_needs_sender=True)
    await dev_server.client.start_workflow(
        RewardsWorkflow.run, rewards, id=rewards_workflow_id(customer), task_queue=order_settings.order_task_queue
    )
    plain = Client(**{**dev_server.client.config(), "data_converter": DataConverter.default})
    with pytest.raises(WorkflowUpdateFailedError):
        await asyncio.wait_for(plain.get_workflow_handle(rewards_workflow_id(customer)).execute_update("close"), 10)
    owned = dev_server.client.get_workflow_handle(rewards_workflow_id(customer))
    assert not (await owned.query(RewardsWorkflow.summary)).closed
    assert (await update(owned, RewardsWorkflow.close, MessageFrom("test"))).closed


async def test_review_timeout_cancels_and_releases_stock(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, LARGE)
    handle = await start(time_skipping_env.client, order_settings, request)
    await wait_for(handle, lambda s: s.status == "awaiting_review", "review")
    assert stock_of(order_settings, "LP-140") == starting_stock(order_settings, "LP-140") - 2

    status = await handle.result()  # time skips past the 3-minute SLA

    assert status.status == "cancelled" and status.cancelled
    assert not in_review_queue(store(order_settings), request.order_id)  # it left the queue with its deadline
    assert "cancelled automatically" in status.reason
    assert status.compensations == ["release inventory"]
    assert status.payment is None
    assert stock_of(order_settings, "LP-140") == starting_stock(order_settings, "LP-140")


async def test_cancel_before_charge_releases_stock_only(time_skipping_env, order_settings, order_workers):
    handle = await start(time_skipping_env.client, order_settings, order_request(order_settings, LARGE))
    await wait_for(handle, lambda s: s.status == "awaiting_review", "review")

    status = await update(handle, OrderWorkflow.cancel, CancelRequest("customer changed their mind", "bob"))

    assert status.status == "cancelled" and status.cancel_reason == "customer changed their mind"
    assert status.compensations == ["release inventory"]
    assert store(order_settings).list_recent(PAYMENTS) == ([], 0)


async def test_cancel_after_charge_refunds_and_releases(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, SMALL)
    handle = await start(time_skipping_env.client, order_settings, request)
    await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")

    status = await update(handle, OrderWorkflow.cancel, CancelRequest("duplicate order"))

    assert status.status == "cancelled"
    assert status.compensations == ["stop shipment", "refund payment", "release inventory"]  # newest first
    assert status.shipment.stage == "cancelled"
    assert status.payment.status == "refunded"
    payment = store(order_settings).get(PAYMENTS, f"pay-{request.order_id}")
    assert payment["status"] == "refunded" and payment["refunded_at"]
    assert stock_of(order_settings, "KB-100") == starting_stock(order_settings, "KB-100")
    assert store(order_settings).get(SHIPMENTS, request.order_id) is None  # never dispatched


async def test_address_change_is_persisted_and_used_by_shipping(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, LARGE)
    handle = await start(time_skipping_env.client, order_settings, request)
    await wait_for(handle, lambda s: s.status == "awaiting_review", "review")

    changed = await update(handle, OrderWorkflow.update_address, AddressChange(NEW_ADDRESS, "carol"))
    assert changed.address == NEW_ADDRESS
    assert store(order_settings).get(ORDERS, request.order_id)["address"]["city"] == "Manchester"

    await update(handle, OrderWorkflow.approve, ApproveRequest())
    assert (await handle.result()).status == "completed"
    label = store(order_settings).get(SHIPMENTS, request.order_id)
    assert label["address"]["city"] == "Manchester"


async def test_address_change_while_packing_reaches_the_shipment(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, SMALL)
    handle = await start(time_skipping_env.client, order_settings, request)
    await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
    await update(handle, OrderWorkflow.update_address, AddressChange(NEW_ADDRESS))
    assert (await handle.result()).status == "completed"
    assert store(order_settings).get(SHIPMENTS, request.order_id)["address"]["street"] == "1 Engine Street"


async def refusal(handle: WorkflowHandle, action, argument) -> str:
    with pytest.raises(WorkflowUpdateFailedError) as failed:
        await update(handle, action, argument)
    cause = failed.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == ACTION_REFUSED
    return cause.message


async def test_changes_are_refused_once_dispatched(time_skipping_env, order_settings, order_workers):
    handle = await start(time_skipping_env.client, order_settings, order_request(order_settings, SMALL))
    await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
    await time_skipping_env.sleep(timedelta(seconds=601))  # the carrier picks the parcel up
    await wait_for(handle, lambda s: s.shipment.stage == "dispatched", "dispatch")

    assert "no longer be changed" in await refusal(handle, OrderWorkflow.cancel, CancelRequest("too late"))
    assert "no longer be changed" in await refusal(handle, OrderWorkflow.update_address, AddressChange(NEW_ADDRESS))
    assert "not awaiting review" in await refusal(handle, OrderWorkflow.approve, ApproveRequest())
    status = await handle.result()
    assert status.status == "completed" and not status.cancelled


async def test_approving_an_order_that_needs_no_review_is_refused(time_skipping_env, order_settings, order_workers):
    handle = await start(time_skipping_env.client, order_settings, order_request(order_settings, SMALL))
    await wait_for(handle, lambda s: s.approved, "automatic approval")
    assert "not awaiting review" in await refusal(handle, OrderWorkflow.approve, ApproveRequest())
    assert (await handle.result()).status == "completed"


async def test_payment_failing_twice_charges_exactly_once(time_skipping_env, order_settings, order_workers, caplog):
    caplog.set_level(logging.DEBUG)
    request = order_request(order_settings, SMALL, failures=[FailureInjection("payment", times=2)])
    handle = await start(time_skipping_env.client, order_settings, request)
    status = await handle.result()

    assert status.status == "completed"
    assert status.attempts["charge_payment"] == 3
    payments, total = store(order_settings).list_recent(PAYMENTS)
    assert total == 1 and payments[0]["amount"] == 214.0 and payments[0]["status"] == "charged"
    # The first two attempts lost the provider's answer (the first after it took the money); the
    # third found the charge. The provider holds one succeeded payment; the attempts' log, one charge.
    assert provider_payments(request.order_id) == [("succeeded", 21400, 0)]
    log = sorted(store(order_settings).list_all(PAYMENT_REQUESTS), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["outcome"]) for r in log] == [(3, "charged")]
    retries = [e for e in order_events(store(order_settings), request.order_id) if e["kind"] == "retry"]
    assert [e["attempt"] for e in retries] == [1, 2]
    assert "the answer was lost after the provider acted" in retries[0]["message"]
    assert_expected_failures_logged_as_one_line_each(caplog, request.order_id, 2)


async def test_declined_card_fails_the_order_and_releases_stock(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, SMALL, failures=[FailureInjection("payment", permanent=True)])
    status = await (await start(time_skipping_env.client, order_settings, request)).result()
    assert status.status == "failed" and status.reason == "Your card was declined."  # the provider's own reason
    assert status.compensations == ["release inventory"]
    assert [state for state, _, _ in provider_payments(request.order_id)] == ["canceled"]  # declined: no money taken
    assert stock_of(order_settings, "KB-100") == starting_stock(order_settings, "KB-100")


async def test_shipping_failing_permanently_refunds_and_releases(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, SMALL, failures=[FailureInjection("shipping", permanent=True)])
    status = await (await start(time_skipping_env.client, order_settings, request)).result()

    assert status.status == "failed" and status.reason == "The carrier could not deliver the order."
    assert status.compensations == ["refund payment", "release inventory"]
    assert store(order_settings).get(PAYMENTS, f"pay-{request.order_id}")["status"] == "refunded"
    assert stock_of(order_settings, "KB-100") == starting_stock(order_settings, "KB-100")
    kinds = [e["kind"] for e in order_events(store(order_settings), request.order_id)]
    assert kinds.count("compensation") == 2 and "failure" in kinds


async def test_failure_injected_into_a_running_order_is_retried(time_skipping_env, order_settings, order_workers, caplog):
    caplog.set_level(logging.DEBUG)
    request = order_request(order_settings, LARGE)
    handle = await start(time_skipping_env.client, order_settings, request)
    await wait_for(handle, lambda s: s.status == "awaiting_review", "review")
    await handle.signal(OrderWorkflow.inject_failure, FailureInjection("shipping", times=2))
    await update(handle, OrderWorkflow.approve, ApproveRequest())
    status = await handle.result()
    assert status.status == "completed" and status.attempts["prepared"] == 3
    assert_expected_failures_logged_as_one_line_each(caplog, request.order_id, 2)


def assert_expected_failures_logged_as_one_line_each(caplog, order_id: str, count: int) -> None:
    """A simulated failure is expected: the worker's log says it in the order's one line (INFO), and the
    SDK's "Completing activity as failed" with its traceback drops to DEBUG (a real failure keeps WARNING)."""
    lines = [r for r in caplog.records if r.name == "orders.activities" and order_id in r.getMessage()]
    assert [r.levelno for r in lines] == [logging.INFO] * count, [r.getMessage() for r in lines]
    assert all(r.exc_info is None and "Trying again." in r.getMessage() for r in lines)
    failed = [r for r in caplog.records if r.getMessage().startswith("Completing activity as failed")]
    assert failed and all(r.levelno == logging.DEBUG for r in failed), [(r.levelname, r.getMessage()) for r in failed]


async def test_expedite_ships_by_express(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, SMALL)
    handle = await start(time_skipping_env.client, order_settings, request)
    await wait_for(handle, lambda s: s.approved, "approval")
    await handle.signal(OrderWorkflow.expedite, MessageFrom("test"))
    status = await handle.result()
    assert status.expedited and status.shipment.carrier == "Express Air"


async def test_order_over_the_maximum_is_rejected_without_side_effects(time_skipping_env, order_settings, order_workers):
    request = order_request(order_settings, [OrderLine("LP-140", 9)])  # 11,241.00
    status = await (await start(time_skipping_env.client, order_settings, request)).result()
    assert status.status == "rejected" and "above the maximum of $10,000" in status.reason
    assert status.compensations == [] and store(order_settings).get(INVENTORY, STOCK) is None


async def test_concurrent_orders_never_oversell(dev_server, order_settings, dev_server_order_workers):
    """On the dev server: orders left mid-flight would hold the time-skipping server's clock."""
    requests = [order_request(order_settings, [OrderLine("RARE-1", 1)]) for _ in range(8)]
    handles = await asyncio.gather(*(start(dev_server.client, order_settings, r) for r in requests))
    # Past the reservation: approved, or rejected for want of stock.
    statuses = await asyncio.gather(
        *(wait_for(h, lambda s: s.approved or s.status == "rejected", "the reservation") for h in handles)
    )

    outcomes = sorted("reserved" if s.approved else s.status for s in statuses)
    assert outcomes == ["rejected"] * 3 + ["reserved"] * 5
    assert all("Not enough stock of RARE-1" in s.reason for s in statuses if s.status == "rejected")
    assert stock_of(order_settings, "RARE-1") == 0
    reservations = [store(order_settings).get(RESERVATIONS, r.order_id) for r in requests]
    assert sum(1 for r in reservations if r["status"] == "reserved") == 5
    for handle, status in zip(handles, statuses):
        if status.approved:
            await handle.terminate("test finished")


@pytest.fixture
async def dev_server_order_workers(dev_server, order_settings):
    """Order workers on the real dev server, for what needs no time skipping."""
    async with running_order_workers(dev_server.client, order_settings):
        yield


async def test_concurrent_awards_across_continue_as_new_count_each_order_once(
    dev_server, order_settings, dev_server_order_workers
):
    """60 orders' awards at once, each sent twice, on a history of at most 40 events:
    several continue-as-new boundaries; pending awards travel in the next run's input.

    On the dev server: on the time-skipping test server (temporal-test-server
    1.40.0) this same test stalls; the query to the continued run times out
    after 30 s ("RPCError: Timeout expired"), the run never given a workflow task."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    tiers = [RewardTierRule(t.name, t.min_points) for t in load_rules(order_settings.rules_file).orders.rewards.tiers]
    client = dev_server.client
    started = await client.start_workflow(
        RewardsWorkflow.run,
        RewardsInput(RewardsState(customer), tiers, max_history_events=40),
        id=rewards_workflow_id(customer),
        task_queue=order_settings.order_task_queue,
    )
    handle = client.get_workflow_handle(rewards_workflow_id(customer))
    awards = [AwardPoints(f"order-{n}", 10 + n) for n in range(60)]
    await asyncio.gather(*(handle.signal(RewardsWorkflow.award, award) for award in awards + awards))
    await wait_until_points(handle, sum(a.points for a in awards))
    closed = await asyncio.wait_for(handle.execute_update(RewardsWorkflow.close, MessageFrom("test")), 10)
    assert (closed.points, closed.orders) == (sum(a.points for a in awards), 60)
    assert (await handle.describe()).run_id != started.first_execution_run_id, "never continued as new"
    saved = store(order_settings).get(REWARDS, customer)  # each save counted its awards in the record once
    assert (saved["points"], saved["orders"], saved["closed"]) == (sum(a.points for a in awards), 60, True)


async def test_rewards_tiers_and_continue_as_new(dev_server, order_settings, dev_server_order_workers):
    """Tiers as points grow, on the dev server (also kept there as a second server's view)."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    tiers = [RewardTierRule(t.name, t.min_points) for t in load_rules(order_settings.rules_file).orders.rewards.tiers]
    started = await dev_server.client.start_workflow(
        RewardsWorkflow.run,
        RewardsInput(RewardsState(customer), tiers, max_history_events=20),
        id=rewards_workflow_id(customer),
        task_queue=order_settings.order_task_queue,
    )
    first_run = started.first_execution_run_id
    # Not bound to the first run: it continues as new, and signals go to the current one.
    handle = dev_server.client.get_workflow_handle(rewards_workflow_id(customer))
    expected_tiers = {60: "basic", 120: "silver", 540: "gold", 1020: "platinum"}
    for number in range(1, 18):
        await handle.signal(RewardsWorkflow.award, AwardPoints(f"order-{number}", 60))
        await handle.signal(RewardsWorkflow.award, AwardPoints(f"order-{number}", 60))  # a repeat counts once
        points = number * 60
        if points in expected_tiers:
            await wait_until_points(handle, points)
            assert (await handle.query(RewardsWorkflow.summary)).tier == expected_tiers[points]
    await wait_until_points(handle, 17 * 60)

    described = await handle.describe()
    assert described.run_id != first_run  # continued as new, points carried over
    closed = await update(handle, RewardsWorkflow.close, MessageFrom("test"))
    assert (closed.points, closed.orders, closed.tier, closed.closed) == (1020, 17, "platinum", True)
    assert store(order_settings).get("rewards", customer)["closed"] is True


async def wait_until_points(handle: WorkflowHandle, points: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (await handle.query(RewardsWorkflow.summary)).points != points:
        assert loop.time() < deadline, f"points never reached {points}"
        await asyncio.sleep(0.05)


async def test_random_failure_rate_is_retried_and_reproducible(time_skipping_env, order_settings, order_workers):
    """rules.json's random failure rate, seeded per order, step and attempt: the same
    order run twice fails the same attempts, and retries carry it through."""
    request = dataclasses.replace(
        order_request(order_settings, SMALL),
        order_id="random-rate-1",
        policy=OrderPolicy(10_000, 1_000, 180, random_failure_rate=0.5, random_failure_seed=7),
    )
    runs = []
    for _ in range(2):  # the same order ID (so the same workflow ID) after the first run has closed
        status = await asyncio.wait_for((await start(time_skipping_env.client, order_settings, request)).result(), 60)
        assert status.status == "completed"
        runs.append({step: status.attempts[step] for step in ("validate", "reserve_inventory", "charge_payment", "prepared")})
    assert runs[0] == runs[1]
    assert any(attempts > 1 for attempts in runs[0].values()), f"rate 0.5 failed no attempt: {runs[0]}"
    retries = [e for e in order_events(store(order_settings), request.order_id) if e["kind"] == "retry"]
    assert retries and all("random" in e["message"] for e in retries)


def with_customer_email(history: WorkflowHistory, email: str) -> WorkflowHistory:
    """The same history as if its order had been placed with a customer email (its input changed)."""
    started = history.events[0].workflow_execution_started_event_attributes
    payload = started.input.payloads[0]
    payload.data = json.dumps({**json.loads(payload.data), "customer_email": email}).encode()
    return history


# One recorded order per way the current version ends, for replay in fresh processes.
# RECORD_ORDER_HISTORIES=1 also writes them, the order's and its shipment's, to
# histories/{order,shipping}_workflow_<ORDER_VERSION>_<kind>.json (for a version that changes
# the commands, as each earlier version has a recording).
ORDER_VERSION = "v12"
ORDER_SCENARIOS = ("completed", "reviewed", "review_expired", "cancelled_after_charge")


async def record_order_scenario(client: Client, settings, kind: str) -> list[tuple[str, WorkflowHistory]]:
    """The order's history and its shipment's."""
    lines = SMALL if kind in ("completed", "cancelled_after_charge") else LARGE
    request = dataclasses.replace(order_request(settings, lines), customer_email="ada@example.com")
    handle = await start(client, settings, request)
    if kind == "reviewed":
        await wait_for(handle, lambda s: s.status == "awaiting_review", "review")
        await update(handle, OrderWorkflow.approve, ApproveRequest("carol"))
    elif kind == "cancelled_after_charge":
        await wait_for(handle, lambda s: s.shipment.stage == "prepared", "the package to be prepared")
        await update(handle, OrderWorkflow.cancel, CancelRequest("duplicate order"))
    status = await handle.result()
    assert status.status == {"review_expired": "cancelled", "cancelled_after_charge": "cancelled"}.get(kind, "completed")
    histories = [("order", await handle.fetch_history())]
    if status.status == "completed":  # released to the carrier: the shipment starts there (v11)
        histories.append(("shipping", await client.get_workflow_handle(f"{handle.id}-shipping").fetch_history()))
    return histories


async def record_rewards_run(client: Client, settings) -> WorkflowHistory:
    """A rewards workflow as one still open from before: two awards (one sent twice), then closed."""
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    handle = await client.start_workflow(
        RewardsWorkflow.run,
        RewardsInput(RewardsState(customer), [RewardTierRule("basic", 0)], 1000, close_needs_sender=True),
        id=rewards_workflow_id(customer),
        task_queue=settings.order_task_queue,
    )
    for award in (AwardPoints("order-1", 10), AwardPoints("order-1", 10), AwardPoints("order-2", 5)):
        await handle.signal(RewardsWorkflow.award, award)
    await wait_until_points(handle, 15)
    assert (await update(handle, RewardsWorkflow.close, MessageFrom("test"))).closed
    return await handle.fetch_history()


async def test_order_histories_replay_in_fresh_processes_with_other_hash_seeds(
    time_skipping_env, order_settings, order_workers, tmp_path, payload_codec
):
    """The order, shipping and rewards workflows run unsandboxed for speed (as the loan workflow
    does), so replay is what shows them deterministic: every committed order history, fresh ones
    of each way an order ends (with its shipment), and a rewards run still open from before
    awards were counted in the record, replay in new processes under other hash seeds."""
    from test_workflows import replay_in_fresh_processes

    assert not any(
        getattr(cls, "__temporal_workflow_definition").sandboxed for cls in (OrderWorkflow, ShippingWorkflow, RewardsWorkflow)
    )
    fresh = []
    for kind in ORDER_SCENARIOS:
        for workflow_kind, history in await record_order_scenario(time_skipping_env.client, order_settings, kind):
            assert len(history.events) > 5
            fresh.append(tmp_path / f"{workflow_kind}_{kind}.json")
            fresh[-1].write_text(history.to_json())
            if os.environ.get("RECORD_ORDER_HISTORIES") == "1" and workflow_kind != "rewards":
                (HERE / "tests" / "histories" / f"{workflow_kind}_workflow_{ORDER_VERSION}_{kind}.json").write_text(
                    await plain_history_json(history, payload_codec)
                )
    fresh.append(tmp_path / "rewards.json")
    fresh[-1].write_text((await record_rewards_run(time_skipping_env.client, order_settings)).to_json())
    committed = sorted((HERE / "tests" / "histories").glob("order_workflow_*.json")) + sorted(
        (HERE / "tests" / "histories").glob("shipping_workflow_*.json")
    )
    assert len(committed) >= 4
    replay_in_fresh_processes(committed + fresh)


def with_patch_renamed(history_json: str, old: str, new: str) -> str:
    """The same history, its patch marker `old` named `new` (as if the order had asked that patch)."""
    history = json.loads(history_json)
    renamed = 0
    for event in history["events"]:
        marker = event.get("markerRecordedEventAttributes")
        if marker and marker["markerName"] == "core_patch":
            payload = marker["details"]["patch-data"]["payloads"][0]
            data = json.loads(base64.b64decode(payload["data"]))
            if data["id"] == old:
                payload["data"] = base64.b64encode(json.dumps({**data, "id": new}).encode()).decode()
                renamed += 1
    assert renamed == 1, f"no {old} marker"
    return json.dumps(history)


async def test_the_version_12_patch_guards_the_shipped_email_that_rode_with_the_dispatch():
    """An order whose dispatch sent the "shipped" email replays through version 12's branch; the same
    history with its marker named version 11's patch takes that branch, which starts the email's own
    activity at the dispatch, and fails as nondeterministic. (A version 11 order replays through either:
    its shipment's "dispatched" signal carries no email, so version 12's branch falls back to the same activity.)"""
    from orders.workflow import PREPARES_PACKAGE_PATCH, SHIPPED_WITH_DISPATCH_PATCH

    text = (HERE / "tests" / "histories" / "order_workflow_v12_completed_emailed.json").read_text()
    replayer = Replayer(workflows=[OrderWorkflow, ShippingWorkflow], data_converter=DataConverter.default)
    await replayer.replay_workflow(WorkflowHistory.from_json("order-v12", text))
    as_v11 = with_patch_renamed(text, SHIPPED_WITH_DISPATCH_PATCH, PREPARES_PACKAGE_PATCH)
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(WorkflowHistory.from_json("order-v12-as-v11", as_v11))


@pytest.mark.parametrize("version", ["v8", "v9", "v10"])
async def test_earlier_orders_replay_only_through_their_own_branch(version):
    """Each later version's patch guards a change of commands: an order of an earlier version
    replayed as if it had passed the patches fails with a nondeterminism error; through its own
    branch it replays, and so does its shipment."""
    histories = HERE / "tests" / "histories"
    replayer = Replayer(workflows=[OrderWorkflow, ShippingWorkflow], data_converter=DataConverter.default)
    history = WorkflowHistory.from_json(f"order-{version}", (histories / f"order_workflow_{version}_completed.json").read_text())
    with mock.patch("temporalio.workflow.patched", return_value=True), pytest.raises(NondeterminismError):
        await replayer.replay_workflow(history)
    await replayer.replay_workflow(history)
    shipping = (histories / f"shipping_workflow_{version}_completed.json").read_text()
    await replayer.replay_workflow(WorkflowHistory.from_json(f"shipping-{version}", shipping))
