"""The payload converter every client and worker uses: JSON through pydantic, with one
cache of type adapters per process.

The SDK's pydantic converter (`temporalio.contrib.pydantic`) reads and writes the
same JSON as its default converter at a fraction of the CPU, but it keeps its type
adapters in the converter object, and the SDK makes a new payload converter for
every workflow run it starts or replays. Each run then built an adapter for every
type it read (its input, each step's result, each signal): about 5.7 ms for an
order step's input, and a sixth of the order worker's Python time under load
(docs/performance.md). Types are the same objects for the whole process (the
workflows are not sandboxed), so one cache serves every run.
"""

from __future__ import annotations

import functools
from typing import Any

import temporalio.api.common.v1
from pydantic import TypeAdapter
from temporalio.contrib.pydantic import PydanticJSONPlainPayloadConverter
from temporalio.converter import (
    CompositePayloadConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    JSONPlainPayloadConverter,
)

TYPE_ADAPTER_CACHE_SIZE = 1024  # types of payloads the app reads: a few dozen


@functools.lru_cache(maxsize=TYPE_ADAPTER_CACHE_SIZE)
def type_adapter(type_hint: Any) -> TypeAdapter[Any]:
    """The process's adapter for a (hashable) type hint."""
    return TypeAdapter(type_hint)


class SharedAdapterJSONConverter(PydanticJSONPlainPayloadConverter):
    """The SDK's pydantic JSON converter, reading through the process's adapters."""

    def from_payload(self, payload: temporalio.api.common.v1.Payload, type_hint: type | None = None) -> Any:
        hint: Any = type_hint if type_hint is not None else Any
        try:
            hash(hint)
        except TypeError:  # an unhashable hint (rare) cannot be cached
            return TypeAdapter(hint).validate_json(payload.data)
        return type_adapter(hint).validate_json(payload.data)


class AppPayloadConverter(CompositePayloadConverter):
    """The SDK's default encodings, with JSON read and written by `SharedAdapterJSONConverter`.

    The SDK makes one of these for every workflow activation (its command-aware data
    converter), so the encodings are made once per process and shared: none keeps
    state between payloads, and a new JSON converter cost a schema serializer and a
    cache each time (about 4% of the order worker's Python time under load).
    """

    def __init__(self) -> None:
        super().__init__(*_shared_encodings())


@functools.cache
def _shared_encodings() -> tuple[EncodingPayloadConverter, ...]:
    json_converter = SharedAdapterJSONConverter(max_cached_type_adapters=0)
    return tuple(
        json_converter if isinstance(converter, JSONPlainPayloadConverter) else converter
        for converter in DefaultPayloadConverter.default_encoding_payload_converters
    )
