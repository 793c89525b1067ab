"""The `flask --app starter orders` CLI: option parsing, and every command against a real dev server and worker."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from dataclasses import replace

import pytest
from temporalio.client import Client

from core.rules import load_messages
from core.settings import payload_data_converter
from orders import cli as orders_cli
from orders.rewards import RewardsWorkflow
from orders.rewards_model import RewardsInput, RewardsState, RewardTierRule, rewards_workflow_id
from tests.fixtures import HERE, make_app, wait_until

TEXTS = load_messages(HERE / "messages.json").orders


@pytest.fixture
def app(order_app):
    return order_app


def test_cli_item_and_failure_options_are_parsed():
    assert orders_cli.item_spec("KB-100:2") == {"sku": "KB-100", "quantity": 2}
    assert orders_cli.item_spec("KB-100") == {"sku": "KB-100", "quantity": 1}
    assert orders_cli.item_spec("KB-100:x") == {"sku": "KB-100", "quantity": "x"}  # refused by validation
    assert orders_cli.item_spec("KB-100:²") == {"sku": "KB-100", "quantity": "²"}  # not a digit int() takes
    assert orders_cli.failure_spec("payment:²") == {"step": "payment", "times": "²"}
    assert orders_cli.failure_spec("payment:2") == {"step": "payment", "times": 2}
    assert orders_cli.failure_spec("shipping:1:permanent") == {"step": "shipping", "times": 1, "permanent": True}
    assert orders_cli.failure_spec("inventory") == {"step": "inventory"}
    assert orders_cli.failure_spec("shipping:permanent") == {"step": "shipping", "permanent": True}
    assert orders_cli.failure_spec("shipping:1:forever") == {"step": "shipping", "times": 1, "permanent": "forever"}


def test_cli_places_shows_and_operates_orders(app, customer):
    runner = app.test_cli_runner()
    address = ["--name", "Ada", "--street", "1 Way", "--city", "London", "--postal-code", "N1", "--country", "UK"]
    created = runner.invoke(
        args=[
            "orders",
            "create",
            "--customer",
            customer,
            "--email",
            "ada@example.com",
            "--item",
            "LP-140:1",
            "--item",
            "CB-010",
            *address,
            "--fail",
            "payment:1",
            "--json",
        ]
    )
    assert created.exit_code == 0, created.output
    order_id = json.loads(created.output)["order_id"]

    def status() -> dict:
        result = runner.invoke(args=["orders", "status", order_id, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    wait_until(lambda: status()["status"] == "awaiting_review", what="the order to await review")
    shown = runner.invoke(args=["orders", "status", order_id])
    assert f"Order {order_id}: {TEXTS['status_awaiting_review']}" in shown.output
    assert "total: $1,261.00" in shown.output
    assert "(from the" not in shown.output  # the recorded projection is the normal answer, worth no note

    moved = runner.invoke(args=["orders", "address", order_id, *address[:-2], "--country", "France"])
    assert moved.exit_code == 0, moved.output
    assert status()["address"]["country"] == "France"
    approved = runner.invoke(args=["orders", "approve", order_id, "--operator", "cli-test"])
    assert approved.exit_code == 0, approved.output
    refused = runner.invoke(args=["orders", "approve", order_id])
    assert refused.exit_code == 1
    assert TEXTS["already_approved"].format(operator="cli-test") in refused.output

    events = runner.invoke(args=["orders", "events", order_id])
    assert events.exit_code == 0 and "Approved by cli-test" in events.output
    wait_until(lambda: status()["payment"], what="the approved order's payment")
    assert re.search(
        rf"payment: charged \$1,261\.00 \(key pay-{order_id}, Stripe payment pi_\w+\)",
        runner.invoke(args=["orders", "status", order_id]).output,
    )

    second = runner.invoke(
        args=["orders", "create", "--customer", customer, "--email", "ada@example.com", "--item", "LP-140:1", *address]
    )
    assert second.exit_code == 0, second.output
    second_id = re.search(r"Order (\w+) placed", second.output).group(1)
    wait_until(
        lambda: runner.invoke(args=["orders", "status", second_id]).output.count(TEXTS["status_awaiting_review"]),
        what="the second order to await review",
    )
    cancelled = runner.invoke(args=["orders", "cancel", second_id, "--reason", "changed my mind", "--json"])
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.output)["status"] == "cancelled"


def test_cli_input_errors_and_unknown_orders(app):
    runner = app.test_cli_runner()
    address = ["--name", "Ada", "--street", "1 Way", "--city", "London", "--postal-code", "N1", "--country", "UK"]
    invalid = runner.invoke(
        args=[
            "orders",
            "create",
            "--customer",
            "ada",
            "--email",
            "ada@example.com",
            "--item",
            "NOPE:x",
            *address,
            "--fail",
            "payment:lots",
            "--fail",
            "shipping:1:forever",
        ]
    )
    assert invalid.exit_code == 2
    assert f"items.0.sku: {TEXTS['unknown_sku']}" in invalid.output
    assert f"items.0.quantity: {TEXTS['quantity']}" in invalid.output
    assert f"failures.0.times: {TEXTS['failure_times']}" in invalid.output
    assert f"failures.1.permanent: {TEXTS['failure_permanent']}" in invalid.output  # the part typed wrong
    assert "failures.1.times" not in invalid.output
    unknown = runner.invoke(args=["orders", "status", uuid.uuid4().hex[:12], "--json"])
    assert unknown.exit_code == 1 and json.loads(unknown.output) == {"error": TEXTS["not_found"]}


def test_cli_status_says_when_only_the_start_input_answers(order_stack, monkeypatch, tmp_path, customer):
    settings, address = order_stack
    settings = replace(settings, order_task_queue=f"no-worker-{uuid.uuid4().hex[:8]}", data_dir=tmp_path / "data")
    app = make_app(settings, address, monkeypatch)
    try:
        runner = app.test_cli_runner()
        created = runner.invoke(
            args=[
                "orders",
                "create",
                "--customer",
                customer,
                "--email",
                "ada@example.com",
                "--item",
                "CB-010",
                "--name",
                "Ada",
                "--street",
                "1 Way",
                "--city",
                "London",
                "--postal-code",
                "N1",
                "--country",
                "UK",
                "--json",
            ]
        )
        assert created.exit_code == 0, created.output
        shown = runner.invoke(args=["orders", "status", json.loads(created.output)["order_id"]])
        assert shown.exit_code == 0, shown.output
        assert "(from the start input: not recorded yet)" in shown.output
    finally:
        app.extensions["temporal"].reset()


def test_cli_closes_a_customers_rewards_with_its_sender(app, order_stack, customer):
    """`orders close-rewards` sends `close` with its sender (a plain update without one is rejected:
    test_a_plain_close_of_a_customers_rewards_is_rejected); an unknown customer exits 1."""
    settings, address = order_stack

    async def start_rewards() -> None:
        client = await Client.connect(address, data_converter=payload_data_converter())
        await client.start_workflow(
            RewardsWorkflow.run,
            RewardsInput(RewardsState(customer, points=42), [RewardTierRule("basic", 0)], 1000, close_needs_sender=True),
            id=rewards_workflow_id(customer),
            task_queue=settings.order_task_queue,
        )

    asyncio.run(start_rewards())
    runner = app.test_cli_runner()
    closed = runner.invoke(args=["orders", "close-rewards", customer, "--json"])
    assert closed.exit_code == 0, closed.output
    assert json.loads(closed.output)["closed"] is True and json.loads(closed.output)["points"] == 42
    unknown = runner.invoke(args=["orders", "close-rewards", f"nobody-{uuid.uuid4().hex[:8]}"])
    assert unknown.exit_code == 1 and TEXTS["no_rewards"] in unknown.output
