"""How long the data converter takes to write and read an order step's input: the SDK's default converter against the one the app uses.

    .venv/bin/python -m tools.converter_bench

The input is a validation step carrying the order's record (the largest payload an
order sends often); it prints the CPU per conversion of each converter, and their ratio.
Then the first read in a new workflow run: the SDK makes a payload converter per run,
so a converter that keeps its type adapters to itself builds them again in every run
(the SDK's pydantic converter), and the app's keeps one cache per process.
"""

from __future__ import annotations

import time

from temporalio.contrib.pydantic import PydanticPayloadConverter
from temporalio.converter import DataConverter, PayloadConverter

from core.converter import AppPayloadConverter
from core.settings import payload_data_converter
from orders.model import (
    Address,
    OrderEvent,
    OrderLine,
    OrderPolicy,
    OrderStatus,
    ProgressRecord,
    StepRequest,
    ValidateOrderRequest,
)

ROUNDS = 2000
NEW_RUNS = 50


def step_input() -> ValidateOrderRequest:
    address = Address("Ada Lovelace", "12 St James's Square", "London", "SW1Y 4JH", "GB")
    status = OrderStatus("a1b2c3d4e5f6", "ada", "processing", "validate", address, False, placed_at="2026-12-05T00:00:00+00:00")
    events = [OrderEvent(status.order_id, f"wf-{n:04d}", "step", f"Step {n} done", "2026-12-05T00:00:00+00:00") for n in range(3)]
    step = StepRequest(
        status.order_id, f"order-{status.order_id}", [], OrderPolicy(5000, 1000, 900), ProgressRecord(status, events)
    )
    return ValidateOrderRequest(step, [OrderLine("KB-100", 2), OrderLine("CB-010", 3)], address)


def per_conversion_ms(converter: DataConverter, value: ValidateOrderRequest) -> tuple[float, float]:
    payloads = converter.payload_converter.to_payloads([value])
    assert converter.payload_converter.from_payloads(payloads, [ValidateOrderRequest]) == [value]
    started = time.process_time()
    for _ in range(ROUNDS):
        converter.payload_converter.to_payloads([value])
    write = (time.process_time() - started) / ROUNDS * 1000
    started = time.process_time()
    for _ in range(ROUNDS):
        converter.payload_converter.from_payloads(payloads, [ValidateOrderRequest])
    return write, (time.process_time() - started) / ROUNDS * 1000


def main() -> None:
    value = step_input()
    default = per_conversion_ms(DataConverter.default, value)
    app = per_conversion_ms(payload_data_converter(), value)
    print(f"{'CPU ms per conversion':24} {'write':>8} {'read':>8}")
    print(f"{'SDK default converter':24} {default[0]:8.3f} {default[1]:8.3f}")
    print(f"{'the app (pydantic)':24} {app[0]:8.3f} {app[1]:8.3f}")
    print(f"{'default / app':24} {default[0] / app[0]:7.1f}x {default[1] / app[1]:7.1f}x")
    print(f"\n{'CPU ms per first read in a new workflow run':44}")
    for name, converter_class in (("SDK pydantic converter", PydanticPayloadConverter), ("the app", AppPayloadConverter)):
        print(f"{name:24} {first_read_ms(converter_class, value):8.3f}")


def first_read_ms(converter_class: type[PayloadConverter], value: ValidateOrderRequest) -> float:
    """What a workflow run pays to read its first payload of a type: a new converter each time."""
    payloads = converter_class().to_payloads([value])
    converter_class().from_payloads(payloads, [ValidateOrderRequest])  # imports and process-wide caches warm
    started = time.process_time()
    for _ in range(NEW_RUNS):
        converter_class().from_payloads(payloads, [ValidateOrderRequest])
    return (time.process_time() - started) / NEW_RUNS * 1000


if __name__ == "__main__":
    main()
