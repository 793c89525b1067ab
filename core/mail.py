"""Mail over SMTP: where to send (SMTP_URL), how a message is built and sent, and what a refusal means.

Both halves send through `Mailer`: the loan's decision email (`loans/emails.py`)
and an order's emails to its customer (`orders/emails.py`). Messages are built
with the standard library's `EmailMessage` (headers escaped, MIME parts), never
by string formatting. A 5xx from the server is final (EMAIL_REFUSED,
non-retryable); a connection failure, timeout or 4xx is retried by the
activity's retry policy (EMAIL_NOT_SENT_YET). Each email is recorded with how it
went, so a retry after success sends nothing.
"""

from __future__ import annotations

import dataclasses
import email.policy
import hashlib
import smtplib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.headerregistry import Address, HeaderRegistry
from email.message import EmailMessage
from urllib.parse import parse_qs, unquote, urlsplit

from temporalio import activity
from temporalio.exceptions import ApplicationError

from core.email_policy import EMAIL_NOT_SENT_YET, EMAIL_REFUSED
from core.settings import Settings


@dataclass(frozen=True)
class SmtpSettings:
    """Where to send mail: parsed from SMTP_URL (smtp://host:port, smtps://, ?starttls=true)."""

    host: str
    port: int
    implicit_tls: bool = False
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> SmtpSettings:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(f"SMTP_URL must look like smtp://host:port or smtps://host:465, not {url!r}")
        query = parse_qs(parts.query)
        implicit_tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit_tls else 25),
            implicit_tls=implicit_tls,
            starttls=query.get("starttls", ["false"])[0].lower() in ("1", "true", "yes"),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpSettings | None:
        """SMTP_URL's server, or None when none is set (then nothing is sent)."""
        return cls.from_url(settings.smtp_url) if settings.smtp_url else None


class _HeaderClasses(HeaderRegistry):
    """The standard registry, with each header's class made once: the standard one makes a new
    class (`type(...)`) for every header it parses, a tenth of the time a message takes to build."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type] = {}

    def __getitem__(self, name: str) -> type:
        made = self._made.get(name.lower())
        if made is None:
            made = self._made[name.lower()] = super().__getitem__(name)
        return made


# email.policy.default (what EmailMessage() uses) with the registry above: the same headers, parsed the same way.
MESSAGE_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())


def new_message() -> EmailMessage:
    return EmailMessage(policy=MESSAGE_POLICY)


def message_id(workflow_id: str, kind: str, mail_from: str) -> str:
    """Stable per workflow and kind, `<loan-….decision@domain>`, `<order-….shipped@domain>`: a re-send is
    the same message. (Before, a loan's read `<loan-loan-….decision@…>`: a retry straddling the change
    could carry the old one.)"""
    domain = parse_mailbox(mail_from).domain or "loans.invalid"
    safe_id = "".join(c if c.isalnum() or c in "-._" else "-" for c in workflow_id)
    return f"<{safe_id}.{kind}@{domain}>"


def _fix_boundary(message: EmailMessage) -> None:
    """A MIME boundary derived from the message's parts, not a random one: a re-send is byte-identical.
    A hash of the content cannot occur in that content."""
    digest = hashlib.sha256(message["Message-ID"].encode())
    for part in message.iter_parts():
        digest.update(part.as_bytes())
    message.set_boundary(f"=_{digest.hexdigest()[:40]}")


def parse_mailbox(text: str) -> Address:
    """ "Name <user@domain>" or "user@domain" -> Address (which refuses CR/LF)."""
    from email.utils import parseaddr

    name, addr = parseaddr(text)
    username, _, domain = addr.partition("@")
    return Address(display_name=name, username=username, domain=domain)


def without_address(text: str, address: str) -> str:
    """`text` with the recipient's address taken out: SMTP replies often quote it."""
    return text.replace(address, "<recipient>") if address else text


def send(smtp: SmtpSettings, message: EmailMessage) -> None:
    """One SMTP conversation. Raises smtplib errors as they come (the caller classifies them)."""
    client: smtplib.SMTP
    if smtp.implicit_tls:
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=ssl.create_default_context())
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    with client:
        if smtp.starttls:
            client.starttls(context=ssl.create_default_context())
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(message)


def permanent_refusal(err: Exception) -> str | None:
    """A 5xx answer is the server's final word; anything else (4xx, connection) is worth a retry."""
    if isinstance(err, smtplib.SMTPRecipientsRefused):
        codes = [(code, reply) for code, reply in err.recipients.values()]
        if codes and all(code >= 500 for code, _ in codes):
            return "; ".join(f"{code} {reply.decode(errors='replace')}" for code, reply in codes)
        return None
    code = getattr(err, "smtp_code", None)
    if isinstance(code, int) and code >= 500:
        reply = getattr(err, "smtp_error", b"")
        return f"{code} {reply.decode(errors='replace') if isinstance(reply, bytes) else reply}"
    return None


Recorder = Callable[[dict], None]


class Mailer:
    """Sends one message and records how it went, through the caller's `record`."""

    def __init__(self, smtp: SmtpSettings | None, mail_from: str):
        self.smtp = smtp
        self.mail_from = mail_from

    def unaddressable(self, err: Exception, record: Recorder) -> str:
        now = datetime.now(timezone.utc).isoformat()
        record({"status": "refused", "reason": f"not a deliverable message: {err}", "at": now})
        raise ApplicationError(
            f"cannot address the email: {err}", f"not a deliverable message: {err}", type=EMAIL_REFUSED, non_retryable=True
        ) from None

    def deliver(self, message: EmailMessage, address: str, record: Recorder) -> str:
        """Send over SMTP and record how it went; a temporary failure is raised for the retry policy."""
        if self.smtp is None:
            return "not_configured"  # no SMTP_URL: nothing is sent (see the activity's result in the history)
        now = datetime.now(timezone.utc).isoformat()
        try:
            send(self.smtp, message)
        except (smtplib.SMTPException, OSError) as err:
            reason = permanent_refusal(err)
            if reason is None:
                # Shown to operators while it lasts; a later success overwrites it.
                attempt = activity.info().attempt
                text = without_address(str(err) or type(err).__name__, address)
                record({"status": "retrying", "attempt": attempt, "reason": text, "at": now})
                # Raised afresh (from None): the SMTP error's text and traceback can quote the address.
                raise ApplicationError(f"email not sent yet: {text}", type=EMAIL_NOT_SENT_YET) from None
            reason = without_address(reason, address)
            record({"status": "refused", "reason": reason, "at": now, "message_id": message["Message-ID"]})
            raise ApplicationError(
                f"the mail server refused the email: {reason}", reason, type=EMAIL_REFUSED, non_retryable=True
            ) from None
        record({"status": "sent", "at": now, "message_id": message["Message-ID"]})
        return "sent"


# A step that carries an email (an order's validation, dispatch and award; the loan's persist) waits
# for the mail server this long at most per exchange; then the email's own activity retries it.
CARRIED_SMTP_TIMEOUT = 5.0  # seconds
# After a step could not send the email it carried (the mail server down, slow or deferring), the steps
# leave theirs to the emails' own activities this long: a failing server then holds no step (a loan's
# answer, an order's dispatch slot) more than once in this long, per worker process.
CARRIED_PAUSE_AFTER_FAILURE = 30.0  # seconds


class CarriedSends:
    """Emails sent by a step that runs anyway, instead of by an activity of their own.

    `send` returns how it went as (status, reason), or None when the email is not sent: the mail
    server down, slow or deferring, or a carried send failed lately (CARRIED_PAUSE_AFTER_FAILURE).
    Then the workflow starts the email's own activity, which retries it with the email policy.
    """

    def __init__(self, mailer: Mailer):
        smtp = mailer.smtp
        quick = dataclasses.replace(smtp, timeout=min(smtp.timeout, CARRIED_SMTP_TIMEOUT)) if smtp else None
        self.mailer = Mailer(quick, mailer.mail_from)
        self._again_at = 0.0  # time.monotonic() after which steps send their emails again

    def send(self, send_once: Callable[[Mailer], str]) -> tuple[str, str | None] | None:
        """`send_once(mailer)` sends the email once (or finds it sent) and returns its status."""
        if time.monotonic() < self._again_at:
            return None
        try:
            return send_once(self.mailer), None
        except ApplicationError as err:
            if err.type == EMAIL_REFUSED:
                return "refused", str(err.details[0]) if err.details else err.message
            self._pause()
        except Exception:  # noqa: BLE001 - whatever it was, the email's own activity retries it and says why
            self._pause()
        return None

    def _pause(self) -> None:
        self._again_at = time.monotonic() + CARRIED_PAUSE_AFTER_FAILURE
