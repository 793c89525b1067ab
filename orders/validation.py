"""What an order and each operator action on one must be, from the JSON API, the form and the CLI.

Errors come back keyed by the field's path as the client sent it
("items.0.sku"), worded from messages.json; an order's idempotency key is
checked here too.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from core.email_address import normalize_email
from core.idempotency import valid_idempotency_key
from core.rules import Messages
from core.validation import (
    FORM_CHECKBOX_VALUE,
    TEXT_CHARACTERS_ERROR,
    InvalidInput,
    Text,
    ascii_whole_number,
)
from orders.model import (
    FAILURE_STEPS,
    MAX_FAILURES_PER_ORDER,
    Address,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    Card,
    FailureInjection,
    OrderLine,
)

# --- orders -------------------------------------------------------------------

ADDRESS_FIELDS = ("name", "street", "city", "postal_code", "country")
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Far above any order the maximum total allows, but it keeps totals finite:
# the total itself is a business rule checked by the workflow, not here.
MAX_QUANTITY = 10_000
MAX_FAILURE_TIMES = 10
# Lists a client can send. A line per catalog product is the most an order can
# use (a product appears once); 50 leaves room for a bigger catalog. Failures
# to simulate: a few per step is all a demonstration needs.
MAX_ORDER_LINES = 50
MAX_FAILURES = MAX_FAILURES_PER_ORDER
DEFAULT_OPERATOR = ApproveRequest().operator

# messages.json "orders" key for each field, named by the last part of its path.
_ORDER_FIELD_TEXTS = {
    "customer_id": "customer_id",
    "customer_email": "customer_email",
    "items": "items",
    "sku": "unknown_sku",
    "quantity": "quantity",
    "address": "address",
    "expedited": "expedited",
    "failures": "failures",
    "step": "failure_step",
    "times": "failure_times",
    "permanent": "failure_permanent",
    "reason": "cancel_reason",
    "operator": "operator",
}


_LIST_MAXIMUMS = {"items": MAX_ORDER_LINES, "failures": MAX_FAILURES}


class InvalidOrder(InvalidInput):
    """An order, or an operator action on one, has invalid fields ("items.0.sku": message)."""


@dataclass(frozen=True)
class NewOrder:
    """A validated order as the customer placed it; the web layer adds the policy and IDs."""

    customer_id: str
    lines: list[OrderLine]
    address: Address
    expedited: bool
    failures: list[FailureInjection]
    customer_email: str  # normalised like the loan form's (normalize_email)
    card: Card | None = None  # entered at the shop's checkout (shop/card.py); None: the shop's test card


class _OrderPart(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _LineModel(_OrderPart):
    sku: Text
    quantity: int = Field(ge=1, le=MAX_QUANTITY)

    @field_validator("sku")
    @classmethod
    def _in_catalog(cls, sku: str, info: ValidationInfo) -> str:
        if sku not in (info.context or {}).get("catalog", ()):
            raise ValueError("unknown sku")
        return sku


class _AddressModel(_OrderPart):
    name: Text = Field(min_length=1, max_length=200)
    street: Text = Field(min_length=1, max_length=200)
    city: Text = Field(min_length=1, max_length=200)
    postal_code: Text = Field(min_length=1, max_length=200)
    country: Text = Field(min_length=1, max_length=200)


class _FailureModel(_OrderPart):
    step: Text = Field(json_schema_extra={"enum": list(FAILURE_STEPS)})
    times: int = Field(default=1, ge=1, le=MAX_FAILURE_TIMES)
    permanent: bool = False

    @field_validator("step")
    @classmethod
    def _known_step(cls, step: str) -> str:
        if step not in FAILURE_STEPS:
            raise ValueError("unknown step")
        return step


def _normalized_email(value: str) -> str:
    try:
        return normalize_email(value)
    except ValueError as err:
        raise ValueError(str(err)) from None


class _OrderModel(_OrderPart):
    customer_id: Text = Field(pattern=CUSTOMER_ID_PATTERN, json_schema_extra={"pattern": CUSTOMER_ID_PATTERN})
    # Required for new orders: where the order's emails go (orders placed before have none, and get none).
    customer_email: Text = Field(max_length=254, json_schema_extra={"format": "email"})
    items: list[_LineModel] = Field(min_length=1, max_length=MAX_ORDER_LINES)
    address: _AddressModel
    expedited: bool = False
    failures: list[_FailureModel] = Field(default_factory=list, max_length=MAX_FAILURES)

    @field_validator("customer_email")
    @classmethod
    def _normalize_email(cls, value: str) -> str:
        return _normalized_email(value)


class _OperatorModel(_OrderPart):
    operator: Text = Field(default=DEFAULT_OPERATOR, min_length=1, max_length=100)


class _CancelModel(_OperatorModel):
    reason: Text = Field(min_length=1, max_length=500)


class _AddressChangeModel(_AddressModel, _OperatorModel):
    """The new address, its fields at the top level, and optionally who changes it."""


def _order_error_text(loc: tuple, kind: str, fallback: str, messages: Messages) -> str:
    texts = messages.orders
    last = loc[-1] if loc else None
    if kind == "extra_forbidden":
        return messages.validation["unknown_field"]
    if kind == TEXT_CHARACTERS_ERROR:
        return messages.validation[TEXT_CHARACTERS_ERROR]
    if kind == "too_long" and last in _LIST_MAXIMUMS:
        return messages.validation["too_many"].format(maximum=_LIST_MAXIMUMS[last])
    if isinstance(last, int):  # a list element that is not an object
        return texts["item" if loc[0] == "items" else "failure"]
    if last == "quantity" and kind == "less_than_equal":
        return texts["quantity_max"].format(maximum=f"{MAX_QUANTITY:,}")  # "10,000", as numbers read elsewhere
    if last in ADDRESS_FIELDS:
        return texts["address_field"]
    if last in _ORDER_FIELD_TEXTS:
        return texts[_ORDER_FIELD_TEXTS[last]]
    return fallback


def _validated(
    model: type[BaseModel], data: Any, messages: Messages, *, catalog: Collection[str] = (), body_field: str = "body"
) -> Any:
    """Validate strictly; every error is keyed by its path ("items.0.sku") and has its text."""
    if not isinstance(data, dict):
        raise InvalidOrder({body_field: messages.errors["not_object"]})
    try:
        return model.model_validate(data, strict=True, context={"catalog": catalog})
    except ValidationError as err:
        fields: dict[str, str] = {}
        for problem in err.errors():
            loc = tuple(problem["loc"])
            key = ".".join(str(part) for part in loc)
            fields.setdefault(key, _order_error_text(loc, problem["type"], problem["msg"], messages))
        raise InvalidOrder(fields) from None


def _repeated_skus(data: Any) -> list[str]:
    """Field keys ("items.2.sku") of the lines that repeat an earlier line's product."""
    items = data.get("items") if isinstance(data, dict) else None
    if not isinstance(items, list) or len(items) > MAX_ORDER_LINES:
        return []  # not a list, or refused as too long: no per-line errors
    seen: set[str] = set()
    repeated = []
    for index, item in enumerate(items):
        sku = item.get("sku") if isinstance(item, dict) else None
        if isinstance(sku, str):
            if sku.strip() in seen:
                repeated.append(f"items.{index}.sku")
            seen.add(sku.strip())
    return repeated


def parse_json_order(data: Any, catalog: Collection[str], messages: Messages) -> NewOrder:
    """Validate a new order from decoded JSON (the API and the CLI); `catalog` holds the SKUs."""
    duplicates = {key: messages.orders["duplicate_sku"] for key in _repeated_skus(data)}
    try:
        model = _validated(_OrderModel, data, messages, catalog=catalog, body_field="order")
    except InvalidOrder as err:
        raise InvalidOrder({**duplicates, **err.fields}) from None
    if duplicates:
        raise InvalidOrder(duplicates)
    return NewOrder(
        customer_id=model.customer_id,
        lines=[OrderLine(line.sku, line.quantity) for line in model.items],
        address=Address(**model.address.model_dump()),
        expedited=model.expedited,
        failures=[FailureInjection(**failure.model_dump()) for failure in model.failures],
        customer_email=model.customer_email,
    )


def parse_form_order(form: Mapping[str, str], catalog: Collection[str], messages: Messages) -> NewOrder:
    """Validate the browser's order form; errors are keyed by the form's field names.

    Fields: customer_id; customer_email; sku_<SKU> = quantity for each catalog product (empty or
    0: not ordered); address.<part>; expedited (a checkbox); failure_step,
    failure_times and failure_permanent (one simulated failure, optional: without
    a step the other two are ignored, as the page always sends a times value).
    """
    fields: dict[str, str] = {}
    items: list[dict[str, Any]] = []
    # A product the catalog does not have is refused, as the JSON API refuses it, not ignored.
    for key in form:
        if key.startswith("sku_") and key.removeprefix("sku_") not in catalog:
            fields[key] = messages.orders["unknown_sku"]
    for sku in catalog:
        raw = (form.get(f"sku_{sku}") or "").strip()
        if raw in ("", "0"):
            continue
        quantity = ascii_whole_number(raw)
        if quantity is None:
            fields[f"sku_{sku}"] = messages.orders["quantity"]
        else:
            items.append({"sku": sku, "quantity": quantity})
    data: dict[str, Any] = {
        "customer_id": form.get("customer_id", ""),
        "customer_email": form.get("customer_email", ""),
        "items": items,
        "address": {part: form.get(f"address.{part}", "") for part in ADDRESS_FIELDS},
        "expedited": _form_checkbox(form, "expedited", messages, fields),
    }
    if (form.get("failure_step") or "").strip():
        data["failures"] = [_form_failure(form, "failure_", messages, fields)]
    quantity_typed_wrong = any(key.startswith("sku_") for key in fields)
    try:
        order = parse_json_order(data, catalog, messages)
    except InvalidOrder as err:
        for key, text in err.fields.items():
            if key == "items" and quantity_typed_wrong:
                continue  # the quantity's own error already says why nothing is ordered
            fields.setdefault(_form_field_of(key, items), text)
    if fields:
        raise InvalidOrder(fields)
    return order


def _form_field_of(key: str, items: list[dict[str, Any]]) -> str:
    """The form field behind an error of the JSON shape ("items.1.quantity" -> "sku_MS-200")."""
    parts = key.split(".")
    if parts[0] == "items" and len(parts) == 3:
        return f"sku_{items[int(parts[1])]['sku']}"
    if parts[0] == "failures" and len(parts) == 3:
        return f"failure_{parts[2]}"
    return key


def _form_failure(form: Mapping[str, str], prefix: str, messages: Messages, fields: dict[str, str]) -> dict[str, Any]:
    """A failure to simulate, from form text; times that are not digits go into `fields`."""
    failure: dict[str, Any] = {
        "step": form.get(f"{prefix}step") or "",
        "permanent": _form_checkbox(form, f"{prefix}permanent", messages, fields),
    }
    times = (form.get(f"{prefix}times") or "").strip()
    if times:
        failure["times"] = ascii_whole_number(times)
        if failure["times"] is None:
            del failure["times"]
            fields[f"{prefix}times"] = messages.orders["failure_times"]
    return failure


def _form_checkbox(form: Mapping[str, str], name: str, messages: Messages, fields: dict[str, str]) -> bool:
    """A checkbox: absent or empty is False, FORM_CHECKBOX_VALUE is True, any other text is an error."""
    raw = form.get(name) or ""
    if raw not in ("", FORM_CHECKBOX_VALUE):
        fields[name] = messages.validation["checkbox"]
    return raw == FORM_CHECKBOX_VALUE


def parse_json_approve(data: Any, messages: Messages) -> ApproveRequest:
    """The approve action's optional body, {"operator": ...}; None (no body) is the default operator."""
    model = _validated(_OperatorModel, {} if data is None else data, messages)
    return ApproveRequest(operator=model.operator)


def parse_json_cancel(data: Any, messages: Messages) -> CancelRequest:
    """{"reason": ..., "operator": optional}."""
    model = _validated(_CancelModel, data, messages)
    return CancelRequest(reason=model.reason, operator=model.operator)


def parse_json_address_change(data: Any, messages: Messages) -> AddressChange:
    """The new address as an object ({"name", "street", ...}, optional "operator").

    Errors are keyed "address.<part>", as for a new order.
    """
    try:
        model = _validated(_AddressChangeModel, data, messages)
    except InvalidOrder as err:
        raise InvalidOrder({_address_key(key): text for key, text in err.fields.items()}) from None
    return AddressChange(address=Address(**model.model_dump(include=set(ADDRESS_FIELDS))), operator=model.operator)


def _address_key(key: str) -> str:
    return f"address.{key}" if key in ADDRESS_FIELDS else key


def parse_json_failure(data: Any, messages: Messages) -> FailureInjection:
    """{"step": ..., "times": 1-10 (default 1), "permanent": false}."""
    model = _validated(_FailureModel, data, messages)
    return FailureInjection(**model.model_dump())


def parse_form_approve(form: Mapping[str, str], messages: Messages) -> ApproveRequest:
    """The tracker page's approve form: the operator's name, optional (empty: the default operator)."""
    name = form.get("operator") or ""
    return parse_json_approve({"operator": name} if name.strip() else None, messages)


def parse_form_cancel(form: Mapping[str, str], messages: Messages) -> CancelRequest:
    """The tracker page's cancel form: a reason (the operator is the default one)."""
    return parse_json_cancel({"reason": form.get("reason", "")}, messages)


def parse_form_address_change(form: Mapping[str, str], messages: Messages) -> AddressChange:
    """The tracker page's address form: fields address.<part>."""
    return parse_json_address_change({part: form.get(f"address.{part}", "") for part in ADDRESS_FIELDS}, messages)


def parse_form_failure(form: Mapping[str, str], messages: Messages) -> FailureInjection:
    """The tracker page's simulate-failure form: step, times, permanent (a checkbox)."""
    fields: dict[str, str] = {}
    data = _form_failure(form, "", messages, fields)
    try:
        failure = parse_json_failure(data, messages)
    except InvalidOrder as err:
        raise InvalidOrder({**err.fields, **fields}) from None
    if fields:
        raise InvalidOrder(fields)
    return failure


def parse_idempotency_key(raw: str | None, messages: Messages) -> str | None:
    """The optional Idempotency-Key header (core/idempotency.py)."""
    try:
        return valid_idempotency_key(raw)
    except ValueError:
        raise InvalidOrder({"Idempotency-Key": messages.orders["idempotency_key"]}) from None
