"""The order's side of its shipment: the child workflow's handle and what the shipment has told the order.

The shipment (orders/shipping.py) owns the signals it sends (`shipment_ready`,
`shipment_progress`); the order's handlers set `ready` and `news` here, and the
order decides the release. Workflow code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio import workflow
from temporalio.workflow import ChildWorkflowCancellationType

from core.workflow_helpers import uninterrupted
from orders.model import MessageFrom, Shipment, ShippingRequest

ORDER = MessageFrom("order")  # the sender of the order's messages to its shipment
from orders.shipping import ShippingWorkflow


class ShipmentLink:
    def __init__(self) -> None:
        self.handle: workflow.ChildWorkflowHandle | None = None
        self.ready = False  # the shipment waits at the carrier's pickup for the order's word
        self.news = False  # a stage reached since the order last recorded
        self.released = False  # the order has released the parcel to the carrier
        self.preparation_failed = False  # v11: the order's preparation step failed by itself (nothing to stop)

    @property
    def done(self) -> bool:
        return self.handle is not None and self.handle.done()

    async def start(self, request: ShippingRequest, workflow_id: str, task_queue: str, on_cancel: Callable[[], None]) -> None:
        """The start runs to its end even if the order is cancelled meanwhile, so a
        started shipment always has a handle to be stopped by."""
        self.handle = await uninterrupted(
            workflow.start_child_workflow(
                ShippingWorkflow.run,
                request,
                id=workflow_id,
                task_queue=task_queue,
                static_summary=f"Shipping for order {request.order_id}",
                # The order stops its shipment by message, never by Temporal cancellation.
                cancellation_type=ChildWorkflowCancellationType.ABANDON,
            ),
            on_cancel,
        )

    async def tell(self, signal: Any, *args: Any) -> None:
        """Signal the shipment if it still runs; a shipment that has just ended is
        no reason to fail the order (it checks, then signals: it may end between)."""
        if self.handle is None or self.handle.done():
            return
        try:
            await self.handle.signal(signal, *args)
        except Exception as err:  # noqa: BLE001 - a closed shipment rejects signals; the order carries on
            workflow.logger.info("Shipment did not take %s: %s", getattr(signal, "__name__", signal), err)

    async def outcome(self) -> Shipment | BaseException:
        """The shipment's result, or what ended it."""
        assert self.handle is not None
        try:
            return await self.handle
        except (Exception, asyncio.CancelledError) as err:
            if isinstance(err, asyncio.CancelledError) and workflow.cancellation_reason() is None:
                raise
            return err

    async def stop(self) -> Shipment | BaseException | None:
        """Undo of starting the shipment: tell it to stop and wait until it has; None if there was nothing to stop."""
        if self.handle is None or self.released or self.handle.done():
            return None
        await self.tell(ShippingWorkflow.stop, ORDER)
        return await self.outcome()

    async def follow(self, record: Callable[[], Awaitable[None]]) -> Shipment | BaseException:
        """After the release: record each stage the carrier reports until the shipment ends
        (the pages read the record, so the tracking number shows during transit)."""
        handle = self.handle
        assert handle is not None
        while True:
            await workflow.wait_condition(lambda: handle.done() or self.news)
            if handle.done():
                return await self.outcome()  # the completion step records the last stage
            self.news = False
            await record()
