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
FEW_LEFT = 5  # at most this many left: the shop says how many


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


def availability(available: int, texts: Mapping[str, str]) -> str:
    """What a shopper reads about a product's stock."""
    if available <= 0:
        return texts["stock_out"]
    return texts["few_left"].format(available=available) if available <= FEW_LEFT else texts["in_stock"]


def parse_quantity(raw: str | None, texts: Mapping[str, str], allow_zero: bool = False) -> int:
    """A quantity from a form: ASCII digits, 1 (or 0 to remove) to MAX_QUANTITY; CartRefused otherwise."""
    quantity = ascii_whole_number((raw or "").strip())
    low = 0 if allow_zero else 1
    if quantity is None or not low <= quantity <= MAX_QUANTITY:
        raise CartRefused("quantity", texts["quantity_range"].format(low=low, maximum=MAX_QUANTITY))
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


def changed(
    cart: dict[str, int], item: CatalogItem, quantity: int, available: int, add: bool, texts: Mapping[str, str]
) -> dict[str, int]:
    """The cart with `item` at `quantity` (or `quantity` more, with `add`); 0 removes it.
    Refuses a quantity above the stock left or MAX_QUANTITY, saying how many there are."""
    held = cart.get(item.sku, 0)
    wanted = held + quantity if add else quantity
    if wanted > MAX_QUANTITY:
        raise CartRefused("quantity", texts["cart_max"].format(maximum=MAX_QUANTITY, held=held))
    if wanted > available:
        if available <= 0:
            raise CartRefused("quantity", texts["out_of_stock"].format(name=item.name))
        more = texts["you_have"].format(held=held) if add and held else ""
        raise CartRefused("quantity", texts["only_left"].format(available=available, name=item.name) + more)
    new = {sku: n for sku, n in cart.items() if sku != item.sku}
    if wanted > 0:
        new[item.sku] = wanted
    return new


def priced(
    cart: Mapping[str, int], catalog: Mapping[str, CatalogItem], stock: Mapping[str, int], texts: Mapping[str, str]
) -> PricedCart:
    """The cart's lines in the catalog's order, with prices, totals and any line the stock no longer covers."""
    lines = []
    for sku, item in catalog.items():
        quantity = cart.get(sku, 0)
        if quantity <= 0:
            continue
        available = stock.get(sku, 0)
        problem = None
        if quantity > available:
            problem = (
                texts["out_of_stock"].format(name=item.name)
                if available <= 0
                else texts["line_short"].format(available=available)
            )
        lines.append(CartLine(sku, item.name, item.price, quantity, round(item.price * quantity, 2), available, problem))
    return PricedCart(lines, round(sum(line.line_total for line in lines), 2))
