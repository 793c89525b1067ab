"""The local SMTP server for development: aiosmtpd on loopback, every message into a Maildir.

`make run` starts it when no SMTP_URL is set, so by default no message leaves
the machine. Operators read the messages in the web app at `/mail`
(web/mail_view.py); any Maildir reader opens the folder too. Each file's name
carries the message's Message-ID (core/mail_folder.py), so the view finds a
workflow's emails by name.
"""

from __future__ import annotations

import argparse
import asyncio
import mailbox
import re
import signal
import threading
from email.parser import BytesHeaderParser
from pathlib import Path

from aiosmtpd.controller import Controller

from core.mail_folder import store_message

MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]{1,250}>)", re.IGNORECASE | re.MULTILINE)


class MaildirHandler:
    """Keeps each message it accepts in a Maildir; refuses `refused` addresses with a 550.

    With `remember` (the tests' sinks), it also keeps in memory what it was sent, for the
    tests to read; `make run`'s sink (main) does not, so its memory stays flat however
    many messages it takes (`test_a_forgetful_handler_stores_and_remembers_nothing`).
    """

    def __init__(self, maildir: Path, refused: set[str] | None = None, remember: bool = True):
        maildir.parent.mkdir(parents=True, exist_ok=True)
        self.folder = maildir
        self.maildir = mailbox.Maildir(maildir, create=True)  # for reading it
        self.refused = refused if refused is not None else set()
        self.remember = remember
        self.attempts: list[str] = []  # every RCPT TO, accepted or not
        self.received: list[str] = []  # Message-IDs of the accepted messages, in order
        self.contents: list[bytes] = []  # the same messages as they came over the wire
        self.data_delay = 0.0  # seconds to hold a message before accepting it (tests: a crash mid-send)
        # Tests: keep this many messages but answer 451, as when the server's "accepted" is lost on the way.
        self.lost_answers = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.remember:
            self.attempts.append(address)
        if address.lower() in self.refused:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        # The bytes as they came (line ends made the file's): parsing the whole message and
        # writing it out again cost the sink most of its CPU per message. Its Message-ID names the file.
        header_block = envelope.content.partition(b"\r\n\r\n")[0]
        found = MESSAGE_ID.search(header_block)
        message_id = found[1].decode("ascii", "replace") if found else None
        store_message(self.folder, envelope.content.replace(b"\r\n", b"\n"), message_id)
        if self.remember:
            headers = BytesHeaderParser().parsebytes(envelope.content)
            self.received.append(headers["Message-ID"])  # the order of acceptance (a Maildir has none)
            self.contents.append(envelope.content)
        if self.lost_answers:
            self.lost_answers -= 1
            return "451 4.3.0 try again later"
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=2525)
    parser.add_argument("--maildir", type=Path, default=Path("data/mail"))
    args = parser.parse_args()
    controller = Controller(MaildirHandler(args.maildir, remember=False), hostname="127.0.0.1", port=args.port)
    controller.start()
    print(f"SMTP sink on smtp://127.0.0.1:{args.port}, writing to the Maildir {args.maildir.resolve()}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
