"""The app's payload converter: the same JSON as the SDK's pydantic converter, with one
cache of type adapters for every workflow run of the process (core/converter.py)."""

from __future__ import annotations

from temporalio.contrib.pydantic import PydanticPayloadConverter

from core.converter import AppPayloadConverter, type_adapter
from orders.model import Address, OrderLine, ValidateOrderRequest
from tools.converter_bench import step_input


def test_a_new_converter_per_workflow_run_reads_through_the_process_cache():
    value = step_input()
    payloads = PydanticPayloadConverter().to_payloads([value])
    assert AppPayloadConverter().to_payloads([value]) == payloads  # the same JSON as the SDK's converter
    AppPayloadConverter().from_payloads(payloads, [ValidateOrderRequest])
    before = type_adapter.cache_info()
    for _ in range(3):  # the SDK makes one converter per workflow run
        assert AppPayloadConverter().from_payloads(payloads, [ValidateOrderRequest]) == [value]
    after = type_adapter.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (3, 0)


def test_values_without_a_type_hint_and_lists_of_dataclasses_read_as_before():
    lines = [OrderLine("KB-100", 2), OrderLine("CB-010", 3)]
    address = Address("Ada Lovelace", "12 St James's Square", "London", "SW1Y 4JH", "GB")
    converter = AppPayloadConverter()
    payloads = converter.to_payloads([lines, address, {"a": [1, 2]}])
    assert converter.from_payloads(payloads, [list[OrderLine], Address, None]) == [lines, address, {"a": [1, 2]}]
    assert converter.from_payloads(payloads, None) == PydanticPayloadConverter().from_payloads(payloads, None)


def test_converters_made_per_activation_share_their_encodings_and_still_write_concurrently():
    """The SDK makes a converter for every workflow activation: each is a shell over the process's
    encodings (no JSON converter made each time), and one written from many threads at once is right."""
    from concurrent.futures import ThreadPoolExecutor

    first, second = AppPayloadConverter(), AppPayloadConverter()
    assert first is not second and list(first.converters.values()) == list(second.converters.values())
    assert all(a is b for a, b in zip(first.converters.values(), second.converters.values(), strict=True))
    values = [OrderLine(f"SKU-{n}", n) for n in range(200)]
    with ThreadPoolExecutor(8) as pool:
        payloads = list(pool.map(lambda value: AppPayloadConverter().to_payloads([value])[0], values))
    assert [AppPayloadConverter().from_payloads([p], [OrderLine])[0] for p in payloads] == values
