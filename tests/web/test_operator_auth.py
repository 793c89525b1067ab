"""Who may do what, against a real dev server and worker: sign-in, bearer tokens, CSRF, headers, privacy.

Every rule has its negative case: no token, a wrong token, a cross-site POST
without the CSRF token, another applicant's data; and each checks that
nothing changed.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import replace

import pytest

from core.rules import load_messages
from core.store import open_store
from tests.fixtures import (
    HERE,
    JOHN,
    bearer,
    cli,
    fresh_settings,
    make_app,
    new_operator,
    operator_routes,
    place_for_review,
    signed_in,
)
from web.auth import OPERATOR_SESSIONS, PUBLIC_ENDPOINTS, load_operator_token

MESSAGES = load_messages(HERE / "messages.json")
# What an applicant, with no account, may reach; everything else is the operator's.
APPLICANT_ENDPOINTS = {
    "pages.form",
    "pages.apply",
    "pages.application",
    "pages.contact",
    "api.evaluate",
    "api.application",
    "api.contact_api",
}
# What any visitor may reach in the shop (issue 29): the catalog, a product, their own cart.
SHOPPER_ENDPOINTS = {"shop.catalog_page", "shop.product", "shop.cart", "shop.change_cart"}
# A customer's account (issue 29): registering, confirming the address, signing in and out, resets.
CUSTOMER_ACCOUNT_ENDPOINTS = {
    f"shop_accounts.{name}"
    for name in (
        "register_form",
        "register",
        "verify",
        "resend_verification",
        "signin_form",
        "signin",
        "signout",
        "reset_request_form",
        "reset_request",
        "reset_form",
        "reset",
    )
}
# A customer's checkout and own orders (each checks the signed-in customer: tests/web/test_shop_orders.py).
CUSTOMER_ORDER_ENDPOINTS = {
    f"shop_orders.{name}" for name in ("checkout", "place", "orders", "order", "cancel", "change_address")
}


@pytest.fixture
def app(order_app):
    return order_app


@pytest.fixture
def settings(order_stack):
    return order_stack[0]


def test_the_public_endpoints_are_exactly_the_applicants_and_the_shoppers():
    assert (
        PUBLIC_ENDPOINTS
        - {
            "static",
            "health.healthz",
            "health.readyz",
            "docs.openapi_document",
            "auth.signin",
            "auth.signin_submit",
            "auth.signout",
        }
        == APPLICANT_ENDPOINTS | SHOPPER_ENDPOINTS | CUSTOMER_ACCOUNT_ENDPOINTS | CUSTOMER_ORDER_ENDPOINTS
    )


@pytest.mark.parametrize("credentials", [{}, bearer("wrong-token-of-enough-length"), {"Authorization": "Basic x"}])
def test_every_operator_route_refuses_missing_or_wrong_credentials(app, credentials):
    client = app.test_client()
    routes = list(operator_routes(app))
    assert len(routes) >= 15  # the orders API and pages, the applications list, the codec
    for _endpoint, method, url in routes:
        response = client.open(url, method=method, headers=credentials, raw=True)
        if url.startswith(("/api/", "/codec/")) or url == "/metrics":
            assert response.status_code == 401, (method, url)
            assert response.json == {"error": MESSAGES.errors["operator_only"]}, (method, url)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        else:
            assert response.status_code == 303, (method, url)
            assert response.headers["Location"].startswith("/signin?next="), (method, url)


def test_refused_actions_change_nothing_and_the_right_token_acts(app, settings):
    client = app.test_client()
    order_id = place_for_review(client, settings)
    operator_browser = signed_in(app.test_client(), settings)
    attempts = [
        client.post(f"/api/orders/{order_id}/approve", raw=True),
        client.post(f"/api/orders/{order_id}/approve", headers=bearer("x" * 40), raw=True),
        client.post(f"/api/orders/{order_id}/cancel", json={"reason": "no"}, headers=bearer("x" * 40)),
        client.post(f"/orders/{order_id}/approve", raw=True),
        # Signed in, but the form was posted by another site: no CSRF token.
        operator_browser.post(f"/orders/{order_id}/approve", data={}, raw=True),
        operator_browser.post(f"/api/orders/{order_id}/approve", raw=True),
    ]
    assert [r.status_code for r in attempts] == [401, 401, 401, 303, 400, 400]
    status = client.get(f"/api/orders/{order_id}", headers=bearer(settings.operator_token)).json
    assert status["status"] == "awaiting_review" and status["approved"] is False

    approved = client.post(f"/api/orders/{order_id}/approve", headers=bearer(settings.operator_token), raw=True)
    assert approved.status_code == 200, approved.json
    assert approved.json["approved"] is True


def test_sign_in_sets_a_strict_session_cookie_and_sign_out_ends_it(app, settings):
    name, password = new_operator(app, "viewer")
    client = app.test_client()
    assert client.get("/orders").headers["Location"] == "/signin?next=/orders"
    for wrong in ({"name": name, "password": "not-the-password"}, {"name": "nobody-here", "password": password}):
        refused = client.post("/signin", data={**wrong, "next": "/orders"})
        assert refused.status_code == 401
        assert MESSAGES.errors["wrong_operator_credentials"] in refused.get_data(as_text=True)
        assert f'value="{wrong["name"]}"' in refused.get_data(as_text=True)  # the name typed stays; never the password
        assert client.get("/orders").status_code == 303

    right = client.post("/signin", data={"name": name, "password": password, "next": "/orders?page=1"})
    assert right.status_code == 303 and right.headers["Location"] == "/orders?page=1"
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    assert name in client.get("/orders").get_data(as_text=True)  # who is signed in, beside Sign out
    assert client.get("/api/orders").status_code == 200

    assert client.post("/signout").status_code == 303
    assert client.get("/orders").status_code == 303


def test_a_session_cookie_kept_after_sign_out_or_past_its_lifetime_signs_no_one_in(app, settings):
    """Issue 26: a copy of the session cookie still worked after sign-out. Sessions are recorded
    server-side (by a hash of their id) and sign-out revokes the record; an expired one ends too."""
    browser = signed_in(app.test_client(), settings)
    copied = app.test_client()
    copied.set_cookie("session", browser.get_cookie("session").value)
    assert copied.get("/orders").status_code == 200  # the copy works while the session lasts
    assert browser.post("/signout").status_code == 303
    assert copied.get("/orders").status_code == 303 and copied.get("/api/orders").status_code == 401

    later = signed_in(app.test_client(), settings)
    assert later.get("/orders").status_code == 200
    store = open_store(settings)
    for key in [k for k in os.listdir(settings.data_dir / OPERATOR_SESSIONS) if k.endswith(".json")]:
        record = store.get(OPERATOR_SESSIONS, key.removesuffix(".json"))
        if record and not record.get("revoked"):
            store.put(OPERATOR_SESSIONS, key.removesuffix(".json"), {**record, "expires_at": "2000-01-01T00:00:00+00:00"})
    assert later.get("/orders").status_code == 303


def test_the_sign_in_page_says_where_the_first_admins_password_is_without_the_data_folders_path(
    order_stack, monkeypatch, tmp_path
):
    """Anyone can read the sign-in page: on a store with no operator it names the first admin's
    generated password file in the data folder, never the folder's absolute path (which `make run`
    prints to its operator), and once that password is changed, it names the file no more."""
    settings, address = order_stack
    fresh = replace(settings, data_dir=tmp_path / "elsewhere")
    first = make_app(fresh, address, monkeypatch)
    page = first.test_client().get("/signin").get_data(as_text=True)
    password_file = tmp_path / "elsewhere" / "secrets" / "admin.password"
    assert password_file.stat().st_mode & 0o777 == 0o600
    assert "<code>admin</code>" in page and "<code>secrets/admin.password</code>" in page and "make run" in page
    assert str(tmp_path) not in page and "cat " not in page
    admin = first.test_client()
    signed = admin.post("/signin", data={"name": "admin", "password": password_file.read_text().strip(), "next": "/orders"})
    assert signed.status_code == 303 and admin.get("/orders").status_code == 200
    changed = cli(first, "operators", "passwd", "admin", "--password-stdin", input="a new long password\n")
    assert changed.exit_code == 0, changed.output
    assert not password_file.exists() and admin.get("/orders").status_code == 303  # its sessions ended
    again = make_app(fresh, address, monkeypatch).test_client().get("/signin").get_data(as_text=True)
    assert "admin.password" not in again and "operators add" in again
    # The password field is styled like the other text fields.
    css = first.test_client().get("/static/style.css").get_data(as_text=True)
    assert '.field input[type="password"]' in css


def test_the_session_cookie_is_secure_over_https(app, settings):
    client = app.test_client()
    name, password = new_operator(app)
    response = client.post(
        "/signin",
        data={"name": name, "password": password},
        base_url="https://localhost",
        headers={"Referer": "https://localhost/signin"},
    )
    assert response.status_code == 303
    assert "Secure" in response.headers["Set-Cookie"]


def test_sign_in_redirects_only_within_the_site(app, settings):
    name, password = new_operator(app)
    for target in ["https://evil.example/", "//evil.example/x", "javascript:alert(1)", "orders"]:
        client = app.test_client()
        response = client.post("/signin", data={"name": name, "password": password, "next": target})
        assert response.headers["Location"] == "/orders", target


def test_a_cross_site_loan_form_post_is_refused_and_starts_nothing(app, settings):
    client = app.test_client()
    email = f"csrf-{uuid.uuid4().hex[:8]}@example.com"
    form = {**{k: str(v) for k, v in JOHN.items()}, "email": email, "has_bankruptcy": "no"}
    refused = client.post("/apply", data=form, raw=True)
    assert refused.status_code == 400
    # Refused, and said as a person would understand it: the form comes back as it was typed.
    assert "Your session expired" in refused.get_data(as_text=True)
    assert f'value="{email}"' in refused.get_data(as_text=True)
    # Nothing was started: the same applicant can apply now, once.
    assert client.post("/api/evaluate", json={**JOHN, "email": email}).status_code == 200


def test_applicants_see_only_their_own_application(app, settings):
    client = app.test_client()
    mine = client.post("/api/evaluate", json={**JOHN, "email": f"me-{uuid.uuid4().hex[:8]}@example.com"})
    theirs = client.post(
        "/api/evaluate", json={**JOHN, "name": "Other Person", "email": f"other-{uuid.uuid4().hex[:8]}@example.com"}
    )
    assert mine.status_code == theirs.status_code == 200
    assert client.get("/api/applications").status_code == 401
    assert client.get("/applications").status_code == 303
    page = client.get(mine.json["page_url"]).get_data(as_text=True)
    assert "John Doe" in page and "Other Person" not in page and theirs.json["workflow_id"] not in page
    # The IDs are HMACs under this deployment's secret: not an email, not computable without the key.
    assert re.fullmatch(r"loan-[0-9a-f]{32}", mine.json["workflow_id"])


def test_every_response_carries_the_security_headers(app, settings):
    client = app.test_client()
    operator = signed_in(app.test_client(), settings)
    responses = [
        client.get("/"),
        client.get("/signin"),
        client.get("/static/style.css"),
        client.get("/nowhere"),
        client.get("/api/orders"),
        client.post("/api/evaluate", json={}),
        operator.get("/orders"),
        operator.get("/applications"),
    ]
    for response in responses:
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, response.request.path
        assert "frame-ancestors 'none'" in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "same-origin"
        assert response.headers["X-Frame-Options"] == "DENY"
        # Personal data is in pages and answers: no cache keeps them; the static files may be cached.
        stored = response.headers.get("Cache-Control")
        if response.request.path.startswith("/static/"):
            assert stored != "no-store"
        else:
            assert stored == "no-store", response.request.path


def test_pages_have_no_inline_script_and_no_external_resources(app, settings):
    operator = signed_in(app.test_client(), settings)
    order_id = place_for_review(operator, settings)
    for url in ["/", "/signin", "/orders", f"/orders/{order_id}", "/applications"]:
        html = operator.get(url).get_data(as_text=True)
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/static/' in tag or 'type="application/json"' in tag, (url, tag)
        assert not re.search(r"\son[a-z]+=", html), url  # no inline event handlers
        assert not re.search(
            r'(src|href)="(https?:)?//(?!localhost)', html.replace(operator.application.config["SETTINGS"].temporal_ui_url, "")
        ), url


def test_the_codec_server_decrypts_for_operators_and_the_temporal_ui_only(app, settings):
    client = app.test_client()
    ui_origin = settings.temporal_ui_url
    preflight = client.open(
        "/codec/decode",
        method="OPTIONS",
        headers={
            "Origin": ui_origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == ui_origin
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"

    encoded = client.post(
        "/codec/encode",
        json={"payloads": [{"metadata": {"encoding": "YmluYXJ5L3BsYWlu"}, "data": "c2VjcmV0"}]},
        headers={**bearer(settings.operator_token), "Origin": ui_origin},
    )
    assert encoded.status_code == 200, encoded.json
    assert encoded.json["payloads"][0]["data"] != "c2VjcmV0"
    request = {"json": encoded.json, "headers": {"Origin": ui_origin, "X-Namespace": "default"}}
    assert client.post("/codec/decode", **request).status_code == 401
    operator_browser = signed_in(app.test_client(), settings)
    decoded = operator_browser.post("/codec/decode", **request)
    assert decoded.status_code == 200 and decoded.json["payloads"][0]["data"] == "c2VjcmV0"
    other_site = operator_browser.post("/codec/decode", json=encoded.json, headers={"Origin": "http://evil.example"})
    assert other_site.status_code == 403


@pytest.mark.parametrize("token", ["short-token", "a" * 16, "abababababababababab"])
def test_a_weak_operator_token_stops_the_app_with_the_rule(token, tmp_path):
    with pytest.raises(SystemExit, match="at least 16 characters, 8 of them different"):
        load_operator_token(replace(fresh_settings(tmp_path / "data"), operator_token=token))
    assert (
        load_operator_token(replace(fresh_settings(tmp_path / "data"), operator_token="x7-Kq2p9Lm4Zr8Tn")) == "x7-Kq2p9Lm4Zr8Tn"
    )
