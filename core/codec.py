"""The payload codec: AES-256-GCM encryption of every payload a Temporal client sends.

Workflow inputs, results, activity arguments, signals, updates and queries hold
applicants' names, emails and incomes; with this codec on the client, the
Temporal server (its database, the Web UI, `temporal workflow show`) only ever
sees ciphertext. Only processes holding the key read them: the worker, the web
app, and the codec server (`web/codec_server.py`) that decrypts for signed-in operators.

Each encrypted payload names its key by id in its metadata, so keys can rotate:
new payloads use the current key, and payloads written under an old key still
decrypt as long as that key is in the old-keys list.

A payload that is not encrypted is refused: it decodes to one the converter
cannot read, so a plain start, signal or update sent straight to Temporal (the
`temporal` CLI, the Web UI) never reaches a workflow as an operator's action —
the SDK drops such a signal, rejects such an update and fails such a start's
workflow task. Only replay of recorded histories (`tools/replay_check.py`, the
tests' histories, written before the codec or in plain JSON) and the codec server
(which shows operators what Temporal holds) accept plain payloads (`accept_plain`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID_METADATA = "encryption-key-id"
# What a plain payload decodes to when it is refused: the converter knows no such encoding, so the
# value never reaches a workflow or activity, and the error names why.
REFUSED_ENCODING = b"refused/not-encrypted-with-the-payload-key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the size GCM is specified for


class PayloadDecryptionError(ValueError):
    """A payload this process cannot decrypt: unknown key id, or data altered or encrypted with another key."""


def key_id(key: bytes) -> str:
    """The public name of a key: the first 16 hex digits of its SHA-256 (never the key itself)."""
    return hashlib.sha256(key).hexdigest()[:16]


class EncryptionCodec(PayloadCodec):
    """Encrypts with `key`; decrypts with `key` or any of `old_keys`; refuses plain payloads
    unless `accept_plain` (replay of recorded histories, the codec server)."""

    def __init__(self, key: bytes, old_keys: Sequence[bytes] = (), accept_plain: bool = False) -> None:
        super().__init__()
        for candidate in (key, *old_keys):
            if len(candidate) != KEY_BYTES:
                raise ValueError(f"an AES-256 key is {KEY_BYTES} bytes, got {len(candidate)}")
        self.key_id = key_id(key)
        self.accept_plain = accept_plain
        # AESGCM directly (rather than Fernet): the same format as the Go and TypeScript samples' codecs.
        self._encryptor = AESGCM(key)
        self._decryptors = {key_id(k): AESGCM(k) for k in old_keys} | {self.key_id: self._encryptor}

    async def encode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self._encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Iterable[Payload]) -> list[Payload]:
        return [self._decrypt(payload) for payload in payloads]

    def _encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID_METADATA: self.key_id.encode()},
            data=nonce + self._encryptor.encrypt(nonce, payload.SerializeToString(), None),
        )

    def _decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload if self.accept_plain else Payload(metadata={"encoding": REFUSED_ENCODING})
        payload_key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        decryptor = self._decryptors.get(payload_key_id)
        if decryptor is None:
            raise PayloadDecryptionError(
                f"payload encrypted with key id {payload_key_id!r}, which is neither the current key nor in "
                f"PAYLOAD_OLD_KEYS (known key ids: {', '.join(sorted(self._decryptors))})"
            )
        try:
            plain = decryptor.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], None)
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload with key id {payload_key_id} does not decrypt: it was altered, or encrypted "
                "with another key that has the same id"
            ) from None
        return Payload.FromString(plain)
