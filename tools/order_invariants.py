"""The orders' money-and-stock invariant, checked from outside: for tests and crash runs.

An order either delivers, or ends in a named status (rejected, failed,
cancelled) with its charge refunded and its stock released; no order workflow
ends FAILED, CANCELED or TERMINATED; the stored view (the `orders` projection)
says what the workflow says. `order_problems` checks one order against a
Temporal client and a data folder; `stock_problems` checks the stock document
against the reservations; `assert_orders_right` does both for every order in
the folder and fails with the list of what is wrong. `provider_payments` reads
what the payment provider itself holds for each order (Stripe's API, not the
app's records), and `provider_problems` checks an order's money there: at most
one PaymentIntent that took money, refunded in full exactly when the order did
not complete.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.client import Client, WorkflowExecutionStatus

from core.store import Store
from core.store.files import JsonStore
from orders.model import (
    FINAL_ORDER_STATUSES,
    INVENTORY,
    ORDERS,
    PAYMENT_REQUESTS,
    PAYMENTS,
    RESERVATIONS,
    SHIPMENTS,
    STOCK,
    OrderStatus,
    order_workflow_id,
    payment_key,
)

# What the provider holds for an order: (status, amount in cents, amount refunded in cents) per PaymentIntent.
ProviderPayment = tuple[str, int, int]


def provider_payments(api_key: str, api_base: str | None) -> dict[str, list[ProviderPayment]]:
    """Every PaymentIntent at the provider, by the order ID in its metadata; one listing for all orders."""
    from orders.payments import StripeProvider

    client = StripeProvider(api_key, api_base).client
    found: dict[str, list[ProviderPayment]] = {}
    for intent in client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter():
        order_id = intent.metadata.to_dict().get("order_id")
        if order_id is None:
            continue
        refunded = 0
        if intent.status == "succeeded":
            charge = client.v1.payment_intents.retrieve(intent.id, params={"expand": ["latest_charge"]}).latest_charge
            refunded = charge.amount_refunded if charge is not None and not isinstance(charge, str) else 0
        found.setdefault(order_id, []).append((intent.status, intent.amount, refunded))
    return found


def provider_problems(payments: list[ProviderPayment], completed: bool) -> list[str]:
    """What is wrong with an order's money at the provider: more than one payment that took money,
    a completed order's payment missing or refunded, a stopped order's payment not refunded in full.
    Intents that took nothing (created, then the worker died; or cancelled) are not money."""
    taken = [(amount, refunded) for status, amount, refunded in payments if status == "succeeded"]
    if len(taken) > 1:
        return [f"the provider took its money {len(taken)} times: {taken}"]
    if completed and (not taken or taken[0][1] != 0):
        return [f"completed, but the provider holds {taken or 'no payment'} (amount, refunded)"]
    if not completed and taken and taken[0][1] != taken[0][0]:
        return [f"did not complete, but the provider refunded {taken[0][1]} of {taken[0][0]} cents"]
    return []


async def order_problems(client: Client, store: Store, order_id: str, provider: list[ProviderPayment] | None = None) -> list[str]:
    """What is wrong with one closed order; an empty list when it is right. With `provider` (what
    `provider_payments` found for it), its money at the provider is checked too."""
    handle = client.get_workflow_handle(order_workflow_id(order_id), result_type=OrderStatus)
    execution = (await handle.describe()).status
    payment = store.get(PAYMENTS, payment_key(order_id))
    reservation = store.get(RESERVATIONS, order_id)
    charged = payment is not None and payment["status"] == "charged"
    reserved = reservation is not None and reservation["status"] == "reserved"
    problems = []
    if execution != WorkflowExecutionStatus.COMPLETED:
        held = [what for what, held in (("money", charged), ("stock", reserved)) if held]
        problems.append(
            f"workflow {execution.name if execution else 'unknown'}" + (f" holding {' and '.join(held)}" if held else "")
        )
        return [f"order {order_id}: {p}" for p in problems]
    status: OrderStatus = await handle.result()
    delivered = status.status == "completed"
    if status.status not in FINAL_ORDER_STATUSES:
        problems.append(f"ended in status {status.status!r}, not a final one")
    if charged and not delivered:
        problems.append(f"{status.status} but its payment is still charged")
    if reserved and not delivered:
        problems.append(f"{status.status} but its stock is still reserved")
    if delivered and not (charged and reserved and status.shipment.stage == "delivered"):
        problems.append(f"completed without charge, reservation or delivery (payment {payment}, reservation {reservation})")
    if not delivered and (status.shipment.stage in ("dispatched", "delivered") or store.get(SHIPMENTS, order_id)):
        problems.append(f"{status.status} but the parcel went to the carrier")
    charges = [
        r for r in store.list_all(PAYMENT_REQUESTS) if r["payment_key"] == payment_key(order_id) and r["outcome"] == "charged"
    ]
    if len(charges) > 1:
        problems.append(f"charged {len(charges)} times")
    stored = store.get(ORDERS, order_id)
    if stored is None:
        problems.append("no stored view")
    else:
        live = dataclasses.asdict(status)
        for field in ("status", "compensations", "payment", "reason"):
            if stored.get(field) != live[field]:
                problems.append(f"stored view says {field}={stored.get(field)!r}, the workflow {live[field]!r}")
    if provider is not None:
        problems += provider_problems(provider, delivered)
        if charged and not provider:
            problems.append("charged, but the provider holds no payment for it")
    return [f"order {order_id}: {p}" for p in problems]


def stock_problems(store: Store, starting_stock: dict[str, int]) -> list[str]:
    """Stock equals the starting stock minus what is reserved (held or delivered), never below zero."""
    stock = store.get(INVENTORY, STOCK)
    if stock is None:
        return []
    held = dict.fromkeys(starting_stock, 0)
    for reservation in store.list_all(RESERVATIONS):
        if reservation["status"] == "reserved":
            for line in reservation["lines"]:
                held[line["sku"]] = held.get(line["sku"], 0) + line["quantity"]
    problems = []
    for sku, start in starting_stock.items():
        level = stock["levels"].get(sku, start)
        if level < 0 or level != start - held[sku]:
            problems.append(f"stock of {sku} is {level}; started at {start} with {held[sku]} reserved")
    return problems


async def assert_orders_right(client: Client, data_dir: Path | str, starting_stock: dict[str, int]) -> int:
    """Check every order in the data folder and the stock; returns how many orders were checked."""
    store = JsonStore(data_dir)
    order_ids = [order["order_id"] for order in store.list_all(ORDERS)]
    problems = stock_problems(store, starting_stock)
    for order_id in order_ids:
        problems += await order_problems(client, store, order_id)
    assert not problems, "orders left wrong:\n" + "\n".join(problems)
    return len(order_ids)
