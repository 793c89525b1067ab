"""Replay recorded histories (loan, order, shipping, rewards workflows) against the current code, in this process.

    python -m tools.replay_check tests/histories/loan_*.json tests/histories/order_*.json

The tests run it as a fresh process with a chosen PYTHONHASHSEED, so a workflow
that depends on anything that differs between processes (hash seeds, set or
dict iteration built from them, the environment) fails here even though it
replays in the process that recorded it. Prints one line per history and exits
1 if any history does not replay.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from core.settings import payload_codec_from_env, payload_data_converter
from loans.workflow import LoanApplicationWorkflow
from orders.rewards import RewardsWorkflow
from orders.shipping import ShippingWorkflow
from orders.workflow import OrderWorkflow


async def replay(paths: list[Path]) -> int:
    # The app's converter: encrypted histories decrypt with PAYLOAD_KEY; plain ones (the recorded
    # histories in tests/histories) pass through, as they do for no worker.
    # Each history replays on the workflow class of its type; all four run unsandboxed.
    replayer = Replayer(
        workflows=[LoanApplicationWorkflow, OrderWorkflow, ShippingWorkflow, RewardsWorkflow],
        data_converter=payload_data_converter(payload_codec_from_env(accept_plain=True)),
    )
    failed = 0
    for path in paths:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is None:
            print(f"ok   {path.name} ({len(history.events)} events)")
        else:
            failed += 1
            print(f"FAIL {path.name}: {type(result.replay_failure).__name__}: {result.replay_failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tools.replay_check HISTORY.json...")
    code = asyncio.run(replay([Path(arg) for arg in sys.argv[1:]]))
    sys.stdout.flush()
    # The SDK's native runtime threads can still be running while the interpreter
    # finalizes, which sometimes aborts the process after every replay succeeded;
    # the answer is known by now, so leave without finalizing.
    os._exit(code)
