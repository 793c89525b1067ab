"""An order's timeline and its recorded projection: the events people read, and the writes that keep pages current.

Workflow code. Events are stamped with `workflow.now()` and numbered, so a
replayed or retried write is the same file. The record (status and new events)
is a local activity by default: milliseconds, in a workflow task that happens
anyway. Records are serialized, so the last write is the newest state.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

from temporalio import workflow

from orders.activities import OrderActivities
from orders.model import OrderEvent, OrderStatus, ProgressRecord
from orders.policies import BOOKKEEPING_TIMEOUT, MUST_FINISH_RETRY


class Timeline:
    def __init__(self, status: OrderStatus, actions: Callable[[], list[str]]):
        self._status = status
        self._actions = actions  # read when a record is written
        self._new_events: list[OrderEvent] = []
        self._count = 0
        self._lock = asyncio.Lock()

    def event(self, kind: str, message: str) -> None:
        self._count += 1
        self._new_events.append(
            OrderEvent(self._status.order_id, f"wf-{self._count:04d}", kind, message, workflow.now().isoformat())
        )

    def reach(self, milestone: str, message: str) -> None:
        self._status.milestones[milestone] = workflow.now().isoformat()
        self.event("step", message)

    async def record(self, local: bool = True) -> None:
        """Write the projection and the new events."""
        async with self._lock:
            events, self._new_events = self._new_events, []
            self._status.updated_at = workflow.now().isoformat()
            self._status.actions = self._actions()
            execute = workflow.execute_local_activity_method if local else workflow.execute_activity_method
            await execute(
                OrderActivities.record_progress,
                ProgressRecord(dataclasses.replace(self._status), events),
                start_to_close_timeout=BOOKKEEPING_TIMEOUT,
                retry_policy=MUST_FINISH_RETRY,
                summary=f"Record progress: {self._status.step}",
            )
