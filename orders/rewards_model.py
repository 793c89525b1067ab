"""The rewards workflow's data: one long-running workflow per customer (orders/rewards.py)."""

from __future__ import annotations

from dataclasses import dataclass, field


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
    # Recent awarded order IDs, so a repeated award signal counts once (bounded).
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
