"""Test fixtures for a real PostgreSQL server (imported by the PostgreSQL test files).

`postgres_server`: one server per test session, started from Debian's binaries
in a temporary folder (`tools/pg_server.py`). Without the binaries the PostgreSQL
tests are skipped with a message saying how to install them, unless
REQUIRE_POSTGRES=1 (CI), where that is a failure. `database_url`: a fresh
database per test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.fixtures import free_port
from tools import pg_server


@dataclass
class PostgresServer:
    data: Path
    port: int

    def url(self, database: str = "postgres") -> str:
        return pg_server.url(self.data, self.port, database)

    def new_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self, mode: str = "immediate") -> None:
        pg_server.stop(self.data, mode)

    def start(self) -> None:
        pg_server.start(self.data, self.port, fsync=False)


def require_server_binaries() -> None:
    """Skip the calling test loudly when PostgreSQL is not installed; fail under REQUIRE_POSTGRES=1 (CI)."""
    if pg_server.bin_dir() is not None:
        return
    message = f"PostgreSQL tests need a PostgreSQL server: {pg_server.INSTALL_HINT}"
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"REQUIRE_POSTGRES=1 and no server: {message}")
    warnings.warn(message)
    pytest.skip(f"*** SKIPPED: {message} ***")


@pytest.fixture(scope="session")
def postgres_server():
    require_server_binaries()
    # Under /tmp, not pytest's tmp_path: the server's user must be able to reach the folder.
    folder = Path(tempfile.mkdtemp(prefix="pgtest-", dir="/tmp"))
    folder.chmod(0o755)
    server = PostgresServer(folder / "pg", free_port())
    pg_server.init(server.data, fsync=False)
    server.start()
    yield server
    try:
        pg_server.stop(server.data, "immediate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def database_url(postgres_server) -> str:
    return postgres_server.new_database()
