"""An order's timeline and its recorded projection: the events people read, and the writes that keep pages current.

Workflow code. Events are stamped with `workflow.now()` and numbered, so a
replayed or retried write is the same file. Each record carries a revision
that only grows, and the activity writes it only over an older one, so a late
write never hides a newer state.

Two ways of writing, chosen per order when it starts (docs/versioning.md):
- v8 (orders started before lean bookkeeping): every change is recorded at once,
  by a local activity of its own.
- v9, lean bookkeeping: a change the next step follows at once is carried by that
  step's activity, which writes the record before its work (`carry`); news that
  arrives while a step runs waits for the next record. A record of its own is
  written only where the order then waits for someone else (an operator, the
  shipment, the carrier), on an operator's action, and on every stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from temporalio import workflow

from orders.activities import OrderActivities
from orders.model import NotificationRequest, OrderEvent, OrderStatus, ProgressRecord
from orders.policies import BOOKKEEPING_TIMEOUT, MUST_FINISH_RETRY


class Timeline:
    def __init__(self, status: OrderStatus, actions: Callable[[], list[str]]):
        self._status = status
        self._actions = actions  # read when a record is written
        self._new_events: list[OrderEvent] = []
        self._notices: list[NotificationRequest] = []
        self._count = 0
        self._lock = asyncio.Lock()
        self.lean = False  # set by the order when it starts: v9 bookkeeping
        self._moving = 0  # steps in flight after which the order records (see `moving`)
        self.stale = False  # news left to the next record (`record_news` during a step) since the last one

    def event(self, kind: str, message: str) -> None:
        self._count += 1
        self._new_events.append(
            OrderEvent(self._status.order_id, f"wf-{self._count:04d}", kind, message, workflow.now().isoformat())
        )

    def reach(self, milestone: str, message: str) -> None:
        self._status.milestones[milestone] = workflow.now().isoformat()
        self.event("step", message)

    def notice(self, notice: NotificationRequest) -> None:
        """A customer notice, written with the next record (lean bookkeeping)."""
        self._notices.append(notice)

    async def record(self, local: bool = True) -> None:
        """Write the projection and the new events now."""
        async with self._lock:
            execute = workflow.execute_local_activity_method if local else workflow.execute_activity_method
            await execute(
                OrderActivities.record_progress,
                self._take(),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=MUST_FINISH_RETRY,
                summary=f"Record progress: {self._status.step}",
            )

    async def record_soon(self) -> None:
        """A change the caller's next step follows at once: v9 leaves it to that step to carry."""
        if not self.lean:
            await self.record()

    async def record_news(self) -> None:
        """News from outside the order's steps (an email's outcome): v9 leaves it to the record
        that follows the step in flight, if one is (see `moving`), and records it now otherwise."""
        if not self.lean or self._moving == 0:
            await self.record()
        else:
            self.stale = True

    @contextlib.contextmanager
    def moving(self) -> Iterator[None]:
        """Around a step the order follows with a record (or a step that carries one), whatever
        its outcome: a business step, the shipment's start, the award of points."""
        self._moving += 1
        try:
            yield
        finally:
            self._moving -= 1

    @property
    def pending(self) -> bool:
        """Anything not recorded yet: events, notices, or news left to the next record."""
        return self.stale or bool(self._new_events) or bool(self._notices)

    def carry(self, **after: Any) -> ProgressRecord | None:
        """The record for the step about to start to write (v9), or None (v8). `after`: fields of
        the status that the record shows and the order takes on only once the step has done its
        work (v10's award of points, which writes its record after the award)."""
        return self._take(**after) if self.lean else None

    def not_carried(self, record: ProgressRecord | None) -> None:
        """The step that carried `record` did not complete, so its activity may never have written
        it: its events and notices go again with the next record (written twice, they are the same)."""
        if record is not None:
            self._new_events[:0] = record.events
            self._notices[:0] = record.notices

    def _take(self, **after: Any) -> ProgressRecord:
        events, self._new_events = self._new_events, []
        notices, self._notices = self._notices, []
        self.stale = False
        self._status.updated_at = workflow.now().isoformat()
        self._status.actions = self._actions()
        self._status.revision += 1
        return ProgressRecord(dataclasses.replace(self._status, **after), events, notices)
