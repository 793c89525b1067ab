"""An order's emails to its customer: the message of each kind, and the activity that sends each once."""

from __future__ import annotations

import html
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime

from email_validator import EmailNotValidError, validate_email
from temporalio import activity

from core.mail import Mailer, _fix_boundary, message_id, parse_mailbox
from core.store import Store
from orders.model import ORDER_EMAILS, SEND_ORDER_EMAIL, OrderEmailRequest, order_workflow_id


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


class OrderEmailActivities:
    """The order's email step; one record per order and kind says how each went."""

    def __init__(self, store: Store, mailer: Mailer):
        self.store = store
        self.mailer = mailer

    @activity.defn(name=SEND_ORDER_EMAIL)
    def send_order_email(self, request: OrderEmailRequest) -> str:
        """Send one of an order's emails once; returns its status ("sent", "refused", "not_configured")."""
        key = f"{request.order_id}.{request.kind}"
        previous = (self.store.get(ORDER_EMAILS, key) or {}).get("status")
        if previous in ("sent", "refused"):
            return previous  # a retry after success (or a final refusal) sends nothing

        def record(email: dict) -> None:
            self.store.put(ORDER_EMAILS, key, {"order_id": request.order_id, "kind": request.kind, **email})

        try:
            message = order_email(request, self.mailer.mail_from, activity.info().scheduled_time)
        except (ValueError, EmailNotValidError) as err:
            return self.mailer.unaddressable(err, record)
        return self.mailer.deliver(message, request.to, record)
