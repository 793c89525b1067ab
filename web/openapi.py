"""The JSON API's OpenAPI 3 document, generated from the pydantic models that validate requests.

apispec assembles the document. Every request body's schema is the JSON schema
pydantic derives from the model that checks that body (`validation.JSON_BODY_MODELS`),
so the document cannot drift from the rules; the paths, their answers and who
may call them are listed once, here. Served at `/openapi.json`;
`test_fuzz.py` generates requests from it.
"""

from __future__ import annotations

from typing import Any

from apispec import APISpec

from core.idempotency import IDEMPOTENCY_KEY as IDEMPOTENCY_KEY_PATTERN
from core.store.base import KEY_PATTERN
from core.validation import MAX_PAGE, MAX_SEARCH
from loans.model import DECISIONS
from loans.service import LOAN_WORKFLOW_ID
from orders.model import ORDER_STATUSES
from orders.service import ORDER_ID
from orders.validation import CUSTOMER_ID_PATTERN
from web.openapi_models import JSON_BODY_MODELS

ERROR = {"$ref": "#/components/schemas/Error"}
# (status, description) for the answers every route can give.
UNAVAILABLE = (503, "Temporal is unreachable; nothing was changed")
NOT_OPERATOR = (401, "No operator credentials, or wrong ones")
ROLE_TOO_LOW = (403, "The operator's role does not allow this")
BAD_BODY = [
    (400, "Invalid fields, named in `fields`, or a body that is not valid JSON"),
    (413, "The body is over 16 KB"),
    (415, "The body is not JSON"),
]


def _answers(*answers: tuple[int, str], ok: dict[int, str] | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {str(status): {"description": text} for status, text in (ok or {}).items()}
    for status, text in answers:
        responses[str(status)] = {"description": text, "content": {"application/json": {"schema": ERROR}}}
    return responses


def _body(model: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}


def _parameter(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


PAGE = {
    "name": "page",
    "in": "query",
    "required": False,
    "description": "Page of 20, newest first",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
}


def _filter(name: str, description: str, values: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A list's filter; one at a time (two are refused with a 400 naming the second)."""
    schema: dict[str, Any] = {"type": "string", "enum": list(values)} if values else {"type": "string", "maxLength": MAX_SEARCH}
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


WHOLE_VALUE = "the whole value, in any case, spaces collapsed"
AFTER = {
    "name": "after",
    "in": "query",
    "required": False,
    "description": "With a filter: the record the page starts after (the previous page's `after`), so a deep page costs what the first does",
    "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
}
APPLICATION_FILTERS = [
    _filter("decision", "Only the applications with this decision, the latest decided first", DECISIONS),
    _filter("name", f"Only the applications from this applicant's name ({WHOLE_VALUE})"),
    _filter("email", f"Only the applications from this email address ({WHOLE_VALUE})"),
]
ORDER_FILTERS = [
    _filter("status", "Only the orders with this status now, the latest to get there first", ORDER_STATUSES),
    _filter("customer", f"Only this customer ID's orders ({WHOLE_VALUE})"),
    _filter("email", f"Only the orders to this email address ({WHOLE_VALUE})"),
]
APPLICATION_ID = _parameter("workflow_id", LOAN_WORKFLOW_ID.pattern, "The application's workflow ID")
ORDER = _parameter("order_id", ORDER_ID.pattern, "The order's ID")
CUSTOMER = _parameter("customer_id", CUSTOMER_ID_PATTERN, "The customer's ID")
OPERATOR_ONLY: list[dict[str, list[str]]] = [{"operatorToken": []}]
LINK_KEY = {
    "name": "key",
    "in": "query",
    "required": False,
    "description": "The key of the applicant's link (in the status_url the application's answer gave); operators need none",
    "schema": {"type": "string", "maxLength": 64},
}
LINK_REFUSED = [(404, "No such application, or not this link's key"), (410, "The link closed with the application's window")]
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any string the client keeps for this request (1-128 of A-Z a-z 0-9 . _ : -)",
    "schema": {"type": "string", "pattern": "^" + IDEMPOTENCY_KEY_PATTERN.pattern + "$"},
}

# path -> method -> (summary, parameters, body model or None, body required, success answers, error answers, operator)
OPERATIONS: dict[str, dict[str, tuple]] = {
    "/api/evaluate": {
        "post": (
            "Apply for a loan pre-approval: the decision at once (200), or later (202); "
            "with an Idempotency-Key, a retry of the same application gets its decision",
            [IDEMPOTENCY_KEY],
            "LoanApplication",
            True,
            {
                200: "Decided (also a retry with the same Idempotency-Key and application)",
                202: "Accepted; the decision is not ready yet: poll the Location",
            },
            [
                *BAD_BODY,
                (409, "An application from this email is in its 7-day window"),
                (422, "The Idempotency-Key was used before for a different application"),
                (503, "Not submitted (Temporal unreachable), or not known whether it arrived: sending again is safe"),
            ],
            False,
        )
    },
    "/api/applications/{workflow_id}": {
        "get": (
            "One application: decided (200) or pending (202)",
            [APPLICATION_ID, LINK_KEY],
            None,
            False,
            {200: "Decided (also once its workflow is gone, or Temporal unreachable: the stored record)", 202: "Pending"},
            [*LINK_REFUSED, (503, "Temporal is unreachable and nothing is stored for this ID yet")],
            False,
        )
    },
    "/api/applications/{workflow_id}/contact": {
        "post": (
            "Answer whether a loan agent may call",
            [APPLICATION_ID, LINK_KEY],
            "ContactAnswer",
            True,
            {202: "Recorded on the application"},
            [*BAD_BODY, *LINK_REFUSED, (409, "The application's window has ended: not recorded"), UNAVAILABLE],
            False,
        )
    },
    "/api/applications": {
        "get": (
            "Recent applications, newest first, or one filter's (`pages` null and `more` for a search)",
            [PAGE, *APPLICATION_FILTERS, AFTER],
            None,
            False,
            {200: "A page of applications"},
            [(400, "A bad page number or filter, named in `fields`"), NOT_OPERATOR],
            True,
        )
    },
    "/api/orders": {
        "post": (
            "Place an order; with an Idempotency-Key, a retry gets the same order back",
            [IDEMPOTENCY_KEY],
            "Order",
            True,
            {201: "Placed; follow the Location", 200: "Placed before with this Idempotency-Key"},
            [*BAD_BODY, NOT_OPERATOR, (422, "The Idempotency-Key was used before for a different order"), UNAVAILABLE],
            True,
        ),
        "get": (
            "Recent orders, newest first, or one filter's (`pages` null and `more` for a search)",
            [PAGE, *ORDER_FILTERS, AFTER],
            None,
            False,
            {200: "A page of orders"},
            [(400, "A bad page number or filter, named in `fields`"), NOT_OPERATOR],
            True,
        ),
    },
    "/api/orders/{order_id}": {
        "get": (
            "An order's live status",
            [ORDER],
            None,
            False,
            {200: "The order"},
            [(404, "No such order"), NOT_OPERATOR, UNAVAILABLE],
            True,
        )
    },
    "/api/orders/{order_id}/events": {
        "get": (
            "An order's timeline, oldest first",
            [ORDER],
            None,
            False,
            {200: "The events"},
            [(404, "No such order"), NOT_OPERATOR, UNAVAILABLE],
            True,
        )
    },
    "/api/customers/{customer_id}/rewards": {
        "get": (
            "A customer's reward points and tier",
            [CUSTOMER],
            None,
            False,
            {200: "The rewards, as the customer's record holds them"},
            [(404, "No rewards for this customer"), NOT_OPERATOR, UNAVAILABLE],  # the store (PostgreSQL) down
            True,
        )
    },
}
ACTIONS = {
    "approve": ("Approve an order awaiting review", "Approval", False, 200),
    "cancel": ("Cancel an order the carrier does not have yet; undoes what was done", "Cancellation", True, 200),
    "address": ("Change the shipping address before dispatch", "AddressChange", True, 200),
    "expedite": ("Ship with the express carrier", None, False, 202),
    "simulate-failure": ("Make a step of the order fail, for demonstrations", "FailureInjection", True, 202),
}
for _action, (_summary, _model, _required, _ok) in ACTIONS.items():
    OPERATIONS[f"/api/orders/{{order_id}}/{_action}"] = {
        "post": (
            _summary,
            [ORDER],
            _model,
            _required,
            {_ok: "Done" if _ok == 200 else "Sent to the order"},
            [
                *BAD_BODY,
                (404, "No such order"),
                (409, "The order refuses this action now; `error` says why"),
                (502, "The order failed the action"),
                (504, "No answer in time; it may still apply"),
                NOT_OPERATOR,
                UNAVAILABLE,
            ],
            True,
        )
    }


def _schemas(catalog: list[str]) -> dict[str, dict[str, Any]]:
    """Each request body's JSON schema from its pydantic model, and the nested models they use."""
    schemas: dict[str, dict[str, Any]] = {}
    for name, model in JSON_BODY_MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    # The SKUs the catalog sells: the one rule a JSON schema cannot derive from the model.
    schemas["_LineModel"]["properties"]["sku"]["enum"] = catalog
    return schemas


def build_openapi(catalog: list[str]) -> dict[str, Any]:
    """The document for this deployment (its catalog's SKUs)."""
    spec = APISpec(
        title="Loans and orders on Temporal",
        version="1",
        openapi_version="3.0.3",
        info={"description": "Loan pre-approval for applicants; orders for operators. See README.md."},
    )
    spec.components.security_scheme(
        "operatorToken",
        {
            "type": "http",
            "scheme": "bearer",
            "description": "An operator's API token (flask --app starter operators token NAME), acting with their role",
        },
    )
    spec.components.schema(
        "Error",
        {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "fields": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
    )
    for name, schema in _schemas(catalog).items():
        spec.components.schema(name, schema)
    for path, methods in OPERATIONS.items():
        operations = {}
        for method, (summary, parameters, model, required, ok, errors, operator) in methods.items():
            answers = [*errors, ROLE_TOO_LOW] if operator else errors
            operation: dict[str, Any] = {"summary": summary, "responses": _answers(*answers, ok=ok)}
            if parameters:
                operation["parameters"] = parameters
            if model:
                operation["requestBody"] = _body(model, required)
            if operator:
                operation["security"] = OPERATOR_ONLY
            operations[method] = operation
        spec.path(path=path, operations=operations)
    return spec.to_dict()
