"""The emails of customers' accounts: confirm the address, reset the password, "you have an account".

The web request that asks for one (sign-up, the confirmation link again, a
reset) starts an `AccountEmailWorkflow` (shop/account_email_workflow.py) and
answers at once, the same way whatever the address: it does not look for an
account, nor wait for the mail server. Here, in the worker, the activity reads
the account as it is when it runs and sends what it calls for:

- a sign-up: the confirmation link to an address waiting to be confirmed, or, to
  an address that has an account already, "you have an account, sign in";
- the confirmation link again: only to an address still waiting to be confirmed;
- a reset: the link to choose a new password, to an address with an account.

Anything else sends nothing. So no answer tells whether an address has an account,
by its words or by its time, and a mail server that is down delays the email
instead of losing it. Each request is recorded under its workflow's ID (collection
`account_emails`: what was sent and how it went, or that nothing was; no address),
so a retry after it is done sends nothing.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

from temporalio import activity

from core.formatting import utc_now
from core.mail import Mailer, message_id, new_message
from core.settings import Settings, sender_named
from core.store import Store
from shop.account_email_workflow import SEND_ACCOUNT_EMAIL, AccountEmailRequest
from shop.accounts import CustomerAccounts, account_key, links_key

log = logging.getLogger(__name__)
ACCOUNT_EMAILS = "account_emails"  # one record per request (its workflow ID): how its email went
SHOP_SENDER = "Shop"
# The shop's pages the links open (shop/account_web.py's routes).
LINK_PATHS = {"verify": "/shop/verify/{token}", "reset": "/shop/reset/{token}", "exists": "/shop/signin"}


def what_to_send(purpose: str, account: dict[str, Any] | None, version: int | None = None) -> str | None:
    """The email a request calls for, given the account as it is now: "verify", "exists", "reset", or None.
    `version`: the claim a sign-up made; another claim since is not this sign-up's to confirm."""
    if account is None:
        return None
    if purpose == "register":
        if account.get("verified"):
            return "exists"
        return "verify" if version is None or account.get("version") == version else None
    if purpose == "verify":
        return None if account.get("verified") else "verify"
    return "reset" if purpose == "reset" else None


class AccountEmailActivities:
    """The account email's one step, bound to the store, the site's address and the shop's texts."""

    def __init__(self, store: Store, settings: Settings, texts: dict[str, str], mailer: Mailer):
        self.store = store
        self.accounts = CustomerAccounts(store, links_key(settings.secret_key), signs_in=False)
        self.public_url = settings.public_url.rstrip("/")
        self.texts = texts
        self.mailer = mailer

    @activity.defn(name=SEND_ACCOUNT_EMAIL)
    def send_account_email(self, request: AccountEmailRequest) -> str:
        """Send what the request calls for, once: "verify", "exists", "reset", "nothing" or "not_configured"."""
        key = str(activity.info().workflow_id)  # a random ID per request (no address)
        with self.store.locked(ACCOUNT_EMAILS, key):
            previous = self.store.get(ACCOUNT_EMAILS, key) or {}
            if previous.get("status") == "sent":
                return str(previous["kind"])  # a retry after it was sent: nothing more
            if previous.get("status") in ("refused", "nothing", "not_configured"):
                return str(previous["status"])
            try:
                account = self.accounts.get(account_key(request.email))
            except ValueError:
                account = None  # not an address the store keys: no account
            kind = what_to_send(request.purpose, account, request.version)

            def record(email: dict) -> None:
                self.store.write_locked(
                    ACCOUNT_EMAILS, key, {"workflow_id": key, "purpose": request.purpose, "kind": kind, **email}
                )

            if account is None or kind is None:
                record({"status": "nothing", "at": utc_now()})
                return "nothing"
            if self.mailer.smtp is None:  # no SMTP_URL on this worker: said, and recorded, not silent
                log.warning("no SMTP_URL: an account's %s email was not sent", kind)
                record({"status": "not_configured", "at": utc_now()})
                return "not_configured"
            message = self.message(kind, account, key, datetime.fromisoformat(request.requested_at))
            status = self.mailer.deliver(message, account["email"], record)
        return kind if status == "sent" else status

    def message(self, kind: str, account: dict[str, Any], key: str, date: datetime) -> EmailMessage:
        token = self.accounts.link_token(account, kind) if kind != "exists" else ""
        link = self.public_url + LINK_PATHS[kind].format(token=token)
        message = new_message()
        message["From"] = sender_named(SHOP_SENDER, self.mailer.mail_from)
        message["To"] = account["email"]
        message["Subject"] = self.texts[f"email_{kind}_subject"]
        message["Message-ID"] = message_id(key, kind, self.mailer.mail_from)  # the same on every attempt
        message["Date"] = format_datetime(date.astimezone(timezone.utc))
        message.set_content(self.texts[f"email_{kind}"].format(name=account["name"], link=link))
        return message
