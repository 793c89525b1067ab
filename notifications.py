"""Email to applicants and customers: building the messages and the activities that send them over SMTP.

The loan decision email (`send_decision_email`) and an order's emails
(`send_order_email`: received, waiting for review, shipped, delivered,
cancelled, ...; their texts worded by the order workflow from messages.json).
The message is built with the standard library's `email` package (headers from
`email.headerregistry.Address`, so a name or address cannot add headers or
recipients) and sent with `smtplib` in a sync activity, which runs on the
worker's thread pool. SMTP is at-least-once: each message carries a Message-ID
derived from the workflow ID and the kind, and a Date that is when the workflow
asked for the email (the activity's scheduled time, the same on every attempt),
and its MIME boundary comes from its content, so a retry after a crash re-sends
the same message byte for byte; the application record (for an order, its `order_emails`
record per kind) notes that it was sent, so a retry after success sends nothing.
The decision email has its own wording (`LoanOutcome.email_text`, fixed with the
decision): the page says "we are emailing…", the email is the message itself,
with the decision's reason explained.
Reasons recorded or raised never quote the recipient's address: they reach
the worker's log.
"""

from __future__ import annotations

import hashlib
import html
import os
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import parse_qs, unquote, urlsplit

from email_validator import EmailNotValidError, validate_email
from temporalio import activity
from temporalio.exceptions import ApplicationError

from shared import ORDER_EMAILS, DecisionEmail, LoanOutcome, OrderEmailRequest, order_workflow_id, record_key
from store import JsonStore

APPLICATIONS = "applications"
EMAIL_REFUSED = "EmailRefused"
# SMTP down, a timeout or a 4xx: retried by the activity's retry policy.
EMAIL_NOT_SENT_YET = "EmailNotSentYet"
DEFAULT_MAIL_FROM = "Loan pre-approval <no-reply@loans.invalid>"


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
    def from_env(cls) -> SmtpSettings | None:
        url = os.environ.get("SMTP_URL", "").strip()
        return cls.from_url(url) if url else None


def mail_from_env() -> str:
    return os.environ.get("MAIL_FROM", DEFAULT_MAIL_FROM)


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
    """"Name <user@domain>" or "user@domain" -> Address (which refuses CR/LF)."""
    from email.utils import parseaddr

    name, addr = parseaddr(text)
    username, _, domain = addr.partition("@")
    return Address(display_name=name, username=username, domain=domain)


def decision_email(outcome: LoanOutcome, public_url: str, mail_from: str, date: datetime) -> EmailMessage:
    """The decision, its reason and next steps in the email's own words, and the link to the
    applicant's result page; no income or score. `date` is the Date header (when the workflow,
    having decided, asked for the email), so every attempt builds the same message."""
    application = outcome.application
    link = f"{public_url.rstrip('/')}/applications/{outcome.workflow_id}"
    # Decided before the email had its own wording: the page's texts, as such emails always were.
    text = outcome.email_text or DecisionEmail(outcome.message.message, "", outcome.message.next_steps)
    message = EmailMessage()
    message["Subject"] = outcome.message.title
    message["From"] = parse_mailbox(mail_from)
    # The address is checked as one addr-spec (no second recipient hidden in it), and
    # Address() raises on CR/LF in any part: a crafted name cannot add a header or a recipient.
    recipient = validate_email(application.email, check_deliverability=False)
    # A name holding "=?" would be decoded by mail clients as an RFC 2047 encoded-word (a name
    # that reads "Bcc: …"): validation refuses it, and a record from elsewhere goes out without a name.
    display_name = "" if "=?" in application.name else application.name
    message["To"] = Address(display_name=display_name, username=recipient.local_part, domain=recipient.domain)
    message["Date"] = format_datetime(date.astimezone(timezone.utc))
    message["Message-ID"] = message_id(outcome.workflow_id, "decision", mail_from)
    paragraphs = [text.message, text.explanation] if text.explanation else [text.message]
    steps_text = "\n".join(f"- {step}" for step in text.next_steps)
    body = "\n\n".join(paragraphs)
    message.set_content(
        f"Dear {application.name},\n\n{body}\n\nNext steps:\n{steps_text}\n\n"
        f"Your application and its decision: {link}\n"
    )
    paragraphs_html = "".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in paragraphs)
    steps_html = "".join(f"<li>{html.escape(step)}</li>" for step in text.next_steps)
    message.add_alternative(
        f"<p>Dear {html.escape(application.name)},</p>{paragraphs_html}"
        f"<p>Next steps:</p><ul>{steps_html}</ul>"
        f'<p><a href="{html.escape(link)}">Your application and its decision</a></p>',
        subtype="html",
    )
    _fix_boundary(message)
    return message


def order_email(request: OrderEmailRequest, mail_from: str, date: datetime) -> EmailMessage:
    """One of an order's emails: the workflow's subject and text, in plain text and HTML.

    `date` is the Date header (when the workflow asked for the email, the same on every attempt).
    Raises ValueError for a subject or an address that could add a header
    (CR/LF) or a recipient; the body may hold any order field (it is no header).
    """
    message = EmailMessage()
    message["Subject"] = request.subject  # the policy refuses CR/LF in a header value
    message["From"] = parse_mailbox(mail_from)
    recipient = validate_email(request.to, check_deliverability=False)
    message["To"] = Address(username=recipient.local_part, domain=recipient.domain)
    message["Message-ID"] = message_id(order_workflow_id(request.order_id), request.kind, mail_from)
    message["Date"] = format_datetime(date.astimezone(timezone.utc))
    message.set_content(f"Hello,\n\n{request.text}\n")
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in request.text.split("\n\n"))
    message.add_alternative(f"<p>Hello,</p>{paragraphs}", subtype="html")
    _fix_boundary(message)
    return message


def without_address(text: str, address: str) -> str:
    """`text` with the recipient's address taken out: SMTP replies often quote it."""
    return text.replace(address, "<recipient>") if address else text


def send(smtp: SmtpSettings, message: EmailMessage) -> None:
    """One SMTP conversation. Raises smtplib errors as they come (the caller classifies them)."""
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


class EmailActivities:
    def __init__(self, store: JsonStore, smtp: SmtpSettings | None, mail_from: str, public_url: str):
        self.store = store
        self.smtp = smtp
        self.mail_from = mail_from
        self.public_url = public_url

    def _record(self, outcome: LoanOutcome, email: dict) -> None:
        def change(existing: dict | None) -> dict:
            return {**(existing or {}), "email": email}

        self.store.update(APPLICATIONS, record_key(outcome.workflow_id, outcome.run_id), change)

    @activity.defn
    def send_decision_email(self, outcome: LoanOutcome) -> str:
        """Send the decision email once; returns its status ("sent", "refused", "not_configured")."""
        record = self.store.get(APPLICATIONS, record_key(outcome.workflow_id, outcome.run_id)) or {}
        previous = (record.get("email") or {}).get("status")
        if previous in ("sent", "refused"):
            return previous  # a retry after success (or a final refusal) sends nothing
        try:
            message = decision_email(outcome, self.public_url, self.mail_from, activity.info().scheduled_time)
        except (ValueError, EmailNotValidError) as err:
            return self._unaddressable(err, lambda email: self._record(outcome, email))
        return self._deliver(message, outcome.application.email, lambda email: self._record(outcome, email))

    @activity.defn
    def send_order_email(self, request: OrderEmailRequest) -> str:
        """Send one of an order's emails once; returns its status ("sent", "refused", "not_configured")."""
        key = f"{request.order_id}.{request.kind}"
        previous = (self.store.get(ORDER_EMAILS, key) or {}).get("status")
        if previous in ("sent", "refused"):
            return previous  # a retry after success (or a final refusal) sends nothing

        def record(email: dict) -> None:
            self.store.put(ORDER_EMAILS, key, {"order_id": request.order_id, "kind": request.kind, **email})

        try:
            message = order_email(request, self.mail_from, activity.info().scheduled_time)
        except (ValueError, EmailNotValidError) as err:
            return self._unaddressable(err, record)
        return self._deliver(message, request.to, record)

    def _unaddressable(self, err: Exception, record) -> str:
        now = datetime.now(timezone.utc).isoformat()
        record({"status": "refused", "reason": f"not a deliverable message: {err}", "at": now})
        raise ApplicationError(f"cannot address the email: {err}", f"not a deliverable message: {err}", type=EMAIL_REFUSED,
                               non_retryable=True) from None

    def _deliver(self, message: EmailMessage, address: str, record) -> str:
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
            raise ApplicationError(f"the mail server refused the email: {reason}", reason, type=EMAIL_REFUSED,
                                   non_retryable=True) from None
        record({"status": "sent", "at": now, "message_id": message["Message-ID"]})
        return "sent"
