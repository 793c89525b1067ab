"""An order's emails to its customer: the message of each kind, and the activity that sends each once."""

from __future__ import annotations

import dataclasses
import html
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from email_validator import EmailNotValidError, validate_email
from temporalio import activity

from core.formatting import utc_now
from core.mail import CarriedSends, Mailer, _fix_boundary, message_id, new_message, parse_mailbox
from core.store import Store
from orders.model import ORDER_EMAILS, SEND_ORDER_EMAIL, OrderEmailRequest, OrderEmailState, order_workflow_id

# In a "shipped" email prepared at the release (v12), where the dispatch's carrier and tracking number go.
CARRIER_SLOT, TRACKING_SLOT = "[[carrier]]", "[[tracking_number]]"


def with_dispatch(request: OrderEmailRequest, carrier: str, tracking_number: str) -> OrderEmailRequest:
    """The "shipped" email with the dispatch's carrier and tracking number in its slots: the dispatch
    step that sends it and the order that sends it otherwise fill it the same way."""

    def fill(text: str) -> str:
        return text.replace(CARRIER_SLOT, carrier).replace(TRACKING_SLOT, tracking_number)

    return dataclasses.replace(request, subject=fill(request.subject), text=fill(request.text))


def order_email(request: OrderEmailRequest, mail_from: str, date: datetime) -> EmailMessage:
    """One of an order's emails: the workflow's subject and text, in plain text and HTML.

    `date` is the Date header (when the workflow asked for the email, the same on every attempt).
    Raises ValueError for a subject or an address that could add a header
    (CR/LF) or a recipient; the body may hold any order field (it is no header).
    """
    message = new_message()
    message["Subject"] = request.subject  # the policy refuses CR/LF in a header value
    message["From"] = parse_mailbox(mail_from)
    recipient = validate_email(request.to, check_deliverability=False)
    # As on the decision email (loans/emails.py): "=?" in a name would be read as an encoded word.
    display_name = "" if "=?" in request.name else request.name
    message["To"] = Address(display_name=display_name, username=recipient.local_part, domain=recipient.domain)
    message["Message-ID"] = message_id(order_workflow_id(request.order_id), request.kind, mail_from)
    message["Date"] = format_datetime(date.astimezone(timezone.utc))
    greeting = f"Hello {display_name}," if display_name else "Hello,"
    message.set_content(f"{greeting}\n\n{request.text}\n")
    paragraphs = "".join(f"<p>{html.escape(line)}</p>" for line in request.text.split("\n\n"))
    message.add_alternative(f"<p>{html.escape(greeting)}</p>{paragraphs}", subtype="html")
    _fix_boundary(message)
    return message


class OrderEmailActivities:
    """The order's email step; one record per order and kind says how each went."""

    def __init__(self, store: Store, mailer: Mailer):
        self.store = store
        self.mailer = mailer
        self.carried = CarriedSends(mailer)  # the emails steps carry (since version 10)

    @activity.defn(name=SEND_ORDER_EMAIL)
    def send_order_email(self, request: OrderEmailRequest) -> str:
        """Send one of an order's emails once; returns its status ("sent", "refused", "not_configured")."""
        return self._send_once(request, self.mailer)

    def send_carried(self, request: OrderEmailRequest) -> OrderEmailState | None:
        """Send one of an order's emails from the activity of the step that carries it: how it went, or
        None when it is not sent yet (`CarriedSends`: the email's own activity then sends it)."""
        went = self.carried.send(lambda mailer: self._send_once(request, mailer))
        return None if went is None else OrderEmailState(went[0], went[1], utc_now())

    def _send_once(self, request: OrderEmailRequest, mailer: Mailer) -> str:
        key = f"{request.order_id}.{request.kind}"
        # Held while sending: a step's attempt that carries the email and the email's own
        # activity may run at once (the step abandoned by a cancel); the second finds it sent.
        with self.store.locked(ORDER_EMAILS, key):
            previous = (self.store.get(ORDER_EMAILS, key) or {}).get("status")
            if previous in ("sent", "refused"):
                return previous  # a retry after success (or a final refusal) sends nothing

            def record(email: dict) -> None:
                self.store.write_locked(ORDER_EMAILS, key, {"order_id": request.order_id, "kind": request.kind, **email})

            asked = datetime.fromisoformat(request.requested_at) if request.requested_at else activity.info().scheduled_time
            try:
                message = order_email(request, mailer.mail_from, asked)
            except (ValueError, EmailNotValidError) as err:
                return mailer.unaddressable(err, record)
            return mailer.deliver(message, request.to, record)
