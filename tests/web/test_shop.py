"""The storefront (issue 29): the catalog with the stock left, a product's page, and the cart a
visitor fills in their session, refusing what the stock or the cart's limits do not allow."""

from __future__ import annotations

import re

import pytest

from orders.model import INVENTORY, STOCK
from shop.cart import MAX_QUANTITY, CartRefused, changed, cleaned, parse_quantity, priced


@pytest.fixture
def visitor(store_app):
    return store_app.test_client()


def csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def post_cart(visitor, page_url: str, **form: str):
    token = csrf(visitor.get(page_url).get_data(as_text=True))
    return visitor.post("/shop/cart", data={"csrf_token": token, **form}, headers={"Referer": f"http://localhost{page_url}"})


def set_stock(store_app, **levels: int) -> None:
    store = store_app.extensions["order_service"].store
    store.put(INVENTORY, STOCK, {"levels": levels})


def test_the_catalog_shows_every_product_with_its_price_and_the_stock_left_not_the_starting_figure(store_app, visitor):
    set_stock(store_app, **{"LP-140": 3, "HD-300": 0})
    page = visitor.get("/shop").get_data(as_text=True)
    assert visitor.get("/shop").status_code == 200
    for item in store_app.extensions["order_service"].rules.catalog:
        assert item.name in page and f'href="/shop/products/{item.sku}"' in page
    assert "$1,249" in page and "Only 3 left" in page and "Out of stock" in page and "In stock" in page
    product = visitor.get("/shop/products/LP-140").get_data(as_text=True)
    assert "16 GB of memory" in product and "Only 3 left" in product
    assert visitor.get("/shop/products/NOPE").status_code == 404


def test_a_visitor_adds_changes_and_removes_what_is_in_their_cart(store_app, visitor):
    added = post_cart(visitor, "/shop", sku="KB-100", action="add", quantity="2", **{"from": "catalog"})
    assert added.status_code == 303 and added.headers["Location"] == "/shop"
    post_cart(visitor, "/shop/products/KB-100", sku="KB-100", action="add", quantity="1", **{"from": "product"})
    post_cart(visitor, "/shop", sku="CB-010", action="add", quantity="4", **{"from": "catalog"})
    cart = visitor.get("/shop/cart").get_data(as_text=True)
    assert 'value="3"' in cart and 'value="4"' in cart and "$315" in cart and "for 7 items" in cart  # 3 × 89 + 4 × 12
    assert 'Cart<span class="cart-count">&nbsp;(7)' in cart
    post_cart(visitor, "/shop/cart", sku="KB-100", action="set", quantity="1", **{"from": "cart"})
    post_cart(visitor, "/shop/cart", sku="CB-010", action="remove", **{"from": "cart"})
    cart = visitor.get("/shop/cart").get_data(as_text=True)
    assert "Removed the USB-C cable from your cart." in cart and "products/CB-010" not in cart
    assert "products/KB-100" in cart and "Total <strong>$89</strong>" in cart
    post_cart(visitor, "/shop/cart", sku="KB-100", action="set", quantity="0", **{"from": "cart"})
    assert "Your cart is empty" in visitor.get("/shop/cart").get_data(as_text=True)


def test_the_cart_refuses_more_than_the_stock_left_and_says_why_keeping_what_was_typed(store_app, visitor):
    set_stock(store_app, **{"LP-140": 2, "HD-300": 0})
    refused = post_cart(visitor, "/shop/products/LP-140", sku="LP-140", action="add", quantity="3", **{"from": "product"})
    page = refused.get_data(as_text=True)
    assert refused.status_code == 400 and "Only 2 of the 14-inch laptop left." in page and 'value="3"' in page
    assert 'aria-invalid="true"' in page
    out = post_cart(visitor, "/shop", sku="HD-300", action="add", quantity="1", **{"from": "catalog"})
    assert out.status_code == 400 and "is out of stock" in out.get_data(as_text=True)
    for typed in ("0", "-1", "1.5", "x", "", str(MAX_QUANTITY + 1), "²"):
        bad = post_cart(visitor, "/shop", sku="KB-100", action="add", quantity=typed, **{"from": "catalog"})
        assert bad.status_code == 400 and f"Enter a quantity from 1 to {MAX_QUANTITY}." in bad.get_data(as_text=True), typed
    assert post_cart(visitor, "/shop", sku="NOPE", action="add", quantity="1", **{"from": "catalog"}).status_code == 400
    assert post_cart(visitor, "/shop", sku="KB-100", action="steal", quantity="1", **{"from": "catalog"}).status_code == 400
    # In the cart, then the stock ran out: the line says so.
    post_cart(visitor, "/shop", sku="LP-140", action="add", quantity="2", **{"from": "catalog"})
    set_stock(store_app, **{"LP-140": 1})
    assert "Only 1 left: lower the quantity." in visitor.get("/shop/cart").get_data(as_text=True)


def test_a_cart_change_without_its_csrf_token_is_refused(visitor):
    assert visitor.post("/shop/cart", data={"sku": "KB-100", "action": "add", "quantity": "1", "from": "shop"}).status_code == 400


def test_the_cart_rules(store_app):
    catalog = {item.sku: item for item in store_app.extensions["order_service"].rules.catalog}
    texts = store_app.extensions["messages"].shop
    keyboard = catalog["KB-100"]
    assert changed({}, keyboard, 2, 10, True, texts) == {"KB-100": 2}
    assert changed({"KB-100": 2}, keyboard, 3, 10, True, texts) == {"KB-100": 5}
    assert changed({"KB-100": 2}, keyboard, 0, 10, False, texts) == {}
    with pytest.raises(CartRefused, match="Only 4 of the Mechanical keyboard left. You have 2 in your cart."):
        changed({"KB-100": 2}, keyboard, 3, 4, True, texts)
    with pytest.raises(CartRefused, match=f"At most {MAX_QUANTITY}"):
        changed({"KB-100": MAX_QUANTITY}, keyboard, 1, 1000, True, texts)
    # A forged or old cookie: unknown products, bad quantities and booleans are dropped.
    assert cleaned({"KB-100": 2, "GONE": 1, "MS-200": True, "CB-010": 0, "HD-300": "1"}, catalog) == {"KB-100": 2}
    assert cleaned(["KB-100"], catalog) == {}
    assert parse_quantity(" 3 ", texts) == 3 and parse_quantity("0", texts, allow_zero=True) == 0
    cart = priced({"KB-100": 2, "CB-010": 1}, catalog, {"KB-100": 1, "CB-010": 5}, texts)
    assert [line.sku for line in cart.lines] == ["KB-100", "CB-010"] and cart.total == 190.0 and cart.count == 3
    assert cart.problems == ["Only 1 left: lower the quantity."]
