"""The README's "First ten minutes" and "When a process dies", pasted as a new user would: every
command block runs and exits 0, and the demos print what the README says they print.

`make run` starts on free ports with its own data folder; the blocks are run
in order by bash with `-e -o pipefail`, with the README's default addresses
(localhost:5001, localhost:8233, data/) pointed at this run's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from tests.fixtures import HERE, wait_until
from tests.tools.make_run import ready, start_on_free_ports, stop_make_run

TOUR_HEADING = "## First ten minutes"
DEMOS_HEADING = "## When a process dies"
MAKE_VARIABLES = ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES")


def tour_blocks(heading: str = TOUR_HEADING) -> list[str]:
    readme = (HERE / "README.md").read_text()
    start = readme.index(heading) + len(heading)
    end = readme.find("\n## ", start)
    section = readme[start : end if end != -1 else None]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def run_blocks(
    blocks: list[str], data, web_port: int, ui_port: int, dev_port: int, env: dict[str, str] | None = None, **replace: str
) -> list[str]:
    """Each block in bash, in order, in the checkout, pointed at this run; their outputs (stdout and stderr as a terminal shows them)."""
    # A new terminal's environment: nothing of the `make test` this may run under (make's own variables).
    shell_env = {key: value for key, value in os.environ.items() if key not in MAKE_VARIABLES}
    shell_env.update(DATA_DIR=str(data), TEMPORAL_ADDRESS=f"127.0.0.1:{dev_port}", **(env or {}))
    outputs = []
    for number, block in enumerate(blocks, 1):
        script = block.replace("localhost:5001", f"localhost:{web_port}").replace("localhost:8233", f"localhost:{ui_port}")
        script = script.replace("data/", f"{data}/")
        for old, new in replace.items():
            script = script.replace(old, new)
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=HERE,
            env=shell_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # in the order a terminal shows them
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"block {number}:\n{block}\n--- output\n{done.stdout}"
        outputs.append(done.stdout)
    return outputs


def test_the_tour_has_blocks_and_distinct_example_emails():
    blocks = tour_blocks()
    assert len(blocks) >= 5
    applicants = re.findall(r'"email": "([^"]+)"', "".join(b for b in blocks if "/api/evaluate" in b))
    # One address applies once per 7 days: the two first examples must differ (the third shows the refusal).
    assert len(set(applicants[:2])) == 2, applicants


@pytest.mark.timeout(300)
def test_every_command_of_the_tour_and_the_durability_demos_runs_as_the_readme_shows(tmp_path):
    """Both sections on one `make run`, the tour first, as a new user would go on.

    Parcels travel in 2 s instead of 20 (a rules copy in RULES_FILE, for `make run` and the shell
    alike, as a user who set it): the tour's loops wait for a delivery, and nothing else differs."""
    data = tmp_path / "data"
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["shipping"] = {"prepare_seconds": 1, "transit_seconds": 2, "expedited_transit_seconds": 1}
    rules_file = tmp_path / "rules.json"
    rules_file.write_text(json.dumps(rules))
    quick = {"RULES_FILE": str(rules_file)}
    make, log, ports = start_on_free_ports(tmp_path, **quick)
    dev_port, ui_port, web_port = ports.dev, ports.ui, ports.web
    try:
        wait_until(lambda: ready(make, log), timeout=90, what="make run's ready line")
        # What a shell in the checkout has: the CLI reaches the same server and data folder.
        run_blocks(tour_blocks(), data, web_port, ui_port, dev_port, quick)

        blocks = tour_blocks(DEMOS_HEADING)
        assert len(blocks) == 2
        # The load test's size is cut for the suite; everything else as written.
        stopped, more = run_blocks(blocks, data, web_port, ui_port, dev_port, quick, **{"--count 300": "--count 12"})
        assert [line for line in stopped.splitlines() if line] == [
            "worker: stopped",
            "pending",  # the API's answer while no worker ran
            "worker: started",
            "decided pre_approved email sent",
        ], stopped
        assert "3 worker processes running: worker, worker-2, worker-3" in more, more
        running = {line.split()[0] for line in more.splitlines() if " RUNNING " in line}
        assert running == {"mail", "stripe", "temporal", "web", "worker", "worker-2", "worker-3"}, more
        assert more.count("throughput") == 2 and "1 worker process running: worker" in more, more
    finally:
        stop_make_run(make, log)
