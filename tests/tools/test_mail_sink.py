"""The local SMTP sink (tools/mail_sink.py): `make run`'s process keeps every message on disk and nothing in memory."""

from __future__ import annotations

import mailbox
import smtplib
import subprocess
import sys
from email.message import EmailMessage

from tests.fixtures import HERE, free_port, wait_until


def message(n: int) -> EmailMessage:
    mail = EmailMessage()
    mail["From"] = "Loans <no-reply@loans.test>"
    mail["To"] = f"applicant-{n}@example.com"
    mail["Subject"] = f"Decision {n}"
    mail["Message-ID"] = f"<loan-{n}.decision@loans.test>"
    mail.set_content(f"Dear applicant {n},\n\nline two\n")
    return mail


def test_the_run_sink_keeps_messages_on_disk_only(tmp_path):
    """The sink `make run` starts writes each message as it came, byte for byte but the line ends."""
    port = free_port()
    maildir = tmp_path / "mail"
    sink = subprocess.Popen(
        [sys.executable, "-m", "tools.mail_sink", "--port", str(port), "--maildir", str(maildir)],
        cwd=HERE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "SMTP sink on" in sink.stdout.readline()  # listening
        sent = [message(n) for n in range(3)]
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for mail in sent:
                client.send_message(mail)
        stored = wait_until(
            lambda: len(mailbox.Maildir(maildir)) == 3 and mailbox.Maildir(maildir),
            timeout=10,
            what="three messages in the Maildir",
        )
        by_id = {m["Message-ID"]: bytes(m) for m in stored}
        for mail in sent:
            assert by_id[mail["Message-ID"]] == mail.as_bytes()
    finally:
        sink.terminate()
        sink.wait(10)


def test_a_forgetful_handler_stores_and_remembers_nothing(tmp_path):
    from aiosmtpd.controller import Controller

    from tools.mail_sink import MaildirHandler

    port = free_port()
    handler = MaildirHandler(tmp_path / "mail", remember=False)
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            for n in range(5):
                client.send_message(message(n))
    finally:
        controller.stop()
    assert len(handler.maildir) == 5
    assert handler.attempts == [] and handler.received == [] and handler.contents == []
