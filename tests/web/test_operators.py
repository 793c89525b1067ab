"""Named operators (issue 26, item 7): accounts with roles, Argon2id passwords, API tokens of their
own, sessions that a new password or a disabled account ends, and actions recorded as the
signed-in operator, never as a typed name. Against a real dev server and worker."""

from __future__ import annotations

import uuid

import pytest
from argon2 import PasswordHasher

from core.rules import load_messages
from tests.fixtures import HERE, bearer, cli, new_operator, operator_routes, place_for_review, signed_in
from web.auth import ROLE_OF_ENDPOINT
from web.operators import OPERATOR_TOKENS, OPERATORS, AccountRefused, role_allows

MESSAGES = load_messages(HERE / "messages.json")
# What only an admin may do: everything else an operator reaches is in ROLE_OF_ENDPOINT. A new
# route lands here by default (web/auth.py) and this list says it was decided.
ADMIN_ONLY = {"codec.encode", "orders_api.simulate_failure", "orders_pages.simulate_failure_page"}


@pytest.fixture
def app(order_app):
    return order_app


@pytest.fixture
def settings(order_stack):
    return order_stack[0]


def test_every_operator_route_needs_its_role_and_a_lower_one_gets_403(app, settings):
    routes = list(operator_routes(app))
    assert {endpoint for endpoint, _, _ in routes} == set(ROLE_OF_ENDPOINT) | ADMIN_ONLY
    clients = {role: signed_in(app.test_client(), settings, role) for role in ("viewer", "approver", "admin")}
    for endpoint, method, url in routes:
        needed = ROLE_OF_ENDPOINT.get(endpoint, "admin")
        for role, client in clients.items():
            response = client.open(url, method=method, json={} if url.startswith(("/api/", "/codec/")) else None)
            if role_allows(role, needed):
                assert response.status_code not in (401, 403), (role, method, url)
            else:
                assert response.status_code == 403, (role, method, url, response.status_code)
                said = response.get_json()["error"] if url.startswith(("/api/", "/codec/", "/metrics")) else response.text
                assert f"signed in as {role}; this needs {needed}" in said, (role, url)


def test_the_order_pages_offer_each_role_only_what_it_may_do(app, settings):
    viewer, approver = signed_in(app.test_client(), settings, "viewer"), signed_in(app.test_client(), settings, "approver")
    order_id = place_for_review(app.test_client(), settings)
    viewed, acting = viewer.get(f"/orders/{order_id}").text, approver.get(f"/orders/{order_id}").text
    assert 'data-action="approve"' not in viewed and "lets you follow this order" in viewed
    assert 'data-action="approve"' in acting and 'data-action="simulate-failure"' not in acting
    assert 'id="order-form"' not in viewer.get("/orders").text and 'id="order-form"' in approver.get("/orders").text


def test_an_action_is_recorded_as_the_signed_in_operator_and_a_typed_name_is_refused(app, settings):
    """Issue 26: the timeline's "Approved by" was whatever name was typed."""
    name, password = new_operator(app, "approver")
    client = app.test_client()
    assert client.post("/signin", data={"name": name, "password": password}).status_code == 303
    order_id = place_for_review(app.test_client(), settings)

    impostor = client.post(f"/api/orders/{order_id}/approve", json={"operator": "somebody-else"})
    assert impostor.status_code == 400
    assert name in impostor.get_json()["fields"]["operator"]
    assert client.get(f"/api/orders/{order_id}").get_json()["approved"] is False  # nothing happened

    assert client.post(f"/orders/{order_id}/approve", data={}).status_code == 303  # the page's form: no name field
    status = client.get(f"/api/orders/{order_id}").get_json()
    assert status["approved"] is True and status["approved_by"] == name
    events = client.get(f"/api/orders/{order_id}/events").get_json()["events"]
    assert any(event["message"] == f"Approved by {name}" for event in events)


def test_an_operators_api_token_acts_as_them_until_revoked_or_disabled(app, settings):
    name, _ = new_operator(app, "approver")
    made = cli(app, "operators", "token", name, "--label", "ci")
    assert made.exit_code == 0, made.output
    token = made.output.strip()
    client = app.test_client()
    order_id = place_for_review(app.test_client(), settings)
    assert client.get("/api/orders", headers=bearer(token)).status_code == 200
    assert client.post(f"/api/orders/{order_id}/simulate-failure", headers=bearer(token), json={}).status_code == 403
    approved = client.post(f"/api/orders/{order_id}/approve", headers=bearer(token))
    assert approved.status_code == 200 and approved.get_json()["approved_by"] == name
    # The store keeps the token's hash, never the token or its secret.
    stored = app.extensions["operator_accounts"].tokens()
    assert token.split("_", 2)[2] not in repr(stored) and all(set(record) >= {"id", "operator"} for record in stored)
    listed = cli(app, "operators", "list")
    assert name in listed.output and token.split("_", 2)[2] not in listed.output

    token_id = token.split("_", 2)[1]
    assert cli(app, "operators", "revoke-token", token_id).exit_code == 0
    assert client.get("/api/orders", headers=bearer(token)).status_code == 401
    second = cli(app, "operators", "token", name).output.strip()
    assert client.get("/api/orders", headers=bearer(second)).status_code == 200
    assert cli(app, "operators", "disable", name).exit_code == 0
    assert client.get("/api/orders", headers=bearer(second)).status_code == 401
    for forged in (f"op_{token_id}_{'A' * 43}", "op_nothing", second[:-1] + ("A" if second[-1] != "A" else "B")):
        assert client.get("/api/orders", headers=bearer(forged)).status_code == 401


def test_a_new_password_or_a_disabled_account_ends_its_sessions_and_a_new_role_applies_at_once(app, settings):
    name, password = new_operator(app, "approver")
    browsers = []
    for _ in range(2):
        browser = app.test_client()
        assert browser.post("/signin", data={"name": name, "password": password}).status_code == 303
        browsers.append(browser)
    assert cli(app, "operators", "role", name, "viewer").exit_code == 0
    assert browsers[0].post("/api/orders/0123456789ab/approve", json={}).status_code == 403
    assert browsers[0].get("/orders").status_code == 200
    changed = cli(app, "operators", "passwd", name, "--password-stdin", input="another long password\n")
    assert changed.exit_code == 0, changed.output
    assert [b.get("/orders").status_code for b in browsers] == [303, 303]
    again = app.test_client()
    assert again.post("/signin", data={"name": name, "password": password}).status_code == 401
    assert again.post("/signin", data={"name": name, "password": "another long password"}).status_code == 303
    assert cli(app, "operators", "disable", name).exit_code == 0
    assert again.get("/orders").status_code == 303
    assert again.post("/signin", data={"name": name, "password": "another long password"}).status_code == 401


def test_passwords_are_kept_as_argon2id_hashes_and_the_cli_refuses_bad_accounts(app, settings):
    name, password = new_operator(app, "viewer")
    record = app.extensions["operator_accounts"]._store.get(OPERATORS, name)
    assert record["password_hash"].startswith("$argon2id$") and password not in repr(record)
    production = PasswordHasher()  # what Settings' "standard" hashing uses: memory-hard
    assert production.memory_cost >= 64 * 1024 and production.time_cost >= 3
    for args, said in [
        (["operators", "add", name, "--role", "viewer", "--password-stdin"], "exists already"),
        (["operators", "add", "Bad Name", "--role", "viewer", "--password-stdin"], "lowercase letters"),
        (["operators", "add", f"x{uuid.uuid4().hex[:8]}", "--role", "viewer", "--password-stdin"], "12 to 1024 characters"),
        (["operators", "add", f"x{uuid.uuid4().hex[:8]}", "--role", "owner", "--password-stdin"], "owner"),
        (["operators", "passwd", "nobody-here", "--password-stdin"], "no operator named"),
        (["operators", "revoke-token", "0123456789abcdef"], "no token with id"),
    ]:
        result = cli(app, *args, input="short\n")
        assert result.exit_code != 0 and said in result.output, (args, result.output)
    added = cli(app, "operators", "add", "new-viewer-" + uuid.uuid4().hex[:6], "--role", "viewer", input="long enough pw\n" * 2)
    assert added.exit_code == 0, added.output
    with pytest.raises(AccountRefused):
        app.extensions["operator_accounts"].add_token("nobody-here")
    assert app.extensions["operator_accounts"]._store.get(OPERATOR_TOKENS, "0123456789abcdef") is None
