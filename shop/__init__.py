"""The storefront (issue 29): what a shopper sees: the catalog, a product's page and the cart.

The catalog comes from rules.json (`orders.catalog`); availability is the stock
the order workflows' reservations keep (`OrderService.stock_levels`), never the
starting figure. The cart is the visitor's own, in their session.
"""
