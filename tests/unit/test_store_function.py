"""StoreFunction (functions/store/app.py) with events/store_messages.json, against the mocked tables."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from mars_common import aws
from mars_common.config import settings
from mars_common.store import item_events

from tests.conftest import event_file, load_function


@pytest.fixture
def store(mocked_stack: Any) -> Any:
    return load_function("store")


@pytest.fixture
def payload() -> dict[str, Any]:
    return event_file("store_messages.json")


def stored_events(app_id: str, message_id: str) -> list[dict[str, Any]] | None:
    item = aws.table(settings().messages_table).get_item(
        Key={"app_id": app_id, "message_id": message_id}, ConsistentRead=True).get("Item")
    return None if item is None else item_events(item)


def test_payload_file_is_what_the_aggregator_sends(payload: dict[str, Any]) -> None:
    assert set(payload) == {"messages"}
    assert len(payload["messages"]) >= 2
    for message in payload["messages"]:
        assert set(message) == {"app_id", "message_id", "events"}
        for ev in message["events"]:
            assert (ev["app_id"], ev["message_id"]) == (message["app_id"], message["message_id"])
            assert {"event", "created_at", "event_id", "received_at"} <= set(ev)


def test_every_message_is_stored(store: Any, payload: dict[str, Any], lambda_context: Any) -> None:
    result = store.lambda_handler(payload, lambda_context)
    expected = [len(m["events"]) for m in payload["messages"]]
    assert result == {"results": [{"ok": True, "stored": n, "duplicates": 0} for n in expected]}
    for message in payload["messages"]:
        events = stored_events(message["app_id"], message["message_id"])
        assert events is not None
        want = sorted(message["events"], key=lambda e: e["created_at"])
        assert [(e["event"], e["created_at"], e["event_id"], e["received_at"]) for e in events] == \
            [(e["event"], e["created_at"], e["event_id"], e["received_at"]) for e in want]
        for got, ev in zip(events, want, strict=True):
            assert got.get("meta") == ev.get("meta")


def test_a_failing_message_fails_alone(store: Any, payload: dict[str, Any], lambda_context: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    victim = payload["messages"][1]
    real = store.upsert_message

    def flaky(table: str, app_id: str, message_id: str, events: Any, retention_days: int, *more: Any) -> Any:
        if message_id == victim["message_id"]:
            raise RuntimeError("ProvisionedThroughputExceededException (simulated)")
        return real(table, app_id, message_id, events, retention_days, *more)

    monkeypatch.setattr(store, "upsert_message", flaky)
    results = store.lambda_handler(payload, lambda_context)["results"]
    assert [r["ok"] for r in results] == [m is not victim for m in payload["messages"]]
    assert "ProvisionedThroughputExceeded" in results[1]["error"]
    assert stored_events(victim["app_id"], victim["message_id"]) is None
    for message in payload["messages"]:
        if message is not victim:
            assert len(stored_events(message["app_id"], message["message_id"]) or []) == len(message["events"])


def test_an_invalid_event_fails_only_its_message(store: Any, payload: dict[str, Any], lambda_context: Any) -> None:
    bad = copy.deepcopy(payload)
    bad["messages"][0]["events"][0]["created_at"] = "not a time"
    bad["messages"][2]["events"] = "not a list"
    results = store.lambda_handler(bad, lambda_context)["results"]
    assert [r["ok"] for r in results] == [False, True, False]
    assert stored_events(bad["messages"][0]["app_id"], bad["messages"][0]["message_id"]) is None


def test_a_malformed_message_entry_fails_only_itself(store: Any, payload: dict[str, Any], lambda_context: Any) -> None:
    bad = copy.deepcopy(payload)
    bad["messages"].insert(1, {"app_id": "checkout"})  # no message_id, no events
    results = store.lambda_handler(bad, lambda_context)["results"]
    assert [r["ok"] for r in results] == [True, False, True, True]


def test_empty_payload(store: Any, lambda_context: Any) -> None:
    assert store.lambda_handler({"messages": []}, lambda_context) == {"results": []}


def test_redelivered_payload_doubles_nothing(store: Any, payload: dict[str, Any], lambda_context: Any) -> None:
    store.lambda_handler(payload, lambda_context)
    again = store.lambda_handler(copy.deepcopy(payload), lambda_context)
    assert all(r["ok"] for r in again["results"])
    for message in payload["messages"]:
        events = stored_events(message["app_id"], message["message_id"]) or []
        assert sorted(e["event_id"] for e in events) == sorted(e["event_id"] for e in message["events"])


def test_redelivered_payload_counts_duplicates(store: Any, payload: dict[str, Any], lambda_context: Any) -> None:
    store.lambda_handler(payload, lambda_context)
    again = store.lambda_handler(copy.deepcopy(payload), lambda_context)
    assert again["results"] == [{"ok": True, "stored": 0, "duplicates": len(m["events"])}
                                for m in payload["messages"]]


def test_a_warm_store_reads_an_apps_retention_once_a_minute_not_once_per_invocation(
        store: Any, payload: dict[str, Any], lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mars_common.store import put_lifecycle
    from mars_common.timeline import Lifecycle

    reads: list[str] = []
    real = store.get_lifecycle
    monkeypatch.setattr(store, "get_lifecycle", lambda table, app: reads.append(app) or real(table, app))
    apps = {m["app_id"] for m in payload["messages"]}
    for _ in range(3):  # three invocations of one warm environment
        assert all(r["ok"] for r in store.lambda_handler(copy.deepcopy(payload), lambda_context)["results"])
    assert sorted(reads) == sorted(apps)
    app = sorted(apps)[0]
    put_lifecycle(settings().apps_table, app, Lifecycle(("A",), 0, retention_days=7))
    monkeypatch.setattr(store.time, "monotonic", lambda: 10**9)  # a minute later: read again, the new value holds
    assert store.retention_days(app) == 7


def test_a_store_that_cannot_read_the_retention_fails_the_message_loudly(
        store: Any, payload: dict[str, Any], lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(table: str, app: str) -> Any:
        raise RuntimeError("AppsTable throttled")

    monkeypatch.setattr(store, "get_lifecycle", broken)
    results = store.lambda_handler(payload, lambda_context)["results"]
    assert results and all(not r["ok"] and "AppsTable throttled" in r["error"] for r in results)
