"""RewardsWorkflow: one per customer, long-running; each order's points counted once, tiers from the rules.

Retired for new awards: since 2026-12-05 the award of points counts them in the
customer's record itself (orders/rewards_model.py `count_awards`), and no one
starts or signals this workflow. It stays registered for the runs still open:
an award that reached one before the change is saved through the same rule, and
`flask --app starter orders close-rewards` closes one. Remove it once none is
open (docs/versioning.md, "Retiring the rewards workflow").
"""

from __future__ import annotations

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from orders.policies import BOOKKEEPING_TIMEOUT, MUST_FINISH_RETRY

with workflow.unsafe.imports_passed_through():
    from orders.activities import RewardsActivities
    from orders.model import MessageFrom
    from orders.rewards_model import (
        AwardPoints,
        RewardsInput,
        RewardsSave,
        RewardsState,
        add_awards,
    )


@workflow.defn(sandboxed=False)
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
        self._awards: list[AwardPoints] = list(rewards.pending)
        self._close_requested = False
        self._close_needs_sender = rewards.close_needs_sender

    @workflow.run
    async def run(self, rewards: RewardsInput) -> RewardsState:
        while True:
            await workflow.wait_condition(lambda: bool(self._awards) or self._close_requested or self._history_is_long())
            if self._awards:
                applied = self._apply_awards()
                await self._save(applied)
                continue  # more awards may have come in meanwhile
            if self._close_requested:
                self._state.closed = True
                await self._save([])
                return self._state
            await workflow.wait_condition(workflow.all_handlers_finished)
            # Awards that arrived during that wait go along explicitly: the next run
            # applies them first, so none depends on when the server takes the signal.
            workflow.continue_as_new(
                # Runs started before `close` carried its sender need it from here on (input only, no command).
                RewardsInput(self._state, self._tiers, self._max_history_events, list(self._awards), close_needs_sender=True)
            )

    def _apply_awards(self) -> list[AwardPoints]:
        applied, self._awards = self._awards, []
        add_awards(self._state, applied, self._tiers, workflow.now().isoformat())
        return applied

    async def _save(self, applied: list[AwardPoints]) -> None:
        # The store counts the awards again by the same rule: the record may hold awards counted there since.
        await workflow.execute_local_activity_method(
            RewardsActivities.save_rewards,
            RewardsSave(self._state, applied),
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
    async def close(self, sender: MessageFrom | None = None) -> RewardsState:
        self._close_requested = True
        await workflow.wait_condition(lambda: self._state.closed)
        return self._state

    @close.validator
    def _check_close(self, sender: MessageFrom | None = None) -> None:
        # Ours carry a sender, encrypted; one without is a plain update sent straight to Temporal.
        if sender is None and self._close_needs_sender:
            raise ApplicationError("close needs its sender (MessageFrom)", type="MessageWithoutSender", non_retryable=True)
