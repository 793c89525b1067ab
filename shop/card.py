"""The card a customer enters at checkout: Stripe.js on the page, a SetupIntent on the server.

The card's number never reaches this app. The checkout page creates a
SetupIntent (for the customer's Stripe customer, `off_session`: the order's
charge step takes the money later, after a review if the order needs one) and
gives its client secret to Stripe.js, which confirms it with the card the
customer typed (static/checkout_card.js). The form then sends the SetupIntent's
ID; before placing anything the server reads it back from Stripe and accepts it
only if it succeeded and was made for this customer and this form (its metadata),
so another customer's ID, or one from another form, places nothing. The order
carries the resulting payment method's ID (`pm_...`), which the charge step
charges once (orders/payments.py).

`make run` and the tests use localstripe's stand-in for Stripe.js, served by the
local Stripe: its card fields are plain inputs in the page (they get labels here,
static/checkout_card.js), where Stripe's own live in a frame.

With no publishable key (`STRIPE_PUBLISHABLE_KEY`), there is no card entry: the
order charges the shop's test card, as orders placed by operators do.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import stripe
from stripe.params import SetupIntentCreateParams

from core.settings import Settings
from web.auth import CONTENT_SECURITY_POLICY

SETUP_INTENT_ID = re.compile(r"seti_[A-Za-z0-9]{1,64}")
PROVIDER_TIMEOUT_SECONDS = 10
# What Stripe's own Stripe.js needs beyond its script's origin (Stripe's CSP guide).
STRIPE_JS_ORIGINS = {"https://js.stripe.com": ("https://api.stripe.com", "https://hooks.stripe.com")}


class CardUnavailable(Exception):
    """Stripe did not answer: the checkout cannot take a card just now."""


class UnknownStripeCustomer(Exception):
    """The account's Stripe customer is not at Stripe (its data was reset): make another."""


@dataclass(frozen=True)
class CardSetup:
    """A SetupIntent waiting for the card: its ID goes in the form, its secret to Stripe.js."""

    setup_intent_id: str
    client_secret: str


@dataclass(frozen=True)
class EnteredCard:
    """A card confirmed for this customer's form: what the order charges, and what the page shows."""

    payment_method: str
    stripe_customer: str
    brand: str
    last4: str


class CardEntry:
    """Checkout's calls to Stripe: a customer per account, a SetupIntent per form, and its check."""

    def __init__(self, settings: Settings):
        assert settings.stripe_api_key and settings.stripe_publishable_key
        self.api_key = settings.stripe_api_key
        self.api_base = settings.stripe_api_base
        self.publishable_key = settings.stripe_publishable_key
        self.script_url = settings.stripe_js_url

    @contextlib.asynccontextmanager
    async def _client(self) -> AsyncIterator[stripe.StripeClient]:
        # One HTTP client per call: Flask runs each async view in an event loop of its own.
        network = stripe.HTTPXClient(timeout=PROVIDER_TIMEOUT_SECONDS)
        try:
            yield stripe.StripeClient(
                self.api_key,
                base_addresses={"api": self.api_base} if self.api_base else None,
                http_client=network,
                max_network_retries=1,
            )
        except stripe.InvalidRequestError:
            raise
        except stripe.StripeError as err:  # unreached, a 5xx, a key it refuses: no card entry just now
            raise CardUnavailable(str(err)) from None
        finally:
            await network.close_async()

    async def stripe_customer(self, customer_id: str, email: str) -> str:
        """A new Stripe customer for the account (its ID is kept in the account; shop/accounts.py)."""
        try:
            async with self._client() as client:
                # Two checkouts opened at once may make two; the account keeps the first stored.
                created = await client.v1.customers.create_async(
                    params={"email": email, "metadata": {"customer_id": customer_id}}
                )
        except stripe.InvalidRequestError as err:
            raise CardUnavailable(str(err)) from None
        return created.id

    async def start(self, stripe_customer: str, customer_id: str, form_key: str) -> CardSetup:
        params: SetupIntentCreateParams = {
            "customer": stripe_customer,
            "usage": "off_session",
            "metadata": {"customer_id": customer_id, "form_key": form_key},
        }
        try:
            async with self._client() as client:
                intent = await client.v1.setup_intents.create_async(params=params)
        except stripe.InvalidRequestError as err:
            # Stripe answers a customer it no longer has with resource_missing on `customer` (localstripe: 404).
            if err.http_status == 404 or (err.code == "resource_missing" and err.param == "customer"):
                raise UnknownStripeCustomer(stripe_customer) from None
            raise CardUnavailable(str(err)) from None
        return CardSetup(intent.id, str(intent.client_secret))

    async def entered(self, setup_intent_id: str, customer_id: str, form_key: str) -> EnteredCard | None:
        """The card confirmed on this customer's form, or None: not confirmed (yet), or not theirs."""
        if not SETUP_INTENT_ID.fullmatch(setup_intent_id):
            return None
        try:
            async with self._client() as client:
                intent = await client.v1.setup_intents.retrieve_async(setup_intent_id)
                metadata: dict[str, Any] = intent.metadata.to_dict() if intent.metadata else {}
                if (
                    intent.status != "succeeded"
                    or metadata.get("customer_id") != customer_id
                    or metadata.get("form_key") != form_key
                    or not isinstance(intent.payment_method, str)
                    or not isinstance(intent.customer, str)
                ):
                    return None
                method = await client.v1.payment_methods.retrieve_async(intent.payment_method)
        except stripe.InvalidRequestError:
            return None  # no such SetupIntent
        if method.type != "card" or method.card is None:
            return None  # confirmed with something else than a card: not what the shop charges
        card: Any = method.card
        return EnteredCard(method.id, intent.customer, str(card.brand).title(), str(card.last4))

    def content_security_policy(self) -> dict[str, str]:
        """The site's policy, with what the card fields' script loads and calls."""
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(self.script_url))
        api, frames = STRIPE_JS_ORIGINS.get(origin, (origin, origin))
        policy = dict(CONTENT_SECURITY_POLICY)
        policy["script-src"] = f"{policy['script-src']} {origin}"
        policy["connect-src"] = f"{policy['connect-src']} {api}"
        policy["frame-src"] = f"{origin} {frames}" if frames != origin else origin
        return policy
