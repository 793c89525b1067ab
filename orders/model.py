"""Types and names of the order half: the order, its steps' requests and results, the shipment (rewards: rewards_model.py).

As for loans (loans/model.py): one typed dataclass per payload, with real
annotations, so fields can be added without breaking running workflows; the
workflow IDs, business error types, statuses and store collections of orders
are decided here, once.
"""

from dataclasses import dataclass, field

# --- orders ------------------------------------------------------------------

# Non-retryable business failures of the order steps.
INVALID_ORDER = "InvalidOrder"
OUT_OF_STOCK = "OutOfStock"
PAYMENT_DECLINED = "PaymentDeclined"
SHIPPING_FAILED = "ShippingFailed"
# A simulated transient failure: retried like any other error.
INJECTED_FAILURE = "InjectedFailure"
# An operator action (update) refused by its validator (approving an order not in review): the message says why.
ACTION_REFUSED = "OrderActionRefused"

# The customer email's activity (orders/emails.py), called by name: the workflow modules import no mail code.
SEND_ORDER_EMAIL = "send_order_email"

# Store collections of the order process.
ORDERS = "orders"  # OrderStatus projection per order, for the dashboard
PAYMENTS = "payments"  # the order's payment (orders/payments.py), one record per payment key
NOTIFICATIONS = "notifications"  # customer notifications
ORDER_EMAILS = "order_emails"  # one record per order and email kind: sent, refused or retrying
SHIPMENTS = "shipments"  # the carrier's label per order: where it was shipped
# The payment provider's log: one record per charge request (attempt), with what the provider did.
PAYMENT_REQUESTS = "payment_requests"
INVENTORY = "inventory"  # one document: the stock of every SKU and the last change
STOCK = "stock"
RESERVATIONS = "reservations"  # one document per order: what it holds

# Steps a failure can be injected into (see FailureInjection).
FAILURE_STEPS = ("inventory", "payment", "shipping")
# The tracker's milestones, in order.
ORDER_MILESTONES = ("received", "validated", "approved", "charged", "shipped", "delivered")
# Order statuses; the last four are final.
ORDER_STATUSES = ("processing", "awaiting_review", "shipping", "completed", "cancelled", "rejected", "failed")
FINAL_ORDER_STATUSES = ("completed", "cancelled", "rejected", "failed")
# Shipment stages, in order. At "dispatching" the order has released the parcel to the carrier:
# from then on it can no longer change. A shipment the order stopped before that ends "cancelled".
SHIPMENT_STAGES = ("not_started", "preparing", "prepared", "dispatching", "dispatched", "delivered", "cancelled")
# Operator actions on an order (OrderStatus.actions lists those still possible).
# Simulated failures an order holds at most, placed with it or injected later (validation.py, workflows.py).
MAX_FAILURES_PER_ORDER = 10
ORDER_ACTIONS = ("approve", "cancel", "address", "expedite", "simulate-failure")
# The emails an order sends its customer, each once (messages.json: email_<kind>, email_<kind>_subject).
ORDER_EMAIL_KINDS = ("received", "awaiting_review", "shipped", "delivered", "cancelled", "review_expired", "rejected", "failed")
# The texts an order's workflow says itself (its refusals, notices, the customer's emails): an
# order carries these, not all the order texts (6 of its input's 7 KB, in every replay).
WORKFLOW_TEXT_PREFIXES = ("email_", "notify_")
WORKFLOW_TEXT_KEYS = frozenset(
    "address_field already_approved already_dispatched already_final being_cancelled cancel_reason cancel_too_late "
    "cancelled_through_temporal failures_full not_awaiting_review review_timeout shipment_stopped step_failed".split()
)


def workflow_texts(texts: dict[str, str]) -> dict[str, str]:
    """The texts of `texts` that an order's workflow says (see WORKFLOW_TEXT_KEYS)."""
    return {key: text for key, text in texts.items() if key in WORKFLOW_TEXT_KEYS or key.startswith(WORKFLOW_TEXT_PREFIXES)}


def order_workflow_id(order_id: str) -> str:
    return f"order-{order_id}"


def shipping_workflow_id(order_id: str) -> str:
    return f"order-{order_id}-shipping"


def order_events_collection(order_id: str) -> str:
    """One folder of audit events per order: listing them never reads other orders'."""
    return f"events-{order_id}"


def payment_key(order_id: str) -> str:
    """The one idempotency key of an order's payment: every retry charges this key."""
    return f"pay-{order_id}"


@dataclass(frozen=True)
class OrderLine:
    sku: str
    quantity: int


@dataclass(frozen=True)
class Address:
    name: str
    street: str
    city: str
    postal_code: str
    country: str

    def missing_fields(self) -> list[str]:
        return [name for name, value in vars(self).items() if not str(value).strip()]


@dataclass(frozen=True)
class FailureInjection:
    """A simulated failure: `step` fails `times` attempts, then works; or for ever if permanent
    (a permanent payment failure is a declined card; a shipping one, a carrier that cannot deliver)."""

    step: str
    times: int = 1
    permanent: bool = False


@dataclass(frozen=True)
class Card:
    """A card the shopper entered at checkout (shop/card.py); an order without one charges the shop's test card."""

    payment_method: str  # Stripe's ID for it (pm_...): no number, no expiry
    stripe_customer: str  # the Stripe customer it was set up for, to be charged off session
    label: str  # "Visa ending 4242", for the order's pages


@dataclass(frozen=True)
class OrderPolicy:
    """Thresholds fixed when the order is placed, so a rules change never alters a running order."""

    max_order_total: float
    auto_approve_limit: float
    review_sla_seconds: float
    random_failure_rate: float = 0.0
    random_failure_seed: int = 0
    reward_points_per_dollar: float = 1.0


@dataclass(frozen=True)
class ShippingTiming:
    prepare_seconds: float
    transit_seconds: float
    expedited_transit_seconds: float


@dataclass(frozen=True)
class OrderRequest:
    """Input of OrderWorkflow."""

    order_id: str
    customer_id: str
    lines: list[OrderLine]
    address: Address
    expedited: bool
    policy: OrderPolicy
    shipping: ShippingTiming
    placed_at: str
    failures: list[FailureInjection] = field(default_factory=list)
    shipping_task_queue: str = "shipping"
    # The texts the workflow itself says (refusals, the review timeout), from messages.json; fixed when placed.
    texts: dict[str, str] = field(default_factory=dict)
    # Normalised (shared.normalize_email); None for orders placed before orders had one: they send no email.
    customer_email: str | None = None
    # Placed since its messages carry their sender: a plain `expedite` or `shipment_ready` is ignored.
    messages_need_sender: bool = False
    card: Card | None = None


@dataclass(frozen=True)
class PricedLine:
    sku: str
    name: str
    quantity: int
    unit_price: float
    line_total: float


@dataclass(frozen=True)
class ValidatedOrder:
    lines: list[PricedLine]
    total: float
    attempt: int = 1
    email: "OrderEmailState | None" = None  # how the email the step carried went (None: not sent)


@dataclass(frozen=True)
class Payment:
    payment_key: str
    amount: float
    status: str  # charged, refunded, or voided (refunded before any charge: a late charge is refused)
    charged_at: str
    refunded_at: str | None = None
    intent_id: str | None = None  # the provider's PaymentIntent and Refund (none without a provider)
    refund_id: str | None = None


@dataclass(frozen=True)
class Shipment:
    stage: str = "not_started"  # one of SHIPMENT_STAGES
    carrier: str | None = None
    tracking_number: str | None = None
    expedited: bool = False
    updated_at: str | None = None
    # The delivery's attempts, told by the result (v9 orders), not by a progress signal.
    delivered_attempt: int | None = None


@dataclass(frozen=True)
class OrderEvent:
    """One entry of an order's audit trail. `key` makes writing it idempotent."""

    order_id: str
    key: str
    kind: str  # step, retry, operator, compensation, status, failure
    message: str
    at: str
    attempt: int | None = None


@dataclass(frozen=True)
class OrderEmailState:
    """How an order's email went: sending, sent, refused (5xx), failed (gave up, or no text), not_configured."""

    status: str
    reason: str | None = None
    at: str | None = None


@dataclass
class OrderStatus:
    """Live state of one order: the status query's answer and the stored projection."""

    order_id: str
    customer_id: str
    status: str  # one of ORDER_STATUSES
    step: str  # the step running or last run
    address: Address
    expedited: bool
    lines: list[PricedLine] = field(default_factory=list)
    total: float | None = None
    needs_review: bool = False
    review_deadline: str | None = None
    approved: bool = False
    approved_by: str | None = None
    cancelled: bool = False
    cancel_reason: str | None = None
    reason: str | None = None  # why an order was rejected or failed
    payment: Payment | None = None
    shipment: Shipment = field(default_factory=Shipment)
    milestones: dict[str, str] = field(default_factory=dict)  # milestone -> when reached
    attempts: dict[str, int] = field(default_factory=dict)  # step -> attempts it took
    compensations: list[str] = field(default_factory=list)
    points_awarded: int | None = None
    placed_at: str | None = None
    updated_at: str | None = None
    # The operator actions (ORDER_ACTIONS) the workflow still allows: pages offer only these.
    actions: list[str] = field(default_factory=list)
    customer_email: str | None = None
    # Each email sent to the customer (ORDER_EMAIL_KINDS) and how it went.
    emails: dict[str, OrderEmailState] = field(default_factory=dict)
    card: str | None = None  # the entered card's label (Card.label); None: the shop's test card
    # Counts the order's records: an older one is never written over a newer (a late attempt writes nothing).
    revision: int = 0

    @classmethod
    def accepted(cls, order: OrderRequest) -> "OrderStatus":
        """An order's state before its first step: the workflow starts from it, and
        the web layer shows it for an order no worker has picked up yet."""
        return cls(
            order_id=order.order_id,
            customer_id=order.customer_id,
            status="processing",
            step="receive",
            address=order.address,
            expedited=order.expedited,
            placed_at=order.placed_at,
            customer_email=order.customer_email,
            card=order.card.label if order.card else None,
            actions=[a for a in ORDER_ACTIONS if a != "approve" and not (a == "expedite" and order.expedited)],
        )


@dataclass(frozen=True)
class StepRequest:
    """Input of most order activities: the order and the failures injected so far."""

    order_id: str
    workflow_id: str
    failures: list[FailureInjection]
    policy: OrderPolicy
    # The order's record as the step starts, written by the step's activity before its work (lean bookkeeping).
    record: "ProgressRecord | None" = None


@dataclass(frozen=True)
class StepResult:
    attempt: int
    # For an undo: False when there was nothing to undo (the step never happened).
    changed: bool = True


@dataclass(frozen=True)
class ValidateOrderRequest:
    step: StepRequest
    lines: list[OrderLine]
    address: Address
    email: "OrderEmailRequest | None" = None  # sent before validating (v10: the "received" email)


@dataclass(frozen=True)
class InventoryRequest:
    step: StepRequest
    lines: list[OrderLine]


@dataclass(frozen=True)
class ChargeRequest:
    step: StepRequest
    amount: float
    card: Card | None = None


@dataclass(frozen=True)
class ChargeResult:
    payment: Payment
    attempt: int


@dataclass(frozen=True)
class ProgressRecord:
    """The order's projection, its new audit events and the customer notices reached since the last record."""

    status: OrderStatus
    events: list[OrderEvent]
    notices: "list[NotificationRequest]" = field(default_factory=list)


@dataclass(frozen=True)
class NotificationRequest:
    order_id: str
    customer_id: str
    kind: str
    message: str


@dataclass(frozen=True)
class OrderEmailRequest:
    """Input of the order email activity: the texts are the order's, worded by the workflow."""

    order_id: str
    kind: str  # one of ORDER_EMAIL_KINDS
    to: str
    subject: str
    text: str
    requested_at: str | None = None  # when the workflow asked (the Date header), whichever activity sends it
    name: str = ""  # the customer's name on the To line (the order's address); none on orders before it


@dataclass(frozen=True)
class AwardRequest:
    customer_id: str
    order_id: str
    points: int
    # v10: the completed order's record, written once the points are awarded, and its "delivered" email.
    record: ProgressRecord | None = None
    email: OrderEmailRequest | None = None


@dataclass(frozen=True)
class ApproveRequest:
    operator: str = "operator"


@dataclass(frozen=True)
class CancelRequest:
    reason: str
    operator: str = "operator"


@dataclass(frozen=True)
class AddressChange:
    address: Address
    operator: str = "operator"


# --- shipping (child workflow on its own task queue) -------------------------


@dataclass(frozen=True)
class DispatchPermit:
    """The order's word to dispatch (after it the parcel is the carrier's), with the final address and speed."""

    address: Address
    expedited: bool
    email: OrderEmailRequest | None = None  # v12: the "shipped" email, sent with the dispatch (`with_dispatch`)


@dataclass(frozen=True)
class ShippingRequest:
    order_id: str
    parent_workflow_id: str
    address: Address
    expedited: bool
    timing: ShippingTiming
    failures: list[FailureInjection]
    policy: OrderPolicy
    # Orders that decide the dispatch: the shipment waits at pickup for the DispatchPermit (False: dispatches alone).
    order_releases_dispatch: bool = False
    # False for v9 orders: the result tells the delivery (Shipment.delivered_attempt).
    report_delivered: bool = True
    # v10 orders: with no wait for the pickup, `shipment_ready` carries "prepared" (1 signal, not 2).
    ready_carries_progress: bool = False
    # Since messages carry their sender: `stop` and `expedite` without one (sent straight to Temporal) are ignored.
    messages_need_sender: bool = False
    # `shipment_ready` carries the shipment as its sender (for orders with messages_need_sender).
    ready_carries_sender: bool = False
    # v11: the order prepared the package and starts the shipment at the release with its word (no handshake).
    permit: DispatchPermit | None = None


@dataclass(frozen=True)
class MessageFrom:
    """A message's argument (stop, expedite, close): encrypted, so only a payload key's holder sends one."""

    sender: str


@dataclass(frozen=True)
class ShipmentStepRequest:
    step: StepRequest
    address: Address
    expedited: bool
    email: OrderEmailRequest | None = None  # the dispatch's: the permit's "shipped" email (v12)


@dataclass(frozen=True)
class ShipmentProgress:
    """Sent by the shipping workflow to its order after each step."""

    stage: str
    attempt: int
    at: str
    carrier: str | None = None
    tracking_number: str | None = None
    email: OrderEmailState | None = None  # "dispatched": how the dispatch sent the "shipped" email (None: not sent)


@dataclass(frozen=True)
class DispatchResult:
    carrier: str
    tracking_number: str
    attempt: int
    email: OrderEmailState | None = None
