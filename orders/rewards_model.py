"""The customer's rewards: their record in the store, and the one rule that counts each order's points once.

Since 2026-12-05 the award of points (the order's last step) counts them in the
customer's record itself (`count_awards`, under the record's lock). The
long-running `RewardsWorkflow` (orders/rewards.py) that counted them before stays
for the runs still open: what it saves goes through the same rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from core.store import Store

REWARDS = "rewards"  # store collection: one RewardsState per customer
# Order IDs remembered per customer to count a repeated award once.
RECENT_AWARDS_KEPT = 500


def rewards_workflow_id(customer_id: str) -> str:
    """The customer's rewards workflow (retired: runs still open from before)."""
    return f"rewards-{customer_id}"


@dataclass(frozen=True)
class RewardTierRule:
    name: str
    min_points: int


@dataclass
class RewardsState:
    customer_id: str
    points: int = 0
    tier: str = "basic"
    orders: int = 0
    # Recent awarded order IDs, so a repeated award counts once (bounded).
    recent_order_ids: list[str] = field(default_factory=list)
    closed: bool = False
    updated_at: str | None = None


@dataclass(frozen=True)
class AwardPoints:
    order_id: str
    points: int


@dataclass(frozen=True)
class RewardsInput:
    state: RewardsState
    tiers: list[RewardTierRule]
    max_history_events: int
    # Awards received but not yet applied when the previous run continued as new.
    pending: list[AwardPoints] = field(default_factory=list)
    # True for runs started since `close` carries its sender: a `close` without one (a plain
    # update sent straight to Temporal) is rejected.
    close_needs_sender: bool = False


@dataclass(frozen=True)
class RewardsSave:
    """What a rewards workflow saves: its state, and the awards it counted since its last save, which
    the store counts again by the same rule (its state may lack awards counted in the store since)."""

    state: RewardsState
    awards: list[AwardPoints] = field(default_factory=list)


def add_awards(state: RewardsState, awards: Iterable[AwardPoints], tiers: Sequence[RewardTierRule], now: str) -> None:
    """Each order's points once (an order ID among the recent ones is skipped); the tier from the points."""
    for award in awards:
        if award.order_id in state.recent_order_ids:
            continue
        state.points += award.points
        state.orders += 1
        state.recent_order_ids = (state.recent_order_ids + [award.order_id])[-RECENT_AWARDS_KEPT:]
    ordered = sorted(tiers, key=lambda tier: tier.min_points)
    if ordered:
        state.tier = next((tier.name for tier in reversed(ordered) if state.points >= tier.min_points), ordered[0].name)
    state.updated_at = now


def count_awards(
    store: Store,
    customer_id: str,
    awards: Sequence[AwardPoints],
    tiers: Sequence[RewardTierRule],
    now: str,
    closed: bool = False,
    base: RewardsState | None = None,
) -> RewardsState:
    """Count `awards` in the customer's record, read and written under its lock: a retried award,
    or one counted by an open rewards workflow as well, counts once. With no record yet, `base`
    (a workflow's state) is where it starts."""

    def change(existing: dict | None) -> dict:
        start = existing or (dataclasses.asdict(base) if base else None)
        state = RewardsState(**start) if start else RewardsState(customer_id)
        add_awards(state, awards, tiers, now)
        state.closed = closed  # an award reopens a closed record, as a new order started a new run
        return dataclasses.asdict(state)

    return RewardsState(**store.update(REWARDS, customer_id, change))
