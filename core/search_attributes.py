"""The search attributes the app's workflows need, made sure of on the server when a process starts.

The loan workflow is started with `LoanAmountBand` and sets `LoanDecision`; a
namespace without them refuses every start ("Namespace default has no mapping
defined for search attribute ..."). `make run`'s dev server registers them at
start (tools/dev_server.py). Another server (a cluster, Temporal Cloud) may not
have them: the worker and the web app register the missing ones where the
server allows it (the operator API), and otherwise say which are missing and
the command that registers them. The worker then refuses to start, and the web
app's `/readyz` answers 503 until they exist.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeIndexedValueType, SearchAttributeKey
from temporalio.service import RPCError

TYPE_NAMES = {SearchAttributeIndexedValueType.KEYWORD: "Keyword"}


async def missing_search_attributes(client: Client, keys: Sequence[SearchAttributeKey]) -> list[SearchAttributeKey]:
    """The keys the namespace lacks, after registering them where the server allows it."""
    missing = await _missing(client, keys)
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={key.name: int(key.indexed_value_type) for key in missing},  # type: ignore[misc]
            )
        )
    except RPCError:
        return missing  # not allowed here (Temporal Cloud, a restricted role): the caller says what to run
    return await _missing(client, keys)


def registration_command(namespace: str, keys: Sequence[SearchAttributeKey]) -> str:
    """The `temporal` CLI command that registers `keys` (Temporal Cloud: `tcld namespace search-attributes add`)."""
    names = " ".join(f"--name {key.name} --type {TYPE_NAMES[key.indexed_value_type]}" for key in keys)
    return f"temporal operator search-attribute create --namespace {namespace} {names}"


async def _missing(client: Client, keys: Sequence[SearchAttributeKey]) -> list[SearchAttributeKey]:
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=client.namespace))
    return [key for key in keys if key.name not in listed.custom_attributes]
