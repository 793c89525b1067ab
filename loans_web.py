"""The loan half's HTTP routes: the JSON API under /api and the browser pages.

Each view parses its input (validation.py), awaits `LoanService`
(loan_service.py), and turns the outcome into an answer: 200 decided, 202
pending, 409 duplicate, 400 invalid, 404 unknown, 503 Temporal unreachable.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template, request, url_for

from loan_service import Duplicate, LoanService, NotFound, Pending, WindowClosed
from temporal_client import TemporalUnavailable
from validation import CONTACT_ANSWERS, InvalidApplication, parse_form_application, parse_json_application, parse_json_contact
from web_common import BadBody, error_page, json_body, json_error, messages, page_argument

api = Blueprint("api", __name__, url_prefix="/api")
pages = Blueprint("pages", __name__)


def service() -> LoanService:
    return current_app.extensions["loan_service"]


def public_record(record: dict[str, Any], persisted: bool) -> dict[str, Any]:
    """The API's view of a decided application."""
    return {
        "status": "decided",
        "workflow_id": record["workflow_id"],
        "decision": record["decision"],
        "reason": record["reason"],
        "message": record["message"],
        "application": {**record["application"], "submitted_at": record["submitted_at"]},
        "loan_to_income_ratio": record["loan_to_income_ratio"],
        "processed_by": record["decided_by"],
        "persisted": persisted,
        "contact_preference": record.get("contact_preference"),
        # The decision email's state ("sent", "retrying", "refused"), once the worker has tried.
        "email": record.get("email"),
    }


def duplicate_body(duplicate: Duplicate) -> dict[str, Any]:
    """That an application exists and when a new one is possible: nothing about it, since
    anyone who knows an email can ask."""
    return {
        "error": messages().errors["duplicate"].format(days=duplicate.days_remaining),
        "days_remaining": duplicate.days_remaining,
    }


# --- JSON API -------------------------------------------------------------------


@api.errorhandler(BadBody)
def _bad_body(err: BadBody):
    return json_error(err.status, err.message)


@api.post("/evaluate")
async def evaluate():
    data = json_body(messages().errors["not_json"])
    try:
        application = parse_json_application(data, messages())
        outcome = await service().submit(application)
    except InvalidApplication as err:
        return json_error(400, messages().errors["invalid_application"], fields=err.fields)
    except TemporalUnavailable:
        return json_error(503, messages().errors["unavailable"])
    if isinstance(outcome, Duplicate):
        return jsonify(duplicate_body(outcome)), 409
    if isinstance(outcome, Pending):
        return pending_response(outcome.workflow_id)
    return jsonify(public_record(outcome.record, outcome.persisted)), 200


def pending_response(workflow_id: str):
    status_url = url_for("api.application", workflow_id=workflow_id)
    response = jsonify({"status": "pending", "workflow_id": workflow_id, "status_url": status_url})
    response.headers["Location"] = status_url
    response.headers["Retry-After"] = "1"
    return response, 202


@api.get("/applications/<workflow_id>")
async def application(workflow_id: str):
    try:
        outcome = await service().status(workflow_id)
    except NotFound:
        return json_error(404, messages().errors["not_found"])
    except TemporalUnavailable:
        return json_error(503, messages().errors["unavailable"])
    if isinstance(outcome, Pending):
        return pending_response(workflow_id)
    return jsonify(public_record(outcome.record, outcome.persisted)), 200


@api.post("/applications/<workflow_id>/contact")
async def contact_api(workflow_id: str):
    try:
        answer = parse_json_contact(json_body(messages().errors["not_json"]), messages())
    except InvalidApplication as err:
        return json_error(400, messages().errors["invalid_application"], fields=err.fields)
    try:
        await service().record_contact(workflow_id, answer)
    except WindowClosed:
        return json_error(404, messages().errors["not_found"])
    except TemporalUnavailable:
        return json_error(503, messages().errors["unavailable"])
    return jsonify({"workflow_id": workflow_id, "contact_preference": answer}), 202


@api.get("/applications")
def applications_api():
    page = page_argument()
    records, total, pages_ = service().recent(page)
    return jsonify(
        {
            "applications": [public_record(r, persisted=True) for r in records],
            "page": page,
            "pages": pages_,
            "total": total,
            "counts": service().counts(),
        }
    )


# --- browser pages --------------------------------------------------------------


@pages.get("/")
def form():
    return render_template("loans/form.html", values={}, errors={}, notice=None)


@pages.post("/apply")
async def apply():
    values = {name: request.form.get(name, "") for name in request.form}
    try:
        application = parse_form_application(values, messages())
        outcome = await service().submit(application)
    except InvalidApplication as err:
        notice = {"kind": "invalid", "title": messages().errors["invalid_application"], "text": ""}
        return render_template("loans/form.html", values=values, errors=err.fields, notice=notice), 400
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": messages().errors["unavailable"]}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 503
    if isinstance(outcome, Duplicate):
        notice = {"kind": "duplicate", "title": duplicate_body(outcome)["error"], "text": ""}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 409
    workflow_id = outcome.workflow_id if isinstance(outcome, Pending) else outcome.record["workflow_id"]
    return redirect(url_for("pages.application", workflow_id=workflow_id), code=303)


@pages.get("/applications/<workflow_id>", endpoint="application")
async def application_page(workflow_id: str):
    try:
        outcome = await service().status(workflow_id)
    except NotFound:
        return error_page(404, "Application not found", messages().errors["not_found"])
    except TemporalUnavailable:
        return error_page(503, "Temporarily unavailable", messages().errors["unavailable"])
    if isinstance(outcome, Pending):
        return render_template(
            "loans/pending.html", workflow_id=workflow_id, temporal_url=service().temporal_url(workflow_id)
        ), 200
    contact = request.args.get("contact")
    return render_template(
        "loans/result.html",
        record=outcome.record,
        persisted=outcome.persisted,
        temporal_url=service().temporal_url(workflow_id, outcome.record["run_id"]),
        contact_notice="Thanks, your answer is recorded." if contact == "recorded" else None,
        contact_error=None,
    )


@pages.post("/applications/<workflow_id>/contact")
async def contact(workflow_id: str):
    answer = request.form.get("answer")
    if answer not in CONTACT_ANSWERS:
        return error_page(400, "Invalid answer", messages().validation["contact"])
    try:
        await service().record_contact(workflow_id, answer)
    except WindowClosed:
        return error_page(404, "Application not found", messages().errors["not_found"])
    except TemporalUnavailable:
        return error_page(503, "Temporarily unavailable", messages().errors["unavailable"])
    return redirect(url_for("pages.application", workflow_id=workflow_id, contact="recorded"), code=303)


@pages.get("/applications")
def applications():
    page = page_argument()
    records, total, page_count = service().recent(page)
    return render_template("loans/list.html", records=records, page=page, pages=page_count, total=total,
                           counts=service().counts())


def init_app(app, service_: LoanService) -> None:
    app.extensions["loan_service"] = service_
    app.register_blueprint(api)
    app.register_blueprint(pages)
