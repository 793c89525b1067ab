"""Every name the recorded histories use is still registered.

Histories record workflow, activity, signal and update names (not module paths):
moving code is safe, renaming a handler or an activity is not, because a run
that is open when the new code deploys would find nothing to take its next
message or task. docs/versioning.md says how a name is changed instead.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict

from temporalio import activity, workflow

from activities import build_activities
from tests.fixtures import HERE
from workflows import ALL_WORKFLOWS

HISTORIES = HERE / "tests" / "histories"


def names_in_histories() -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for path in HISTORIES.glob("*.json"):
        for event in json.loads(path.read_text())["events"]:
            if attrs := event.get("workflowExecutionStartedEventAttributes"):
                found["workflow"].add(attrs["workflowType"]["name"])
            elif attrs := event.get("startChildWorkflowExecutionInitiatedEventAttributes"):
                found["workflow"].add(attrs["workflowType"]["name"])
            elif attrs := event.get("activityTaskScheduledEventAttributes"):
                found["activity"].add(attrs["activityType"]["name"])
            elif attrs := event.get("workflowExecutionSignaledEventAttributes"):
                found["signal"].add(attrs["signalName"])
            elif attrs := event.get("signalExternalWorkflowExecutionInitiatedEventAttributes"):
                found["signal"].add(attrs["signalName"])
            elif attrs := event.get("workflowExecutionUpdateAcceptedEventAttributes"):
                found["update"].add(attrs["acceptedRequest"]["input"]["name"])
            elif (attrs := event.get("markerRecordedEventAttributes")) and attrs["markerName"] == "core_local_activity":
                payload = attrs["details"]["data"]["payloads"][0]
                found["activity"].add(json.loads(base64.b64decode(payload["data"]))["activity_type"])
    return found


def registered_names(settings) -> dict[str, set[str]]:
    registered: dict[str, set[str]] = defaultdict(set)
    for cls in ALL_WORKFLOWS:
        definition = workflow._Definition.must_from_class(cls)
        registered["workflow"].add(definition.name)
        registered["signal"].update(name for name in definition.signals if name)
        registered["update"].update(name for name in definition.updates if name)
    built = build_activities(settings, "names-test")
    for method in built.for_loans() + built.for_orders() + built.for_shipping():
        registered["activity"].add(activity._Definition.must_from_callable(method).name)
    return registered


def test_every_name_in_the_recorded_histories_is_still_registered(settings):
    found = names_in_histories()
    assert found["workflow"] and found["activity"] and found["signal"] and found["update"], found
    registered = registered_names(settings)
    for kind, names in found.items():
        assert names <= registered[kind], f"{kind} names in tests/histories no longer registered: {names - registered[kind]}"
