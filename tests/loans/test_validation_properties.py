"""Property-based tests of validation.py: arbitrary input, JSON and form, never anything but a validation error.

For every parse_* function the routes call: whatever the client sends (any
text, including non-ASCII digits, control and invisible characters and lone
surrogates; any number, including NaN, Infinity, denormals and integers no
float holds; nesting), the function either returns a value or raises the
module's own error (InvalidApplication / InvalidOrder / InvalidInput) naming
fields. What it returns is finite, within the documented bounds, clean text,
bounded lists, and strict JSON can encode it. A form value it accepts the JSON
model accepts too. Runs are derandomized (the same examples every run) and
small enough to stay fast.
"""

from __future__ import annotations

import dataclasses
import json
import math
import unicodedata
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.email_address import normalize_email
from core.rules import load_messages, load_rules
from core.validation import MAX_PAGE, InvalidInput, parse_page
from loans.decision import loan_to_income
from loans.model import loan_workflow_id
from loans.validation import (
    FIELDS,
    MAX_ANNUAL_INCOME,
    MAX_LOAN_AMOUNT,
    MIN_LOAN_AMOUNT,
    MIN_POSITIVE_INCOME,
    InvalidApplication,
    parse_form_application,
    parse_json_application,
)
from orders.model import FAILURE_STEPS, FailureInjection
from orders.validation import (
    ADDRESS_FIELDS,
    MAX_FAILURE_TIMES,
    MAX_FAILURES,
    MAX_ORDER_LINES,
    MAX_QUANTITY,
    InvalidOrder,
    parse_form_address_change,
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
CATALOG = [item.sku for item in load_rules(HERE / "rules.json").orders.catalog]

# Fixed examples every run; no deadline (the first example pays for imports).
PROPERTY_SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Characters that broke things or must be refused, mixed into arbitrary text.
REFUSED_SAMPLES = [
    "\x00",
    "\n",
    "\r",
    "\t",
    "\x7f",
    "\x85",
    "\u200b",
    "\u200d",
    "\u2060",
    "\ufeff",
    "\u2028",
    "\u2029",
    "\u202e",
    "\u00ad",
    "\ud800",
]
TRICKY = [
    "\u00b2",
    "\u0663",
    "\uff17",
    *REFUSED_SAMPLES,
    "\u00e9",
    "e\u0301",
    "\uff20",
    "$",
    ",",
    ".",
    "e",
    "E",
    "-",
    "+",
    "_",
    "@",
    " ",
    "nan",
    "inf",
    "yes",
    "no",
    "0",
    "1",
    "9",
]
any_char = st.characters(exclude_categories=())  # every code point, lone surrogates included
texts = st.lists(st.one_of(any_char, st.sampled_from(TRICKY)), max_size=30).map("".join)
numbers = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),
    st.sampled_from([5e-324, 0.0, -0.0, 0.5, 1.0, 999.99, MIN_LOAN_AMOUNT, MAX_LOAN_AMOUNT, MAX_LOAN_AMOUNT + 1]),
)
json_leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(
    json_leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)


# Printable text of letters, marks, digits, punctuation, symbols and spaces: what
# a person types into a text field.
plain_texts = st.text(st.characters(categories=("L", "M", "N", "P", "S", "Zs")), min_size=1, max_size=40).filter(
    lambda text: text.strip()
)
# Ordinary text with one character that must be refused somewhere in it.
tainted_texts = st.tuples(plain_texts, st.sampled_from(REFUSED_SAMPLES), st.integers(0, 40)).map(
    lambda parts: parts[0][: parts[2]] + parts[1] + parts[0][parts[2] :]
)
junk = st.one_of(json_values, texts, numbers, tainted_texts)


def objects(valid_fields: dict[str, st.SearchStrategy], junk_fields: dict[str, st.SearchStrategy] | None = None):
    """Valid objects, and the same with a field replaced by junk, a field dropped or an unknown key added.

    Built from valid objects so that a fair share of examples is accepted (the
    properties check what is accepted, not only that bad input is refused).
    """
    names = sorted(valid_fields)
    junk_fields = junk_fields or {}
    valid = st.fixed_dictionaries(valid_fields)
    replaced = st.sampled_from(names).flatmap(
        lambda name: st.tuples(valid, junk_fields.get(name, junk)).map(lambda parts: {**parts[0], name: parts[1]})
    )
    dropped = st.tuples(valid, st.sampled_from(names)).map(
        lambda parts: {key: value for key, value in parts[0].items() if key != parts[1]}
    )
    extra = st.tuples(valid, texts, json_values).map(lambda parts: {**parts[0], parts[1]: parts[2]})
    scrambled = st.fixed_dictionaries(
        {name: st.one_of(strategy, junk_fields.get(name, junk)) for name, strategy in valid_fields.items()}
    )
    return st.one_of(valid, replaced, dropped, extra, scrambled)


def run_property(strategy: st.SearchStrategy, check, minimum: int = 20) -> Counter:
    """Run `check` on each example; it answers "accepted" or "refused" (or raises).

    Both outcomes must come up at least `minimum` times: a property over inputs
    that are all refused would hold without checking what is accepted.
    """
    outcomes: Counter = Counter()

    @PROPERTY_SETTINGS
    @given(strategy)
    def property_holds(example):
        outcomes[check(example)] += 1

    property_holds()
    assert outcomes["accepted"] >= minimum and outcomes["refused"] >= minimum, outcomes
    return outcomes


def assert_clean(text: str, max_length: int) -> None:
    assert isinstance(text, str) and 1 <= len(text) <= max_length
    # The categories are written out here, not taken from validation.py, so the check stands on its own.
    assert not any(unicodedata.category(char) in {"Cc", "Cf", "Cs", "Zl", "Zp"} for char in text), repr(text)
    assert text == text.strip()


def assert_strict_json(value) -> None:
    json.dumps(dataclasses.asdict(value), allow_nan=False)


# --- loans ------------------------------------------------------------------------

emails = st.one_of(
    st.emails(),
    st.sampled_from(
        ["jose\u0301@example.com", "JOS\u00c9@Example.COM", "\uff4a@\uff45\uff58.com", "a@xn--bcher-kva.de", "A@B\u00dcCHER.de"]
    ),
)
amounts = st.one_of(st.integers(MIN_LOAN_AMOUNT, MAX_LOAN_AMOUNT), st.floats(MIN_LOAN_AMOUNT, MAX_LOAN_AMOUNT))
incomes = st.one_of(
    st.just(0), st.integers(MIN_POSITIVE_INCOME, MAX_ANNUAL_INCOME), st.floats(MIN_POSITIVE_INCOME, MAX_ANNUAL_INCOME)
)
out_of_bounds = st.sampled_from(
    [
        5e-324,
        -0.0,
        0.5,
        MIN_LOAN_AMOUNT - 0.01,
        MAX_LOAN_AMOUNT + 1,
        MAX_ANNUAL_INCOME + 1,
        10**400,
        float("nan"),
        float("inf"),
        -1,
    ]
)
application_json = objects(
    {
        "name": plain_texts,
        "email": emails,
        "loan_amount": amounts,
        "credit_score": st.integers(300, 850),
        "annual_income": incomes,
        "has_bankruptcy": st.booleans(),
    },
    {
        "loan_amount": st.one_of(out_of_bounds, junk),
        "annual_income": st.one_of(out_of_bounds, junk),
        "credit_score": st.one_of(st.sampled_from([299, 851, 700.0, True]), junk),
    },
)

# Form text that must be refused as a number: non-ASCII digits, exponents, words...
form_junk = st.one_of(
    texts,
    numbers.map(str),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(
        [
            "\u00b2",
            "\uff11\uff10\uff10\uff10",
            "\u0665\u0660\u0660\u0660",
            "1e5",
            "1_000",
            "inf",
            "5e-324",
            "1,0,0",
            "9" * 5000,
            "+1000",
            "-1000",
            " ",
            "0x10",
        ]
    ),
)


def form_numbers(values: st.SearchStrategy) -> st.SearchStrategy:
    """Numbers as a person types them: plain, "$1,234", " 1,234.50"."""
    return st.one_of(values.map(str), values.map(lambda n: f"${n:,}"), values.map(lambda n: f" {n:,.2f}"))


application_form = objects(
    {
        "name": plain_texts,
        "email": emails,
        "loan_amount": form_numbers(amounts),
        "credit_score": st.integers(300, 850).map(str),
        "annual_income": form_numbers(incomes),
        "has_bankruptcy": st.sampled_from(["yes", "no"]),
    },
    dict.fromkeys(FIELDS, form_junk),
).map(
    lambda form: {key: value if isinstance(value, str) else json.dumps(value, default=repr) for key, value in form.items()}
)  # a form holds text only


def assert_valid_application(application) -> None:
    assert_clean(application.name, 200)
    assert normalize_email(application.email) == application.email
    assert math.isfinite(application.loan_amount) and MIN_LOAN_AMOUNT <= application.loan_amount <= MAX_LOAN_AMOUNT
    income = application.annual_income
    assert math.isfinite(income) and (income == 0 or MIN_POSITIVE_INCOME <= income <= MAX_ANNUAL_INCOME)
    assert 300 <= application.credit_score <= 850
    ratio = loan_to_income(application)
    assert ratio is None or math.isfinite(ratio)
    assert_strict_json(application)


def check_json_application(data) -> str:
    try:
        application = parse_json_application(data, MESSAGES)
    except InvalidApplication as err:
        assert err.fields and all(isinstance(text, str) and text for text in err.fields.values())
        return "refused"
    assert_valid_application(application)
    assert parse_json_application(dataclasses.asdict(application), MESSAGES) == application
    return "accepted"


def check_form_application(form) -> str:
    try:
        application = parse_form_application(form, MESSAGES)
    except InvalidApplication as err:
        assert err.fields and set(err.fields) <= set(FIELDS)
        return "refused"
    assert_valid_application(application)
    # What the form accepted, the JSON API accepts as it is.
    assert parse_json_application(dataclasses.asdict(application), MESSAGES) == application
    return "accepted"


def test_json_applications_are_refused_by_field_or_clean():
    run_property(application_json, check_json_application)


def test_form_applications_accept_only_what_the_api_accepts():
    run_property(application_form, check_form_application)


@PROPERTY_SETTINGS
@given(st.emails())
def test_equivalent_spellings_of_an_address_share_one_workflow_id(email):
    try:
        canonical = normalize_email(email)
    except ValueError:
        return
    fullwidth = "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in email)
    for spelling in (unicodedata.normalize("NFD", email), f" {email.upper()} ", fullwidth):
        assert loan_workflow_id(spelling, b"k") == loan_workflow_id(canonical, b"k")
    assert normalize_email(canonical) == canonical


@PROPERTY_SETTINGS
@given(st.one_of(st.none(), texts, st.integers().map(str)))
def test_page_is_a_bounded_int_or_a_page_error(raw):
    try:
        page = parse_page(raw, MESSAGES)
    except InvalidInput as err:
        assert list(err.fields) == ["page"]
        return
    assert isinstance(page, int) and 1 <= page <= MAX_PAGE


# --- orders -------------------------------------------------------------------------

customer_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
line_fields = {"sku": st.sampled_from(CATALOG), "quantity": st.integers(1, MAX_QUANTITY)}
valid_lines = st.lists(st.fixed_dictionaries(line_fields), min_size=1, max_size=len(CATALOG), unique_by=lambda line: line["sku"])
address_fields = dict.fromkeys(ADDRESS_FIELDS, plain_texts)
failure_fields = {"step": st.sampled_from(FAILURE_STEPS), "times": st.integers(1, MAX_FAILURE_TIMES), "permanent": st.booleans()}
valid_failures = st.lists(st.fixed_dictionaries(failure_fields), max_size=MAX_FAILURES)
order_json = objects(
    {
        "customer_id": customer_ids,
        "customer_email": emails,
        "items": valid_lines,
        "address": st.fixed_dictionaries(address_fields),
        "expedited": st.booleans(),
        "failures": valid_failures,
    },
    {
        "items": st.one_of(
            st.lists(objects(line_fields, {"quantity": st.integers(-2, MAX_QUANTITY + 2)}), max_size=4),
            st.lists(st.fixed_dictionaries(line_fields), min_size=MAX_ORDER_LINES + 1, max_size=MAX_ORDER_LINES + 3),
            junk,
        ),
        "address": st.one_of(objects(address_fields), junk),
        "failures": st.one_of(
            st.lists(objects(failure_fields, {"times": st.integers(-1, MAX_FAILURE_TIMES + 1)}), max_size=3),
            st.lists(st.fixed_dictionaries(failure_fields), min_size=MAX_FAILURES + 1, max_size=MAX_FAILURES + 3),
            junk,
        ),
    },
)
quantity_texts = st.one_of(st.just(""), st.just("0"), st.integers(1, MAX_QUANTITY).map(str))
order_form_fields = {
    "customer_id": customer_ids,
    "customer_email": emails,
    **{f"sku_{sku}": quantity_texts for sku in CATALOG},
    **{f"address.{part}": plain_texts for part in ADDRESS_FIELDS},
    "expedited": st.sampled_from(["", "yes"]),
    "failure_step": st.sampled_from(("",) + tuple(FAILURE_STEPS)),
    "failure_times": st.one_of(st.just(""), st.integers(1, MAX_FAILURE_TIMES).map(str)),
    "failure_permanent": st.sampled_from(["", "yes"]),
}
form_texts = st.one_of(form_junk, st.sampled_from(["on", "true", "no", "11", "\uff12"]))
order_form = objects(order_form_fields, dict.fromkeys(order_form_fields, form_texts)).map(
    lambda form: {key: value if isinstance(value, str) else json.dumps(value, default=repr) for key, value in form.items()}
)


def assert_valid_order(order) -> None:
    assert 1 <= len(order.lines) <= MAX_ORDER_LINES and len(order.failures) <= MAX_FAILURES
    assert_clean(order.customer_id, 64)
    assert normalize_email(order.customer_email) == order.customer_email
    for line in order.lines:
        assert line.sku in CATALOG and 1 <= line.quantity <= MAX_QUANTITY
    for part in ADDRESS_FIELDS:
        assert_clean(getattr(order.address, part), 200)
    for failure in order.failures:
        assert failure.step in FAILURE_STEPS and 1 <= failure.times <= MAX_FAILURE_TIMES
    assert isinstance(order.expedited, bool)
    assert_strict_json(order)


def check_json_order(data) -> str:
    try:
        order = parse_json_order(data, CATALOG, MESSAGES)
    except InvalidOrder as err:
        assert err.fields and all(isinstance(text, str) and text for text in err.fields.values())
        return "refused"
    assert_valid_order(order)
    return "accepted"


def check_form_order(form) -> str:
    try:
        order = parse_form_order(form, CATALOG, MESSAGES)
    except InvalidOrder as err:
        assert err.fields and set(err.fields) <= set(order_form_fields) | {"items"}  # named by form field
        return "refused"
    assert_valid_order(order)
    # A checkbox is ticked by its value ("yes") or left empty; other text is an error, not False.
    # The failure fields count only with a step (the page sends "times" even when no failure is chosen).
    assert form.get("expedited", "") in ("", "yes")
    assert not form.get("failure_step", "").strip() or form.get("failure_permanent", "") in ("", "yes")
    assert order.expedited == (form.get("expedited") == "yes")
    as_json = dataclasses.asdict(order)
    as_json["items"] = as_json.pop("lines")
    assert as_json.pop("card") is None  # entered only at the shop's checkout, never in a form or the API
    assert parse_json_order(as_json, CATALOG, MESSAGES) == order
    return "accepted"


def check_action(parse_and_input) -> str:
    parse, data = parse_and_input
    try:
        action = parse(data, MESSAGES)
    except InvalidOrder as err:
        assert err.fields and all(isinstance(text, str) and text for text in err.fields.values())
        return "refused"
    for value in dataclasses.asdict(action).values():
        for text in value.values() if isinstance(value, dict) else [value]:
            if isinstance(text, str):
                assert_clean(text, 500)
    if isinstance(action, FailureInjection):
        assert action.step in FAILURE_STEPS and 1 <= action.times <= MAX_FAILURE_TIMES
    assert_strict_json(action)
    return "accepted"


operator_fields = {"operator": plain_texts}
action_bodies = st.one_of(
    st.tuples(st.just(parse_json_approve), st.one_of(objects(operator_fields), st.none(), junk)),
    st.tuples(st.just(parse_json_cancel), st.one_of(objects({"reason": plain_texts, **operator_fields}), junk)),
    st.tuples(st.just(parse_json_address_change), st.one_of(objects({**address_fields, **operator_fields}), junk)),
    st.tuples(st.just(parse_json_failure), st.one_of(objects(failure_fields), junk)),
)
action_forms = st.one_of(
    st.tuples(st.just(parse_form_cancel), objects({"reason": plain_texts}, {"reason": form_texts})),
    st.tuples(st.just(parse_form_address_change), objects({f"address.{part}": plain_texts for part in ADDRESS_FIELDS}, {})),
    st.tuples(
        st.just(parse_form_failure),
        objects(
            {
                "step": st.sampled_from(FAILURE_STEPS),
                "times": st.one_of(st.just(""), st.integers(1, MAX_FAILURE_TIMES).map(str)),
                "permanent": st.sampled_from(["", "yes"]),
            },
            {"step": form_texts, "times": form_texts, "permanent": form_texts},
        ),
    ),
).map(
    lambda pair: (
        pair[0],
        {key: value if isinstance(value, str) else json.dumps(value, default=repr) for key, value in pair[1].items()},
    )
)


def test_json_orders_are_refused_by_field_or_clean():
    run_property(order_json, check_json_order)


def test_form_orders_accept_only_what_the_api_accepts():
    run_property(order_form, check_form_order)


def test_operator_actions_are_refused_by_field_or_clean():
    run_property(action_bodies, check_action)


def test_operator_forms_are_refused_by_field_or_clean():
    run_property(action_forms, check_action)


def test_form_checkboxes_are_their_value_or_empty():
    valid_form = {
        "customer_id": "ada-1",
        "customer_email": "ada@example.com",
        "sku_KB-100": "1",
        **{f"address.{part}": "x" for part in ADDRESS_FIELDS},
        "failure_step": "payment",
    }

    def check(name_and_value) -> str:
        name, value = name_and_value
        try:
            order = parse_form_order({**valid_form, name: value}, CATALOG, MESSAGES)
        except InvalidOrder as err:
            assert value not in ("", "yes") and list(err.fields) == [name]
            return "refused"
        assert value in ("", "yes")
        assert (order.expedited if name == "expedited" else order.failures[0].permanent) == (value == "yes")
        return "accepted"

    run_property(
        st.tuples(
            st.sampled_from(["expedited", "failure_permanent"]), st.one_of(st.sampled_from(["", "yes"]), form_texts.map(str))
        ),  # map: one branch, not flattened
        check,
        minimum=4,
    )  # only four accepted inputs exist, and hypothesis does not repeat inputs
