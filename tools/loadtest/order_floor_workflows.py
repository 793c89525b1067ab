"""The order floor's workflows: this app's order process as a team would write it without our extras.

receive -> validate -> approve (automatic: the floor's orders are all below the
review threshold) -> charge -> a shipping child on its own task queue (prepare,
dispatch) -> complete. Each step is one activity that writes one JSON file
atomically with fsync (`tools/loadtest/order_floor.py`); no record of progress,
no emails, no rewards, no compensation. Every setting at its default (the
workflows sandboxed), as for the one-activity floor (floor.py); kept small for
the same reason.
"""

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow

ORDER_STEPS = ("receive", "validate", "approve", "charge")
SHIPPING_STEPS = ("prepare", "dispatch")
STEP_TIMEOUT = timedelta(seconds=30)


@dataclass(frozen=True)
class PlainOrder:
    order_id: str
    shipping_task_queue: str


@dataclass(frozen=True)
class StepWrite:
    order_id: str
    step: str


@workflow.defn
class PlainShippingWorkflow:
    @workflow.run
    async def run(self, order: PlainOrder) -> None:
        for step in SHIPPING_STEPS:
            await workflow.execute_activity("write_step", StepWrite(order.order_id, step), start_to_close_timeout=STEP_TIMEOUT)


@workflow.defn
class PlainOrderWorkflow:
    @workflow.run
    async def run(self, order: PlainOrder) -> None:
        for step in ORDER_STEPS:
            await workflow.execute_activity("write_step", StepWrite(order.order_id, step), start_to_close_timeout=STEP_TIMEOUT)
        await workflow.execute_child_workflow(
            PlainShippingWorkflow.run,
            order,
            id=f"{workflow.info().workflow_id}-shipping",
            task_queue=order.shipping_task_queue,
        )
        await workflow.execute_activity("write_step", StepWrite(order.order_id, "complete"), start_to_close_timeout=STEP_TIMEOUT)
