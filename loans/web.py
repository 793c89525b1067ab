"""The loan half's HTTP routes: the JSON API under /api and the browser pages.

Each view parses its input (validation.py), awaits `LoanService`
(loans/service.py), and turns the outcome into an answer: 200 decided, 202
pending, 409 duplicate, 400 invalid, 404 unknown, 503 Temporal unreachable
(each worded for what was attempted: submitting, reading, answering).

What a page says after a form post travels in the session (Flask's `flash`,
rendered by base.html), never in the query string, which anyone can write into
a link. Which worker decided (`processed_by`) is shown to operators only.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter import RateLimitExceeded
from flask_wtf.csrf import CSRFError

from core.formatting import count_of, day_chart
from core.idempotency import FORM_KEY_FIELD, IdempotencyKeyReused, form_key, new_form_key, valid_idempotency_key
from core.temporal_client import OutcomeUnknown, TemporalUnavailable
from loans.model import (
    CONTACT_ANSWERS,
    DECISIONS,
    applicant_link_expires,
    applicant_link_expiry,
    applicant_link_key,
)
from loans.service import (
    LIST_FILTERS,
    MAX_CONTACT_ANSWERS,
    AnsweredTooOften,
    Decided,
    Duplicate,
    LoanService,
    NotFound,
    Pending,
    WindowClosed,
)
from loans.validation import (
    InvalidApplication,
    parse_form_application,
    parse_json_application,
    parse_json_contact,
)
from web.auth import operator_auth
from web.common import (
    BadBody,
    after_argument,
    bad_body_error,
    error_page,
    json_body,
    json_error,
    list_filter,
    messages,
    page_argument,
)
from web.limits import over_limit, rate_limited

# The session entry holding the contact answer this browser has just sent, for the page the
# answer redirects to: the workflow records it a moment later (record_contact_preference).
CONTACT_ANSWERED = "contact_answered"

api = Blueprint("api", __name__, url_prefix="/api")
pages = Blueprint("pages", __name__)


def service() -> LoanService:
    return current_app.extensions["loan_service"]


# The applicant's own routes: anyone holding the application's link (its `key`), and operators.
LINK_ENDPOINTS = frozenset({"pages.application", "pages.contact", "api.application", "api.contact_api"})
LINK_READ_ENDPOINTS = frozenset({"pages.application", "api.application"})
# What an application's link does not show: the applicant's financial profile (operators see it).
OPERATOR_ONLY_FIELDS = ("annual_income", "credit_score", "has_bankruptcy")


def link_key(workflow_id: str, submitted_at: str | None = None) -> str:
    """A new key for the applicant's link, open until a minute before the window that starts at
    `submitted_at` (now, for an application just started) closes."""
    submitted = datetime.fromisoformat(submitted_at) if submitted_at else datetime.now(timezone.utc)
    expires = applicant_link_expires(submitted, service().rules.duplicate_window_days)
    return applicant_link_key(service().settings.secret_key.encode(), workflow_id, expires)


def check_link():
    """Before the applicant's routes: without the application's key (or past its window), the
    application is not found, whoever asks. Operators read it without one; the contact answer is
    the applicant's, so answering needs the key from everyone."""
    if request.endpoint not in LINK_ENDPOINTS:
        return None
    if request.endpoint in LINK_READ_ENDPOINTS and operator_auth().is_operator():
        return None
    workflow_id = (request.view_args or {}).get("workflow_id", "")
    expires = applicant_link_expiry(service().settings.secret_key.encode(), workflow_id, request.args.get("key"))
    if expires is not None and expires > datetime.now(timezone.utc):
        return None
    days = service().rules.duplicate_window_days
    text = messages().errors["not_found"] if expires is None else messages().errors["link_expired"].format(days=days)
    status = 404 if expires is None else 410
    if request.path.startswith("/api/"):
        return json_error(status, text)
    return error_page(status, "Application not found" if expires is None else "This link has expired", text)


# After the app's own checks (web/auth.py: who is an operator), before the views.
api.before_request(check_link)
pages.before_request(check_link)


def public_record(record: dict[str, Any], persisted: bool, operator: bool = False) -> dict[str, Any]:
    """The API's view of a decided application. For operators only: the applicant's financial
    profile and loan-to-income ratio, and `processed_by` (a worker's host name)."""
    body = {
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
    if not operator:
        del body["processed_by"], body["loan_to_income_ratio"]
        body["application"] = {k: v for k, v in body["application"].items() if k not in OPERATOR_ONLY_FIELDS}
    return body


def duplicate_body(duplicate: Duplicate) -> dict[str, Any]:
    """That an application exists and when a new one is possible: nothing about it, since
    anyone who knows an email can ask."""
    return {
        "error": messages().errors["duplicate"].format(days=count_of(duplicate.days_remaining, "day")),
        "days_remaining": duplicate.days_remaining,
    }


# --- JSON API -------------------------------------------------------------------


@api.errorhandler(BadBody)
def _bad_body(err: BadBody):
    return bad_body_error(err)


@api.post("/evaluate")
async def evaluate():
    data = json_body(messages().errors["not_json"])
    try:
        key = valid_idempotency_key(request.headers.get("Idempotency-Key"))
    except ValueError:
        error = messages().errors["idempotency_key"]
        return json_error(400, error, fields={"Idempotency-Key": error})
    try:
        application = parse_json_application(data, messages())
        outcome = await service().submit(application, idempotency_key=key)
    except InvalidApplication as err:
        return json_error(400, messages().errors["invalid_application"], fields=err.fields)
    except IdempotencyKeyReused:
        error = messages().errors["idempotency_key_reused"]
        return json_error(422, error, fields={"Idempotency-Key": error})
    except OutcomeUnknown:
        return json_error(503, messages().errors["submission_unknown"])
    except TemporalUnavailable:
        return json_error(503, messages().errors["unavailable"])
    if isinstance(outcome, Duplicate):
        return jsonify(duplicate_body(outcome)), 409
    if isinstance(outcome, Pending):
        return pending_response(outcome.workflow_id, link_key(outcome.workflow_id))
    record = outcome.record
    body = public_record(record, outcome.persisted, operator_auth().is_operator())
    # The applicant's link to this answer, for as long as their window is open.
    key = link_key(record["workflow_id"], record["submitted_at"])
    body["status_url"] = url_for("api.application", workflow_id=record["workflow_id"], key=key)
    body["page_url"] = url_for("pages.application", workflow_id=record["workflow_id"], key=key)
    return jsonify(body), 200


def pending_response(workflow_id: str, key: str | None):
    status_url = url_for("api.application", workflow_id=workflow_id, key=key)
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
        return json_error(503, messages().errors["unavailable_read"])
    if isinstance(outcome, Pending):
        return pending_response(workflow_id, request.args.get("key"))
    return jsonify(public_record(outcome.record, outcome.persisted, operator_auth().is_operator())), 200


@api.post("/applications/<workflow_id>/contact")
async def contact_api(workflow_id: str):
    try:
        answer = parse_json_contact(json_body(messages().errors["not_json"]), messages())
    except InvalidApplication as err:
        return json_error(400, messages().errors["invalid_application"], fields=err.fields)
    try:
        await service().record_contact(workflow_id, answer)
    except NotFound:
        return json_error(404, messages().errors["not_found"])
    except WindowClosed:
        return json_error(409, messages().errors["contact_closed"])
    except AnsweredTooOften:
        return json_error(409, messages().errors["contact_too_often"].format(count=MAX_CONTACT_ANSWERS))
    except TemporalUnavailable:
        return json_error(503, messages().errors["contact_unavailable"])
    return jsonify({"workflow_id": workflow_id, "contact_preference": answer}), 202


@api.get("/applications")
def applications_api():
    listing = service().listing(page_argument(), list_filter(LIST_FILTERS), after_argument())
    records = [public_record(r, persisted=True, operator=True) for r in listing.records]
    return jsonify({"applications": records, **listing.as_json()})


# --- browser pages --------------------------------------------------------------


@pages.get("/")
def form():
    return render_template("loans/form.html", values={FORM_KEY_FIELD: new_form_key()}, errors={}, notice=None)


@pages.post("/apply")
async def apply():
    values = {name: request.form.get(name, "") for name in request.form}
    key = form_key(values)  # a second press gets this application's decision, not "already applied"
    try:
        application = parse_form_application(values, messages())
        outcome = await service().submit(application, idempotency_key=key)
    except InvalidApplication as err:
        notice = {"kind": "invalid", "title": messages().errors["invalid_application"], "text": ""}
        return render_template("loans/form.html", values=values, errors=err.fields, notice=notice), 400
    except IdempotencyKeyReused:
        # The same form sent again with other answers: a new application, which this email already has.
        values[FORM_KEY_FIELD] = new_form_key()
        notice = {"kind": "duplicate", "title": messages().errors["form_changed_after_submit"], "text": ""}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 409
    except OutcomeUnknown:
        notice = {"kind": "unavailable", "title": "Please try again", "text": messages().errors["submission_unknown"]}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 503
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": messages().errors["unavailable"]}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 503
    if isinstance(outcome, Duplicate):
        notice = {"kind": "duplicate", "title": duplicate_body(outcome)["error"], "text": ""}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 409
    if isinstance(outcome, Pending):
        workflow_id, key = outcome.workflow_id, link_key(outcome.workflow_id)
    else:
        workflow_id = outcome.record["workflow_id"]
        key = link_key(workflow_id, outcome.record["submitted_at"])
    return redirect(url_for("pages.application", workflow_id=workflow_id, key=key), code=303)


@pages.errorhandler(RateLimitExceeded)
def _form_over_limit(err: RateLimitExceeded):
    """Over a limit on the form: the form again, with what was typed and when to try again."""
    if request.endpoint != "pages.apply":
        return rate_limited(err)
    seconds, text = over_limit()
    values = {name: request.form.get(name, "") for name in request.form}
    notice = {"kind": "unavailable", "title": "Please wait a moment", "text": text}
    return render_template("loans/form.html", values=values, errors={}, notice=notice), 429, {"Retry-After": str(seconds)}


@pages.get("/applications/<workflow_id>", endpoint="application")
async def application_page(workflow_id: str):
    try:
        outcome = await service().status(workflow_id)
    except NotFound:
        return error_page(404, "Application not found", messages().errors["not_found"])
    except TemporalUnavailable:
        return error_page(503, "Temporarily unavailable", messages().errors["unavailable_read"])
    if isinstance(outcome, Pending):
        return render_template(
            "loans/pending.html", workflow_id=workflow_id, temporal_url=service().temporal_url(workflow_id)
        ), 200
    return render_result(outcome, just_answered(workflow_id))


def just_answered(workflow_id: str) -> str | None:
    """The contact answer this browser sent for this application just before the redirect, if any."""
    answered = session.pop(CONTACT_ANSWERED, None)
    if isinstance(answered, dict) and answered.get("workflow_id") == workflow_id:
        answer = answered.get("answer")
        return answer if answer in CONTACT_ANSWERS else None
    return None


def render_result(outcome: Decided, answered: str | None):
    record = outcome.record
    if answered is not None:
        # The workflow accepted the answer; its record says so a moment later.
        record = {**record, "contact_preference": answered}
    email = record["application"]["email"]
    return render_template(
        "loans/result.html",
        record=record,
        persisted=outcome.persisted,
        window_open=outcome.window_open,
        contact_texts={name: text.format(email=email) for name, text in messages().contact.items()},
        temporal_url=service().temporal_url(record["workflow_id"], record["run_id"]),
    )


@pages.post("/applications/<workflow_id>/contact")
async def contact(workflow_id: str):
    answer = request.form.get("answer")
    if answer not in CONTACT_ANSWERS:
        return error_page(400, "Invalid answer", messages().validation["contact"])
    page = url_for("pages.application", workflow_id=workflow_id, key=request.args.get("key"))
    try:
        await service().record_contact(workflow_id, answer)
    except NotFound:
        return error_page(404, "Application not found", messages().errors["not_found"])
    except WindowClosed:
        flash(messages().errors["contact_closed"], "invalid")
        return redirect(page, code=303)
    except AnsweredTooOften:
        flash(messages().errors["contact_too_often"].format(count=MAX_CONTACT_ANSWERS), "invalid")
        return redirect(page, code=303)
    except TemporalUnavailable:
        return error_page(
            503,
            "Temporarily unavailable",
            messages().errors["contact_unavailable"],
            back_url=page,
            back_text="Back to your application",
        )
    flash(messages().contact["recorded"], "success")
    session[CONTACT_ANSWERED] = {"workflow_id": workflow_id, "answer": answer}
    return redirect(page, code=303)


@pages.errorhandler(CSRFError)
def session_expired(err: CSRFError):
    """No or an expired session (so no CSRF token): still refused, but the loan form comes back
    with what was typed and says why; nothing was started."""
    if request.endpoint == "pages.apply":
        values = {name: request.form.get(name, "") for name in request.form if name != "csrf_token"}
        notice = {"kind": "invalid", "title": messages().errors["session_expired"], "text": ""}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 400
    if request.endpoint == "pages.contact":
        workflow_id = (request.view_args or {}).get("workflow_id")
        page = url_for("pages.application", workflow_id=workflow_id, key=request.args.get("key"))
        return error_page(
            400, "Session expired", messages().errors["session_expired"], back_url=page, back_text="Back to your application"
        )
    return error_page(400, err.name, err.description)


@pages.get("/applications")
def applications():
    listing = service().listing(page_argument(), list_filter(LIST_FILTERS), after_argument())
    return render_template("loans/list.html", listing=listing, chart=day_chart(service().decisions_by_day(), DECISIONS))


def init_app(app, service_: LoanService) -> None:
    app.extensions["loan_service"] = service_
    app.register_blueprint(api)
    app.register_blueprint(pages)
