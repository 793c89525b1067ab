"""Validation of applications and orders from JSON (strict) and from forms (text converted strictly).

Also the regression tests of issue 14: non-ASCII digits, numbers out of bounds
or not finite, equivalent spellings of one email, control and invisible
characters in text, unbounded lists, and the list routes' page parameter.
Property-based tests of the same functions: test_validation_properties.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.email_address import normalize_email
from core.rules import load_messages, load_rules
from core.validation import MAX_PAGE, InvalidInput, parse_page
from loans.decision import loan_to_income
from loans.model import LoanApplication, loan_workflow_id
from loans.validation import (
    MAX_ANNUAL_INCOME,
    MAX_LOAN_AMOUNT,
    MIN_LOAN_AMOUNT,
    InvalidApplication,
    parse_form_application,
    parse_json_application,
)
from orders.model import FailureInjection
from orders.validation import (
    MAX_FAILURES,
    MAX_ORDER_LINES,
    InvalidOrder,
    parse_form_address_change,
    parse_form_approve,
    parse_form_cancel,
    parse_form_failure,
    parse_form_order,
    parse_json_address_change,
    parse_json_approve,
    parse_json_cancel,
    parse_json_failure,
    parse_json_order,
)

HERE = Path(__file__).resolve().parents[2]  # the repository root
MESSAGES = load_messages(HERE / "messages.json")
TEXTS = MESSAGES.orders
INVISIBLE = MESSAGES.validation["text_characters"]
CATALOG = [item.sku for item in load_rules(HERE / "rules.json").orders.catalog]
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
        ("loan_amount", float("-inf")),
        ("loan_amount", 5e-324),  # was pre-approved as "$0"
        ("loan_amount", MIN_LOAN_AMOUNT - 0.01),
        ("loan_amount", MAX_LOAN_AMOUNT + 1),
        ("loan_amount", 10**400),  # a JSON integer no float holds
        ("credit_score", 299),
        ("credit_score", 851),
        ("credit_score", 700.5),
        ("credit_score", "700"),
        ("credit_score", True),
        ("annual_income", -1),
        ("annual_income", None),
        ("annual_income", 5e-324),  # a denormal: the ratio overflowed to Infinity
        ("annual_income", 0.5),
        ("annual_income", MAX_ANNUAL_INCOME + 1),
        ("annual_income", float("nan")),
        ("annual_income", float("inf")),
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
        {**VALID, "name": "x" * 200, "credit_score": 300, "annual_income": 0, "loan_amount": MIN_LOAN_AMOUNT}, MESSAGES
    )
    assert application.credit_score == 300 and application.loan_amount == MIN_LOAN_AMOUNT
    highest = parse_json_application(
        {**VALID, "credit_score": 850, "loan_amount": MAX_LOAN_AMOUNT, "annual_income": MAX_ANNUAL_INCOME}, MESSAGES
    )
    assert (highest.credit_score, highest.loan_amount, highest.annual_income) == (850, MAX_LOAN_AMOUNT, MAX_ANNUAL_INCOME)
    assert parse_json_application({**VALID, "annual_income": 1}, MESSAGES).annual_income == 1.0
    assert str(parse_json_application({**VALID, "annual_income": -0.0}, MESSAGES).annual_income) == "0.0"


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
        ("loan_amount", "inf"),
        ("loan_amount", "1e5"),
        ("loan_amount", "1_000_000"),  # float() reads underscores
        ("loan_amount", "１０００００"),  # fullwidth digits: float() reads them
        ("loan_amount", "٥٠٠٠٠"),  # Arabic-Indic digits
        ("loan_amount", "1,0,0,000"),
        ("loan_amount", "5e-324"),
        ("loan_amount", "999.99"),
        ("loan_amount", "9" * 400),  # float() gives inf
        ("credit_score", "²"),  # isdigit() is True, int() raised: a 500
        ("credit_score", "７５０"),
        ("credit_score", "٧٥٠"),
        ("credit_score", "9" * 5000),  # int() refuses more than 4300 digits
        ("credit_score", "+750"),
        ("annual_income", "0.5"),
        ("annual_income", "²"),
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


@pytest.mark.parametrize("field", ["loan_amount", "annual_income"])
def test_form_amounts_in_the_accepted_shapes(field):
    shapes = [("1000", 1000.0), ("$1,000", 1000.0), ("$100,000.50", 100000.5), ("1,234,567.89", 1234567.89), (" 2500.5 ", 2500.5)]
    for text, value in shapes:
        assert getattr(parse_form_application({**FORM, field: text}, MESSAGES), field) == value


def test_bounds_in_the_texts_match_the_constants():
    assert f"{MIN_LOAN_AMOUNT:,}" in MESSAGES.validation["loan_amount"]
    assert f"{MAX_LOAN_AMOUNT:,}" in MESSAGES.validation["loan_amount"]
    assert f"{MAX_ANNUAL_INCOME:,}" in MESSAGES.validation["annual_income"]
    # Above the lending maximum: a big loan is a decision (denied_compliance), not a 400.
    assert MAX_LOAN_AMOUNT > load_rules(HERE / "rules.json").compliance.max_loan_amount


def test_the_loan_to_income_ratio_of_any_accepted_application_is_finite():
    worst = parse_json_application({**VALID, "loan_amount": MAX_LOAN_AMOUNT, "annual_income": 1}, MESSAGES)
    assert loan_to_income(worst) == MAX_LOAN_AMOUNT
    # Even an application that skipped validation gets no Infinity.
    unvalidated = LoanApplication("Eve", "eve@example.com", 1e300, 700, 5e-324, False)
    assert loan_to_income(unvalidated) is None


# --- emails: one spelling per mailbox ------------------------------------------

SECRET = b"test-secret"


@pytest.mark.parametrize(
    ("spelling", "canonical"),
    [
        ("jos\u00e9@example.com", "jos\u00e9@example.com"),  # precomposed é
        ("jose\u0301@example.com", "jos\u00e9@example.com"),  # e + combining acute
        ("JOS\u00c9@Example.COM", "jos\u00e9@example.com"),
        ("  john@example.com ", "john@example.com"),
        ("".join(chr(ord(char) + 0xFEE0) for char in "john@example.com"), "john@example.com"),  # fullwidth
        ("\ufb01n@example.com", "fin@example.com"),  # the "fi" ligature
        ("ann@B\u00dcCHER.de", "ann@b\u00fccher.de"),
        ("ann@xn--bcher-kva.de", "ann@b\u00fccher.de"),  # the same domain in punycode
        # The dotted capital I (a Turkish keyboard's capital of "i"): "i", not "i" + a combining dot.
        ("\u0130nan@example.com", "inan@example.com"),
        ("I\u0307NAN@example.com", "inan@example.com"),  # the same, decomposed
    ],
)
def test_equivalent_spellings_of_an_email_are_one_applicant(spelling, canonical):
    assert normalize_email(spelling) == canonical
    assert loan_workflow_id(spelling, SECRET) == loan_workflow_id(canonical, SECRET)
    application = parse_json_application({**VALID, "email": spelling}, MESSAGES)
    assert application.email == canonical
    assert parse_form_application({**FORM, "email": spelling}, MESSAGES).email == canonical


def test_ascii_emails_keep_the_workflow_id_they_had():
    """The rule changed for non-ASCII letters only: an ASCII address hashes what it always did
    (trimmed and lower-cased), so an open window keeps refusing its duplicates."""
    import hashlib
    import hmac

    for typed, stored in (
        ("John.Doe@Example.com", "john.doe@example.com"),
        (" a+b@x.org ", "a+b@x.org"),
        ("Z" * 64 + "@EXAMPLE.COM", "z" * 64 + "@example.com"),
    ):
        digest = hmac.new(SECRET, stored.encode(), hashlib.sha256).hexdigest()
        assert loan_workflow_id(typed, SECRET) == f"loan-{digest[:32]}"


def test_a_local_part_over_64_octets_is_refused_naming_the_field():
    assert parse_json_application({**VALID, "email": "a" * 64 + "@example.com"}, MESSAGES).email.startswith("a" * 64)
    assert json_errors(email="a" * 65 + "@example.com") == {"email": MESSAGES.validation["email"]}
    assert json_errors(email="\u00e9" * 33 + "@example.com") == {"email": MESSAGES.validation["email"]}  # 66 octets
    with pytest.raises(InvalidApplication) as raised:
        parse_form_application({**FORM, "email": "a" * 65 + "@example.com"}, MESSAGES)
    assert raised.value.fields == {"email": MESSAGES.validation["email"]}
    with pytest.raises(InvalidOrder) as refused:
        parse_json_order({**ORDER, "customer_email": "a" * 65 + "@example.com"}, CATALOG, MESSAGES)
    assert set(refused.value.fields) == {"customer_email"}


@pytest.mark.parametrize("name", ["=?utf-8?q?Bcc=3A_x=40evil.com?=", "Eve =?utf-8?b?QmNj?=", "a=?b"])
def test_a_name_holding_an_encoded_word_marker_is_refused(name):
    assert json_errors(name=name) == {"name": MESSAGES.validation["name_encoded_word"]}
    with pytest.raises(InvalidApplication) as raised:
        parse_form_application({**FORM, "name": name}, MESSAGES)
    assert raised.value.fields == {"name": MESSAGES.validation["name_encoded_word"]}
    assert parse_json_application({**VALID, "name": "Ann = Bob? Yes"}, MESSAGES).name == "Ann = Bob? Yes"


def test_the_contact_answer_error_names_the_field_and_the_values_it_takes():
    from loans.validation import parse_json_contact

    assert parse_json_contact({"answer": "not_yet"}, MESSAGES) == "not_yet"
    for body in ({"answer": "not yet"}, {"answer": "Yes"}, {}, {"answer": "yes", "extra": 1}, ["yes"]):
        with pytest.raises(InvalidApplication) as raised:
            parse_json_contact(body, MESSAGES)
        assert raised.value.fields == {"answer": MESSAGES.validation["contact_answer"]}
    assert '"answer"' in MESSAGES.validation["contact_answer"]
    assert '"yes"' in MESSAGES.validation["contact_answer"] and '"not_yet"' in MESSAGES.validation["contact_answer"]


def test_different_mailboxes_keep_different_ids():
    ids = {
        loan_workflow_id(email, SECRET)
        for email in ("john@example.com", "john+loans@example.com", "jo.hn@example.com", "john@example.org", "jos@example.com")
    }
    assert len(ids) == 5


@pytest.mark.parametrize(
    ("email", "message_key"),
    [
        ("john@example.com.", "email"),  # a trailing dot: refused by email-validator, not folded
        ('"john"@example.com', "email"),  # a quoted local part
        ("john@[127.0.0.1]", "email"),  # a domain literal
        ("john@localhost", "email"),
        ("jo\u200bhn@example.com", "text_characters"),
        ("john@example.com\t", "text_characters"),
        ("john\n@example.com", "text_characters"),
        ("jo\ud800hn@example.com", "text_characters"),
    ],
)
def test_emails_outside_the_rule_are_refused(email, message_key):
    assert json_errors(email=email) == {"email": MESSAGES.validation[message_key]}


def test_normalizing_twice_changes_nothing():
    for email in ("Jose\u0301@B\u00dcCHER.de", "\u0130@example.com", "\u0130nan@example.com", "A@EXAMPLE.COM"):
        once = normalize_email(email)
        assert normalize_email(once) == once
        assert parse_json_application({**VALID, "email": once}, MESSAGES).email == once


# --- text: control, invisible and line-break characters are refused -------------

REFUSED_CHARACTERS = [
    "\x00",
    "\x1f",
    "\n",
    "\r",
    "\t",
    "\x7f",
    "\x85",
    "\x9b",  # C0, DEL, C1
    "\u200b",
    "\u200c",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u00ad",
    "\u202e",  # zero-width, BOM, soft hyphen, bidi
    "\u2028",
    "\u2029",  # line and paragraph separators
    "\ud800",  # a lone surrogate: not encodable as UTF-8
]


@pytest.mark.parametrize("char", REFUSED_CHARACTERS)
@pytest.mark.parametrize("where", ["inside", "end"])
def test_names_with_invisible_characters_are_refused_not_trimmed(char, where):
    name = f"Jo{char}hn" if where == "inside" else f"John{char}"
    assert json_errors(name=name) == {"name": INVISIBLE}
    with pytest.raises(InvalidApplication) as raised:
        parse_form_application({**FORM, "name": name}, MESSAGES)
    assert raised.value.fields == {"name": INVISIBLE}


def test_ordinary_text_is_accepted():
    for name in ("Zo\u00eb O'Brien-Sm\u00edth", "\u674e\u5c0f\u9f8d", "\u0645\u062d\u0645\u062f", "Ren\u00e9e\u00a0Dupont"):
        assert parse_json_application({**VALID, "name": name}, MESSAGES).name == name


ADDRESS = {"name": "Ada Lovelace", "street": "12 Analytical Way", "city": "London", "postal_code": "N1 9GU", "country": "UK"}
ORDER = {
    "customer_id": "ada-1",
    "customer_email": "ada@example.com",
    "items": [{"sku": "KB-100", "quantity": 2}],
    "address": ADDRESS,
}
ORDER_FORM = {
    "customer_id": "ada-1",
    "customer_email": "ada@example.com",
    "sku_KB-100": "2",
    **{f"address.{k}": v for k, v in ADDRESS.items()},
}


def order_errors(data) -> dict[str, str]:
    with pytest.raises(InvalidOrder) as raised:
        parse_json_order(data, CATALOG, MESSAGES)
    return raised.value.fields


@pytest.mark.parametrize("char", ["\x00", "\n", "\u200b", "\ufeff", "\u2028", "\x85"])
def test_order_text_fields_refuse_invisible_characters(char):
    assert order_errors({**ORDER, "customer_id": f"ada-1{char}"}) == {"customer_id": INVISIBLE}
    assert order_errors({**ORDER, "items": [{"sku": f"KB-100{char}", "quantity": 1}]}) == {"items.0.sku": INVISIBLE}
    for part in ADDRESS:
        assert order_errors({**ORDER, "address": {**ADDRESS, part: f"x{char}y"}}) == {f"address.{part}": INVISIBLE}
        with pytest.raises(InvalidOrder) as raised:
            parse_form_order({**ORDER_FORM, f"address.{part}": f"x{char}"}, CATALOG, MESSAGES)
        assert raised.value.fields == {f"address.{part}": INVISIBLE}
    with pytest.raises(InvalidOrder) as raised:
        parse_form_order({**ORDER_FORM, "customer_id": f"{char}ada-1"}, CATALOG, MESSAGES)
    assert raised.value.fields == {"customer_id": INVISIBLE}


@pytest.mark.parametrize("char", ["\x00", "\r\n", "\u200d", "\u2029", "\u202e"])
def test_operator_actions_refuse_invisible_characters(char):
    cases = [
        (parse_json_cancel, {"reason": f"changed{char}mind"}, "reason"),
        (parse_json_cancel, {"reason": "changed", "operator": f"grace{char}"}, "operator"),
        (parse_json_approve, {"operator": f"grace{char}"}, "operator"),
        (parse_form_approve, {"operator": f"grace{char}"}, "operator"),
        (parse_json_address_change, {**ADDRESS, "street": f"1{char}Way"}, "address.street"),
        (parse_json_address_change, {**ADDRESS, "operator": f"{char}grace"}, "operator"),
        (parse_json_failure, {"step": f"payment{char}"}, "step"),
        (parse_form_cancel, {"reason": f"changed my mind{char}"}, "reason"),
        (
            parse_form_address_change,
            {**{f"address.{k}": v for k, v in ADDRESS.items()}, "address.city": f"Paris{char}"},
            "address.city",
        ),
        (parse_form_failure, {"step": f"payment{char}"}, "step"),
    ]
    for parse, body, field in cases:
        with pytest.raises(InvalidOrder) as raised:
            parse(body, MESSAGES)
        assert raised.value.fields == {field: INVISIBLE}, (parse.__name__, body)


# --- lists are bounded ------------------------------------------------------------


def test_failures_are_bounded():
    failures = [{"step": "payment"}] * MAX_FAILURES
    assert len(parse_json_order({**ORDER, "failures": failures}, CATALOG, MESSAGES).failures) == MAX_FAILURES
    too_many = MESSAGES.validation["too_many"].format(maximum=MAX_FAILURES)
    assert order_errors({**ORDER, "failures": failures + [{"step": "payment"}]}) == {"failures": too_many}
    assert order_errors({**ORDER, "failures": [{"step": "payment"}] * 100}) == {"failures": too_many}


def test_order_lines_are_bounded():
    too_many = MESSAGES.validation["too_many"].format(maximum=MAX_ORDER_LINES)
    lines = [{"sku": "KB-100", "quantity": 1}] * (MAX_ORDER_LINES + 1)
    assert order_errors({**ORDER, "items": lines}) == {"items": too_many}
    assert order_errors({**ORDER, "items": [5] * 10_000}) == {"items": too_many}


# --- order forms: ASCII digits, strict checkboxes ------------------------------------


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        ({"sku_KB-100": "\u00b2"}, {"sku_KB-100": TEXTS["quantity"]}),  # was int("²"): a 500
        ({"sku_KB-100": "\uff12"}, {"sku_KB-100": TEXTS["quantity"]}),  # fullwidth 2
        ({"sku_KB-100": "\u0662"}, {"sku_KB-100": TEXTS["quantity"]}),  # Arabic-Indic 2
        ({"sku_KB-100": "9" * 5000}, {"sku_KB-100": TEXTS["quantity"]}),
        ({"failure_step": "payment", "failure_times": "\u00b2"}, {"failure_times": TEXTS["failure_times"]}),
        ({"expedited": "no"}, {"expedited": MESSAGES.validation["checkbox"]}),  # bool("no") was True
        ({"failure_step": "payment", "failure_permanent": "false"}, {"failure_permanent": MESSAGES.validation["checkbox"]}),
    ],
)
def test_order_form_numbers_and_checkboxes_are_converted_strictly(change, errors):
    with pytest.raises(InvalidOrder) as raised:
        parse_form_order({**ORDER_FORM, **change}, CATALOG, MESSAGES)
    assert raised.value.fields == errors


def test_failure_form_refuses_non_ascii_times():
    with pytest.raises(InvalidOrder) as raised:
        parse_form_failure({"step": "payment", "times": "\u00b3"}, MESSAGES)
    assert raised.value.fields == {"times": TEXTS["failure_times"]}
    assert parse_form_failure({"step": "payment", "times": "3"}, MESSAGES) == FailureInjection("payment", 3, False)


# --- the list routes' page parameter ---------------------------------------------------


def test_page_parameter():
    assert parse_page(None, MESSAGES) == 1
    assert parse_page("1", MESSAGES) == 1
    assert parse_page(str(MAX_PAGE), MESSAGES) == MAX_PAGE
    text = MESSAGES.validation["page"].format(maximum=f"{MAX_PAGE:,}")
    for raw in ["", "0", "-1", "\u00b2", "\uff11", "\u0661", "1.5", " 1", str(MAX_PAGE + 1), "9" * 5000, "1e3"]:
        with pytest.raises(InvalidInput) as raised:
            parse_page(raw, MESSAGES)
        assert raised.value.fields == {"page": text}, raw


# --- orders: the cases the order routes rely on ----------------------------------------------------------------

# The dashboard form as a browser sends it: one quantity field per catalog SKU.
DASHBOARD_FORM = {
    "customer_id": "ada-1",
    "customer_email": "ada@example.com",
    "sku_KB-100": "2",
    "sku_MS-200": "",
    "sku_CB-010": "0",
    **{f"address.{k}": v for k, v in ADDRESS.items()},
}


def test_a_valid_order_is_trimmed_and_typed():
    order = parse_json_order(
        {
            **ORDER,
            "customer_id": " ada-1 ",
            "customer_email": " Ada@Example.COM ",
            "address": {**ADDRESS, "city": "  London "},
            "expedited": True,
            "failures": [{"step": "payment"}, {"step": "shipping", "times": 3, "permanent": True}],
        },
        CATALOG,
        MESSAGES,
    )
    assert order.customer_id == "ada-1"
    assert order.address.city == "London"
    assert order.customer_email == "ada@example.com"
    assert [(line.sku, line.quantity) for line in order.lines] == [("KB-100", 2)]
    assert order.expedited is True
    assert order.failures == [FailureInjection("payment", 1, False), FailureInjection("shipping", 3, True)]
    assert parse_json_order(ORDER, CATALOG, MESSAGES).expedited is False


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"customer_id": ""}, "customer_id", TEXTS["customer_id"]),
        ({"customer_id": "ada lovelace"}, "customer_id", TEXTS["customer_id"]),
        ({"customer_id": "x" * 65}, "customer_id", TEXTS["customer_id"]),
        ({"customer_id": 7}, "customer_id", TEXTS["customer_id"]),
        ({"customer_id": ...}, "customer_id", TEXTS["customer_id"]),
        ({"customer_email": ...}, "customer_email", TEXTS["customer_email"]),
        ({"customer_email": ""}, "customer_email", TEXTS["customer_email"]),
        ({"customer_email": "ada"}, "customer_email", TEXTS["customer_email"]),
        ({"customer_email": "ada@example.com, eve@example.com"}, "customer_email", TEXTS["customer_email"]),
        ({"customer_email": "ada@example.com>, eve@example.com"}, "customer_email", TEXTS["customer_email"]),
        ({"customer_email": "ada@example.com\r\nBcc: eve@example.com"}, "customer_email", MESSAGES.validation["text_characters"]),
        ({"customer_email": 7}, "customer_email", TEXTS["customer_email"]),
        ({"customer_email": "a" * 250 + "@example.com"}, "customer_email", TEXTS["customer_email"]),
        ({"items": []}, "items", TEXTS["items"]),
        ({"items": "KB-100"}, "items", TEXTS["items"]),
        ({"items": ...}, "items", TEXTS["items"]),
        ({"items": ["KB-100"]}, "items.0", TEXTS["item"]),
        ({"items": [{"sku": "NOPE-1", "quantity": 1}]}, "items.0.sku", TEXTS["unknown_sku"]),
        ({"items": [{"sku": "kb-100", "quantity": 1}]}, "items.0.sku", TEXTS["unknown_sku"]),
        ({"items": [{"quantity": 1}]}, "items.0.sku", TEXTS["unknown_sku"]),
        ({"items": [{"sku": "KB-100", "quantity": 0}]}, "items.0.quantity", TEXTS["quantity"]),
        ({"items": [{"sku": "KB-100", "quantity": -1}]}, "items.0.quantity", TEXTS["quantity"]),
        ({"items": [{"sku": "KB-100", "quantity": 1.5}]}, "items.0.quantity", TEXTS["quantity"]),
        ({"items": [{"sku": "KB-100", "quantity": "2"}]}, "items.0.quantity", TEXTS["quantity"]),
        ({"items": [{"sku": "KB-100", "quantity": True}]}, "items.0.quantity", TEXTS["quantity"]),
        ({"items": [{"sku": "KB-100"}]}, "items.0.quantity", TEXTS["quantity"]),
        ({"items": [{"sku": "KB-100", "quantity": 10_001}]}, "items.0.quantity", TEXTS["quantity_max"].format(maximum="10,000")),
        ({"items": [{"sku": "KB-100", "quantity": 1, "colour": "red"}]}, "items.0.colour", MESSAGES.validation["unknown_field"]),
        ({"address": "12 Analytical Way, London"}, "address", TEXTS["address"]),
        ({"address": ...}, "address", TEXTS["address"]),
        ({"address": {**ADDRESS, "name": "   "}}, "address.name", TEXTS["address_field"]),
        ({"address": {**ADDRESS, "street": ""}}, "address.street", TEXTS["address_field"]),
        ({"address": {**ADDRESS, "city": "x" * 201}}, "address.city", TEXTS["address_field"]),
        ({"address": {**ADDRESS, "postal_code": 75001}}, "address.postal_code", TEXTS["address_field"]),
        ({"address": {k: v for k, v in ADDRESS.items() if k != "country"}}, "address.country", TEXTS["address_field"]),
        ({"address": {**ADDRESS, "floor": "2"}}, "address.floor", MESSAGES.validation["unknown_field"]),
        ({"expedited": "true"}, "expedited", TEXTS["expedited"]),
        ({"expedited": 1}, "expedited", TEXTS["expedited"]),
        ({"failures": {"step": "payment"}}, "failures", TEXTS["failures"]),
        ({"failures": ["payment"]}, "failures.0", TEXTS["failure"]),
        ({"failures": [{"step": "delivery"}]}, "failures.0.step", TEXTS["failure_step"]),
        ({"failures": [{"times": 2}]}, "failures.0.step", TEXTS["failure_step"]),
        ({"failures": [{"step": "payment", "times": 0}]}, "failures.0.times", TEXTS["failure_times"]),
        ({"failures": [{"step": "payment", "times": 11}]}, "failures.0.times", TEXTS["failure_times"]),
        ({"failures": [{"step": "payment", "times": "2"}]}, "failures.0.times", TEXTS["failure_times"]),
        ({"failures": [{"step": "payment", "permanent": "yes"}]}, "failures.0.permanent", TEXTS["failure_permanent"]),
        ({"failures": [{"step": "payment", "why": "demo"}]}, "failures.0.why", MESSAGES.validation["unknown_field"]),
        ({"coupon": "FREE"}, "coupon", MESSAGES.validation["unknown_field"]),
    ],
)
def test_each_invalid_order_value_names_its_field(change, field, text):
    data = {k: v for k, v in {**ORDER, **change}.items() if v is not ...}
    assert order_errors(data) == {field: text}


def test_a_product_may_appear_once():
    items = [{"sku": "KB-100", "quantity": 1}, {"sku": "MS-200", "quantity": 1}, {"sku": "KB-100", "quantity": 2}]
    assert order_errors({**ORDER, "items": items}) == {"items.2.sku": TEXTS["duplicate_sku"]}


def test_every_problem_is_reported_at_once():
    errors = order_errors({"customer_id": "", "items": [{"sku": "X", "quantity": 0}], "address": {}})
    assert set(errors) == {"customer_id", "customer_email", "items.0.sku", "items.0.quantity", *(f"address.{k}" for k in ADDRESS)}


@pytest.mark.parametrize("body", [[], "order", 3, None])
def test_an_order_must_be_a_json_object(body):
    assert order_errors(body) == {"order": MESSAGES.errors["not_object"]}


def test_the_total_is_not_checked_here():
    # Over the maximum total is a business rule: the workflow rejects it and says why.
    order = parse_json_order({**ORDER, "items": [{"sku": "LP-140", "quantity": 100}]}, CATALOG, MESSAGES)
    assert order.lines[0].quantity == 100


def test_the_order_form_is_parsed():
    order = parse_form_order(
        {**DASHBOARD_FORM, "expedited": "yes", "failure_step": "payment", "failure_times": "2", "failure_permanent": "yes"},
        CATALOG,
        MESSAGES,
    )
    assert [(line.sku, line.quantity) for line in order.lines] == [("KB-100", 2)]
    assert order.expedited is True
    assert order.failures == [FailureInjection("payment", 2, True)]
    assert parse_form_order(DASHBOARD_FORM, CATALOG, MESSAGES).failures == []


@pytest.mark.parametrize(
    ("change", "errors"),
    [
        ({"sku_KB-100": ""}, {"items": TEXTS["items"]}),
        ({"sku_KB-100": "two"}, {"sku_KB-100": TEXTS["quantity"]}),
        ({"sku_KB-100": "-1"}, {"sku_KB-100": TEXTS["quantity"]}),
        ({"sku_KB-100": "20000"}, {"sku_KB-100": TEXTS["quantity_max"].format(maximum="10,000")}),
        ({"sku_XX-999": "1"}, {"sku_XX-999": TEXTS["unknown_sku"]}),  # refused, as the JSON API refuses it
        ({"sku_KB-100": "", "sku_kb-100": "2"}, {"sku_kb-100": TEXTS["unknown_sku"]}),
        ({"customer_id": "ada 1"}, {"customer_id": TEXTS["customer_id"]}),
        ({"customer_email": ""}, {"customer_email": TEXTS["customer_email"]}),
        ({"customer_email": "ada@"}, {"customer_email": TEXTS["customer_email"]}),
        ({"address.city": " "}, {"address.city": TEXTS["address_field"]}),
        ({"failure_step": "payment", "failure_times": "lots"}, {"failure_times": TEXTS["failure_times"]}),
        ({"failure_step": "payment", "failure_times": "11"}, {"failure_times": TEXTS["failure_times"]}),
        ({"failure_step": "delivery"}, {"failure_step": TEXTS["failure_step"]}),
    ],
)
def test_order_form_errors_are_keyed_by_the_form_fields(change, errors):
    with pytest.raises(InvalidOrder) as raised:
        parse_form_order({**DASHBOARD_FORM, **change}, CATALOG, MESSAGES)
    assert raised.value.fields == errors


def test_operator_action_bodies():
    assert parse_json_approve(None, MESSAGES).operator == "operator"
    assert parse_json_approve({"operator": " grace "}, MESSAGES).operator == "grace"
    assert parse_form_approve({"operator": " grace "}, MESSAGES).operator == "grace"
    assert parse_form_approve({"operator": " "}, MESSAGES).operator == parse_form_approve({}, MESSAGES).operator == "operator"
    cancel = parse_json_cancel({"reason": " changed my mind ", "operator": "grace"}, MESSAGES)
    assert (cancel.reason, cancel.operator) == ("changed my mind", "grace")
    change = parse_json_address_change({**ADDRESS, "city": "Paris"}, MESSAGES)
    assert change.address.city == "Paris" and change.operator == "operator"
    assert parse_json_failure({"step": "inventory"}, MESSAGES) == FailureInjection("inventory", 1, False)
    assert parse_form_address_change({f"address.{k}": v for k, v in ADDRESS.items()}, MESSAGES).address.name == "Ada Lovelace"
    assert parse_form_failure({"step": "shipping", "times": "3", "permanent": "yes"}, MESSAGES) == FailureInjection(
        "shipping", 3, True
    )


@pytest.mark.parametrize(
    ("parse", "body", "errors"),
    [
        (parse_json_approve, {"operator": ""}, {"operator": TEXTS["operator"]}),
        (parse_json_approve, {"operator": 5}, {"operator": TEXTS["operator"]}),
        (parse_json_approve, {"by": "grace"}, {"by": MESSAGES.validation["unknown_field"]}),
        (parse_json_approve, ["grace"], {"body": MESSAGES.errors["not_object"]}),
        (parse_form_approve, {"operator": "x" * 101}, {"operator": TEXTS["operator"]}),
        (parse_json_cancel, {}, {"reason": TEXTS["cancel_reason"]}),
        (parse_json_cancel, {"reason": "  "}, {"reason": TEXTS["cancel_reason"]}),
        (parse_json_cancel, {"reason": "x" * 501}, {"reason": TEXTS["cancel_reason"]}),
        (parse_json_cancel, "changed my mind", {"body": MESSAGES.errors["not_object"]}),
        (parse_json_address_change, {**ADDRESS, "city": ""}, {"address.city": TEXTS["address_field"]}),
        (
            parse_json_address_change,
            {"address": ADDRESS},
            {"address": MESSAGES.validation["unknown_field"], **{f"address.{k}": TEXTS["address_field"] for k in ADDRESS}},
        ),
        (parse_json_failure, {"step": "delivery"}, {"step": TEXTS["failure_step"]}),
        (parse_json_failure, {"step": "payment", "times": 0}, {"times": TEXTS["failure_times"]}),
        (parse_json_failure, {"step": "payment", "permanent": 1}, {"permanent": TEXTS["failure_permanent"]}),
        (parse_json_failure, None, {"body": MESSAGES.errors["not_object"]}),
    ],
)
def test_invalid_action_bodies_name_their_fields(parse, body, errors):
    with pytest.raises(InvalidOrder) as raised:
        parse(body, MESSAGES)
    assert raised.value.fields == errors


# --- JSON bodies: each key of an object once ----------------------------------------


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"name": "A", "name": "B"}', "name"),
        ('{"address": {"city": "London", "city": "Paris"}}', "address.city"),
        ('{"items": [{"sku": "KB-100"}, {"sku": "KB-100", "quantity": 1, "quantity": 9}]}', "items.1.quantity"),
        ('{"a": 1, "b": {"c": 1, "c": 2}, "a": 2}', "a"),  # the outermost first
    ],
)
def test_a_json_object_with_a_repeated_key_is_refused_naming_it(body, path):
    from web.common import DuplicateKey, loads_strictly

    with pytest.raises(DuplicateKey) as raised:
        loads_strictly(body)
    assert str(raised.value) == path


def test_json_without_repeated_keys_reads_as_usual():
    from web.common import loads_strictly

    assert loads_strictly(b'{"a": [1, {"b": null}], "c": {"a": 1}}') == {"a": [1, {"b": None}], "c": {"a": 1}}
    assert loads_strictly("[]") == [] and loads_strictly('"x"') == "x"
    with pytest.raises(ValueError):
        loads_strictly(b"\xff{}")  # not UTF-8: the route's "invalid JSON"
