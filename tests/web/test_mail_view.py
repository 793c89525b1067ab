"""The operators' mail view (issue 28): the emails the local sink holds at /mail, newest first, a
workflow's own from its page, each message's body; operators only, and a message's HTML has no powers."""

from __future__ import annotations

import smtplib
import uuid
from dataclasses import replace
from email.message import EmailMessage

import pytest
from aiosmtpd.controller import Controller

from core.mail_folder import list_messages, message_tag, read_message, store_message
from tests.fixtures import NO_TEMPORAL, make_app, signed_in
from tools.mail_sink import MaildirHandler
from tools.net import free_port
from web.mail_view import PAGE_SIZE


def email(kind: str, workflow_id: str, to: str, subject: str, html: str | None = None) -> EmailMessage:
    message = EmailMessage()
    message["From"] = (
        "Loan pre-approval <no-reply@loans.invalid>" if workflow_id.startswith("loan-") else "Orders <no-reply@loans.invalid>"
    )
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = f"<{workflow_id}.{kind}@loans.invalid>"
    message.set_content(f"Dear customer,\n\nAbout {workflow_id}.\n")
    if html is not None:
        message.add_alternative(html, subtype="html")
    return message


def keep(folder, message: EmailMessage) -> str:
    return store_message(folder, message.as_bytes(), message["Message-ID"])


@pytest.fixture
def mail_folder(tmp_path):
    return tmp_path / "mail"


@pytest.fixture
def app(settings, mail_folder, monkeypatch):
    # No Temporal call on these pages: any address will do.
    return make_app(replace(settings, mail_view_dir=mail_folder), NO_TEMPORAL, monkeypatch)


@pytest.fixture
def viewer(app, settings):
    return signed_in(app.test_client(), settings, "viewer")


def test_the_newest_email_comes_first_page_by_page_with_sender_recipient_subject_and_time(viewer, mail_folder):
    names = [
        keep(mail_folder, email("decision", f"loan-{n:03d}", f"Person {n} <p{n}@example.com>", f"Decision {n}"))
        for n in range(PAGE_SIZE + 5)
    ]
    first = viewer.get("/mail").get_data(as_text=True)
    assert f"{PAGE_SIZE + 5} emails" in first
    newest = PAGE_SIZE + 4
    assert first.index(f"Decision {newest}<") < first.index(f"Decision {newest - 1}<"), "newest first"
    assert (
        f"Person {newest} &lt;p{newest}@example.com&gt;" in first and "Loan pre-approval &lt;no-reply@loans.invalid&gt;" in first
    )
    assert "Decision 4<" not in first and "Page 1 of 2" in first
    assert "UTC</time>" in first  # when it arrived, to the second
    second = viewer.get("/mail?page=2").get_data(as_text=True)
    assert all(f"Decision {n}<" in second for n in range(5)) and f"Decision {newest}<" not in second
    assert f'href="/mail/{names[0]}"' in second


def test_a_workflows_emails_are_found_from_its_id_and_no_other(viewer, mail_folder):
    keep(mail_folder, email("decision", "loan-abc", "a@example.com", "The loan decision"))
    keep(mail_folder, email("confirmed", "order-abc1", "b@example.com", "Order confirmed"))
    keep(mail_folder, email("shipped", "order-abc1", "b@example.com", "Order shipped"))
    keep(mail_folder, email("confirmed", "order-abc12", "c@example.com", "Another order"))
    page = viewer.get("/mail?about=order-abc1").get_data(as_text=True)
    assert "Order confirmed" in page and "Order shipped" in page
    assert "Another order" not in page and "The loan decision" not in page
    assert "2 emails" in page and "All mail" in page
    nothing = viewer.get("/mail?about=loan-nothing").get_data(as_text=True)
    assert "No emails for this workflow yet" in nothing


def test_a_message_shows_its_headers_and_text_and_its_html_runs_nothing(viewer, mail_folder):
    script = "<p>Hello</p><script>fetch('/api/orders', {method: 'POST'})</script><img src='https://tracker.example/x.gif'>"
    name = keep(mail_folder, email("decision", "loan-x1", "Ada <ada@example.com>", "Your <b>decision</b>", script))
    page = viewer.get(f"/mail/{name}")
    text = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "Your &lt;b&gt;decision&lt;/b&gt;" in text and "Ada &lt;ada@example.com&gt;" in text
    assert "About loan-x1." in text and "&lt;loan-x1.decision@loans.invalid&gt;" in text
    assert "<script>fetch" not in text  # the view shows the plain text, never the HTML inline
    assert 'href="/mail?about=loan-x1"' in text
    html = viewer.get(f"/mail/{name}/html")
    assert html.status_code == 200 and html.mimetype == "text/html"
    directives = [directive.strip() for directive in html.headers["Content-Security-Policy"].split(";")]
    # Its own opaque origin with no scripts (sandbox with no allow-*), and nothing fetched from anywhere.
    assert "sandbox" in directives and "default-src 'none'" in directives, directives
    assert not any(directive.startswith("script-src") for directive in directives), directives


@pytest.mark.parametrize("name", ["..", ".hidden", "..%2F..%2Fsecrets%2Fadmin.password", "nope", "a b"])
def test_a_name_the_folder_does_not_hold_is_404(viewer, mail_folder, name):
    keep(mail_folder, email("decision", "loan-y", "a@example.com", "Subject"))
    assert viewer.get(f"/mail/{name}").status_code == 404
    assert viewer.get(f"/mail/{name}/html").status_code == 404
    assert read_message(mail_folder, "../mail/new") is None


def test_only_operators_read_the_mail(app, mail_folder):
    name = keep(mail_folder, email("decision", "loan-z", "a@example.com", "Private"))
    anyone = app.test_client()
    for url in ("/mail", f"/mail/{name}", f"/mail/{name}/html"):
        response = anyone.get(url)
        assert response.status_code in (302, 303) and "/signin" in response.headers["Location"], url
        assert "Private" not in response.get_data(as_text=True)


def test_without_a_local_sink_the_page_says_where_mail_goes(settings, monkeypatch):
    app = make_app(replace(settings, mail_view_dir=None), NO_TEMPORAL, monkeypatch)
    operator = signed_in(app.test_client(), settings, "viewer")
    page = operator.get("/mail").get_data(as_text=True)
    assert "Mail goes to a mail server" in page and "SMTP_URL" in page
    assert operator.get("/mail/anything").status_code == 404


def test_the_sink_names_each_file_by_its_message_id(tmp_path):
    folder = tmp_path / "mail"
    port = free_port()
    controller = Controller(MaildirHandler(folder, remember=False), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        workflow_id = f"order-{uuid.uuid4().hex[:12]}"
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.send_message(email("shipped", workflow_id, "a@example.com", "Shipped"))
    finally:
        controller.stop()
    [stored] = list_messages(folder, about=workflow_id)
    assert stored.tag == message_tag(f"<{workflow_id}.shipped@loans.invalid>") == f"{workflow_id}.shipped"
    found = read_message(folder, stored.name)
    assert found is not None and found[1]["Subject"] == "Shipped"
    assert (folder / "new" / stored.name).stat().st_mode & 0o777 == 0o600


def test_each_half_signs_its_own_emails(monkeypatch):
    from core.settings import Settings

    monkeypatch.delenv("ORDER_MAIL_FROM", raising=False)
    monkeypatch.delenv("MAIL_FROM", raising=False)
    default = Settings.from_env()
    assert default.mail_from == "Loan pre-approval <no-reply@loans.invalid>"
    assert default.order_mail_from == "Orders <no-reply@loans.invalid>"  # the same address: the same Message-IDs
    monkeypatch.setenv("MAIL_FROM", "Acme Lending <hello@acme.test>")
    assert Settings.from_env().order_mail_from == "Orders <hello@acme.test>"
    monkeypatch.setenv("ORDER_MAIL_FROM", "Acme Shop <shop@acme.test>")
    assert Settings.from_env().order_mail_from == "Acme Shop <shop@acme.test>"
