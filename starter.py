"""The web app: loan form, JSON API and pages, each starting or reading Temporal workflows.

`create_app()` builds the Flask app (tests pass a config mapping). Three
blueprints: `api` (JSON under /api), `pages` (browser form, result and list
pages) and `health`. Views stay thin: they validate input, then call the
`LoanService` below, which is the only code that talks to Temporal. The order
half (its service, API, pages and the `flask orders` CLI) lives in
`orders_web.py` and is registered here too.

Serve it with gunicorn (see the Makefile / Procfile); `python starter.py`
runs Flask's development server for quick experiments.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template, request, url_for
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import SearchAttributePair, TypedSearchAttributes, WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode
from werkzeug.exceptions import BadRequest, HTTPException

import orders_web
from activities import APPLICATIONS
from config import Rules, Messages, Settings, load_messages, load_rules, temporal_connect_config
from shared import LOAN_AMOUNT_BAND, LOAN_DECISION, LoanApplication, LoanOutcome, LoanRequest, amount_band, loan_workflow_id, record_key
from store import JsonStore
from temporal_bridge import TemporalBridge, TemporalUnavailable, bridge
from validation import InvalidApplication, parse_form_application, parse_json_application
from workflows import CONTACT_ANSWERS, LoanApplicationWorkflow

PAGE_SIZE = 20
STATUS_QUERY_TIMEOUT = 2.0


# --- the service: every Temporal call of the web layer ------------------------


@dataclass(frozen=True)
class Decided:
    record: dict[str, Any]
    persisted: bool


@dataclass(frozen=True)
class Pending:
    workflow_id: str


@dataclass(frozen=True)
class Duplicate:
    days_remaining: int
    submitted_at: str
    decision: str


class NotFound(Exception):
    pass


class WindowClosed(Exception):
    """The application's workflow is no longer running (its window ended)."""


class LoanService:
    def __init__(self, settings: Settings, rules: Rules, temporal: TemporalBridge, store: JsonStore):
        self.settings = settings
        self.rules = rules
        self.temporal = temporal
        self.store = store
        self.namespace = temporal_connect_config()["namespace"]

    def workflow_id(self, application: LoanApplication) -> str:
        return loan_workflow_id(application.email, self.settings.secret_key.encode())

    def submit(self, application: LoanApplication) -> Decided | Pending | Duplicate:
        """Start the application's workflow and wait a short while for its decision.

        The start and the wait are one call (update-with-start). The server
        refuses a second start while the email's workflow runs (conflict policy
        FAIL): that refusal, not a look-up, is what makes duplicates impossible.
        """
        workflow_id = self.workflow_id(application)
        band = amount_band(application.loan_amount, self.rules.amount_bands)

        async def start_and_wait(client: Client):
            # Created on the bridge's loop: the operation holds an asyncio future.
            start = WithStartWorkflowOperation(
                LoanApplicationWorkflow.run,
                LoanRequest(application, self.rules.duplicate_window_days, band),
                id=workflow_id,
                task_queue=self.settings.task_queue,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
                search_attributes=TypedSearchAttributes([SearchAttributePair(LOAN_AMOUNT_BAND, band)]),
                memo={"duplicate_window_days": self.rules.duplicate_window_days},
                static_summary=f"Loan application, amount {band}",
            )
            try:
                return await self._execute(client, start)
            except WorkflowAlreadyStartedError:
                return await self._duplicate(client, workflow_id)
            except WorkflowUpdateRPCTimeoutOrCancelledError:
                return None  # no decision in time (no worker?); checked below

        try:
            # The margin covers connecting and the duplicate look-up.
            result = self.temporal.run(start_and_wait, timeout=self.settings.decision_wait_seconds + 5)
        except TimeoutError:
            result = None
        except WorkflowUpdateFailedError as err:
            cause = err.cause.cause if isinstance(err.cause.cause, ApplicationError) else err.cause
            fields = cause.details[0] if isinstance(cause, ApplicationError) and cause.details else {}
            raise InvalidApplication(fields or {"application": str(cause)}) from err
        except RPCError as err:
            raise TemporalUnavailable(str(err)) from err
        if result is None:
            return self._pending_if_started(workflow_id)
        if isinstance(result, Duplicate):
            return result
        return Decided(dataclasses.asdict(result), persisted=False)

    async def _execute(self, client: Client, start: WithStartWorkflowOperation) -> LoanOutcome:
        try:
            return await client.execute_update_with_start_workflow(
                LoanApplicationWorkflow.wait_for_decision,
                start_workflow_operation=start,
                rpc_timeout=timedelta(seconds=self.settings.decision_wait_seconds),
            )
        except BaseException:
            # The operation's own future holds the same error: retrieve it, or
            # asyncio logs it as "never retrieved" from the bridge thread.
            with contextlib.suppress(BaseException):
                await start.workflow_handle()
            raise

    def _pending_if_started(self, workflow_id: str) -> Pending:
        """After a timeout: the application is safe only if its workflow exists."""
        try:
            self.temporal.run(lambda client: client.get_workflow_handle(workflow_id).describe(), timeout=2.0)
        except (TimeoutError, RPCError) as err:
            raise TemporalUnavailable(f"no decision and no workflow for {workflow_id}") from err
        return Pending(workflow_id)

    async def _duplicate(self, client: Client, workflow_id: str) -> Duplicate:
        description = await client.get_workflow_handle(workflow_id).describe()
        memo = await description.memo()
        window = timedelta(days=memo.get("duplicate_window_days", self.rules.duplicate_window_days))
        left = description.start_time + window - datetime.now(UTC)
        days = min(max(math.ceil(left / timedelta(days=1)), 1), window.days)
        return Duplicate(
            days_remaining=days,
            submitted_at=description.start_time.isoformat(),
            decision=description.typed_search_attributes.get(LOAN_DECISION) or "pending",
        )

    def status(self, workflow_id: str) -> Decided | Pending:
        """The latest application of this workflow ID: from the store, else live from the workflow."""

        async def describe(client: Client):
            return await client.get_workflow_handle(workflow_id).describe()

        try:
            description = self.temporal.run(describe, timeout=STATUS_QUERY_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise NotFound(workflow_id) from err
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable("timed out describing the workflow") from err
        record = self.store.get(APPLICATIONS, record_key(workflow_id, description.run_id))
        if record is not None:
            return Decided(record, persisted=True)
        if description.status != WorkflowExecutionStatus.RUNNING:
            # Closed without a record: it failed validation (the web layer
            # validates first, so only a workflow started by other means).
            raise NotFound(workflow_id)

        async def query(client: Client):
            handle = client.get_workflow_handle(workflow_id, run_id=description.run_id)
            return await handle.query(LoanApplicationWorkflow.status)

        try:
            status = self.temporal.run(query, timeout=STATUS_QUERY_TIMEOUT)
        except (TimeoutError, RPCError):
            return Pending(workflow_id)  # no worker right now: the workflow waits for one
        if status.outcome is None:
            return Pending(workflow_id)
        record = dataclasses.asdict(status.outcome)
        record["contact_preference"] = status.contact_preference
        return Decided(record, persisted=status.stage == "persisted")

    def record_contact(self, workflow_id: str, answer: str) -> None:
        async def signal(client: Client):
            await client.get_workflow_handle(workflow_id).signal(LoanApplicationWorkflow.contact_preference, answer)

        try:
            self.temporal.run(signal, timeout=STATUS_QUERY_TIMEOUT)
        except RPCError as err:
            if err.status == RPCStatusCode.NOT_FOUND:
                raise WindowClosed(workflow_id) from err
            raise TemporalUnavailable(str(err)) from err
        except TimeoutError as err:
            raise TemporalUnavailable("timed out sending the answer") from err

    def temporal_url(self, workflow_id: str, run_id: str | None = None) -> str:
        path = f"{self.settings.temporal_ui_url}/namespaces/{quote(self.namespace)}/workflows/{quote(workflow_id)}"
        return f"{path}/{quote(run_id)}/history" if run_id else path

    def recent(self, page: int) -> tuple[list[dict], int, int]:
        records, total = self.store.list_recent(APPLICATIONS, (page - 1) * PAGE_SIZE, PAGE_SIZE)
        return records, total, max(1, math.ceil(total / PAGE_SIZE))


def service() -> LoanService:
    return current_app.extensions["loan_service"]


def messages() -> Messages:
    return current_app.extensions["messages"]


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
    }


def duplicate_body(duplicate: Duplicate) -> dict[str, Any]:
    return {
        "error": messages().errors["duplicate"].format(days=duplicate.days_remaining),
        "days_remaining": duplicate.days_remaining,
        "submitted_at": duplicate.submitted_at,
        "decision": duplicate.decision,
    }


# --- JSON API -------------------------------------------------------------------

api = Blueprint("api", __name__, url_prefix="/api")


def json_error(status: int, error: str, **extra: Any):
    return jsonify({"error": error, **extra}), status


@api.post("/evaluate")
def evaluate():
    if not request.is_json:
        return json_error(415, messages().errors["not_json"])
    try:
        data = request.get_json()
    except BadRequest:
        return json_error(400, messages().errors["invalid_json"])
    try:
        application = parse_json_application(data, messages())
        outcome = service().submit(application)
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
def application(workflow_id: str):
    try:
        outcome = service().status(workflow_id)
    except NotFound:
        return json_error(404, messages().errors["not_found"])
    except TemporalUnavailable:
        return json_error(503, messages().errors["unavailable"])
    if isinstance(outcome, Pending):
        return pending_response(workflow_id)
    return jsonify(public_record(outcome.record, outcome.persisted)), 200


@api.post("/applications/<workflow_id>/contact")
def contact_api(workflow_id: str):
    data = request.get_json(silent=True) if request.is_json else None
    answer = data.get("answer") if isinstance(data, dict) else None
    if answer not in CONTACT_ANSWERS:
        return json_error(400, messages().errors["invalid_application"], fields={"answer": messages().validation["contact"]})
    try:
        service().record_contact(workflow_id, answer)
    except WindowClosed:
        return json_error(404, messages().errors["not_found"])
    except TemporalUnavailable:
        return json_error(503, messages().errors["unavailable"])
    return jsonify({"workflow_id": workflow_id, "contact_preference": answer}), 202


@api.get("/applications")
def applications_api():
    page = page_argument()
    records, total, pages = service().recent(page)
    return jsonify(
        {
            "applications": [public_record(r, persisted=True) for r in records],
            "page": page,
            "pages": pages,
            "total": total,
        }
    )


# --- browser pages --------------------------------------------------------------

pages = Blueprint("pages", __name__)


@pages.get("/")
def form():
    return render_template("loans/form.html", values={}, errors={}, notice=None)


@pages.post("/apply")
def apply():
    values = {name: request.form.get(name, "") for name in request.form}
    try:
        application = parse_form_application(values, messages())
        outcome = service().submit(application)
    except InvalidApplication as err:
        notice = {"kind": "invalid", "title": messages().errors["invalid_application"], "text": ""}
        return render_template("loans/form.html", values=values, errors=err.fields, notice=notice), 400
    except TemporalUnavailable:
        notice = {"kind": "unavailable", "title": "Please try again", "text": messages().errors["unavailable"]}
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 503
    if isinstance(outcome, Duplicate):
        body = duplicate_body(outcome)
        decision = outcome.decision.replace("_", " ")
        notice = {
            "kind": "duplicate",
            "title": body["error"],
            "text": f"Your earlier application was submitted on {outcome.submitted_at[:10]} (decision: {decision}).",
        }
        return render_template("loans/form.html", values=values, errors={}, notice=notice), 409
    workflow_id = outcome.workflow_id if isinstance(outcome, Pending) else outcome.record["workflow_id"]
    return redirect(url_for("pages.application", workflow_id=workflow_id), code=303)


@pages.get("/applications/<workflow_id>", endpoint="application")
def application_page(workflow_id: str):
    try:
        outcome = service().status(workflow_id)
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
def contact(workflow_id: str):
    answer = request.form.get("answer")
    if answer not in CONTACT_ANSWERS:
        return error_page(400, "Invalid answer", messages().validation["contact"])
    try:
        service().record_contact(workflow_id, answer)
    except WindowClosed:
        return error_page(404, "Application not found", messages().errors["not_found"])
    except TemporalUnavailable:
        return error_page(503, "Temporarily unavailable", messages().errors["unavailable"])
    return redirect(url_for("pages.application", workflow_id=workflow_id, contact="recorded"), code=303)


@pages.get("/applications")
def applications():
    page = page_argument()
    records, total, page_count = service().recent(page)
    return render_template("loans/list.html", records=records, page=page, pages=page_count, total=total)


def page_argument() -> int:
    raw = request.args.get("page", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise BadRequest("page must be a whole number of at least 1")
    return int(raw)


def error_page(status: int, title: str, message: str):
    return render_template("error.html", status=status, title=title, message=message), status


# --- health -----------------------------------------------------------------------

health = Blueprint("health", __name__)


@health.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@health.get("/readyz")
def readyz():
    try:
        bridge().run(lambda client: client.service_client.check_health(), timeout=2.0)
    except Exception as err:  # noqa: BLE001 - any failure means "not ready"
        return jsonify({"status": "unavailable", "error": str(err) or type(err).__name__}), 503
    return jsonify({"status": "ready"})


# --- the app factory -------------------------------------------------------------


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(MAX_CONTENT_LENGTH=16 * 1024)
    app.json.sort_keys = False
    if test_config:
        app.config.from_mapping(test_config)
    settings: Settings = app.config.get("SETTINGS") or Settings.from_env()
    rules = load_rules(settings.rules_file)
    app.extensions["messages"] = load_messages(settings.messages_file)
    temporal = TemporalBridge()
    temporal.init_app(app)
    store = JsonStore(settings.data_dir)
    app.extensions["loan_service"] = LoanService(settings, rules, temporal, store)
    orders_web.init_app(app, settings, rules, temporal, store)

    app.register_blueprint(api)
    app.register_blueprint(pages)
    app.register_blueprint(health)
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(Exception, handle_unexpected_error)
    app.context_processor(lambda: {"temporal_ui_url": settings.temporal_ui_url})
    return app


def handle_http_error(err: HTTPException):
    """JSON errors under /api, an HTML page elsewhere; never a bare 500 page."""
    if request.path.startswith("/api/"):
        message = messages().errors["too_large"] if err.code == 413 else err.description
        return json_error(err.code or 500, message)
    return error_page(err.code or 500, err.name, err.description or "")


def handle_unexpected_error(err: Exception):
    current_app.logger.exception("Unhandled error on %s %s", request.method, request.path)
    if request.path.startswith("/api/"):
        return json_error(500, "Internal error; the request was logged.")
    return error_page(500, "Something went wrong", "The error was logged; please try again.")


if __name__ == "__main__":
    settings = Settings.from_env()
    create_app().run(host=settings.web_host, port=settings.web_port, debug=False)
