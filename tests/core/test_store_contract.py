"""One contract, two stores: the same cases against the JSON files and a real PostgreSQL.

Concurrency included: 20 updates of one document at once from threads and from
processes, the oversell race on stock, a retry after a crash between the
write and the answer. The PostgreSQL half needs a server (tests/pg.py).
"""

from __future__ import annotations

import multiprocessing
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.store.files import JsonStore
from tests.pg import (
    database_url,  # noqa: F401 - a fixture
    postgres_server,  # noqa: F401 - a fixture
)

COUNTED = {"orders": ("status",), "applications": ("decision",)}
LISTED = {"orders": ("status", "customer.email")}


def open_spec(spec: tuple[str, str], listed_by: dict[str, tuple[str, ...]] = LISTED):
    kind, location = spec
    if kind == "json":
        return JsonStore(location, counted_fields=COUNTED, listed_by=listed_by)
    from core.store.postgres import PostgresStore

    return PostgresStore(location, counted_fields=COUNTED, max_connections=4, listed_by=listed_by)


@pytest.fixture(params=["json", "postgresql"])
def spec(request, tmp_path) -> tuple[str, str]:
    if request.param == "json":
        return ("json", str(tmp_path))
    return ("postgresql", request.getfixturevalue("database_url"))


@pytest.fixture
def store(spec):
    opened = open_spec(spec)
    yield opened
    if hasattr(opened, "close"):
        opened.close()


def test_get_put_and_a_page_newest_first_with_the_total(store):
    for n in range(25):
        store.put("things", f"k{n:02d}", {"n": n}, sort_key=f"2026-11-23T{n:02d}")
    page, total = store.list_recent("things", offset=1, limit=3)
    assert total == 25 and [d["n"] for d in page] == [23, 22, 21]
    assert [d["n"] for d in store.list_recent("things")[0]] == list(range(24, 4, -1))
    assert store.list_recent("things", offset=24, limit=5) == ([{"n": 0}], 25)
    assert store.get("things", "k03") == {"n": 3} and store.get("things", "nope") is None
    assert store.list_recent("nothing") == ([], 0)


def test_unlisted_documents_and_a_small_collection_in_full(store):
    for key in ("b", "a-b", "a", "c"):
        store.put("events", key, {"key": key})
    assert store.list_all("events") == [{"key": "a"}, {"key": "a-b"}, {"key": "b"}, {"key": "c"}]  # by key
    assert store.list_recent("events") == ([], 0)  # written without a sort key: not listed
    assert store.list_all("nothing") == []


def test_counts_move_with_the_status_and_a_retried_put_counts_once(store):
    store.put("orders", "o1", {"status": "placed"}, sort_key="1")
    store.put("orders", "o2", {"status": "placed"}, sort_key="2")
    store.put("orders", "o2", {"status": "placed"}, sort_key="2")  # a retry
    assert store.count_by("orders", "status") == {"placed": 2}
    store.update("orders", "o1", lambda doc: {**doc, "status": "delivered"})
    assert store.count_by("orders", "status") == {"placed": 1, "delivered": 1}
    assert store.list_recent("orders")[1] == 2
    with pytest.raises(ValueError, match="not counted by 'total'"):
        store.count_by("orders", "total")


def test_the_newest_listed_record_of_a_group_in_one_look_up(store):
    """An application's record is `<workflow id>.<run id>`; after its window the workflow ID runs again."""
    store.put("applications", "loan-a.run1", {"run": 1, "decision": "denied"}, sort_key="1")
    store.put("applications", "loan-ab.run9", {"run": 9, "decision": "denied"}, sort_key="2")  # shares the prefix
    assert store.newest_in_group("applications", "loan-a") == {"run": 1, "decision": "denied"}
    store.put("applications", "loan-a.run2", {"run": 2, "decision": "conditional"}, sort_key="3")
    # The older run rewritten afterwards (a counted value changes: an index change) stays the older one.
    store.put("applications", "loan-a.run1", {"run": 1, "decision": "pre_approved"}, sort_key="1")
    store.update("applications", "loan-a.run1", lambda doc: {**doc, "contact_preference": "yes"})
    store.put("applications", "loan-a.run3", {"run": 3})  # not listed: not a candidate
    store.put("applications", "loan-a.run2.note", {"run": "note"}, sort_key="4")  # group "loan-a.run2"
    assert store.newest_in_group("applications", "loan-a") == {"run": 2, "decision": "conditional"}
    assert store.newest_in_group("applications", "loan-ab") == {"run": 9, "decision": "denied"}
    assert store.newest_in_group("applications", "loan-a.run2") == {"run": "note"}
    assert store.newest_in_group("applications", "loan") is None
    assert store.newest_in_group("applications", "loan-b") is None
    with pytest.raises(ValueError, match="not grouped"):
        store.newest_in_group("orders", "o1")
    with pytest.raises(ValueError, match="invalid"):
        store.newest_in_group("applications", "../loan-a")


def _ids(documents: list[dict]) -> list[str]:
    return [d["id"] for d in documents]


def test_a_list_by_value_has_the_latest_to_take_the_value_first_and_pages(store):
    for n in range(1, 8):
        store.put(
            "orders", f"o{n}", {"id": f"o{n}", "status": "processing", "customer": {"email": f"c{n % 2}@x.test"}}, sort_key=str(n)
        )
    assert _ids(store.list_by("orders", "status", "processing")) == ["o7", "o6", "o5", "o4", "o3", "o2", "o1"]
    for n in (2, 5, 3):  # completed in this order: o3 is the latest to complete
        store.update("orders", f"o{n}", lambda doc: {**doc, "status": "completed"})
    store.put("orders", "o5", store.get("orders", "o5"))  # a retry moves nothing
    assert _ids(store.list_by("orders", "status", "completed")) == ["o3", "o5", "o2"]
    assert _ids(store.list_by("orders", "status", "processing")) == ["o7", "o6", "o4", "o1"]
    assert _ids(store.list_by("orders", "status", "processing", offset=1, limit=2)) == ["o6", "o4"]
    assert _ids(store.list_by("orders", "status", "processing", offset=3, limit=5)) == ["o1"]
    assert store.list_by("orders", "status", "processing", offset=4) == []
    store.update("orders", "o3", lambda doc: {**doc, "status": "processing"})  # back: at the head again
    assert _ids(store.list_by("orders", "status", "processing", limit=2)) == ["o3", "o7"]
    assert _ids(store.list_by("orders", "status", "completed")) == ["o5", "o2"]
    store.update("orders", "o2", lambda doc: {k: v for k, v in doc.items() if k != "status"})  # no value: in no list
    assert _ids(store.list_by("orders", "status", "completed")) == ["o5"]
    assert store.count_by("orders", "status") == {"processing": 5, "completed": 1}
    assert store.list_by("orders", "status", "cancelled") == []


def test_a_page_of_a_list_starts_after_the_record_the_previous_page_ended_with(store):
    for n in range(1, 11):
        store.put("orders", f"o{n:02d}", {"id": f"o{n:02d}", "status": "cancelled"}, sort_key=str(n))
    pages, after = [], None
    while True:
        page = store.list_by("orders", "status", "cancelled", limit=3, after=after)
        if not page:
            break
        pages.append(_ids(page))
        after = page[-1]["id"]
    assert pages == [["o10", "o09", "o08"], ["o07", "o06", "o05"], ["o04", "o03", "o02"], ["o01"]]
    # The record a page ended with moved on: the next page is found by its offset instead.
    store.update("orders", "o07", lambda doc: {**doc, "status": "completed"})
    assert _ids(store.list_by("orders", "status", "cancelled", offset=3, limit=3, after="o07")) == ["o06", "o05", "o04"]
    assert _ids(store.list_by("orders", "status", "cancelled", offset=3, limit=3, after="nope")) == ["o06", "o05", "o04"]


def test_a_search_by_a_nested_field_ignores_case_and_spaces_and_misses_unlisted_records(store):
    store.put("orders", "a", {"id": "a", "customer": {"email": "Ada@X.test"}}, sort_key="1")
    store.put("orders", "b", {"id": "b", "customer": {"email": "ada@x.test"}}, sort_key="2")
    store.put("orders", "c", {"id": "c", "customer": {"email": "ada@x.test"}})  # no sort key: not listed
    store.put("orders", "d", {"id": "d", "customer": "not an object"}, sort_key="3")
    assert _ids(store.list_by("orders", "customer.email", "  ADA@x.test ")) == ["b", "a"]
    assert store.list_by("orders", "customer.email", "") == [] and store.list_by("orders", "customer.email", "ada") == []
    with pytest.raises(ValueError, match="not listed by 'total'"):
        store.list_by("orders", "total", "1")


def test_records_written_before_their_lists_existed_are_listed_at_the_first_list_by(spec):
    before = open_spec(spec, listed_by={})  # as a version without the lists wrote them
    for n in range(1, 5):
        before.put("orders", f"o{n}", {"id": f"o{n}", "status": "completed" if n % 2 else "processing"}, sort_key=str(n))
    if hasattr(before, "close"):
        before.close()
    after = open_spec(spec)
    after.put("orders", "o5", {"id": "o5", "status": "completed"}, sort_key="5")  # a write before the first list_by
    after.update("orders", "o2", lambda doc: {**doc, "status": "completed"})
    # Rebuilt oldest first from the listed records (by when each was first listed), whatever the writes since.
    assert _ids(after.list_by("orders", "status", "completed")) == ["o5", "o3", "o2", "o1"]
    assert _ids(after.list_by("orders", "status", "processing")) == ["o4"]
    after.update("orders", "o4", lambda doc: {**doc, "status": "completed"})
    assert _ids(after.list_by("orders", "status", "completed", limit=2)) == ["o4", "o5"]
    if hasattr(after, "close"):
        after.close()


@pytest.mark.parametrize("bad", [("../x", "k", None), ("c", "../k", None), ("c", "k", "a/b")])
def test_names_outside_the_rules_are_refused_by_name(store, bad):
    collection, key, sort_key = bad
    with pytest.raises(ValueError, match=re.escape("invalid")):
        store.put(collection, key, {}, sort_key=sort_key)


def test_twenty_updates_of_one_document_at_once_from_threads(store):
    store.put("counters", "c", {"n": 0})
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda _i: store.update("counters", "c", lambda doc: {"n": doc["n"] + 1}), range(20)))
    assert store.get("counters", "c") == {"n": 20}


def _increment(spec, start, times: int) -> None:
    store = open_spec(spec)
    start.wait()
    for _ in range(times):
        store.update("counters", "c", lambda doc: {"n": (doc or {"n": 0})["n"] + 1})


def _reserve(spec, start, order_ids: list[str]) -> None:
    """The reservation pattern of `OrderActivities.reserve_inventory`: lock the stock, read, write both."""
    store = open_spec(spec)
    start.wait()
    for order_id in order_ids:
        with store.locked("inventory", "stock"):
            stock = store.get("inventory", "stock")
            if store.get("reservations", order_id) is not None or stock["CB-010"] < 1:
                continue
            time.sleep(0.005)  # widens the window between read and write, where an unlocked store oversells
            store.write_locked("inventory", "stock", {"CB-010": stock["CB-010"] - 1})
            store.write_locked("reservations", order_id, {"order_id": order_id, "status": "reserved"})


def _run_processes(target, args_list) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(args_list))  # every process ready (imported, connected) before any starts
    processes = [context.Process(target=target, args=(args[0], start, *args[1:])) for args in args_list]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
        assert process.exitcode == 0, f"a process failed: exit {process.exitcode}"


def test_twenty_updates_of_one_document_at_once_from_processes(spec, store):
    _run_processes(_increment, [(spec, 5) for _ in range(4)])
    assert store.get("counters", "c") == {"n": 20}


def test_the_oversell_race_sells_the_stock_exactly_once(spec, store):
    store.put("inventory", "stock", {"CB-010": 5})
    orders = [f"order-{n}" for n in range(12)]
    # Every process tries every order (retries from several workers), in different orders.
    _run_processes(_reserve, [(spec, orders[w:] + orders[:w]) for w in range(4)])
    reserved = [o for o in orders if store.get("reservations", o) is not None]
    assert len(reserved) == 5 and store.get("inventory", "stock") == {"CB-010": 0}


def test_a_retry_after_a_crash_between_the_write_and_the_answer_changes_nothing(store):
    def charge_once(existing):
        return existing or {"status": "charged", "amount": 10}

    store.update("payments", "pay-1", charge_once, sort_key="pay-1")
    # The answer was lost (the worker died after the write): Temporal runs the activity again.
    assert store.update("payments", "pay-1", charge_once, sort_key="pay-1") == {"status": "charged", "amount": 10}
    assert store.list_recent("payments") == ([{"status": "charged", "amount": 10}], 1)


def test_a_failure_inside_a_locked_change_and_its_retry_leave_consistent_stock(store):
    """A crash after the stock is written but before the reservation is: the retry must not take stock twice.

    PostgreSQL rolls the first attempt back; the JSON store keeps the stock written and
    its `last_change` tells the retry the change is done (as activities.py does)."""
    store.put("inventory", "stock", {"CB-010": 3, "last_change": None})

    def reserve(crash: bool) -> None:
        with store.locked("inventory", "stock"):
            stock = store.get("inventory", "stock")
            if store.get("reservations", "o1") is None and stock["last_change"] != "o1":
                stock = {"CB-010": stock["CB-010"] - 1, "last_change": "o1"}
                store.write_locked("inventory", "stock", stock)
            if crash:
                raise OSError("killed between the two writes")
            store.write_locked("reservations", "o1", {"status": "reserved"})

    with pytest.raises(OSError):
        reserve(crash=True)
    reserve(crash=False)
    reserve(crash=False)
    assert store.get("inventory", "stock")["CB-010"] == 2
    assert store.get("reservations", "o1") == {"status": "reserved"}
