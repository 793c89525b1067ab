"""The local mail folder: the Maildir the development mail sink writes and the operators' mail view reads.

`make run`'s sink (tools/mail_sink.py) keeps every message it accepts here; the
web app's `/mail` (web/mail_view.py) lists and shows them, where MAIL_VIEW_DIR
names the folder. A file's name carries when the message arrived and its
Message-ID's left part (`loan-….decision`, `order-….shipped`: core/mail.py
`message_id`), so the newest come first and a workflow's emails are found from
the names alone, without opening every message:

    new/1764921600.M123456P4242Q7_loan-0f3a….decision

That is still a Maildir (a unique name, written in tmp/ then moved into new/),
so any Maildir reader opens it too. Files a plain Maildir writer named
(`1764921600.M…P….host`) are listed by their time and found by no workflow.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME = re.compile(r"^[A-Za-z0-9._,=:-]{1,200}$")  # a file name this folder can hold, nothing else (no "/", no "..")
_ARRIVED = re.compile(r"^(\d{1,12})(?:\.M(\d{1,6}))?")
_counter = itertools.count()


def message_tag(message_id: str) -> str:
    """The part of a Message-ID a file name carries: `<loan-1.decision@x>` -> `loan-1.decision`."""
    left = message_id.strip().strip("<>").partition("@")[0]
    return _SAFE.sub("-", left)[:120]


def store_message(folder: Path, content: bytes, message_id: str | None) -> str:
    """Keep one message (its bytes as they came) in the Maildir `folder`; returns its file name."""
    for sub in ("tmp", "new", "cur"):
        (folder / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
    now = time.time()
    name = f"{int(now)}.M{int(now % 1 * 1_000_000):06d}P{os.getpid()}Q{next(_counter)}"
    if message_id:
        name += f"_{message_tag(message_id)}"
    temporary = folder / "tmp" / name
    with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(content)
    os.replace(temporary, folder / "new" / name)
    return name


@dataclass(frozen=True)
class StoredMessage:
    name: str  # the file's name: the message's key in the view's URLs
    arrived: datetime

    @property
    def tag(self) -> str:
        return self.name.partition("_")[2].partition(":")[0]


def _arrived(name: str, path: Path) -> datetime:
    found = _ARRIVED.match(name)
    if found:
        return datetime.fromtimestamp(int(found[1]) + int(found[2] or 0) / 1_000_000, UTC)
    return datetime.fromtimestamp(path.stat().st_mtime, UTC)


def list_messages(folder: Path, about: str | None = None) -> list[StoredMessage]:
    """The folder's messages, newest first; with `about` (a workflow ID), that workflow's only.
    Reads names, opens no message: a page opens its own (`read_message`)."""
    found = []
    for sub in ("new", "cur"):
        try:
            entries = list(os.scandir(folder / sub))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            message = StoredMessage(entry.name, _arrived(entry.name, Path(entry.path)))
            if about is None or message.tag.startswith(f"{message_tag(about)}."):
                found.append(message)
    found.sort(key=lambda message: (message.arrived, message.name), reverse=True)
    return found


def read_message(folder: Path, name: str) -> tuple[StoredMessage, EmailMessage] | None:
    """One message by its file name; None for a name this folder does not hold (or could not)."""
    if not _NAME.match(name) or name.startswith("."):
        return None
    for sub in ("new", "cur"):
        path = folder / sub / name
        try:
            with open(path, "rb") as file:
                parsed = BytesParser(policy=policy.default).parse(file)
        except (FileNotFoundError, IsADirectoryError):
            continue
        assert isinstance(parsed, EmailMessage)  # policy.default parses into EmailMessage
        return StoredMessage(name, _arrived(name, path)), parsed
    return None
