"""The Temporal dev server as this project runs it: one command line for `make run`, chaos and the benches.

    .venv/bin/python -m tools.dev_server     # what the Procfiles run: settings from the environment, then exec

The dev server keeps its history in a SQLite file under DATA_DIR, so a second
`make run` resumes it. Why each setting:
- WAL and synchronous=normal, and history.shardIOConcurrency=8, trade nothing
  durable for throughput.
- One task-queue partition (the default is 4) stops tasks from waiting in a
  partition no poller is on, which caused multi-second tail latencies with one
  worker. A cluster with many workers would keep several partitions.
- history.transferProcessorMaxPollRPS=1000: the history service reads its
  transfer queue at most 20 times a second per shard by default, so a new
  workflow task waited up to 50 ms before it reached a polling worker; at 1000
  the wait is 2 ms (docs/performance.md, "Dev server settings").
- The loans' search attributes (loans.model.SEARCH_ATTRIBUTES) are registered
  at start; an external server needs them created once (docs/operations.md).
- The UI's public path is /temporal: the web app serves it there to signed-in
  operators (web/temporal_ui.py), and its codec endpoint is the web app's /codec
  on the same origin, so it decrypts with the operator's session and no setup.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from temporalio.common import SearchAttributeIndexedValueType

from core.settings import TEMPORAL_UI_PATH
from loans.model import SEARCH_ATTRIBUTES

BIN = Path(sys.executable).parent
DYNAMIC_CONFIG = (
    "history.shardIOConcurrency=8",
    "history.transferProcessorMaxPollRPS=1000",
    "matching.numTaskqueueReadPartitions=1",
    "matching.numTaskqueueWritePartitions=1",
)
_TYPE_NAMES = {SearchAttributeIndexedValueType.KEYWORD: "Keyword"}


def command(
    db_file: Path,
    port: int | str,
    ip: str = "127.0.0.1",
    ui_port: int | str | None = None,
    codec_endpoint: str | None = None,
    ui_public_path: str | None = None,
) -> list[str]:
    """The dev server's command line; without a UI port, headless."""
    args = [str(BIN / "temporal"), "server", "start-dev", "--ip", ip, "--port", str(port), "--db-filename", str(db_file)]
    args += ["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"]
    for value in DYNAMIC_CONFIG:
        args += ["--dynamic-config-value", value]
    for key in SEARCH_ATTRIBUTES:
        args += ["--search-attribute", f"{key.name}={_TYPE_NAMES[key.indexed_value_type]}"]
    if ui_port is None:
        args.append("--headless")
    else:
        args += ["--ui-port", str(ui_port), "--ui-disable-news-fetch"]
    if codec_endpoint:
        args += ["--ui-codec-endpoint", codec_endpoint]
    if ui_public_path:
        args += ["--ui-public-path", ui_public_path]
    return [*args, "--log-level", "error"]


def main() -> None:
    """`make run`'s dev server: DATA_DIR, TEMPORAL_DEV_IP, TEMPORAL_DEV_PORT, TEMPORAL_UI_PORT, WEB_PORT."""
    env = os.environ
    args = command(
        Path(env.get("DATA_DIR") or "data") / "temporal.db",
        env.get("TEMPORAL_DEV_PORT") or "7233",
        env.get("TEMPORAL_DEV_IP") or "127.0.0.1",
        env.get("TEMPORAL_UI_PORT") or "8233",
        "/codec",  # relative: the UI is served through the web app's origin (TEMPORAL_UI_PATH)
        TEMPORAL_UI_PATH,
    )
    os.execv(args[0], args)  # the supervisor's child is the server itself: its signals reach it


if __name__ == "__main__":
    main()
