"""The README's "First ten minutes", pasted as a new user would: every command block runs and exits 0.

`make run` starts on free ports with its own data folder; the blocks are run
in order by bash with `-e -o pipefail`, with the README's default addresses
(localhost:5001, localhost:8233, data/) pointed at this run's.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.fixtures import HERE, free_port, wait_until, web_is_ready
from tests.tools.test_make_run import start_make_run, stop_make_run

TOUR_HEADING = "## First ten minutes"


def tour_blocks() -> list[str]:
    readme = (HERE / "README.md").read_text()
    start = readme.index(TOUR_HEADING) + len(TOUR_HEADING)
    end = readme.find("\n## ", start)
    section = readme[start : end if end != -1 else None]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def test_the_tour_has_blocks_and_distinct_example_emails():
    blocks = tour_blocks()
    assert len(blocks) >= 5
    applicants = re.findall(r'"email": "([^"]+)"', "".join(b for b in blocks if "/api/evaluate" in b))
    # One address applies once per 7 days: the two first examples must differ (the third shows the refusal).
    assert len(set(applicants[:2])) == 2, applicants


@pytest.mark.timeout(240)
def test_every_command_of_the_readme_tour_runs(tmp_path):
    dev_port, ui_port, web_port, smtp_port = (free_port() for _ in range(4))
    data = tmp_path / "data"
    make, log = start_make_run(
        tmp_path,
        TEMPORAL_DEV_PORT=str(dev_port),
        TEMPORAL_UI_PORT=str(ui_port),
        WEB_PORT=str(web_port),
        SMTP_SINK_PORT=str(smtp_port),
        WORKER_METRICS_PORT="",
    )
    try:
        wait_until(
            lambda: web_is_ready(f"http://127.0.0.1:{web_port}") or make.poll() is not None,
            timeout=90,
            what="make run to be ready",
        )
        assert make.poll() is None, log.read_text()
        # What a shell in the checkout has: the CLI reaches the same server and data folder.
        shell_env = {**os.environ, "DATA_DIR": str(data), "TEMPORAL_ADDRESS": f"127.0.0.1:{dev_port}"}
        for number, block in enumerate(tour_blocks(), 1):
            script = (
                block.replace("localhost:5001", f"localhost:{web_port}")
                .replace("localhost:8233", f"localhost:{ui_port}")
                .replace("data/", f"{data}/")
            )
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", script],
                cwd=HERE,
                env=shell_env,
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert done.returncode == 0, f"block {number}:\n{block}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    finally:
        stop_make_run(make)
