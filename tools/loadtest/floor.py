"""The benchmark's floors: an empty workflow (floor 0), and a bare workflow with one no-op activity (floor 1).

Kept in a module of its own, this small, because the worker's sandbox imports
a workflow's module again for every run: the floor should pay no more for that
than a well-kept workflow module does.
"""

from datetime import timedelta

from temporalio import activity, workflow


@activity.defn
async def floor_activity(n: int) -> int:
    """Does nothing: the floor measures Temporal's own round trips."""
    return n


@workflow.defn
class FloorWorkflow:
    @workflow.run
    async def run(self, n: int) -> int:
        return await workflow.execute_activity(floor_activity, n, start_to_close_timeout=timedelta(seconds=30))


@workflow.defn
class EmptyWorkflow:
    """Floor 0: start, one workflow task, complete. The least any workflow costs."""

    @workflow.run
    async def run(self, n: int) -> int:
        return n
