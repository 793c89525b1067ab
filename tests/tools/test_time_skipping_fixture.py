"""The suite's time-skipping fixture notices when the test server's time has stopped skipping.

The test server keeps a time-skipping lock for an activity still running when its workflow
ends (sdk-java#1138); an order cancelled while its shipment is being prepared can do that,
depending on timing, and every later timer in the session would then wait in real time.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy
from temporalio.worker import Worker

from tests.fixtures import start_time_skipping_server, time_still_skips

RELEASE = threading.Event()


@activity.defn
def hold_until_released() -> None:
    RELEASE.wait(10)


@workflow.defn(sandboxed=False)
class EndsWhileItsActivityRuns:
    @workflow.run
    async def run(self) -> None:
        running = workflow.start_activity(
            hold_until_released,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ActivityCancellationType.ABANDON,
        )
        await workflow.sleep(0.1)
        running.cancel()


async def test_a_workflow_ending_while_its_activity_runs_is_noticed(payload_codec):
    env = await start_time_skipping_server(payload_codec)
    task_queue = f"stuck-{uuid.uuid4().hex[:8]}"
    try:
        assert await time_still_skips(env)
        with ThreadPoolExecutor(2) as executor:
            async with Worker(
                env.client,
                task_queue=task_queue,
                workflows=[EndsWhileItsActivityRuns],
                activities=[hold_until_released],
                activity_executor=executor,
            ):
                await env.client.execute_workflow(EndsWhileItsActivityRuns.run, id=task_queue, task_queue=task_queue)
                assert not await time_still_skips(env, within=1.0)
                RELEASE.set()
    finally:
        RELEASE.set()
        await env.shutdown()
