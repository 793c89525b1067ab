"""Validation of a loan application, shared by the web layer and the validate activity.

JSON input is validated strictly: `"has_bankruptcy": "no"` or
`"credit_score": "700"` are errors, never coerced. Form input arrives as text
and is parsed (numbers from digits, has_bankruptcy from "yes"/"no") before the
same rules apply. Errors name each field with a message from messages.json.
"""

from __future__ import annotations

import math
from typing import Any

from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from config import Messages
from shared import LoanApplication

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
