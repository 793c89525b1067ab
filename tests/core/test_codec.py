"""The payload codec, its keys, the codec server, and what the Temporal server gets to see.

- `core/codec.py`: round trip, a wrong or unknown key fails with a clear error,
  unencrypted payloads are refused (but replay), old keys still decrypt;
- Temporal is no back door: a plain start, signal or update sent straight to
  the server (no key) changes nothing;
- a history written under an old key decodes and replays after rotation
  (time-skipping server);
- real loan applications on the dev server, through the web app and a
  `worker.py` process: no email, name or income in any history event, memo,
  search attribute, summary or workflow ID as the server stores them, nor in
  the worker's log;
- generated keys: 0600, reused, the same for processes racing to create them;
- `web/codec_server.py`: the remote codec protocol, CORS for the Temporal UI's
  origin only, and the `temporal` CLI reading a history through it.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import multiprocessing
import os
import stat
import subprocess
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from flask import Flask, request
from google.protobuf import json_format
from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.converter import DataConverter
from temporalio.worker import Replayer
from werkzeug.serving import make_server

import core.settings as config
from core.codec import (
    ENCODING,
    KEY_ID_METADATA,
    REFUSED_ENCODING,
    EncryptionCodec,
    PayloadDecryptionError,
    key_id,
)
from core.secret_files import read_or_create_secret
from core.settings import Settings, payload_codec_from_env, payload_data_converter
from loans.model import LoanApplication, LoanRequest
from loans.workflow import LoanApplicationWorkflow
from test_workflows import application, start, wait_for_stage
from tests.fixtures import BIN, WorkerProcess, make_app, wait_until
from web.codec_server import create_codec_blueprint
from worker import build_worker

KEY_A, KEY_B = bytes(range(32)), bytes(range(32, 64))
UI_ORIGIN = "http://localhost:8233"


def plain_payload(text: str) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=json.dumps({"email": text}).encode())


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every Payload anywhere inside a protobuf message (events, memos, headers, search attributes)."""
    for field, value in message.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif isinstance(value, Message):
            items = [value]
        else:  # a repeated field
            items = list(value)
        for item in items:
            if isinstance(item, Payload):
                yield item
            elif isinstance(item, Message):
                yield from payloads_in(item)


def with_converter(client: Client, data_converter: DataConverter) -> Client:
    """The same connection as `client`, with another data converter."""
    return Client(**{**client.config(), "data_converter": data_converter})


# --- the codec ----------------------------------------------------------------------------


async def test_round_trip_encrypts_every_payload_and_restores_it():
    codec = EncryptionCodec(KEY_A)
    original = [plain_payload("ada@example.com"), plain_payload("grace@example.com")]

    encrypted = await codec.encode(original)

    for payload in encrypted:
        assert payload.metadata["encoding"] == ENCODING == b"binary/encrypted"
        assert payload.metadata[KEY_ID_METADATA] == key_id(KEY_A).encode()
        assert b"example.com" not in payload.SerializeToString()
    assert encrypted[0].data != (await codec.encode(original[:1]))[0].data  # a fresh nonce every time
    assert await codec.decode(encrypted) == original


async def test_a_wrong_or_unknown_key_fails_clearly():
    encrypted = await EncryptionCodec(KEY_A).encode([plain_payload("ada@example.com")])

    with pytest.raises(PayloadDecryptionError, match=f"key id '{key_id(KEY_A)}', which is neither"):
        await EncryptionCodec(KEY_B).decode(encrypted)

    # Same key id, other key (or altered data): the GCM tag does not verify.
    forged = Payload()
    forged.CopyFrom(encrypted[0])
    forged.data = forged.data[:-1] + bytes([forged.data[-1] ^ 1])
    with pytest.raises(PayloadDecryptionError, match="does not decrypt"):
        await EncryptionCodec(KEY_A).decode([forged])

    with pytest.raises(ValueError, match="32 bytes"):
        EncryptionCodec(b"too short")


async def test_unencrypted_payloads_are_refused_except_for_replay():
    """A plain payload decodes to one no converter reads (a worker never acts on it); the replay
    of recorded histories (tests/histories, plain JSON) and the codec server still read them."""
    plain = [plain_payload("ada@example.com")]
    refused = await EncryptionCodec(KEY_A).decode(plain)
    assert [p.metadata["encoding"] for p in refused] == [REFUSED_ENCODING] and refused[0].data == b""
    with pytest.raises(KeyError, match="refused/not-encrypted"):
        DataConverter.default.payload_converter.from_payloads(refused)
    assert await EncryptionCodec(KEY_A, accept_plain=True).decode(plain) == plain


async def test_old_keys_still_decrypt_and_new_payloads_use_the_current_key():
    written_under_a = await EncryptionCodec(KEY_A).encode([plain_payload("ada@example.com")])
    rotated = EncryptionCodec(KEY_B, old_keys=[KEY_A])

    assert await rotated.decode(written_under_a) == [plain_payload("ada@example.com")]
    [fresh] = await rotated.encode([plain_payload("ada@example.com")])
    assert fresh.metadata[KEY_ID_METADATA] == key_id(KEY_B).encode()


async def test_a_history_written_under_an_old_key_decodes_and_replays_after_rotation(time_skipping_env, settings):
    client_a = with_converter(time_skipping_env.client, payload_data_converter(EncryptionCodec(KEY_A)))
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(client_a, settings, executor, "worker-key-a", concurrency=4):
            handle = await start(client_a, settings, application(loan_amount=100_000.0, annual_income=80_000.0))
            await wait_for_stage(handle, "persisted")
            await handle.signal(LoanApplicationWorkflow.contact_preference, "yes")
            await handle.result()
    history = await handle.fetch_history()
    encrypted = [p for event in history.events for p in payloads_in(event) if p.metadata.get("encoding") == ENCODING]
    assert len(encrypted) > 5
    assert {p.metadata[KEY_ID_METADATA] for p in encrypted} == {key_id(KEY_A).encode()}

    rotated = EncryptionCodec(KEY_B, old_keys=[KEY_A])
    decoded = await rotated.decode(encrypted)
    assert any(b"conditional" in p.data for p in decoded)  # the decision, readable again
    await Replayer(workflows=[LoanApplicationWorkflow], data_converter=payload_data_converter(rotated)).replay_workflow(history)

    # Without the old key the same history is unreadable: rotation is what keeps it.
    with pytest.raises(PayloadDecryptionError):
        await EncryptionCodec(KEY_B).decode(encrypted)
    without_old_key = Replayer(workflows=[LoanApplicationWorkflow], data_converter=payload_data_converter(EncryptionCodec(KEY_B)))
    with pytest.raises(RuntimeError, match="PayloadDecryptionError"):
        await without_old_key.replay_workflow(history)


# --- Temporal is no back door ---------------------------------------------------------------


async def history_after(handle, done, what: str, timeout: float = 10.0):
    """The history once `done(event names)` holds (polled with a deadline)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        history = await handle.fetch_history()
        if done([EventType.Name(event.event_type) for event in history.events]):
            return history
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def contact_preference_of(handle) -> str | None:
    return (await handle.query(LoanApplicationWorkflow.status)).contact_preference


async def test_plain_signals_and_starts_sent_straight_to_temporal_change_nothing(time_skipping_env, settings):
    """Without the payload key, `temporal workflow signal/start` with JSON input (what a plain
    client sends) reaches no workflow code: the signal is dropped, the start never runs a step."""
    client = time_skipping_env.client
    plain = with_converter(client, DataConverter.default)
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(client, settings, executor, "worker-no-back-door", concurrency=4):
            handle = await start(client, settings, application(loan_amount=100_000.0, annual_income=80_000.0))
            await wait_for_stage(handle, "persisted")
            await plain.get_workflow_handle(handle.id).signal("contact_preference", "yes")

            def task_after_the_signal(names: list[str]) -> bool:
                signalled = "EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED"
                return signalled in names and "EVENT_TYPE_WORKFLOW_TASK_COMPLETED" in names[names.index(signalled) :]

            await history_after(handle, task_after_the_signal, "the workflow task after the plain signal")
            assert await contact_preference_of(handle) is None
            # The same answer from a client with the key is taken.
            await handle.signal(LoanApplicationWorkflow.contact_preference, "yes")
            deadline = asyncio.get_running_loop().time() + 10
            while await contact_preference_of(handle) != "yes":
                assert asyncio.get_running_loop().time() < deadline, "the encrypted answer was not taken"
                await asyncio.sleep(0.05)

            forged = await plain.start_workflow(
                "LoanApplicationWorkflow",
                dataclasses.asdict(LoanRequest(application(), 7, "10k-50k")),
                id=f"loan-forged-{uuid.uuid4().hex}",
                task_queue=settings.task_queue,
            )
            history = await history_after(
                forged, lambda names: "EVENT_TYPE_WORKFLOW_TASK_FAILED" in names, "the forged start's task to fail"
            )
            names = [EventType.Name(event.event_type) for event in history.events]
            assert not any(n in names for n in ("EVENT_TYPE_MARKER_RECORDED", "EVENT_TYPE_ACTIVITY_TASK_SCHEDULED")), names
            # No step ran: validation, the decision and the record are local activities (markers).
            await forged.terminate("forged start")


# --- what the Temporal server and the logs see -------------------------------------------


@pytest.fixture(scope="module")
def privacy_stack(dev_server, tmp_path_factory):
    """A real `worker.py` process on its own task queues; its log is what the log test reads."""
    root = tmp_path_factory.mktemp("privacy")
    settings = dataclasses.replace(
        Settings.from_env(),
        data_dir=root / "data",
        task_queue=f"privacy-{uuid.uuid4().hex[:12]}",
        order_task_queue=f"privacy-orders-{uuid.uuid4().hex[:12]}",
        shipping_task_queue=f"privacy-shipping-{uuid.uuid4().hex[:12]}",
        secret_key=uuid.uuid4().hex,
        rules_file=config.HERE / "rules.json",
        messages_file=config.HERE / "messages.json",
        decision_wait_seconds=10.0,
    )
    worker = WorkerProcess(settings, dev_server.client.service_client.config.target_host, root / "worker.log")
    yield settings, worker
    worker.kill()


def applicants() -> list[dict]:
    """Applicants whose name, email and income are unique strings, one per decision path."""
    tag = uuid.uuid4().hex[:10]
    base = {"loan_amount": 50_000, "credit_score": 750, "has_bankruptcy": False}
    return [
        {**base, "name": f"Zelda Quillfeather {tag}", "email": f"zelda.{tag}@example.com", "annual_income": 173_219},
        {
            **base,
            "name": f"Yusuf Marchbanks {tag}",
            "email": f"yusuf.{tag}@example.com",
            "annual_income": 61_437,
            "loan_amount": 100_000,
        },  # conditional: an agent notification too
        {
            **base,
            "name": f"Xenia Oakhollow {tag}",
            "email": f"xenia.{tag}@example.com",
            "annual_income": 94_871,
            "credit_score": 550,
        },  # denied for compliance
    ]


def secrets_of(applicant: dict) -> list[str]:
    return [applicant["name"], applicant["email"], str(applicant["annual_income"])]


def submit_through_the_web(settings: Settings, address: str, monkeypatch, people: list[dict], contact: bool = False):
    """POST each applicant to /api/evaluate on the real app; the workflow IDs."""
    app = make_app(settings, address, monkeypatch)
    try:
        web = app.test_client()
        workflow_ids = []
        for person in people:
            response = web.post("/api/evaluate", json=person)
            assert response.status_code == 200, response.json
            workflow_ids.append(response.json["workflow_id"])
            if contact:
                answer = web.post(response.json["status_url"].replace("?", "/contact?"), json={"answer": "yes"})
                assert answer.status_code == 202, answer.json
        return workflow_ids
    finally:
        app.extensions["temporal"].reset()


@dataclasses.dataclass
class RejectedApplication:
    workflow_id: str
    name: str
    email: str


async def start_rejected_application(dev_server, settings: Settings) -> RejectedApplication:
    """An application only the worker rejects (the web layer would): its failure is in the history too.

    Started by a client made like the app's (`config.connect_temporal`), not the fixture's.
    """
    invalid = application(name=f"Walter Invalidson {uuid.uuid4().hex[:8]}", credit_score=200)
    client = await config.connect_temporal(target_host=dev_server.client.service_client.config.target_host, namespace="default")
    handle = await start(client, settings, invalid)
    with pytest.raises(WorkflowFailureError):
        await asyncio.wait_for(handle.result(), timeout=30)
    return RejectedApplication(handle.id, invalid.name, invalid.email)


async def test_histories_memos_search_attributes_summaries_and_ids_carry_no_applicant_data(
    dev_server, privacy_stack, payload_codec, monkeypatch
):
    settings, _worker = privacy_stack
    people = applicants()
    # In a thread: the web app may run async views, which cannot nest in this test's event loop.
    workflow_ids = await asyncio.to_thread(
        submit_through_the_web, settings, dev_server.client.service_client.config.target_host, monkeypatch, people
    )
    invalid = await start_rejected_application(dev_server, settings)
    workflow_ids.append(invalid.workflow_id)
    needles = [s for p in people for s in secrets_of(p)] + [invalid.name, invalid.email]

    # What the server stores, read by a client without the codec.
    raw_client = with_converter(dev_server.client, DataConverter.default)
    decrypted_texts = []
    for workflow_id in workflow_ids:
        raw_handle = raw_client.get_workflow_handle(workflow_id)
        history = await raw_handle.fetch_history()
        description = (await raw_handle.describe()).raw_description
        stored = history.to_json() + json_format.MessageToJson(description)
        stored_bytes = b"".join(event.SerializeToString() for event in history.events) + description.SerializeToString()
        for needle in needles:
            assert needle not in workflow_id
            assert needle not in stored and needle.encode() not in stored_bytes, f"{needle!r} in {workflow_id}"
        started = history.events[0].workflow_execution_started_event_attributes
        assert [p.metadata["encoding"] for p in started.input.payloads] == [ENCODING]
        payloads = [p for event in history.events for p in payloads_in(event)] + list(payloads_in(description))
        decrypted_texts += [p.data.decode(errors="replace") for p in await payload_codec.decode(payloads)]

    # The same histories with the key: every applicant is there, so the search above could find them.
    for needle in needles:
        assert any(needle in text for text in decrypted_texts), f"{needle!r} not found even after decryption"


async def test_the_worker_log_of_real_applications_has_no_applicant_data(dev_server, privacy_stack, monkeypatch):
    settings, worker = privacy_stack
    people = applicants()
    await asyncio.to_thread(
        submit_through_the_web, settings, dev_server.client.service_client.config.target_host, monkeypatch, people, contact=True
    )
    invalid = await start_rejected_application(dev_server, settings)

    # The log is this run's: the rejected application's failure is logged, by workflow ID (an HMAC or random ID).
    def log_with_the_rejection() -> str | None:
        text = worker.log_path.read_text()
        return text if invalid.workflow_id in text else None

    log = wait_until(log_with_the_rejection, what="the rejected application in the worker's log")
    needles = [s for p in people for s in secrets_of(p)] + [p["email"].split("@")[0] for p in people]
    for needle in needles + [invalid.name, invalid.email]:
        assert needle not in log, f"{needle!r} in the worker's log:\n{log}"


# --- generated keys ----------------------------------------------------------------------


@pytest.fixture
def no_configured_keys(monkeypatch, tmp_path) -> Path:
    for name in ("PAYLOAD_KEY", "PAYLOAD_KEY_FILE", "PAYLOAD_OLD_KEYS", "APP_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_unset_keys_are_generated_once_into_the_data_folder_0600_and_reused(no_configured_keys):
    data_dir = no_configured_keys
    payload_key_id = payload_codec_from_env().key_id
    secret_key = Settings.from_env().secret_key

    assert payload_codec_from_env().key_id == payload_key_id
    assert Settings.from_env().secret_key == secret_key and len(secret_key) >= 40
    for name in ("payload.key", "app_secret.key"):
        assert stat.S_IMODE((data_dir / "secrets" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((data_dir / "secrets").stat().st_mode) == 0o700
    assert key_id(base64.b64decode((data_dir / "secrets" / "payload.key").read_text())) == payload_key_id
    assert sorted(p.name for p in (data_dir / "secrets").iterdir()) == ["app_secret.key", "payload.key"]


async def test_configured_keys_are_used_and_nothing_is_generated(no_configured_keys, monkeypatch, tmp_path):
    monkeypatch.setenv("PAYLOAD_KEY", base64.b64encode(KEY_A).decode())
    monkeypatch.setenv("PAYLOAD_OLD_KEYS", f"{base64.b64encode(KEY_B).decode()}, ")
    monkeypatch.setenv("APP_SECRET_KEY", "operator-chosen")
    codec = payload_codec_from_env()
    assert codec.key_id == key_id(KEY_A)
    written_under_b = await EncryptionCodec(KEY_B).encode([plain_payload("ada@example.com")])
    assert await codec.decode(written_under_b) == [plain_payload("ada@example.com")]
    assert Settings.from_env().secret_key == "operator-chosen"
    assert not (no_configured_keys / "secrets").exists()

    key_file = tmp_path / "payload.key"
    key_file.write_text(base64.b64encode(KEY_B).decode() + "\n")
    monkeypatch.delenv("PAYLOAD_KEY")
    monkeypatch.setenv("PAYLOAD_KEY_FILE", str(key_file))
    assert payload_codec_from_env().key_id == key_id(KEY_B)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"PAYLOAD_KEY": "not base64!"}, "PAYLOAD_KEY is not base64"),
        ({"PAYLOAD_KEY": base64.b64encode(b"16 bytes is AES1").decode()}, "PAYLOAD_KEY must be base64 of 32 bytes, got 16"),
        ({"PAYLOAD_KEY": base64.b64encode(KEY_A).decode(), "PAYLOAD_OLD_KEYS": "abc"}, "PAYLOAD_OLD_KEYS entry 1"),
        ({"PAYLOAD_KEY": base64.b64encode(KEY_A).decode(), "PAYLOAD_KEY_FILE": "/x"}, "not both"),
        ({"PAYLOAD_KEY_FILE": "/nonexistent/payload.key"}, "cannot be read"),
    ],
)
def test_bad_key_settings_stop_the_process_naming_the_variable(no_configured_keys, monkeypatch, variables, message):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit, match=message):
        payload_codec_from_env()


def test_a_secret_stored_by_another_process_meanwhile_wins(tmp_path):
    """The race, made deterministic: another process stores its secret between our read and our write."""
    path = tmp_path / "secrets" / "payload.key"

    def generate_while_another_process_wins() -> str:
        path.write_text("the winner's\n")
        return "ours"

    assert read_or_create_secret(path, generate_while_another_process_wins) == "the winner's"
    assert path.read_text() == "the winner's\n"
    assert [p.name for p in path.parent.iterdir()] == ["payload.key"]  # no temporary file left


def test_an_empty_key_file_stops_the_process_naming_it(no_configured_keys):
    """Never encrypt with, or silently replace, a key file someone emptied: histories depend on it."""
    (no_configured_keys / "secrets").mkdir(parents=True)
    (no_configured_keys / "secrets" / "payload.key").write_text("")
    with pytest.raises(SystemExit, match="payload.key is empty"):
        payload_codec_from_env()


def _generate_payload_key(start, data_dir: str, results) -> None:
    os.environ["DATA_DIR"] = data_dir
    for name in ("PAYLOAD_KEY", "PAYLOAD_KEY_FILE", "PAYLOAD_OLD_KEYS"):
        os.environ.pop(name, None)
    start.wait()
    results.put(payload_codec_from_env().key_id)


def test_processes_generating_the_key_at_once_end_with_the_same_key(tmp_path):
    context = multiprocessing.get_context("fork")
    count = 8
    start_together, results = context.Barrier(count), context.Queue()
    processes = [
        context.Process(target=_generate_payload_key, args=(start_together, str(tmp_path / "data"), results))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    key_ids = [results.get(timeout=30) for _ in processes]
    for process in processes:
        process.join(10)
    stored = base64.b64decode((tmp_path / "data" / "secrets" / "payload.key").read_text())
    assert key_ids == [key_id(stored)] * count


# --- the codec server ----------------------------------------------------------------------


def codec_app(codec: EncryptionCodec) -> Flask:
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=16 * 1024)  # the web app's limit, which the codec lifts for itself
    app.register_blueprint(create_codec_blueprint(lambda: codec, UI_ORIGIN + "/namespaces/default"))
    return app


def as_json(payloads: list[Payload]) -> dict:
    return {"payloads": [json_format.MessageToDict(p) for p in payloads]}


def from_json(body: dict) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in body["payloads"]]


def test_codec_endpoints_encode_and_decode_in_protobuf_json():
    # Sync: Flask runs async views on its own event loop, which cannot nest in pytest-asyncio's.
    codec = EncryptionCodec(KEY_A)
    web = codec_app(codec).test_client()
    original = [plain_payload("ada@example.com"), plain_payload("x" * 20_000)]  # larger than the app's form limit

    encoded = web.post("/codec/encode", json=as_json(original))
    assert encoded.status_code == 200, encoded.json
    encrypted = from_json(encoded.json)
    assert [p.metadata["encoding"] for p in encrypted] == [ENCODING, ENCODING]
    assert asyncio.run(codec.decode(encrypted)) == original

    decoded = web.post("/codec/decode", json=as_json(asyncio.run(codec.encode(original))), headers={"X-Namespace": "default"})
    assert decoded.status_code == 200 and from_json(decoded.json) == original
    assert web.post("/codec/decode", json={"payloads": []}).json == {"payloads": []}


def test_codec_endpoints_answer_bad_input_with_clear_4xx():
    web = codec_app(EncryptionCodec(KEY_A)).test_client()
    for body in ([], {"payload": []}, {"payloads": "x"}):
        response = web.post("/codec/decode", json=body)
        assert response.status_code == 400 and "payloads" in response.json["fields"], body
    not_a_payload = web.post("/codec/decode", json={"payloads": [{"data": "not base64 ~"}]})
    assert not_a_payload.status_code == 400 and "protobuf JSON" in not_a_payload.json["error"]
    other_key = asyncio.run(EncryptionCodec(KEY_B).encode([plain_payload("ada@example.com")]))
    unreadable = web.post("/codec/decode", json=as_json(other_key))
    assert unreadable.status_code == 422 and key_id(KEY_B) in unreadable.json["error"]
    assert web.get("/codec/decode").status_code == 405
    # 3,000-deep JSON, around the payloads and inside one: 400, never a 500.
    for deep in ("[" * 3000 + "]" * 3000, '{"payloads": [' + '{"data": ' * 3000 + "1" + "}" * 3000 + "]}"):
        nested = web.post("/codec/decode", data=deep, content_type="application/json")
        assert nested.status_code == 400 and "payloads" in nested.json["fields"], nested.data[:200]


def test_cors_allows_the_temporal_ui_origin_with_credentials_and_no_other():
    web = codec_app(EncryptionCodec(KEY_A)).test_client()
    preflight = web.options(
        "/codec/decode",
        headers={
            "Origin": UI_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-namespace,authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert preflight.headers["Access-Control-Allow-Credentials"] == "true"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    allowed_headers = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"content-type", "x-namespace", "authorization"} <= allowed_headers

    post = web.post("/codec/decode", json={"payloads": []}, headers={"Origin": UI_ORIGIN})
    assert post.status_code == 200
    assert post.headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert post.headers["Access-Control-Allow-Credentials"] == "true"

    for origin in ("http://evil.example", "http://localhost:8234", "http://127.0.0.1:8233"):
        other_preflight = web.options("/codec/decode", headers={"Origin": origin, "Access-Control-Request-Method": "POST"})
        assert "Access-Control-Allow-Origin" not in other_preflight.headers, origin
        other_post = web.post("/codec/decode", json={"payloads": []}, headers={"Origin": origin})
        assert other_post.status_code == 403 and "Access-Control-Allow-Origin" not in other_post.headers, origin


def payload_texts(cli_json: str) -> list[str]:
    """The data of every payload in `temporal workflow show --output json` (protobuf JSON: base64)."""
    texts = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("metadata"), dict) and isinstance(node.get("data"), str):
                texts.append(base64.b64decode(node["data"]).decode(errors="replace"))
            for child in node.values():
                walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk(json.loads(cli_json))
    assert texts, "no payloads in the CLI's output"
    return texts


@pytest.fixture
def codec_http_server(payload_codec) -> Iterator[tuple[str, list]]:
    """The codec blueprint served over real HTTP on a free port; yields its URL and the requests' headers."""
    app = codec_app(payload_codec)
    seen_headers: list = []
    app.before_request(lambda: seen_headers.append(dict(request.headers)))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}/codec", seen_headers
    server.shutdown()
    thread.join(10)


async def test_the_temporal_cli_reads_encrypted_histories_through_the_codec_endpoint(dev_server, settings, codec_http_server):
    endpoint, seen_headers = codec_http_server
    person: LoanApplication = application(name=f"Vera Cliworthy {uuid.uuid4().hex[:8]}")
    with ThreadPoolExecutor(max_workers=4) as executor:
        async with build_worker(dev_server.client, settings, executor, "worker-cli-test", concurrency=4):
            handle = await start(dev_server.client, settings, person)
            await wait_for_stage(handle, "persisted")

    def show(*codec_flags: str) -> str:
        command = [
            str(BIN / "temporal"),
            "workflow",
            "show",
            "--workflow-id",
            handle.id,
            "--output",
            "json",
            "--address",
            dev_server.client.service_client.config.target_host,
            *codec_flags,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    encrypted = show()
    assert not any(person.email in text for text in payload_texts(encrypted))
    assert base64.b64encode(ENCODING).decode() in encrypted  # metadata is base64 in protobuf JSON
    decoded = payload_texts(show("--codec-endpoint", endpoint, "--codec-auth", "Bearer operator-token"))
    assert any(person.email in text and person.name in text for text in decoded)
    assert any(h.get("Authorization") == "Bearer operator-token" for h in seen_headers)
