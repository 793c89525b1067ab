"""Validation of applications from JSON (strict) and from the form (parsed text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import load_messages
from validation import InvalidApplication, parse_form_application, parse_json_application

MESSAGES = load_messages(Path(__file__).resolve().parent / "messages.json")
VALID = {
    "name": "John Doe",
    "email": "John.Doe@Example.com",
    "loan_amount": 50000,
    "credit_score": 750,
    "annual_income": 150000,
    "has_bankruptcy": False,
}


def json_errors(**changes) -> dict[str, str]:
    data = {**VALID, **changes}
    data = {k: v for k, v in data.items() if v is not ...}
    with pytest.raises(InvalidApplication) as raised:
        parse_json_application(data, MESSAGES)
    return raised.value.fields


def test_valid_json_is_normalized():
    application = parse_json_application({**VALID, "email": "  John.Doe@Example.COM ", "name": " John "}, MESSAGES)
    assert application.email == "john.doe@example.com"
    assert application.name == "John"
    assert application.loan_amount == 50000.0 and isinstance(application.loan_amount, float)
    assert application.has_bankruptcy is False


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", ""),
        ("name", "   "),
        ("name", "x" * 201),
        ("name", 42),
        ("email", "not-an-email"),
        ("email", "a@b"),
        ("email", ""),
        ("loan_amount", 0),
        ("loan_amount", -5),
        ("loan_amount", "50000"),
        ("loan_amount", float("nan")),
        ("loan_amount", float("inf")),
        ("credit_score", 299),
        ("credit_score", 851),
        ("credit_score", 700.5),
        ("credit_score", "700"),
        ("credit_score", True),
        ("annual_income", -1),
        ("annual_income", None),
        ("has_bankruptcy", "no"),
        ("has_bankruptcy", "false"),
        ("has_bankruptcy", 0),
        ("has_bankruptcy", None),
    ],
)
def test_each_invalid_json_value_names_its_field(field, value):
    errors = json_errors(**{field: value})
    assert list(errors) == [field]
    assert errors[field] == MESSAGES.validation[field]


def test_boundaries_are_accepted():
    application = parse_json_application(
        {**VALID, "name": "x" * 200, "credit_score": 300, "annual_income": 0, "loan_amount": 0.01}, MESSAGES
    )
    assert application.credit_score == 300
    assert parse_json_application({**VALID, "credit_score": 850}, MESSAGES).credit_score == 850


def test_missing_fields_are_required():
    with pytest.raises(InvalidApplication) as raised:
        parse_json_application({"name": "Ann"}, MESSAGES)
    assert raised.value.fields == {
        name: MESSAGES.validation["required"]
        for name in ("email", "loan_amount", "credit_score", "annual_income", "has_bankruptcy")
    }


def test_unknown_json_fields_are_refused_not_ignored():
    assert json_errors(ssn="123-45-6789") == {"ssn": MESSAGES.validation["unknown_field"]}


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_json_body_must_be_an_object(body):
    with pytest.raises(InvalidApplication) as raised:
        parse_json_application(body, MESSAGES)
    assert raised.value.fields == {"application": MESSAGES.errors["not_object"]}


FORM = {
    "name": "Sarah Test",
    "email": "Sarah@Example.com",
    "loan_amount": "100,000",
    "credit_score": "750",
    "annual_income": "$80000",
    "has_bankruptcy": "no",
}


def test_form_text_is_parsed():
    application = parse_form_application(FORM, MESSAGES)
    assert application.loan_amount == 100000.0
    assert application.annual_income == 80000.0
    assert application.credit_score == 750
    assert application.has_bankruptcy is False
    assert parse_form_application({**FORM, "has_bankruptcy": "yes"}, MESSAGES).has_bankruptcy is True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("loan_amount", "lots"),
        ("loan_amount", "0"),
        ("loan_amount", "nan"),
        ("credit_score", "750.5"),
        ("credit_score", "1000"),
        ("annual_income", "-3"),
        ("has_bankruptcy", "maybe"),
        ("email", "nobody"),
    ],
)
def test_invalid_form_values_name_their_field(field, value):
    with pytest.raises(InvalidApplication) as raised:
        parse_form_application({**FORM, field: value}, MESSAGES)
    assert raised.value.fields == {field: MESSAGES.validation[field]}


def test_empty_form_lists_every_field_in_order():
    with pytest.raises(InvalidApplication) as raised:
        parse_form_application({}, MESSAGES)
    assert list(raised.value.fields) == list(FORM)
