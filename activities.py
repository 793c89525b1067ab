"""Every activity this product runs, built once per process.

`build_activities` opens the store, loads the rules and messages and sets up
mail once, and hands each half its activity objects; the worker registers them
per task queue (`for_loans`, `for_orders`, `for_shipping`). Tests build them the
same way with a temporary data folder, or construct one half's class directly
with a store of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from core.mail import Mailer, SmtpSettings
from core.rules import load_messages, load_rules
from core.settings import Settings
from core.store import Store, open_store
from loans.activities import LoanActivities
from loans.emails import LoanEmailActivities
from orders.activities import OrderActivities, RewardsActivities, ShippingActivities
from orders.emails import OrderEmailActivities
from orders.payments import Payments, StripeProvider
from shop.account_emails import AccountEmailActivities


@dataclass(frozen=True)
class Activities:
    loans: LoanActivities
    loan_emails: LoanEmailActivities
    orders: OrderActivities
    order_emails: OrderEmailActivities
    shipping: ShippingActivities
    rewards: RewardsActivities
    account_emails: AccountEmailActivities

    def for_loans(self) -> list[Callable]:
        loans = self.loans
        return [
            loans.validate_application,
            loans.decide,
            loans.persist_application,
            loans.notify_agent,
            loans.record_contact_preference,
            self.loan_emails.send_decision_email,
        ]

    def for_orders(self) -> list[Callable]:
        """The order's steps, the customers' rewards and the shop's account emails (one task queue)."""
        orders = self.orders
        return [
            orders.record_progress,
            orders.validate_order,
            orders.reserve_inventory,
            orders.release_inventory,
            orders.charge_payment,
            orders.refund_payment,
            orders.notify_customer,
            orders.award_rewards,
            self.order_emails.send_order_email,
            self.rewards.save_rewards,
            self.account_emails.send_account_email,
        ]

    def for_shipping(self) -> list[Callable]:
        shipping = self.shipping
        return [shipping.prepare_package, shipping.dispatch_carrier, shipping.deliver]


def build_activities(settings: Settings, identity: str, store: Store | None = None) -> Activities:
    """One store (one PostgreSQL pool), one copy of the rules and messages, one mailer, for the whole process."""
    store = store or open_store(settings)
    rules = load_rules(settings.rules_file)
    messages = load_messages(settings.messages_file)
    smtp = SmtpSettings.from_settings(settings)
    mailer = Mailer(smtp, settings.mail_from)
    order_emails = OrderEmailActivities(store, Mailer(smtp, settings.order_mail_from))  # each half signs its own
    loan_emails = LoanEmailActivities(
        store, mailer, settings.public_url, settings.secret_key.encode(), rules.duplicate_window_days
    )
    provider = StripeProvider(settings.stripe_api_key, settings.stripe_api_base) if settings.stripe_api_key else None
    return Activities(
        loans=LoanActivities(store=store, rules=rules, messages=messages, identity=identity, emails=loan_emails),
        loan_emails=loan_emails,
        orders=OrderActivities(
            store,
            rules,
            messages.orders,
            emails=order_emails,
            payments=Payments(store, provider),
        ),
        order_emails=order_emails,
        # The dispatch sends the "shipped" email only where mail is set up; elsewhere the order's worker does.
        shipping=ShippingActivities(store, rules, messages.orders, order_emails if smtp else None),
        rewards=RewardsActivities(store, rules),
        account_emails=AccountEmailActivities(store, settings, messages.shop, Mailer(smtp, settings.order_mail_from)),
    )
