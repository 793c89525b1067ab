"""What a shopper's session holds: their cart, and, once signed in, their account.

The session is Flask's signed cookie: `cart` is {sku: quantity}; `customer` is
{"k": account key, "v": password version, "s": the sign-in's ID, which the account
keeps while it is open}, separate from an operator's sign-in.
A signed-in customer's cart is also kept in their account, so it follows them to
another browser and survives signing out.
"""

from __future__ import annotations

from typing import Any

from flask import current_app, g, session

from core.rules import CatalogItem
from core.store import StoreUnavailable
from shop.cart import cleaned

CART = "cart"
CUSTOMER = "customer"
PLACED = "placed"  # the last checkout's form key and the order it placed


def texts() -> dict[str, str]:
    """The shop's texts (messages.json, "shop")."""
    return current_app.extensions["messages"].shop


def catalog() -> dict[str, CatalogItem]:
    return {item.sku: item for item in current_app.extensions["order_service"].rules.catalog}


def session_cart() -> dict[str, int]:
    return cleaned(session.get(CART), catalog())


def signed_in_customer() -> dict[str, Any] | None:
    """The signed-in customer's account, if the session names one whose password has not changed since."""
    entry = session.get(CUSTOMER)
    if not isinstance(entry, dict):
        return None
    # Once per request and sign-in: the views and every template's context ask, the store answers once.
    asked = (entry.get("k"), entry.get("v"), entry.get("s"))
    cached = g.get("shop_customer")
    if cached is not None and cached[0] == asked:
        return cached[1]
    try:
        record = current_app.extensions["customer_accounts"].current(str(entry.get("k")), entry.get("v"), str(entry.get("s")))
    except StoreUnavailable:
        return None  # the store is down: the page (an error page too) shows no one signed in
    except ValueError:
        record = None  # a key the store refuses: not one it gave
    if record is None:
        session.pop(CUSTOMER, None)
    g.shop_customer = (asked, record)
    return record


def keep_cart(cart: dict[str, int]) -> None:
    """The cart, in the session and, for a signed-in customer, in their account."""
    session[CART] = cart
    entry = session.get(CUSTOMER)
    if isinstance(entry, dict) and signed_in_customer() is not None:
        current_app.extensions["customer_accounts"].save_cart(str(entry["k"]), cart)
