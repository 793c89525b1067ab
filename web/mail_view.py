"""The operators' mail view: the emails the local mail sink holds, at `/mail`, newest first.

Every result page promises an email; in `make run` the emails go to a local
sink (tools/mail_sink.py), and this is where operators read them: sender,
recipient, subject, time and body, one page at a time, and a workflow's own
from its application or order page (`?about=<workflow ID>`). It reads the
Maildir MAIL_VIEW_DIR names (`make run` sets it to its sink's folder), through
core/mail_folder.py; where mail goes to a real server, there is nothing local to
show and the page says so.

Who may see it: operators (viewer and up; web/auth.py ROLE_OF_ENDPOINT), as the
applications themselves. A message's HTML part is served on its own URL with a
sandboxing CSP (no script, no request anywhere, an origin of its own), so a
message cannot act on the operator's session; the view itself shows the plain
text.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request

from core.mail_folder import list_messages, read_message
from core.settings import Settings
from web.auth import talisman
from web.common import page_argument

PAGE_SIZE = 25
# The HTML part of a message, as a document with no powers: scripts off, an opaque origin, nothing loaded.
HTML_PART_POLICY = "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"

mail = Blueprint("mail", __name__)


def _folder() -> Path | None:
    return current_app.extensions["mail_view_dir"]


def _text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    if part is not None:
        return part.get_content()
    return "(This message has no plain-text part; open its HTML version.)"


def _summary(message: EmailMessage) -> dict[str, str]:
    sender = message.get("From")
    mailboxes = getattr(sender, "addresses", ())  # a parsed address header; absent or unparsable: the text
    return {
        "from": str(sender or ""),
        "sender": (mailboxes[0].display_name or mailboxes[0].addr_spec) if mailboxes else str(sender or ""),
        "to": str(message.get("To", "")),
        "subject": str(message.get("Subject", "")) or "(no subject)",
        "date": str(message.get("Date", "")),
        "message_id": str(message.get("Message-ID", "")),
    }


@mail.get("/mail")
def inbox():
    folder = _folder()
    about = request.args.get("about", "").strip() or None
    if folder is None:
        return render_template("mail/inbox.html", configured=False, messages=[], about=about, page=1, pages=1, total=0)
    page = page_argument()
    found = list_messages(folder, about)
    pages = max(1, -(-len(found) // PAGE_SIZE))
    shown = []
    for stored in found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]:
        read = read_message(folder, stored.name)
        if read is None:
            continue  # gone since the listing (a reader moved it to cur/): the next listing has it
        shown.append({"name": stored.name, "arrived": stored.arrived.isoformat(timespec="seconds"), **_summary(read[1])})
    return render_template(
        "mail/inbox.html", configured=True, messages=shown, about=about, page=page, pages=pages, total=len(found)
    )


@mail.get("/mail/<name>")
def message(name: str):
    folder = _folder()
    read = read_message(folder, name) if folder is not None else None
    if read is None:
        abort(404, "There is no such message in the mail folder.")
    stored, parsed = read
    has_html = parsed.get_body(preferencelist=("html",)) is not None
    return render_template(
        "mail/message.html",
        name=name,
        arrived=stored.arrived.isoformat(timespec="seconds"),
        headers=_summary(parsed),
        body=_text_body(parsed),
        has_html=has_html,
        about=stored.tag.rpartition(".")[0] or None,
    )


@mail.get("/mail/<name>/html")
@talisman(content_security_policy=HTML_PART_POLICY)
def message_html(name: str):
    folder = _folder()
    read = read_message(folder, name) if folder is not None else None
    part = read[1].get_body(preferencelist=("html",)) if read is not None else None
    if part is None:
        abort(404, "This message has no HTML version.")
    return Response(part.get_content(), mimetype="text/html")


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["mail_view_dir"] = settings.mail_view_dir
    app.register_blueprint(mail)
    app.context_processor(lambda: {"mail_view_on": settings.mail_view_dir is not None})
