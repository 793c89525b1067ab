"""The `flask --app starter orders ...` commands: place, follow and operate orders from a terminal.

A local admin tool: it talks to Temporal directly through the same
`OrderService` as the web pages (so the same validation and the same refusals),
prints text or `--json`, and exits 1 when an action fails (2 for invalid input).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo
from temporalio.service import RPCError, RPCStatusCode

from core.temporal_client import TemporalUnavailable
from core.validation import ascii_whole_number
from orders.model import ORDER_MILESTONES, ApproveRequest, CancelRequest, MessageFrom
from orders.rewards import RewardsWorkflow
from orders.rewards_model import RewardsState, rewards_workflow_id
from orders.service import (
    ActionFailed,
    ActionRefused,
    ActionUnconfirmed,
    CreatedOrder,
    OrderNotFound,
    OrderService,
    OrderView,
)
from orders.validation import (
    ADDRESS_FIELDS,
    InvalidOrder,
    parse_json_address_change,
    parse_json_approve,
    parse_json_cancel,
    parse_json_order,
)

T = TypeVar("T")
# The provider's IDs of an order's payment, as `status` prints them.
PROVIDER_IDS = (("Stripe payment", "intent_id"), ("refund", "refund_id"))


def service() -> OrderService:
    return current_app.extensions["order_service"]


def texts() -> dict[str, str]:
    return service().messages.orders


class OrdersGroup(AppGroup):
    """The commands' group; in a real terminal run it ends the process itself once a command is done.

    The Temporal SDK's native threads can still call into Python while the
    interpreter finalizes, which sometimes aborted a finished command with
    "Fatal Python error: PyGILState_Release" (exit 134) after its answer was
    printed. The answer and the exit status are known by then: flush and leave
    without finalizing (as tools/replay_check.py does). Under a test app
    (TESTING) the group behaves as any other, so tests can run commands in-process.
    """

    def invoke(self, ctx: click.Context) -> Any:
        if _testing(ctx):
            return super().invoke(ctx)
        try:
            super().invoke(ctx)
            code = 0
        except click.exceptions.Exit as done:
            code = done.exit_code
        except click.ClickException as err:
            err.show()
            code = err.exit_code
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _testing(ctx: click.Context) -> bool:
    info = ctx.find_object(ScriptInfo)
    return info is None or info.load_app().testing


orders_cli = OrdersGroup("orders", help="Place, follow and operate orders (the same service as the web pages).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


def address_options(command):
    for part in reversed(ADDRESS_FIELDS):
        command = click.option(f"--{part.replace('_', '-')}", part, required=True, help=f"Address: {part}.")(command)
    return command


def cli_call(as_json: bool, call: Callable[[], Awaitable[T]]) -> T:
    """Run a service call; print why it failed and exit 1 (2 for invalid input)."""

    async def run() -> T:
        return await call()

    try:
        return asyncio.run(run())
    except InvalidOrder as err:
        fail(as_json, texts()["invalid_order"], 2, fields=err.fields)
    except OrderNotFound:
        fail(as_json, texts()["not_found"], 1)
    except ActionRefused as err:
        fail(as_json, err.message, 1)
    except ActionFailed as err:
        fail(as_json, texts()["action_failed"].format(reason=err.message), 1)
    except ActionUnconfirmed:
        fail(as_json, texts()["action_unconfirmed"], 1)
    except TemporalUnavailable:
        fail(as_json, texts()["unavailable"], 1)


def fail(as_json: bool, error: str, code: int, fields: dict[str, str] | None = None) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": error, **({"fields": fields} if fields else {})}, indent=2))
    else:
        click.echo(error, err=True)
        for name, text in (fields or {}).items():
            click.echo(f"  {name}: {text}", err=True)
    click.get_current_context().exit(code)


def item_spec(spec: str) -> dict[str, Any]:
    """SKU[:QUANTITY], e.g. KB-100:2; the quantity defaults to 1."""
    sku, _, quantity = spec.partition(":")
    whole = ascii_whole_number(quantity)
    return {"sku": sku, "quantity": whole if whole is not None else (quantity or 1)}


def failure_spec(spec: str) -> dict[str, Any]:
    """STEP[:TIMES][:permanent], e.g. payment:2 or shipping:1:permanent."""
    step, _, rest = spec.partition(":")
    times, _, permanent = rest.partition(":")
    if times == "permanent" and not permanent:
        times, permanent = "", times
    failure: dict[str, Any] = {"step": step}
    if times:
        # Anything but digits is passed on as the times, so validation names the problem.
        whole = ascii_whole_number(times)
        failure["times"] = whole if whole is not None else times
    if permanent:
        # Anything but "permanent" is passed on as the permanent part, so validation names that part.
        failure["permanent"] = True if permanent == "permanent" else permanent
    return failure


@orders_cli.command("create")
@click.option("--customer", required=True, help="Customer id (letters, digits, '-', '_').")
@click.option("--email", required=True, help="The customer's email address: the order's emails go there.")
@click.option(
    "--item", "items", multiple=True, required=True, metavar="SKU[:QTY]", help="A product and its quantity; repeat for more."
)
@address_options
@click.option("--expedited", is_flag=True, help="Ship with the express carrier.")
@click.option(
    "--fail",
    "failures",
    multiple=True,
    metavar="STEP[:TIMES][:permanent]",
    help="Simulate failures of inventory, payment or shipping; repeat for more.",
)
@json_option
def create_command(customer, email, items, expedited, failures, as_json, **address):
    """Place an order."""
    data = {
        "customer_id": customer,
        "customer_email": email,
        "items": [item_spec(spec) for spec in items],
        "address": address,
        "expedited": expedited,
        "failures": [failure_spec(spec) for spec in failures],
    }

    def create() -> Awaitable[CreatedOrder]:
        return service().create(parse_json_order(data, service().catalog_skus, service().messages))

    created = cli_call(as_json, create)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(created), indent=2))
    else:
        click.echo(f"Order {created.order_id} placed (workflow {created.workflow_id}).")
        click.echo(f"Follow it: flask --app starter orders status {created.order_id}")


@orders_cli.command("status")
@click.argument("order_id")
@json_option
def status_command(order_id, as_json):
    """Show an order's status."""
    view = cli_call(as_json, lambda: service().status(order_id))
    echo_order(view, as_json)


@orders_cli.command("events")
@click.argument("order_id")
@json_option
def events_command(order_id, as_json):
    """Show an order's timeline, oldest first."""
    events_ = cli_call(as_json, lambda: service().events(order_id))
    if as_json:
        click.echo(json.dumps({"events": events_}, indent=2))
        return
    for event in events_:
        click.echo(f"{event['at'][:19].replace('T', ' ')}  {event['kind']:<12} {event['message']}")  # a retry names its attempt


@orders_cli.command("approve")
@click.argument("order_id")
@click.option("--operator", default=ApproveRequest().operator, show_default=True, help="Who approves.")
@json_option
def approve_command(order_id, operator, as_json):
    """Approve an order that awaits review."""
    view = cli_call(as_json, lambda: service().approve(order_id, parse_json_approve({"operator": operator}, service().messages)))
    echo_order(view, as_json)


@orders_cli.command("cancel")
@click.argument("order_id")
@click.option("--reason", required=True, help="Why the order is cancelled.")
@click.option("--operator", default=CancelRequest("").operator, show_default=True, help="Who cancels.")
@json_option
def cancel_command(order_id, reason, operator, as_json):
    """Cancel an order (before it is handed to the carrier); undoes what was done."""
    view = cli_call(
        as_json,
        lambda: service().cancel(order_id, parse_json_cancel({"reason": reason, "operator": operator}, service().messages)),
    )
    echo_order(view, as_json)


@orders_cli.command("address")
@click.argument("order_id")
@address_options
@json_option
def address_command(order_id, as_json, **address):
    """Change the shipping address (before the parcel is handed to the carrier)."""
    view = cli_call(as_json, lambda: service().change_address(order_id, parse_json_address_change(address, service().messages)))
    echo_order(view, as_json)


@orders_cli.command("close-rewards")
@click.argument("customer_id")
@json_option
def close_rewards_command(customer_id, as_json):
    """Close a customer's rewards workflow, one still open from before the award of points counted
    them in the customer's record (its awards saved there). Prints the record."""

    async def close() -> RewardsState:
        client = await service().temporal.get()
        handle = client.get_workflow_handle(rewards_workflow_id(customer_id))
        try:
            closed = await handle.execute_update(RewardsWorkflow.close, MessageFrom("operator CLI"))
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                fail(as_json, texts()["no_rewards"], 1)
            raise TemporalUnavailable(str(err)) from err
        # The record, which also holds the awards counted there since the workflow last saw one.
        stored = service().stored_rewards(customer_id)
        return RewardsState(**stored) if stored else closed

    state = cli_call(as_json, close)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(state), indent=2))
    else:
        click.echo(f"Closed: {state.points} points, {state.tier} tier, {state.orders} orders")


def echo_order(view: OrderView, as_json: bool) -> None:
    order_ = service().describe(view)
    if as_json:
        click.echo(json.dumps(order_, indent=2))
        return
    click.echo(f"Order {order_['order_id']}: {order_['status_label']} (step: {order_['step']})")
    click.echo(
        f"  customer: {order_['customer_id']}   total: {money(order_['total'])}"
        f"   expedited: {'yes' if order_['expedited'] else 'no'}"
    )
    if order_["reason"]:
        click.echo(f"  reason: {order_['reason']}")
    reached = order_["milestones"]
    click.echo("  milestones: " + "  ".join(f"[{'x' if name in reached else ' '}] {name}" for name in ORDER_MILESTONES))
    if order_["attempts"]:
        click.echo("  attempts: " + ", ".join(f"{step} {count}" for step, count in order_["attempts"].items()))
    if order_["payment"]:
        payment = order_["payment"]
        provider = "".join(f", {name} {payment[field]}" for name, field in PROVIDER_IDS if payment.get(field))
        click.echo(f"  payment: {payment['status']} {money(payment['amount'])} (key {payment['payment_key']}{provider})")
    shipment = order_["shipment"]
    carrier = f", {shipment['carrier']} {shipment['tracking_number']}" if shipment.get("carrier") else ""
    click.echo(f"  shipment: {shipment['stage'].replace('_', ' ')}{carrier}")
    if order_["compensations"]:
        click.echo("  compensations: " + ", ".join(order_["compensations"]))
    if order_.get("emails"):
        click.echo("  emails: " + ", ".join(f"{kind} {email['status']}" for kind, email in order_["emails"].items()))
    # The recorded projection is the usual answer, and the live query as fresh: only the start input is worth a note.
    if view.source == "start":
        click.echo("  (from the start input: not recorded yet)")


def money(amount: float | None) -> str:
    return "not priced yet" if amount is None else f"${amount:,.2f}"
