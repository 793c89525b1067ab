"""The storefront's pages: the catalog at /shop, a product's page, and the cart.

Anyone may browse and fill a cart (web/auth.py PUBLIC_ENDPOINTS). The cart
lives in the visitor's session (shop/cart.py); each change is a form post
(CSRF-protected like every form) answered with a redirect to the page it came
from, or, when the cart refuses it, that page again with the reason beside the
field and the quantity typed (400).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, session, url_for

from shop.cart import CartRefused, availability, changed, parse_quantity, priced
from shop.session import CART, catalog, keep_cart, session_cart, texts

shop = Blueprint("shop", __name__)
ACTIONS = ("add", "set", "remove")
PAGES = {"catalog": "shop.catalog_page", "product": "shop.product", "cart": "shop.cart"}  # where a change came from


def stock() -> dict[str, int]:
    """What each product has left: the levels the order workflows' reservations keep."""
    return current_app.extensions["order_service"].stock_levels()


def render(page: str, status: int = 200, sku: str | None = None, error: str | None = None, typed: str | None = None):
    """One of the shop's pages; with `error`, the reason a change to `sku`'s line was refused."""
    items, left, cart = catalog(), stock(), session_cart()
    context: dict[str, Any] = {
        "items": list(items.values()),
        "stock": left,
        "availability": {sku_: availability(left.get(sku_, 0), texts()) for sku_ in items},
        "cart": priced(cart, items, left, texts()),
        "error_sku": sku,
        "error": error,
        "typed": typed,
    }
    if page == "product":
        context["item"] = items[sku] if sku else None
    return render_template(f"shop/{page}.html", **context), status


@shop.get("/shop")
def catalog_page():
    return render("catalog")


@shop.get("/shop/products/<sku>")
def product(sku: str):
    if sku not in catalog():
        abort(404)
    return render("product", sku=sku)


@shop.get("/shop/cart")
def cart():
    return render("cart")


@shop.post("/shop/cart")
def change_cart():
    """Add to the cart, set a line's quantity, or remove a line; then back to the page it came from."""
    form = request.form
    items = catalog()
    sku, action, page = form.get("sku", ""), form.get("action", ""), form.get("from", "cart")
    if sku not in items or action not in ACTIONS or page not in PAGES:
        abort(400, description=texts()["bad_cart_change"])
    item = items[sku]
    try:
        quantity = 0 if action == "remove" else parse_quantity(form.get("quantity"), texts(), allow_zero=action == "set")
        keep_cart(changed(session_cart(), item, quantity, stock().get(sku, 0), action == "add", texts()))
    except CartRefused as refused:
        return render(page, 400, sku=sku, error=refused.message, typed=form.get("quantity", ""))
    done = "added" if action == "add" else "removed" if quantity == 0 else "set"
    flash(texts()[done].format(quantity=quantity, name=item.name), "success")
    target = url_for(PAGES[page], sku=sku) if page == "product" else url_for(PAGES[page])
    return redirect(target, code=303)


def init_app(app) -> None:
    app.register_blueprint(shop)
    # The navigation's cart count, on every page.
    app.context_processor(lambda: {"cart_count": sum(session_cart().values()) if CART in session else 0})
