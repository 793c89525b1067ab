"""Rewards counted by the award of points in the customer's record: once per order under retries and
concurrent awards, and with nothing lost while a rewards workflow from before is still open.

The rewards workflow's own behaviour (tiers, continue-as-new, a plain `close`
refused) is in test_order_workflows.py, for the runs still open.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from temporalio.testing import ActivityEnvironment

from core.rules import load_rules
from core.store.files import JsonStore
from orders.activities import OrderActivities
from orders.model import AwardRequest, MessageFrom
from orders.rewards import RewardsWorkflow
from orders.rewards_model import REWARDS, AwardPoints, RewardsInput, RewardsState, RewardTierRule, rewards_workflow_id
from tests.orders.test_order_workflows import (
    order_settings,  # noqa: F401 - a fixture
    order_workers,  # noqa: F401 - a fixture
    update,
    wait_until_points,
)


def award(activities: OrderActivities, customer: str, order_id: str, points: int) -> None:
    ActivityEnvironment().run(activities.award_rewards, AwardRequest(customer, order_id, points))


def test_an_award_counts_once_however_often_it_is_retried_or_sent_at_once(order_settings):  # noqa: F811
    """Sixteen awards at once for one customer (eight orders, each sent twice), then one retried:
    each order's points once, the tier from the rules."""
    store = JsonStore(order_settings.data_dir)
    activities = OrderActivities(store, load_rules(order_settings.rules_file), {})
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    orders = [(f"order-{n}", 20 + n) for n in range(8)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda order: award(activities, customer, *order), orders + orders))
    award(activities, customer, *orders[0])  # an attempt retried after it wrote

    saved = store.get(REWARDS, customer)
    total = sum(points for _, points in orders)
    assert (saved["points"], saved["orders"]) == (total, 8)
    assert sorted(saved["recent_order_ids"]) == sorted(order_id for order_id, _ in orders)
    tiers = load_rules(order_settings.rules_file).orders.rewards.tiers
    assert saved["tier"] == max((t for t in tiers if total >= t.min_points), key=lambda t: t.min_points).name


async def test_a_rewards_workflow_still_open_loses_no_award_counted_in_the_record(
    time_skipping_env,
    order_settings,  # noqa: F811
    order_workers,  # noqa: F811
):
    """A rewards workflow from before the change, with an award arriving after the record counted
    another: its save adds its own award to the record and keeps the other; a repeat counts once."""
    store = JsonStore(order_settings.data_dir)
    activities = OrderActivities(store, load_rules(order_settings.rules_file), {})
    customer = f"cust-{uuid.uuid4().hex[:8]}"
    handle = await time_skipping_env.client.start_workflow(
        RewardsWorkflow.run,
        RewardsInput(RewardsState(customer), [RewardTierRule("basic", 0)], 1000, close_needs_sender=True),
        id=rewards_workflow_id(customer),
        task_queue=order_settings.order_task_queue,
    )
    await handle.signal(RewardsWorkflow.award, AwardPoints("order-a", 10))
    await wait_until_points(handle, 10)
    award(activities, customer, "order-b", 100)  # counted in the record: the workflow never hears of it
    await handle.signal(RewardsWorkflow.award, AwardPoints("order-c", 1))
    await handle.signal(RewardsWorkflow.award, AwardPoints("order-a", 10))  # a repeat
    await wait_until_points(handle, 11)  # the workflow's own view: a and c
    closed = await update(handle, RewardsWorkflow.close, MessageFrom("test"))

    assert closed.closed and closed.points == 11
    saved = store.get(REWARDS, customer)
    assert (saved["points"], saved["orders"], saved["closed"]) == (111, 3, True)
    award(activities, customer, "order-d", 5)  # an order after the close: the record opens again
    assert (store.get(REWARDS, customer)["points"], store.get(REWARDS, customer)["closed"]) == (116, False)
