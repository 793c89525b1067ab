"""`make run`: the whole product under supervisord, one ready line, Ctrl+C stops it with status 0.

    python -m tools.stack run [--postgres]   # what `make run` / `make run-postgres` run
    python -m tools.stack workers N          # N worker processes (`make workers N=3`)
    python -m tools.stack status             # each process's state (`make status`)

supervisord (the `supervisor` package) runs each process on its own: one that
crashes is restarted and the others keep serving, and `supervisorctl` (`make worker-stop`,
`make worker-start`) stops and starts one while the rest go on. This module only writes its
configuration, starts it, waits until the product answers, prints one line saying where
everything is, and stops it on Ctrl+C. Each process writes its log under DATA_DIR/logs;
supervisord's own lines (a process exited, restarted) go to the console.

The processes: the Temporal dev server (not when TEMPORAL_ADDRESS is set), the
worker (and up to MAX_WORKERS - 1 more on `make workers`), the web app
(gunicorn), the local mail sink (not when SMTP_URL is set), the local Stripe (not
when STRIPE_API_KEY is set) and, for `--postgres`, a local PostgreSQL (not when
DATABASE_URL is set).

Why the terminal's foreground is taken (`own_the_terminal`): a terminal sends
Ctrl+C to its whole foreground process group, make included, and make dies of
the signal whatever its recipe does ("Error 130"). In a group of its own,
this process alone gets it, stops everything and exits 0, and so does make.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx

HERE = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MAX_WORKERS = 8
# supervisord's lines that say nothing a person running needs (root in a container; its socket is 0700).
QUIET = ("is running as root", "RPC interface", "without any HTTP authentication", "Set uid to user")


class Program(NamedTuple):
    name: str
    command: list[str]
    priority: int  # lower starts first and stops last
    stop_seconds: int = 15  # after SIGTERM, how long until SIGKILL


def programs(
    data: Path, postgres: bool, start_temporal: bool, start_mail: bool, start_postgres: bool, start_stripe: bool = False
) -> list[Program]:
    """What `make run` starts, in the order it starts them."""
    python = str(BIN / "python")
    worker = [python, "worker.py"]
    web = [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "starter:create_app()"]
    if postgres:
        # The worker and the web app wait until PostgreSQL accepts connections, then apply migrations.
        wait = f'{shlex.quote(python)} -m tools.pg_server wait "$DATABASE_URL" && exec '
        worker, web = (["/bin/sh", "-c", wait + shlex.join(command)] for command in (worker, web))
    found = []
    if start_temporal:
        found.append(Program("temporal", [python, "-m", "tools.dev_server"], 10, 20))
    if start_postgres:
        pg_port = os.environ.get("PG_PORT") or "5433"
        found.append(Program("postgres", [python, "-m", "tools.pg_server", "run", str(data / "postgres"), pg_port], 10, 30))
    if start_mail:
        port = os.environ.get("SMTP_SINK_PORT") or "2525"
        found.append(Program("mail", [python, "-m", "tools.mail_sink", "--port", port, "--maildir", str(data / "mail")], 20))
    if start_stripe:
        port = os.environ.get("LOCALSTRIPE_PORT") or "8420"
        state = str(data / "stripe" / "state.pickle")
        found.append(Program("stripe", [python, "-m", "tools.stripe_server", "--port", port, "--state", state], 20))
    found += [Program("worker", worker, 30), Program("web", web, 30)]
    return found


def socket_path(run_dir: Path) -> Path:
    """supervisord's control socket: in the data folder unless its path is too long for a Unix socket."""
    path = run_dir / "supervisor.sock"
    if len(str(path)) < 100:
        return path
    return Path("/tmp") / f"supervisor-{hashlib.sha256(str(run_dir).encode()).hexdigest()[:16]}.sock"


def _escape(value: str) -> str:
    return value.replace("%", "%%")  # supervisord expands %(name)s in its configuration


def configuration(found: list[Program], run_dir: Path, logs: Path) -> str:
    """supervisord's configuration: each program restarted when it exits, its log in `logs`."""
    sock = socket_path(run_dir)
    lines = [
        "[unix_http_server]",
        f"file={_escape(str(sock))}",
        "chmod=0700",
        "[supervisord]",
        "nodaemon=true",
        f"logfile={_escape(str(logs / 'supervisord.log'))}",
        f"pidfile={_escape(str(run_dir / 'supervisord.pid'))}",
        f"childlogdir={_escape(str(logs))}",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "[supervisorctl]",
        f"serverurl=unix://{_escape(str(sock))}",
    ]
    for program in found:
        lines += [f"[program:{program.name}]", *_program_settings(program, logs / f"{program.name}.log")]
        if program.name == "worker":
            # The extra workers `make workers N=...` starts: the same command, no metrics port of their own.
            lines += [
                "[program:more-workers]",
                *_program_settings(program, logs / "worker-%(process_num)d.log"),
                f"numprocs={MAX_WORKERS - 1}",
                "numprocs_start=2",
                "process_name=worker-%(process_num)d",
                "autostart=false",
                'environment=WORKER_METRICS_PORT=""',
            ]
    return "\n".join(lines) + "\n"


def _program_settings(program: Program, log: Path) -> list[str]:
    log_name = str(log) if "%(process_num)d" in str(log) else _escape(str(log))
    return [
        f"command={_escape(shlex.join(program.command))}",
        f"directory={_escape(str(HERE))}",
        f"priority={program.priority}",
        "autorestart=true",
        "startsecs=1",
        "startretries=3",
        f"stopwaitsecs={program.stop_seconds}",
        # gunicorn's workers and a shell's child stop with the process supervisord started.
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log_name}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]


def control(run_dir: Path) -> Any:
    """supervisord's XML-RPC interface, over its control socket."""
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(run_dir)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def running(run_dir: Path) -> bool:
    """Whether a supervisord answers on this data folder's control socket."""
    try:
        control(run_dir).supervisor.getState()
    except (OSError, xmlrpc.client.Error):
        return False
    return True


@contextlib.contextmanager
def own_the_terminal() -> Iterator[None]:
    """This process in a process group of its own, in the terminal's foreground while it runs."""
    try:
        tty = os.open("/dev/tty", os.O_RDWR)
    except OSError:
        yield  # no terminal (a test, a service manager): signals come from whoever started make
        return
    previous = os.getpgrp()
    taken = False
    try:
        if os.tcgetpgrp(tty) == previous:
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)  # a background group may then hand the terminal over
            os.setpgid(0, 0)
            os.tcsetpgrp(tty, os.getpgrp())
            taken = True
    except OSError:
        pass
    try:
        yield
    finally:
        if taken:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(tty, previous)
        os.close(tty)


def _die_with_parent() -> None:
    """In supervisord's process: SIGTERM when this launcher dies, however it dies (Linux's PR_SET_PDEATHSIG)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


class Console:
    """supervisord's lines, held back until the product is ready (and shown if it never is)."""

    def __init__(self, stream: Any) -> None:
        self.held: list[str] = []
        self.live = False
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self.thread.start()

    def _pump(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line or any(quiet in line for quiet in QUIET):
                continue
            # "2026-12-05 01:40:00,123 INFO exited: worker (...)" -> "01:40:00 supervisord: exited: worker (...)"
            parts = line.split(" ", 3)
            if len(parts) == 4 and parts[1][:8].count(":") == 2:
                line = f"{parts[1][:8]} supervisord: {parts[3]}"
            with self.lock:
                if self.live:
                    print(line, flush=True)
                else:
                    self.held.append(line)

    def go_live(self, show_held: bool = False) -> None:
        with self.lock:
            if show_held:
                print("\n".join(self.held), flush=True)
            self.held.clear()
            self.live = True


def wait_until_ready(supervisord: subprocess.Popen, run_dir: Path, web: str) -> str | None:
    """None once every process is running and the web app is ready; else why not."""
    started = time.monotonic()
    told = False
    while True:
        if supervisord.poll() is not None:
            return f"supervisord exited with status {supervisord.returncode}"
        states: dict[str, str] = {}
        with contextlib.suppress(OSError, xmlrpc.client.Error):
            states = {
                p["name"]: p["statename"] for p in control(run_dir).supervisor.getAllProcessInfo() if p["group"] != "more-workers"
            }
        failed = [name for name, state in states.items() if state == "FATAL"]
        if failed:
            return (
                f"{', '.join(failed)} could not start: see {', '.join(str(run_dir.parent / 'logs' / f'{n}.log') for n in failed)}"
            )
        waiting = [name for name, state in states.items() if state != "RUNNING"] if states else ["supervisord"]
        if not waiting:
            try:
                if httpx.get(f"{web}/readyz", timeout=5).status_code == 200:
                    return None
                waiting = ["web (/readyz is not 200 yet)"]
            except httpx.HTTPError:
                waiting = ["web"]
        if not told and time.monotonic() - started > 60:
            print(f"Still waiting for: {', '.join(waiting)} (logs in {run_dir.parent / 'logs'})", flush=True)
            told = True
        time.sleep(0.25)


def ready_line(settings: Any, elapsed: float, mail: str, metrics: str, database: str | None, payments: str = "") -> str:
    from web.auth import signin_hint

    web = settings.public_url
    parts = [
        f"Loan form: {web}/",
        f"Orders: {web}/orders",
        f"Shop: {web}/shop",
        f"Operator sign-in: {web}/signin ({signin_hint(settings)})",
        mail,
        *([payments] if payments else []),
        f"Temporal UI: {settings.temporal_ui_url}",
    ]
    if metrics:
        parts.append(f"Worker metrics: {metrics}")
    if database:
        parts.append(f"PostgreSQL: {database}")
    parts += [f"Logs: {settings.data_dir / 'logs'}", "Ctrl+C stops everything"]
    return f"Ready in {elapsed:.0f} s. " + "  ".join(parts)


def run(postgres: bool) -> int:
    from core.settings import TEMPORAL_UI_PATH, Settings

    began = time.monotonic()
    env = os.environ
    # Every file the processes create (supervisord's children inherit it) is this user's only: records,
    # emails, Temporal's history, logs; an open data folder let another user read them or stop every write.
    os.umask(0o077)
    data = Path(env.get("DATA_DIR") or HERE / "data").resolve()
    run_dir, logs = data / "run", data / "logs"
    for folder in (data, run_dir, logs):
        folder.mkdir(parents=True, exist_ok=True)
    # The data folder is this user's only; as root with a local PostgreSQL, others may pass through it
    # (not list it): the server runs as the `postgres` user in data/postgres.
    data.chmod(0o711 if postgres and os.geteuid() == 0 and not env.get("DATABASE_URL") else 0o700)
    run_dir.chmod(0o700)
    logs.chmod(0o700)
    if running(run_dir):
        print(f"make run is already running on {data}: stop it (Ctrl+C in its terminal) first", file=sys.stderr)
        return 1
    env["DATA_DIR"] = str(data)
    start_temporal = not env.get("TEMPORAL_ADDRESS")
    if start_temporal:
        env["TEMPORAL_ADDRESS"] = f"{env.get('TEMPORAL_DEV_IP') or '127.0.0.1'}:{env.get('TEMPORAL_DEV_PORT') or '7233'}"
        # The UI's server on loopback; operators open it through the web app (web/temporal_ui.py).
        env.setdefault("TEMPORAL_UI_UPSTREAM", f"http://127.0.0.1:{env.get('TEMPORAL_UI_PORT') or '8233'}")
    start_mail = not env.get("SMTP_URL")
    if start_mail:
        env["SMTP_URL"] = f"smtp://127.0.0.1:{env.get('SMTP_SINK_PORT') or '2525'}"
        env.setdefault("MAIL_VIEW_DIR", str(data / "mail"))  # the operators read them at /mail (web/mail_view.py)
        mail = ""  # said below, with the web app's address
    else:
        mail = "Emails: sent through SMTP_URL"
    start_stripe = not env.get("STRIPE_API_KEY")
    if start_stripe:  # the local Stripe (tools/stripe_server.py); a real key means the real one
        env["STRIPE_API_KEY"] = "sk_test_localstripe"
        env["STRIPE_API_BASE"] = f"http://127.0.0.1:{env.get('LOCALSTRIPE_PORT') or '8420'}"
        env["STRIPE_PUBLISHABLE_KEY"] = "pk_test_localstripe"  # the shop's card fields: localstripe's Stripe.js
        env["STRIPE_JS_URL"] = f"{env['STRIPE_API_BASE']}/js.stripe.com/v3/"
        payments = f"Payments: a local Stripe at {env['STRIPE_API_BASE']} (localstripe; no money moves; "
        payments += "test card 4242 4242 4242 4242)"
    else:
        payments = "Payments: through Stripe with STRIPE_API_KEY"
    start_postgres = postgres and not env.get("DATABASE_URL")
    if start_postgres:
        from tools import pg_server

        env["DATABASE_URL"] = pg_server.url(data / "postgres", int(env.get("PG_PORT") or "5433"))
    env["WORKER_METRICS_PORT"] = env.get("WORKER_METRICS_PORT", "9464")
    metrics_port = env["WORKER_METRICS_PORT"].strip()
    metrics = f"http://{env.get('WORKER_METRICS_HOST') or '127.0.0.1'}:{metrics_port}/metrics" if metrics_port else ""
    settings = Settings.from_env()
    if start_temporal and not env.get("TEMPORAL_UI_URL"):
        env["TEMPORAL_UI_URL"] = settings.public_url + TEMPORAL_UI_PATH
        settings = Settings.from_env()
    if start_mail:
        mail = (
            f"Emails: {settings.public_url}/mail (a local SMTP sink keeps them in {data / 'mail'}; nothing leaves this machine)"
        )

    found = programs(data, postgres, start_temporal, start_mail, start_postgres, start_stripe)
    config = run_dir / "supervisord.conf"
    config.write_text(configuration(found, run_dir, logs))
    names = ", ".join(program.name for program in found)
    print(f"Starting {names} under supervisord (each process's log in {logs}) ...", flush=True)

    stopping = threading.Event()
    with own_the_terminal():
        supervisord = subprocess.Popen(
            [str(BIN / "supervisord"), "-n", "-c", str(config)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads yet: the console's starts below
        )

        def stop(signum: int, _frame: Any) -> None:
            stopping.set()
            with contextlib.suppress(ProcessLookupError):
                supervisord.send_signal(signal.SIGTERM)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, stop)
        assert supervisord.stdout is not None
        console = Console(supervisord.stdout)
        problem = wait_until_ready(supervisord, run_dir, f"http://127.0.0.1:{settings.web_port}")
        if stopping.is_set():  # Ctrl+C before it was ready
            console.go_live()
        elif problem:
            console.go_live(show_held=True)
            print(f"Not started: {problem}", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                supervisord.send_signal(signal.SIGTERM)
        else:
            console.go_live()
            database = env.get("DATABASE_URL") if postgres else None
            print(ready_line(settings, time.monotonic() - began, mail, metrics, database, payments), flush=True)
        status = supervisord.wait()
        console.thread.join(timeout=5)
    if stopping.is_set():
        print("Stopped: every process has exited.", flush=True)
        return 0
    if not problem:
        print(f"supervisord ended by itself (status {status}): everything it ran was stopped", file=sys.stderr)
    return 1


def _running_supervisor() -> Any:
    """The supervisord of `make run` on DATA_DIR, or SystemExit saying it is not running."""
    run_dir = Path(os.environ.get("DATA_DIR") or HERE / "data").resolve() / "run"
    if not running(run_dir):
        raise SystemExit(f"make run is not running on {run_dir.parent}")
    return control(run_dir).supervisor


def status() -> int:
    """Each process's state, as `supervisorctl status` says it, without the extra workers never started."""
    for process in _running_supervisor().getAllProcessInfo():
        if process["group"] == "more-workers" and process["statename"] == "STOPPED" and not process["start"]:
            continue
        print(f"{process['name']:<10} {process['statename']:<9} {process['description']}")
    return 0


def workers(count: int) -> int:
    """`count` worker processes: the first is `worker`, the others `more-workers:worker-N`."""
    if not 1 <= count <= MAX_WORKERS:
        print(f"N must be between 1 and {MAX_WORKERS}", file=sys.stderr)
        return 2
    supervisor = _running_supervisor()
    states = {f"{p['group']}:{p['name']}": p["statename"] for p in supervisor.getAllProcessInfo()}
    wanted = ["worker:worker", *(f"more-workers:worker-{n}" for n in range(2, count + 1))]
    for name, state in sorted(states.items()):
        if name in wanted and state not in ("RUNNING", "STARTING"):
            supervisor.startProcess(name)
        elif (
            name not in wanted
            and (name.startswith("more-workers:") or name == "worker:worker")
            and state in ("RUNNING", "STARTING")
        ):
            supervisor.stopProcess(name)
    print(f"{count} worker process{'es' if count > 1 else ''} running: {', '.join(n.split(':')[1] for n in wanted)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="start the whole product (make run)")
    run_parser.add_argument("--postgres", action="store_true", help="with PostgreSQL (make run-postgres)")
    workers_parser = commands.add_parser("workers", help="run N worker processes (make workers N=3)")
    workers_parser.add_argument("count", type=int)
    commands.add_parser("status", help="each process's state (make status)")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args.postgres)
    if args.command == "status":
        return status()
    return workers(args.count)


if __name__ == "__main__":
    sys.exit(main())
