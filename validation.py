"""Validation of loan applications and orders: JSON (strict), browser forms, the CLI.

Loans: shared by the web layer and the validate activity. Orders (second part
of this module): new orders and the operator actions on them, checked in the
web process before anything reaches Temporal.

JSON input is validated strictly: `"has_bankruptcy": "no"` or
`"credit_score": "700"` are errors, never coerced. Form input arrives as text
and is parsed (numbers from digits, has_bankruptcy from "yes"/"no") before the
same rules apply. Errors name each field with a message from messages.json;
nested order fields are named by their path, like "items.0.sku" or "address.city".
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from config import Messages
from shared import (
    FAILURE_STEPS,
    Address,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    FailureInjection,
    LoanApplication,
    OrderLine,
)

FIELDS = ("name", "email", "loan_amount", "credit_score", "annual_income", "has_bankruptcy")


class InvalidApplication(Exception):
    """The input has invalid fields; `fields` maps each field to its message."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in fields.items()))
        self.fields = fields


class _ApplicationModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(max_length=254)
    loan_amount: float = Field(gt=0, allow_inf_nan=False)
    credit_score: int = Field(ge=300, le=850)
    annual_income: float = Field(ge=0, allow_inf_nan=False)
    has_bankruptcy: bool

    @field_validator("email")
    @classmethod
    def _normalize_email(cls, value: str) -> str:
        try:
            # No DNS look-up: validation must not depend on the network.
            validate_email(value, check_deliverability=False)
        except EmailNotValidError as err:
            raise ValueError(str(err)) from None
        return value.strip().lower()


def _errors_by_field(err: ValidationError, messages: Messages) -> dict[str, str]:
    fields: dict[str, str] = {}
    for problem in err.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "application"
        if problem["type"] == "missing":
            text = messages.validation["required"]
        elif problem["type"] == "extra_forbidden":
            text = messages.validation["unknown_field"]
        else:
            text = messages.validation.get(name, problem["msg"])
        fields.setdefault(name, text)
    return fields


def parse_json_application(data: Any, messages: Messages) -> LoanApplication:
    """Validate a decoded JSON object strictly (no type coercion)."""
    if not isinstance(data, dict):
        raise InvalidApplication({"application": messages.errors["not_object"]})
    # Strict mode still accepts a JSON integer for a float field, which is exact.
    try:
        model = _ApplicationModel.model_validate(data, strict=True)
    except ValidationError as err:
        raise InvalidApplication(_errors_by_field(err, messages)) from None
    return _to_application(model)


def parse_form_application(form: dict[str, str], messages: Messages) -> LoanApplication:
    """Validate the browser form: text fields parsed explicitly, then the same rules."""
    fields: dict[str, str] = {}
    data: dict[str, Any] = {}
    for name in FIELDS:
        raw = (form.get(name) or "").strip()
        if not raw:
            fields[name] = messages.validation["required"]
            continue
        if name in ("loan_amount", "annual_income"):
            value = _parse_number(raw.replace(",", "").lstrip("$"))
            if value is None:
                fields[name] = messages.validation[name]
                continue
            data[name] = value
        elif name == "credit_score":
            if not raw.isdigit():
                fields[name] = messages.validation[name]
                continue
            data[name] = int(raw)
        elif name == "has_bankruptcy":
            if raw not in ("yes", "no"):
                fields[name] = messages.validation[name]
                continue
            data[name] = raw == "yes"
        else:
            data[name] = raw
    try:
        model = _ApplicationModel.model_validate(data, strict=True)
    except ValidationError as err:
        for name, text in _errors_by_field(err, messages).items():
            fields.setdefault(name, text)
    if fields:
        raise InvalidApplication({name: fields[name] for name in FIELDS if name in fields})
    return _to_application(model)


def revalidate(application: LoanApplication, messages: Messages) -> LoanApplication:
    """Check an application that arrived as workflow input (not via the web layer)."""
    return parse_json_application(dict(application.__dict__), messages)


def _parse_number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _to_application(model: _ApplicationModel) -> LoanApplication:
    return LoanApplication(**model.model_dump())


# --- orders -------------------------------------------------------------------

ADDRESS_FIELDS = ("name", "street", "city", "postal_code", "country")
CUSTOMER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# Far above any order the maximum total allows, but it keeps totals finite:
# the total itself is a business rule checked by the workflow, not here.
MAX_QUANTITY = 10_000
MAX_FAILURE_TIMES = 10
DEFAULT_OPERATOR = ApproveRequest().operator

# messages.json "orders" key for each field, named by the last part of its path.
_ORDER_FIELD_TEXTS = {
    "customer_id": "customer_id",
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


class InvalidOrder(InvalidApplication):
    """An order, or an operator action on one, has invalid fields ("items.0.sku": message)."""


@dataclass(frozen=True)
class NewOrder:
    """A validated order as the customer placed it; the web layer adds the policy and IDs."""

    customer_id: str
    lines: list[OrderLine]
    address: Address
    expedited: bool
    failures: list[FailureInjection]


class _OrderPart(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _LineModel(_OrderPart):
    sku: str
    quantity: int = Field(ge=1, le=MAX_QUANTITY)

    @field_validator("sku")
    @classmethod
    def _in_catalog(cls, sku: str, info: ValidationInfo) -> str:
        if sku not in info.context["catalog"]:
            raise ValueError("unknown sku")
        return sku


class _AddressModel(_OrderPart):
    name: str = Field(min_length=1, max_length=200)
    street: str = Field(min_length=1, max_length=200)
    city: str = Field(min_length=1, max_length=200)
    postal_code: str = Field(min_length=1, max_length=200)
    country: str = Field(min_length=1, max_length=200)


class _FailureModel(_OrderPart):
    step: str
    times: int = Field(default=1, ge=1, le=MAX_FAILURE_TIMES)
    permanent: bool = False

    @field_validator("step")
    @classmethod
    def _known_step(cls, step: str) -> str:
        if step not in FAILURE_STEPS:
            raise ValueError("unknown step")
        return step


class _OrderModel(_OrderPart):
    customer_id: str = Field(pattern=CUSTOMER_ID_PATTERN)
    items: list[_LineModel] = Field(min_length=1)
    address: _AddressModel
    expedited: bool = False
    failures: list[_FailureModel] = Field(default_factory=list)


class _OperatorModel(_OrderPart):
    operator: str = Field(default=DEFAULT_OPERATOR, min_length=1, max_length=100)


class _CancelModel(_OperatorModel):
    reason: str = Field(min_length=1, max_length=500)


class _AddressChangeModel(_AddressModel, _OperatorModel):
    """The new address, its fields at the top level, and optionally who changes it."""


def _order_error_text(loc: tuple, kind: str, fallback: str, messages: Messages) -> str:
    texts = messages.orders
    last = loc[-1] if loc else None
    if kind == "extra_forbidden":
        return messages.validation["unknown_field"]
    if isinstance(last, int):  # a list element that is not an object
        return texts["item" if loc[0] == "items" else "failure"]
    if last == "quantity" and kind == "less_than_equal":
        return texts["quantity_max"].format(maximum=MAX_QUANTITY)
    if last in ADDRESS_FIELDS:
        return texts["address_field"]
    if last in _ORDER_FIELD_TEXTS:
        return texts[_ORDER_FIELD_TEXTS[last]]
    return fallback


def _validated(model: type[BaseModel], data: Any, messages: Messages, *, catalog: Collection[str] = (),
               body_field: str = "body") -> Any:
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
    seen: set[str] = set()
    repeated = []
    for index, item in enumerate(items if isinstance(items, list) else []):
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
    )


def parse_form_order(form: Mapping[str, str], catalog: Collection[str], messages: Messages) -> NewOrder:
    """Validate the browser's order form; errors are keyed by the form's field names.

    Fields: customer_id; sku_<SKU> = quantity for each catalog product (empty or
    0: not ordered); address.<part>; expedited (a checkbox); failure_step,
    failure_times and failure_permanent (one simulated failure, optional).
    """
    fields: dict[str, str] = {}
    items: list[dict[str, Any]] = []
    for sku in catalog:
        raw = (form.get(f"sku_{sku}") or "").strip()
        if raw in ("", "0"):
            continue
        if raw.isdigit():
            items.append({"sku": sku, "quantity": int(raw)})
        else:
            fields[f"sku_{sku}"] = messages.orders["quantity"]
    data: dict[str, Any] = {
        "customer_id": form.get("customer_id", ""),
        "items": items,
        "address": {part: form.get(f"address.{part}", "") for part in ADDRESS_FIELDS},
        "expedited": bool(form.get("expedited")),
    }
    if (form.get("failure_step") or "").strip():
        data["failures"] = [_form_failure(form, "failure_", messages, fields)]
    quantity_typed_wrong = bool(fields.keys() - {"failure_times"})
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
        "step": (form.get(f"{prefix}step") or "").strip(),
        "permanent": bool(form.get(f"{prefix}permanent")),
    }
    times = (form.get(f"{prefix}times") or "").strip()
    if times.isdigit():
        failure["times"] = int(times)
    elif times:
        fields[f"{prefix}times"] = messages.orders["failure_times"]
    return failure


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
