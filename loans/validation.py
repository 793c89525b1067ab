"""What a loan application must be, from the JSON API and from the form: parsed once, refused by field.

Pydantic models validate; errors come back keyed by the field the client sent,
worded from messages.json. The workflow's validate step runs `revalidate` on
what the web layer already validated, so a start from elsewhere is held to the
same rules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)
from pydantic_core import PydanticCustomError

from core.email_address import normalize_email
from core.rules import Messages
from core.validation import (
    TEXT_CHARACTERS_ERROR,
    InvalidInput,
    Text,
    ascii_whole_number,
)
from loans.model import LoanApplication

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
# "=?" opens an RFC 2047 encoded-word: in the decision email's To name, "=?utf-8?q?Bcc=3A_x=40evil.com?="
# would be shown decoded ("Bcc: x@evil.com"). No name needs it, so the applicant's name refuses it.
ENCODED_WORD = "=?"
ENCODED_WORD_ERROR = "name_encoded_word"
# The name is the decision email's greeting: a web or email address there turns the product's
# email into someone else's message (issue 26). "St.John" and "J. R. R." stay names.
LINK_IN_NAME = re.compile(
    r"://|\bwww\.|@|\b[\w-]+\.(?:com|net|org|info|biz|io|co|me|ly|xyz|top|app|dev|link|site|online|club|shop|ru|cn|uk|de)\b",
    re.IGNORECASE,
)
LINK_IN_NAME_ERROR = "name_link"

# Form numbers: ASCII digits only (str.isdigit() also accepts "²" or "٣",
# which int() refuses or reads as another number). Amounts may have a leading
# "$", thousands commas in groups of three and decimals: "$100,000.50".
_FORM_AMOUNT = re.compile(r"\$?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?")


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

    @field_validator("name")
    @classmethod
    def _no_encoded_word(cls, value: str) -> str:
        if ENCODED_WORD in value:
            raise PydanticCustomError(ENCODED_WORD_ERROR, "an email header's encoded-word marker")
        if LINK_IN_NAME.search(value):
            raise PydanticCustomError(LINK_IN_NAME_ERROR, "a web or email address")
        return value

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
        elif problem["type"] in (TEXT_CHARACTERS_ERROR, ENCODED_WORD_ERROR, LINK_IN_NAME_ERROR):
            text = messages.validation[problem["type"]]
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
        value: float | int | bool | str | None
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
    """ "$100,000.50" -> 100000.5; None unless ASCII digits in that shape (no "1e3", "inf", "١٠٠")."""
    if not _FORM_AMOUNT.fullmatch(raw):
        return None
    return float(raw.lstrip("$").replace(",", ""))


def revalidate(application: LoanApplication, messages: Messages) -> LoanApplication:
    """Check an application that arrived as workflow input (not via the web layer)."""
    return parse_json_application(dict(application.__dict__), messages)


def _to_application(model: _ApplicationModel) -> LoanApplication:
    return LoanApplication(**model.model_dump())


# --- the applicant's contact answer ------------------------------------------------


class _ContactModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    answer: Literal["yes", "not_yet"]


def parse_json_contact(data: Any, messages: Messages) -> str:
    """{"answer": "yes" | "not_yet"}: whether the applicant wants an agent to call.

    The error names the field and the values exactly as the API takes them (the
    form's "Answer yes or not yet." is for people pressing its buttons)."""
    if not isinstance(data, dict):
        raise InvalidApplication({"answer": messages.validation["contact_answer"]})
    try:
        return _ContactModel.model_validate(data).answer
    except ValidationError:
        raise InvalidApplication({"answer": messages.validation["contact_answer"]}) from None
