"""Validation of loan applications and orders: JSON (strict), browser forms, the CLI.

Loans: shared by the web layer and the validate activity. Orders (second part
of this module): new orders and the operator actions on them, checked in the
web process before anything reaches Temporal. Also the list pages' `page`
parameter (`parse_page`).

This module is the one place for what the app accepts (README, "What the API
accepts"); the routes call its parse_* functions and turn its errors into 400s.
JSON input is validated strictly: `"has_bankruptcy": "no"` or
`"credit_score": "700"` are errors, never coerced. Form input arrives as text
and is converted strictly (ASCII digits only, a checkbox is "yes" or absent)
into the same shape, then validated by the same pydantic model as JSON, so a
form cannot accept what the API refuses. Errors name each field with a message
from messages.json; nested order fields are named by their path, like
"items.0.sku" or "address.city".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from config import Messages
from shared import (
    MAX_FAILURES_PER_ORDER,
    FAILURE_STEPS,
    Address,
    AddressChange,
    ApproveRequest,
    CancelRequest,
    FailureInjection,
    LoanApplication,
    OrderLine,
    normalize_email,
)

FIELDS = ("name", "email", "loan_amount", "credit_score", "annual_income", "has_bankruptcy")

# Bounds on numbers (README, "What the API accepts"; the texts in messages.json
# "validation" say the same, a test keeps them in step). They are input sanity
# limits, not lending rules: rules.json decides (a loan above its compliance
# maximum is a "denied_compliance" decision, not a 400). A loan below 1,000 is
# not a loan this product makes ("5e-324" was pre-approved as "$0"). An income
# is 0 (none) or at least 1: a tiny positive income (a denormal like 5e-324)
# made the loan-to-income ratio overflow to Infinity. With these bounds the
# ratio is at most 1e9: always finite.
MIN_LOAN_AMOUNT = 1_000
MAX_LOAN_AMOUNT = 1_000_000_000
MIN_POSITIVE_INCOME = 1
MAX_ANNUAL_INCOME = 1_000_000_000
MAX_PAGE = 100_000

# Unicode categories refused in every text field: control characters (Cc: C0,
# DEL, C1, so also newlines and tabs), format characters (Cf: zero-width space
# and joiners, word joiner, BOM, soft hyphen, bidirectional overrides), lone
# surrogates (Cs: not encodable as UTF-8) and line/paragraph separators (Zl, Zp).
# Refused, not stripped: the client learns which field is wrong, and nothing is
# stored that differs from what was sent. They reach pages, logs, CSV exports
# and email headers, where they hide text or split lines.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
TEXT_CHARACTERS_ERROR = "text_characters"

# Form numbers: ASCII digits only (str.isdigit() also accepts "²" or "٣",
# which int() refuses or reads as another number). Amounts may have a leading
# "$", thousands commas in groups of three and decimals: "$100,000.50".
_FORM_WHOLE_NUMBER = re.compile(r"[0-9]{1,10}")
_FORM_AMOUNT = re.compile(r"\$?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")
FORM_CHECKBOX_VALUE = "yes"  # the value="..." of every checkbox in templates/


def has_refused_characters(text: str) -> bool:
    """True if the text holds a character of a refused category (REFUSED_CATEGORIES)."""
    return any(unicodedata.category(char) in REFUSED_CATEGORIES for char in text)


def _clean_text(value: Any) -> Any:
    """Runs before pydantic's own checks and its whitespace strip: a trailing newline is refused, not trimmed."""
    if isinstance(value, str) and has_refused_characters(value):
        raise PydanticCustomError(TEXT_CHARACTERS_ERROR, "control, invisible or line-break character")
    return value


# The same rule for the OpenAPI document (openapi.py), where a JSON schema can
# only list characters: the common refused ones (all of Cc, Zl and Zp, and the
# usual Cf: soft hyphen, zero-width, bidi controls, word joiners, BOM). The
# categories above stay the rule; this is what clients and fuzzers are told.
TEXT_SCHEMA_PATTERN = "^[^\x00-\x1f\x7f-\x9f\xad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]*$"

# Every free-text field of every model is `Text`.
Text = Annotated[str, BeforeValidator(_clean_text), Field(json_schema_extra={"pattern": TEXT_SCHEMA_PATTERN})]


def ascii_whole_number(raw: str) -> int | None:
    """The int of 1 to 10 ASCII digits, else None (never a ValueError)."""
    return int(raw) if _FORM_WHOLE_NUMBER.fullmatch(raw) else None


class InvalidInput(Exception):
    """The input has invalid fields; `fields` maps each field to its message."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{name}: {msg}" for name, msg in fields.items()))
        self.fields = fields


class InvalidApplication(InvalidInput):
    """A loan application has invalid fields."""


class _ApplicationModel(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: Text = Field(min_length=1, max_length=200)
    email: Text = Field(max_length=254, json_schema_extra={"format": "email"})
    loan_amount: float = Field(ge=MIN_LOAN_AMOUNT, le=MAX_LOAN_AMOUNT, allow_inf_nan=False)
    credit_score: int = Field(ge=300, le=850)
    annual_income: float = Field(ge=0, le=MAX_ANNUAL_INCOME, allow_inf_nan=False)
    has_bankruptcy: bool

    @field_validator("email")
    @classmethod
    def _normalize_email(cls, value: str) -> str:
        try:
            return normalize_email(value)
        except ValueError as err:
            raise ValueError(str(err)) from None

    @field_validator("annual_income")
    @classmethod
    def _none_or_at_least_one(cls, value: float) -> float:
        if 0 < value < MIN_POSITIVE_INCOME:
            raise ValueError("a positive income below the minimum")
        return 0.0 if value == 0 else value  # -0.0 is stored and shown as 0


def _errors_by_field(err: ValidationError, messages: Messages) -> dict[str, str]:
    fields: dict[str, str] = {}
    for problem in err.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "application"
        if problem["type"] == "missing":
            text = messages.validation["required"]
        elif problem["type"] == "extra_forbidden":
            text = messages.validation["unknown_field"]
        elif problem["type"] == TEXT_CHARACTERS_ERROR:
            text = messages.validation[TEXT_CHARACTERS_ERROR]
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


def parse_form_application(form: Mapping[str, str], messages: Messages) -> LoanApplication:
    """Validate the browser form: numbers and the yes/no converted strictly, then the JSON model."""
    fields: dict[str, str] = {}
    data: dict[str, Any] = {}
    for name in FIELDS:
        raw = form.get(name) or ""
        if not raw.strip():
            fields[name] = messages.validation["required"]
            continue
        if name in ("loan_amount", "annual_income"):
            value = _form_amount(raw.strip())
        elif name == "credit_score":
            value = ascii_whole_number(raw.strip())
        elif name == "has_bankruptcy":
            value = {"yes": True, "no": False}.get(raw.strip())
        else:
            value = raw  # text: the model refuses control characters before it trims
        if value is None:
            fields[name] = messages.validation[name]
        else:
            data[name] = value
    try:
        model = _ApplicationModel.model_validate(data, strict=True)
    except ValidationError as err:
        for name, text in _errors_by_field(err, messages).items():
            fields.setdefault(name, text)
    if fields:
        raise InvalidApplication({name: fields[name] for name in FIELDS if name in fields})
    return _to_application(model)


def _form_amount(raw: str) -> float | None:
    """"$100,000.50" -> 100000.5; None unless ASCII digits in that shape (no "1e3", "inf", "١٠٠")."""
    if not _FORM_AMOUNT.fullmatch(raw):
        return None
    return float(raw.lstrip("$").replace(",", ""))


def parse_page(raw: str | None, messages: Messages) -> int:
    """The list routes' `page` query parameter: absent is 1; else ASCII digits, 1 to MAX_PAGE.

    Raises InvalidInput({"page": text}); the route answers 400.
    """
    if raw is None:
        return 1
    page = ascii_whole_number(raw)
    if page is None or not 1 <= page <= MAX_PAGE:
        raise InvalidInput({"page": messages.validation["page"].format(maximum=f"{MAX_PAGE:,}")})
    return page


def revalidate(application: LoanApplication, messages: Messages) -> LoanApplication:
    """Check an application that arrived as workflow input (not via the web layer)."""
    return parse_json_application(dict(application.__dict__), messages)


def _to_application(model: _ApplicationModel) -> LoanApplication:
    return LoanApplication(**model.model_dump())


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
    customer_email: str  # normalised like the loan form's (normalize_email)


class _OrderPart(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _LineModel(_OrderPart):
    sku: Text
    quantity: int = Field(ge=1, le=MAX_QUANTITY)

    @field_validator("sku")
    @classmethod
    def _in_catalog(cls, sku: str, info: ValidationInfo) -> str:
        if sku not in info.context["catalog"]:
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


# --- an order's idempotency key -----------------------------------------------------

_IDEMPOTENCY_KEY = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def parse_idempotency_key(raw: str | None, messages: Messages) -> str | None:
    """The optional Idempotency-Key header: 1 to 128 letters, digits and . _ : -."""
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(raw):
        raise InvalidOrder({"Idempotency-Key": messages.orders["idempotency_key"]})
    return raw


# --- the applicant's contact answer ------------------------------------------------


CONTACT_ANSWERS = ("yes", "not_yet")


class _ContactModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "not_yet"]


def parse_json_contact(data: Any, messages: Messages) -> str:
    """{"answer": "yes" | "not_yet"}: whether the applicant wants an agent to call."""
    if not isinstance(data, dict):
        raise InvalidApplication({"answer": messages.validation["contact"]})
    try:
        return _ContactModel.model_validate(data).answer
    except ValidationError:
        raise InvalidApplication({"answer": messages.validation["contact"]}) from None


# The model behind each JSON request body, by the name the OpenAPI document
# gives it (openapi.py): the document is generated from what validates.
JSON_BODY_MODELS: dict[str, type[BaseModel]] = {
    "LoanApplication": _ApplicationModel,
    "ContactAnswer": _ContactModel,
    "Order": _OrderModel,
    "Approval": _OperatorModel,
    "Cancellation": _CancelModel,
    "AddressChange": _AddressChangeModel,
    "FailureInjection": _FailureModel,
}
