"""The applicant's decision email: the message, and the steps that send it once (the persist step
that carries it, or the email's own activity)."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from email_validator import EmailNotValidError, validate_email
from temporalio import activity

from core.mail import CarriedSends, Mailer, _fix_boundary, message_id, new_message, parse_mailbox
from core.store import Store
from loans.model import (
    APPLICATIONS,
    SEND_DECISION_EMAIL,
    DecisionEmail,
    LoanOutcome,
    applicant_link_expires,
    applicant_link_key,
    record_key,
)


def applicant_link(public_url: str, secret: bytes, outcome: LoanOutcome, window_days: int) -> str:
    """The applicant's result page with its key (loans/model.py `applicant_link_key`), open until a
    minute before the application's window closes."""
    expires = applicant_link_expires(datetime.fromisoformat(outcome.submitted_at), window_days)
    key = applicant_link_key(secret, outcome.workflow_id, expires)
    return f"{public_url.rstrip('/')}/applications/{outcome.workflow_id}?key={key}"


def decision_email(outcome: LoanOutcome, link: str, mail_from: str, date: datetime) -> EmailMessage:
    """The decision, its reason and next steps in the email's own words, and `link`, to the
    applicant's result page; no income or score. `date` is the Date header (the application's
    submission, when its decision was made), so every attempt builds the same message."""
    application = outcome.application
    # Decided before the email had its own wording: the page's texts, as such emails always were.
    text = outcome.email_text or DecisionEmail(outcome.message.message, "", outcome.message.next_steps)
    message = new_message()
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
        f"Dear {application.name},\n\n{body}\n\nNext steps:\n{steps_text}\n\nYour application and its decision: {link}\n"
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


class LoanEmailActivities:
    """The loan's email step; the application's record says how its email went."""

    def __init__(self, store: Store, mailer: Mailer, public_url: str, secret: bytes, window_days: int):
        self.store = store
        self.mailer = mailer
        self.public_url = public_url
        # The link's key is made here, from the deployment's secret: it never goes through Temporal.
        self.secret = secret
        self.window_days = window_days
        self.carried = CarriedSends(mailer)  # the email the persist step carries

    @activity.defn(name=SEND_DECISION_EMAIL)
    def send_decision_email(self, outcome: LoanOutcome) -> str:
        """Send the decision email once; returns its status ("sent", "refused", "not_configured")."""
        return self._send_once(outcome, self.mailer)

    def send_carried(self, outcome: LoanOutcome) -> str | None:
        """Send the decision email from the persist step that carries it: its status, or None when it is
        not sent yet (`CarriedSends`: the workflow then starts the email's own activity)."""
        went = self.carried.send(lambda mailer: self._send_once(outcome, mailer))
        return None if went is None else went[0]

    def _send_once(self, outcome: LoanOutcome, mailer: Mailer) -> str:
        key = record_key(outcome.workflow_id, outcome.run_id)
        # The record's lock is held while sending: a persist attempt that carries the email, abandoned
        # at its timeout while still sending, and the email's own activity may run at once; the second
        # finds it sent.
        with self.store.locked(APPLICATIONS, key):
            current = self.store.get(APPLICATIONS, key) or {}
            previous = (current.get("email") or {}).get("status")
            if previous in ("sent", "refused"):
                return previous  # a retry after success (or a final refusal) sends nothing

            def record(email: dict) -> None:
                # The lock is held, so the record read above is still the record.
                self.store.write_locked(APPLICATIONS, key, {**current, "email": email})

            try:
                link = applicant_link(self.public_url, self.secret, outcome, self.window_days)
                # Dated when the application was decided (the workflow's start, milliseconds before): the
                # same on every attempt, the persist step's (in a retried workflow task too) or the activity's.
                message = decision_email(outcome, link, mailer.mail_from, datetime.fromisoformat(outcome.submitted_at))
            except (ValueError, EmailNotValidError) as err:
                return mailer.unaddressable(err, record)
            return mailer.deliver(message, outcome.application.email, record)
