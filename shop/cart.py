"""A shopper's cart: quantities by product, checked against the catalog and the stock left.

The cart itself is a small dict {sku: quantity} kept in the visitor's session
(a signed cookie: nothing on the server for an anonymous visitor). These functions
change it and price it; they read the stock they are given and write nothing.
A quantity above what is left is refused with the reason when it is asked for;
a line whose stock ran out since it was added is shown with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.rules import CatalogItem
from core.validation import ascii_whole_number

MAX_QUANTITY = 20  # of one product in one cart
MAX_LINES = 20  # products in one cart (the catalog is smaller; a forged cookie is not)


class CartRefused(Exception):
    """A change the cart does not take; `field` names the form field, `message` says why."""

    def __init__(self, field_name: str, message: str):
        super().__init__(message)
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class CartLine:
    sku: str
    name: str
    price: float
    quantity: int
    line_total: float
    available: int
    problem: str | None = None  # set when the stock left no longer covers the quantity


@dataclass(frozen=True)
class PricedCart:
    lines: list[CartLine] = field(default_factory=list)
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(line.quantity for line in self.lines)

    @property
    def problems(self) -> list[str]:
        return [line.problem for line in self.lines if line.problem]


def availability(available: int) -> str:
    """What a shopper reads about a product's stock."""
    if available <= 0:
        return "Out of stock"
    return f"Only {available} left" if available <= 5 else "In stock"


def parse_quantity(raw: str | None, allow_zero: bool = False) -> int:
    """A quantity from a form: ASCII digits, 1 (or 0 to remove) to MAX_QUANTITY; CartRefused otherwise."""
    quantity = ascii_whole_number((raw or "").strip())
    low = 0 if allow_zero else 1
    if quantity is None or not low <= quantity <= MAX_QUANTITY:
        raise CartRefused("quantity", f"Enter a quantity from {low} to {MAX_QUANTITY}.")
    return quantity


def cleaned(raw: object, catalog: Mapping[str, CatalogItem]) -> dict[str, int]:
    """The session's cart as it may be used: known products with a quantity in range, at most
    MAX_LINES; anything else (an old catalog's product, a forged cookie) is dropped."""
    if not isinstance(raw, dict):
        return {}
    cart = {}
    for sku, quantity in list(raw.items())[:MAX_LINES]:
        if sku in catalog and isinstance(quantity, int) and not isinstance(quantity, bool) and 1 <= quantity <= MAX_QUANTITY:
            cart[sku] = quantity
    return cart


def changed(cart: dict[str, int], item: CatalogItem, quantity: int, available: int, add: bool) -> dict[str, int]:
    """The cart with `item` at `quantity` (or `quantity` more, with `add`); 0 removes it.
    Refuses a quantity above the stock left or MAX_QUANTITY, saying how many there are."""
    wanted = cart.get(item.sku, 0) + quantity if add else quantity
    if wanted > MAX_QUANTITY:
        raise CartRefused("quantity", f"At most {MAX_QUANTITY} of one product fit in a cart; you have {cart.get(item.sku, 0)}.")
    if wanted > available:
        if available <= 0:
            raise CartRefused("quantity", f"The {item.name} is out of stock.")
        held = cart.get(item.sku, 0)
        more = f" You have {held} in your cart." if add and held else ""
        raise CartRefused("quantity", f"Only {available} of the {item.name} left.{more}")
    new = {sku: n for sku, n in cart.items() if sku != item.sku}
    if wanted > 0:
        new[item.sku] = wanted
    return new


def priced(cart: Mapping[str, int], catalog: Mapping[str, CatalogItem], stock: Mapping[str, int]) -> PricedCart:
    """The cart's lines in the catalog's order, with prices, totals and any line the stock no longer covers."""
    lines = []
    for sku, item in catalog.items():
        quantity = cart.get(sku, 0)
        if quantity <= 0:
            continue
        available = stock.get(sku, 0)
        problem = None
        if quantity > available:
            problem = f"The {item.name} is out of stock." if available <= 0 else f"Only {available} left: lower the quantity."
        lines.append(CartLine(sku, item.name, item.price, quantity, round(item.price * quantity, 2), available, problem))
    return PricedCart(lines, round(sum(line.line_total for line in lines), 2))
