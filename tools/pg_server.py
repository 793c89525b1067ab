"""A local PostgreSQL server from the machine's binaries, for `make run-postgres` and the tests.

Debian's `postgresql` package puts `initdb`, `pg_ctl` and `postgres` under
/usr/lib/postgresql/<version>/bin. `initdb` refuses to run as root, so as root
every command runs as the `postgres` system user (`runuser -u postgres --`),
and the data folder is handed to that user. The server listens on a Unix
socket in its own folder and on a loopback port; `url()` is what DATABASE_URL gets.

    python tools/pg_server.py run DATA_DIR/postgres PORT   # init if needed, then run in the foreground (tools/stack.py, `make run-postgres`)
    python tools/pg_server.py wait DATABASE_URL            # until it accepts connections (60 s at most)
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

INSTALL_HINT = "install PostgreSQL: apt-get install -y postgresql (Debian/Ubuntu), then run the tests again"


def bin_dir() -> Path | None:
    """The newest installed server's binaries, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name))
    return Path(found[-1]).parent if found else None


def binaries() -> Path:
    """The server's binaries; exits with what to install when there are none."""
    found = bin_dir()
    if found is None:
        raise SystemExit("PostgreSQL's server binaries are not installed (apt-get install postgresql)")
    return found


def _as_server_user(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def _hand_over(path: Path) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, "postgres", "postgres")


def init(data: Path, fsync: bool = True) -> None:
    """A new cluster in `data` (which must not hold one yet), trusting local connections."""
    binaries = bin_dir()
    if binaries is None:
        raise SystemExit(f"No PostgreSQL server binaries under /usr/lib/postgresql: {INSTALL_HINT}")
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o700)
    _hand_over(data)
    socket_dir = data / "socket"
    args = [
        str(binaries / "initdb"),
        "-D",
        str(data / "cluster"),
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-instructions",
    ]
    if not fsync:
        args.append("--no-sync")
    subprocess.run(_as_server_user(args), check=True, capture_output=True)
    socket_dir.mkdir(exist_ok=True)
    _hand_over(socket_dir)


def server_options(data: Path, port: int, fsync: bool = True) -> list[str]:
    options = [
        "-c",
        f"port={port}",
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        f"unix_socket_directories={data / 'socket'}",
        "-c",
        "max_connections=200",
    ]
    # Tests turn fsync off (the machine does not crash under them), never synchronous_commit:
    # `pg_ctl stop -m immediate` would lose commits still in the WAL buffers.
    return options + ([] if fsync else ["-c", "fsync=off", "-c", "full_page_writes=off"])


def start(data: Path, port: int, fsync: bool = True) -> None:
    """Start in the background (pg_ctl), waiting until it accepts connections."""
    options = " ".join(server_options(data, port, fsync))
    subprocess.run(
        _as_server_user(
            [
                str(binaries() / "pg_ctl"),
                "-D",
                str(data / "cluster"),
                "-o",
                options,
                "-l",
                str(data / "server.log"),
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )


def stop(data: Path, mode: str = "fast") -> None:
    subprocess.run(
        _as_server_user([str(binaries() / "pg_ctl"), "-D", str(data / "cluster"), "-m", mode, "-w", "stop"]),
        check=True,
        capture_output=True,
    )


def url(data: Path, port: int, database: str = "postgres") -> str:
    return f"postgresql://postgres@/{database}?host={data / 'socket'}&port={port}"


def run(data: Path, port: int) -> None:
    """Initialise if needed, then become the server in the foreground (for a supervisor)."""
    if not (data / "cluster" / "PG_VERSION").exists():
        init(data)
    os.execvp(
        _as_server_user(["x"])[0],
        _as_server_user([str(binaries() / "postgres"), "-D", str(data / "cluster"), *server_options(data, port)]),
    )


def wait(database_url: str, timeout: float = 60.0) -> None:
    """Until the server accepts connections: the worker and web app start beside it under supervisord."""
    import psycopg

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(database_url, connect_timeout=2).close()
            return
        except psycopg.OperationalError as err:
            if time.monotonic() > deadline:
                raise SystemExit(f"PostgreSQL did not accept connections within {timeout:.0f} s: {err}") from None
            time.sleep(0.2)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "run":
        run(Path(sys.argv[2]).resolve(), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "wait":
        wait(sys.argv[2])
    else:
        raise SystemExit("usage: python -m tools.pg_server run DATA_FOLDER PORT | wait DATABASE_URL")
