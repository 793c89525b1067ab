"""The model behind each JSON request body, by the name the OpenAPI document gives it (web/openapi.py)."""

from __future__ import annotations

from pydantic import (
    BaseModel,
)

from loans.validation import _ApplicationModel, _ContactModel
from orders.validation import (
    _AddressChangeModel,
    _CancelModel,
    _FailureModel,
    _OperatorModel,
    _OrderModel,
)

# The model behind each JSON request body, by the name the OpenAPI document
# gives it (web/openapi.py): the document is generated from what validates.
JSON_BODY_MODELS: dict[str, type[BaseModel]] = {
    "LoanApplication": _ApplicationModel,
    "ContactAnswer": _ContactModel,
    "Order": _OrderModel,
    "Approval": _OperatorModel,
    "Cancellation": _CancelModel,
    "AddressChange": _AddressChangeModel,
    "FailureInjection": _FailureModel,
}
