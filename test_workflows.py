"""LoanApplicationWorkflow on the time-skipping test server, with the real activities.

The 7-day duplicate window passes in milliseconds; activities write to a
temporary data folder; each test has its own task queue and workflow IDs.
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.worker import Replayer, Worker

from activities import AGENT_NOTIFICATIONS, APPLICATIONS
from shared import INVALID_APPLICATION, LoanApplication, LoanOutcome, LoanRequest, record_key
from store import JsonStore
from worker import build_worker
from workflows import LoanApplicationWorkflow


@pytest.fixture
async def worker(time_skipping_env, settings):
    with ThreadPoolExecutor(max_workers=8) as executor:
        async with build_worker(time_skipping_env.client, settings, executor, "worker-test", concurrency=8) as running:
            yield running


def application(**changes) -> LoanApplication:
    values = dict(
        name="John Doe",
        email=f"john-{uuid.uuid4().hex[:8]}@example.com",
        loan_amount=50_000.0,
        credit_score=750,
        annual_income=150_000.0,
        has_bankruptcy=False,
    )
    return LoanApplication(**{**values, **changes})


async def start(client: Client, settings, app: LoanApplication, workflow_id: str | None = None) -> WorkflowHandle:
    return await client.start_workflow(
        LoanApplicationWorkflow.run,
        LoanRequest(app, 7, "10k-50k"),
        id=workflow_id or f"loan-test-{uuid.uuid4().hex}",
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
    )


async def wait_for_stage(handle: WorkflowHandle, stage: str, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await handle.query(LoanApplicationWorkflow.status)
        if status.stage == stage:
            return status
        assert asyncio.get_running_loop().time() < deadline, f"stage {status.stage!r}, wanted {stage!r}"
        await asyncio.sleep(0.05)


async def test_pre_approved_application_is_decided_persisted_and_closes_after_the_window(
    time_skipping_env, settings, worker: Worker
):
    handle = await start(time_skipping_env.client, settings, application())
    outcome: LoanOutcome = await handle.result()  # time skipping runs the 7-day window out

    assert outcome.decision == "pre_approved"
    assert outcome.loan_to_income_ratio == pytest.approx(0.3333)
    assert outcome.decided_by == "worker-test"
    record = JsonStore(settings.data_dir).get(APPLICATIONS, record_key(handle.id, handle.result_run_id))
    assert record["decision"] == "pre_approved"
    assert record["message"]["title"] == "You're pre-approved!"
    assert JsonStore(settings.data_dir).list_recent(AGENT_NOTIFICATIONS) == ([], 0)


async def test_conditional_decision_notifies_an_agent(time_skipping_env, settings, worker):
    handle = await start(time_skipping_env.client, settings, application(loan_amount=100_000.0, annual_income=80_000.0))
    outcome = await handle.result()

    assert outcome.decision == "conditional"
    notifications, total = JsonStore(settings.data_dir).list_recent(AGENT_NOTIFICATIONS)
    assert total == 1
    assert notifications[0]["kind"] == "conditional_review"
    assert notifications[0]["workflow_id"] == handle.id


async def test_compliance_failure_becomes_a_denied_compliance_decision(time_skipping_env, settings, worker):
    handle = await start(time_skipping_env.client, settings, application(credit_score=550))
    outcome = await handle.result()
    assert outcome.decision == "denied_compliance"
    assert "600" in outcome.reason


async def test_invalid_input_fails_fast_and_does_not_block_the_email(time_skipping_env, settings, worker):
    workflow_id = f"loan-test-{uuid.uuid4().hex}"
    handle = await start(time_skipping_env.client, settings, application(credit_score=900), workflow_id)
    with pytest.raises(WorkflowFailureError) as raised:
        await handle.result()
    cause = raised.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == INVALID_APPLICATION
    assert "credit_score" in cause.details[0]

    retry = await start(time_skipping_env.client, settings, application(), workflow_id)
    assert (await retry.result()).decision == "pre_approved"


async def test_second_application_is_refused_until_the_window_ends(time_skipping_env, settings, worker):
    workflow_id = f"loan-test-{uuid.uuid4().hex}"
    first = await start(time_skipping_env.client, settings, application(), workflow_id)
    await wait_for_stage(first, "persisted")

    with pytest.raises(WorkflowAlreadyStartedError):
        await start(time_skipping_env.client, settings, application(), workflow_id)

    await time_skipping_env.sleep(timedelta(days=7, minutes=1))
    await first.result()
    second = await start(time_skipping_env.client, settings, application(), workflow_id)
    assert (await second.result()).run_id != first.result_run_id


async def test_contact_answer_is_recorded_and_yes_notifies_an_agent(time_skipping_env, settings, worker):
    handle = await start(time_skipping_env.client, settings, application())
    await wait_for_stage(handle, "persisted")
    await handle.signal(LoanApplicationWorkflow.contact_preference, "yes")
    outcome = await handle.result()

    store = JsonStore(settings.data_dir)
    record = store.get(APPLICATIONS, record_key(handle.id, outcome.run_id))
    assert record["contact_preference"] == "yes"
    notifications, _ = store.list_recent(AGENT_NOTIFICATIONS)
    assert [n["kind"] for n in notifications] == ["contact_requested"]


async def test_recorded_histories_replay_deterministically(time_skipping_env, settings, worker):
    """The workflow runs unsandboxed for speed, so replay is what proves it deterministic."""
    decided = await start(time_skipping_env.client, settings, application(loan_amount=100_000.0, annual_income=80_000.0))
    await wait_for_stage(decided, "persisted")
    await decided.signal(LoanApplicationWorkflow.contact_preference, "yes")
    await decided.result()
    invalid = await start(time_skipping_env.client, settings, application(credit_score=200))
    with pytest.raises(WorkflowFailureError):
        await invalid.result()

    replayer = Replayer(workflows=[LoanApplicationWorkflow], data_converter=time_skipping_env.client.data_converter)
    for handle in (decided, invalid):
        history = await handle.fetch_history()
        assert len(history.events) > 5
        await replayer.replay_workflow(history)  # raises on any nondeterminism


class FlakyStore(JsonStore):
    """Fails the first `failures` writes, like a disk that comes back."""

    def __init__(self, root, failures: int):
        super().__init__(root)
        self.failures = failures
        self.calls = 0

    def update(self, *args, **kwargs):
        self.calls += 1
        if self.calls <= self.failures:
            raise OSError("simulated I/O error")
        return super().update(*args, **kwargs)


async def test_persist_retries_through_io_errors_and_writes_one_record(time_skipping_env, settings):
    flaky = FlakyStore(settings.data_dir, failures=3)
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(time_skipping_env.client, settings, executor, "worker-test", concurrency=4, store=flaky):
            handle = await start(time_skipping_env.client, settings, application())
            await handle.result()
    assert flaky.calls == 4  # three failed attempts, one success
    assert JsonStore(settings.data_dir).list_recent(APPLICATIONS)[1] == 1
