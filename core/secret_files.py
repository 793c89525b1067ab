"""Generated secrets kept in the data folder: created once, readable only by their owner, then reused.

When an operator sets no key (`APP_SECRET_KEY`, `PAYLOAD_KEY`), each process of
the app must still use the same one, across restarts too. So the first process
to need it generates it into `DATA_DIR/secrets/` (folder 0700, file 0600) and
every later process reads that file.

Several processes start at once under `make run` (web workers, the worker), so
creation is atomic: the secret is written to a private temporary file, which is
then hard-linked to its final name. A link fails if the name exists, so exactly
one process wins; the others read the winner's complete file, never a half
written one (which plain `O_EXCL` creation would let them see).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path


def read_or_create_secret(path: Path, generate: Callable[[], str]) -> str:
    """The secret stored at `path`; if there is none, `generate()` one and store it (0600)."""
    path = Path(path)
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(generate() + "\n")
            file.flush()
            os.fsync(file.fileno())
        try:
            os.link(temporary, path)  # atomic: fails if another process stored its secret first
        except FileExistsError:
            pass
    finally:
        temporary.unlink(missing_ok=True)
    return _read(path)


def _read(path: Path) -> str:
    value = path.read_text().strip()
    if not value:
        raise SystemExit(f"{path} is empty: delete it to generate a new secret, or set the variable instead")
    return value
