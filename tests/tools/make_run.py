"""`make run` started as a person starts it: in a terminal of its own, stopped by Ctrl+C typed into it.

The terminal is a pseudo-terminal whose controlling process is make, so
Ctrl+C (byte 0x03) is turned into SIGINT for the terminal's foreground
process group by the kernel, exactly as in a real terminal. That is what makes
"Ctrl+C stops everything with status 0" testable: a SIGINT sent to make's
group by hand would reach make too, and make dies of it whatever runs below.
"""

from __future__ import annotations

import fcntl
import os
import pty
import subprocess
import termios
from pathlib import Path
from typing import NamedTuple

import psutil

from tests.fixtures import HERE, free_port, wait_until

CTRL_C = b"\x03"


def _take_the_terminal() -> None:
    """In the child, after setsid: standard input, the pseudo-terminal, becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def start_make_run(
    tmp_path: Path, target: str = "run", data: Path | None = None, **settings: str
) -> tuple[subprocess.Popen, Path]:
    """`make <target>` in a terminal of its own, with a data folder (`tmp_path/data` unless given),
    the local mail sink and `settings` (ports) over this environment; it and its log.

    `make -o .venv/.installed`: the suite's virtualenv is used as it is."""
    # As from a new terminal: none of the suite's Temporal or database settings, nor make's own
    # variables when the suite runs under `make test`.
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TEMPORAL_", "DATABASE_URL", "MAKE")) and key != "MFLAGS"
    }
    env.update(DATA_DIR=str(data or tmp_path / "data"), WEB_WORKERS="1", **settings)
    env.pop("SMTP_URL", None)
    env.pop("STRIPE_API_KEY", None)  # make run starts its own local Stripe, as on a machine with no key
    env.pop("STRIPE_API_BASE", None)
    env.pop("OPERATOR_TOKEN", None)  # the token is generated into the data folder, as on a first run
    log = tmp_path / f"make-{target}.log"
    terminal, its_end = pty.openpty()
    with open(log, "wb") as out:
        make = subprocess.Popen(
            ["make", "--no-print-directory", "-o", ".venv/.installed", target],
            cwd=HERE,
            env=env,
            stdin=its_end,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_take_the_terminal,  # noqa: PLW1509 - only an ioctl, before exec
        )
    os.close(its_end)
    make.terminal = terminal  # type: ignore[attr-defined]
    return make, log


class Ports(NamedTuple):
    dev: int
    ui: int
    web: int
    smtp: int
    metrics: int | None  # the worker's metrics endpoint; None: none served
    stripe: int = 0  # the local Stripe's


def start_on_free_ports(tmp_path: Path, worker_metrics: bool = False, **settings: str) -> tuple[subprocess.Popen, Path, Ports]:
    """`make run` with every port free (a second stack beside any other) and `settings`, as `start_make_run`."""
    ports = Ports(free_port(), free_port(), free_port(), free_port(), free_port() if worker_metrics else None, free_port())
    make, log = start_make_run(
        tmp_path,
        TEMPORAL_DEV_PORT=str(ports.dev),
        TEMPORAL_UI_PORT=str(ports.ui),
        WEB_PORT=str(ports.web),
        SMTP_SINK_PORT=str(ports.smtp),
        WORKER_METRICS_PORT=str(ports.metrics or ""),
        LOCALSTRIPE_PORT=str(ports.stripe),
        **settings,
    )
    return make, log, ports


def ready(make: subprocess.Popen, log: Path) -> bool:
    """Whether `make run` has printed its ready line (fails at once if make has ended)."""
    assert make.poll() is None, log.read_text()
    return "Ready in " in log.read_text()


def stop_make_run(make: subprocess.Popen, log: Path | None = None) -> None:
    """Ctrl+C in make's terminal: make exits 0 and every process it started is gone."""
    try:
        processes = psutil.Process(make.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        processes = []
    try:
        os.write(make.terminal, CTRL_C)  # type: ignore[attr-defined]
        status = make.wait(60)
        output = log.read_text() if log else ""
        assert status == 0, f"make exited {status} on Ctrl+C\n{output}"
        wait_until(
            lambda: not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE],
            timeout=30,
            what="every process of make run to stop",
        )
    finally:
        for process in processes:  # whatever a failed stop left behind
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        if make.poll() is None:
            make.kill()
        os.close(make.terminal)  # type: ignore[attr-defined]
