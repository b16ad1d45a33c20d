"""The websocket routes (functions/websocket) and the broadcaster (functions/broadcast) with
events/*.json, against template.yaml's tables under mock_aws. The @connections endpoint is a fake
that records frames and answers 410 for connections the test declares gone (moto's own version
never raises 410)."""

from __future__ import annotations

import copy
import json
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from mars_common import live
from mars_common.config import settings
from mars_common.events import parse_event
from mars_common.store import put_lifecycle, upsert_message
from mars_common.timeline import Lifecycle

from tests.conftest import event_file, load_function, table_stream


class FakeConnections:
    """apigatewaymanagementapi's post_to_connection: frames per connection; 410 for `gone`."""

    def __init__(self) -> None:
        self.frames: dict[str, list[dict[str, Any]]] = {}
        self.gone: set[str] = set()
        self.broken: set[str] = set()

    def post_to_connection(self, ConnectionId: str, Data: bytes) -> dict[str, Any]:  # noqa: N803 - boto3's names
        if ConnectionId in self.gone:
            raise ClientError({"Error": {"Code": "GoneException", "Message": ""},
                               "ResponseMetadata": {"HTTPStatusCode": 410}}, "PostToConnection")
        if ConnectionId in self.broken:
            raise ClientError({"Error": {"Code": "InternalServerError", "Message": "boom"},
                               "ResponseMetadata": {"HTTPStatusCode": 500}}, "PostToConnection")
        assert len(Data) <= live.MAX_MESSAGE_BYTES
        self.frames.setdefault(ConnectionId, []).append(json.loads(Data))
        return {}

    def types(self, connection_id: str) -> list[str]:
        return [f["type"] for f in self.frames.get(connection_id, [])]


@pytest.fixture
def connections(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> FakeConnections:
    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    return fake


@pytest.fixture
def ws() -> Any:
    return load_function("websocket")


@pytest.fixture
def broadcast() -> Any:
    return load_function("broadcast")


def ws_event(name: str, connection_id: str = "Ld9nMeBfIAMCJtg=", body: Any = None) -> dict[str, Any]:
    event = copy.deepcopy(event_file(name))
    event["requestContext"]["connectionId"] = connection_id
    if body is not None:
        event["body"] = body if isinstance(body, str) else json.dumps(body)
        if isinstance(body, dict) and body.get("action") in ("subscribe", "unsubscribe", "ping"):
            event["requestContext"]["routeKey"] = body["action"]  # API Gateway's route selection
    return event


def rows(connection_id: str) -> list[dict[str, Any]]:
    return live.connection_rows(settings().connections_table, connection_id)


def store(app_id: str, message_id: str, *names: str) -> None:
    events = [parse_event({"app_id": app_id, "message_id": message_id, "event": n,
                           "created_at": f"2026-11-26T10:00:0{i}Z"}) for i, n in enumerate(names)]
    upsert_message(settings().messages_table, app_id, message_id, events, 30)


def stream_records(app_id: str, message_id: str) -> list[dict[str, Any]]:
    """One message's records of MessagesTable's stream, as Lambda would deliver them."""
    return [r for r in table_stream(settings().messages_table)
            if r["dynamodb"]["Keys"] == {"app_id": {"S": app_id}, "message_id": {"S": message_id}}]


# --- websocket routes ------------------------------------------------------------------------------

def test_connect_stores_the_connection_with_a_ttl(connections: FakeConnections, ws: Any, lambda_context: Any) -> None:
    assert ws.lambda_handler(ws_event("websocket_connect.json", "c1"), lambda_context) == {"statusCode": 200}
    (row,) = rows("c1")
    assert row["sk"] == live.CONNECTION_SK and row["source_ip"] == "203.0.113.7"
    assert time.time() + 2 * 3600 < row["expires_at"] <= time.time() + live.CONNECTION_TTL_SECONDS + 5
    assert connections.frames == {}  # nothing may be posted before the handshake completes


def test_subscribe_to_a_message_acknowledges_then_sends_the_current_timeline(
        connections: FakeConnections, ws: Any, lambda_context: Any) -> None:
    put_lifecycle(settings().apps_table, "checkout", Lifecycle(("MESSAGE_CREATED", "MESSAGE_SENT", "MESSAGE_ACKED"), 300))
    store("checkout", "order-1001", "MESSAGE_CREATED")
    ws.lambda_handler(ws_event("websocket_connect.json", "c1"), lambda_context)
    assert ws.lambda_handler(ws_event("websocket_subscribe.json", "c1"), lambda_context) == {"statusCode": 200}
    subscribed, timeline = connections.frames["c1"]
    assert subscribed == {"type": "subscribed", "app_id": "checkout", "message_id": "order-1001"}
    assert timeline["type"] == "timeline" and timeline["new_events"] == []
    assert [e["event"] for e in timeline["events"]] == ["MESSAGE_CREATED"]
    assert timeline["missing"] == ["MESSAGE_SENT", "MESSAGE_ACKED"] and timeline["status"] == "in_progress"
    assert {r["sk"] for r in rows("c1")} == {"conn", "msg#checkout#order-1001"}


def test_subscribe_to_an_unknown_message_sends_an_empty_timeline(connections: FakeConnections, ws: Any,
                                                                 lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1"), lambda_context)
    timeline = connections.frames["c1"][1]
    assert (timeline["events"], timeline["status"], timeline["first_seen"]) == ([], "unknown", None)


def test_subscribe_to_an_app_sends_no_timeline(connections: FakeConnections, ws: Any, lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe_app.json", "c1"), lambda_context)
    assert connections.frames["c1"] == [{"type": "subscribed", "app_id": "checkout"}]
    (sub,) = [r for r in rows("c1") if r["sk"] != "conn"]
    assert (sub["sk"], sub["topic"]) == ("app#checkout", "app#checkout")


@pytest.mark.parametrize("body,fields", [
    ({"action": "subscribe"}, {"app_id"}),
    ({"action": "subscribe", "app_id": "bad app"}, {"app_id"}),
    ({"action": "subscribe", "app_id": "a", "message_id": ""}, {"message_id"}),
    ({"action": "subscribe", "app_id": "a", "message_id": "x" * 257}, {"message_id"}),
    ({"action": "subscribe", "app_id": "a", "message_id": "line\nbreak"}, {"message_id"}),
    ({"action": "subscribe", "app_id": "a", "message_id": 7}, {"message_id"}),
    ({"action": "subscribe", "app_id": "a", "mesage_id": "typo"}, {"mesage_id"}),
])
def test_a_bad_subscription_gets_an_error_frame_naming_the_field(connections: FakeConnections, ws: Any,
                                                                 lambda_context: Any, body: dict[str, Any],
                                                                 fields: set[str]) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", body), lambda_context)
    (frame,) = connections.frames["c1"]
    assert (frame["type"], frame["code"], frame["action"]) == ("error", "VALIDATION_ERROR", "subscribe")
    assert {d["field"] for d in frame["details"]} == fields
    assert rows("c1") == []


def test_subscriptions_per_connection_are_bounded(connections: FakeConnections, ws: Any, lambda_context: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(live, "MAX_SUBSCRIPTIONS", 2)
    for i in range(3):
        ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "subscribe", "app_id": f"app{i}"}),
                          lambda_context)
    assert connections.types("c1") == ["subscribed", "subscribed", "error"]
    assert connections.frames["c1"][-1]["code"] == "TOO_MANY_SUBSCRIPTIONS"
    # re-subscribing to one it holds is not a new subscription
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "subscribe", "app_id": "app0"}),
                      lambda_context)
    assert connections.types("c1")[-1] == "subscribed"


def test_unsubscribe_removes_only_that_subscription(connections: FakeConnections, ws: Any, lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe_app.json", "c1"), lambda_context)
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1"), lambda_context)
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "unsubscribe", "app_id": "checkout"}),
                      lambda_context)
    assert connections.frames["c1"][-1] == {"type": "unsubscribed", "app_id": "checkout", "existed": True}
    assert {r["sk"] for r in rows("c1")} == {"msg#checkout#order-1001"}
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "unsubscribe", "app_id": "checkout"}),
                      lambda_context)
    assert connections.frames["c1"][-1]["existed"] is False


def test_ping_pongs(connections: FakeConnections, ws: Any, lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_ping.json", "c1"), lambda_context)
    assert connections.frames["c1"] == [{"type": "pong"}]


@pytest.mark.parametrize("body,code", [("subscribe me please", "INVALID_JSON"), ("[1, 2]", "INVALID_JSON"),
                                       ({"app_id": "a"}, "MISSING_ACTION"), ({"action": "dance"}, "UNKNOWN_ACTION"),
                                       ({"action": 42}, "UNKNOWN_ACTION")])
def test_default_route_says_what_was_wrong(connections: FakeConnections, ws: Any, lambda_context: Any,
                                           body: Any, code: str) -> None:
    ws.lambda_handler(ws_event("websocket_default.json", "c1", body), lambda_context)
    (frame,) = connections.frames["c1"]
    assert (frame["type"], frame["code"]) == ("error", code) and frame["message"]


def test_disconnect_removes_the_connection_and_its_subscriptions(connections: FakeConnections, ws: Any,
                                                                 lambda_context: Any) -> None:
    for name in ("websocket_connect.json", "websocket_subscribe.json", "websocket_subscribe_app.json"):
        ws.lambda_handler(ws_event(name, "c1"), lambda_context)
    ws.lambda_handler(ws_event("websocket_connect.json", "c2"), lambda_context)
    assert len(rows("c1")) == 3
    ws.lambda_handler(ws_event("websocket_disconnect.json", "c1"), lambda_context)
    assert rows("c1") == [] and len(rows("c2")) == 1


# --- broadcaster -----------------------------------------------------------------------------------

def test_the_sample_stream_event_pushes_the_new_event(connections: FakeConnections, broadcast: Any, ws: Any,
                                                      lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1"), lambda_context)
    connections.frames.clear()
    result = broadcast.lambda_handler(event_file("broadcast_stream.json"), lambda_context)
    assert result == {"batchItemFailures": []}
    first, second = connections.frames["c1"]
    assert [e["event"] for e in first["new_events"]] == ["MESSAGE_CREATED"]
    assert [e["event"] for e in second["events"]] == ["MESSAGE_CREATED", "MESSAGE_SENT"]
    assert [e["event"] for e in second["new_events"]] == ["MESSAGE_SENT"]
    assert second["last_seen"] == "2026-11-26T10:00:01.500000Z"


def test_a_change_reaches_message_and_app_subscribers_only(connections: FakeConnections, broadcast: Any, ws: Any,
                                                           lambda_context: Any) -> None:
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "SENT"), 60))
    subs = {"msg": {"action": "subscribe", "app_id": "shop", "message_id": "m1"},
            "app": {"action": "subscribe", "app_id": "shop"},
            "other_msg": {"action": "subscribe", "app_id": "shop", "message_id": "m2"},
            "same_id_other_app": {"action": "subscribe", "app_id": "bank", "message_id": "m1"},
            "other_app": {"action": "subscribe", "app_id": "bank"}}
    for conn, body in subs.items():
        ws.lambda_handler(ws_event("websocket_subscribe.json", conn, body), lambda_context)
    connections.frames.clear()
    store("shop", "m1", "CREATED")
    store("shop", "m1", "CREATED", "SENT")  # one new event, one duplicate
    broadcast.lambda_handler({"Records": stream_records("shop", "m1")}, lambda_context)
    assert set(connections.frames) == {"msg", "app"}
    for conn in ("msg", "app"):
        pushes = connections.frames[conn]
        assert [[e["event"] for e in p["new_events"]] for p in pushes] == [["CREATED"], ["SENT"]]
        assert pushes[-1]["status"] == "complete" and pushes[-1]["missing"] == []
        assert pushes[0]["missing"] == ["SENT"] and pushes[0]["status"] == "in_progress"


def test_a_duplicate_delivery_pushes_nothing(connections: FakeConnections, broadcast: Any, ws: Any,
                                             lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe_app.json", "c1"), lambda_context)
    store("checkout", "dup", "CREATED")
    store("checkout", "dup", "CREATED")  # redelivered: updated_at changes, no event is new
    connections.frames.clear()
    broadcast.lambda_handler({"Records": stream_records("checkout", "dup")}, lambda_context)
    assert len(connections.frames["c1"]) == 1


def test_a_gone_connection_is_removed_and_the_others_still_get_the_push(
        connections: FakeConnections, broadcast: Any, ws: Any, lambda_context: Any) -> None:
    for conn in ("alive", "stale"):
        ws.lambda_handler(ws_event("websocket_connect.json", conn), lambda_context)
        ws.lambda_handler(ws_event("websocket_subscribe_app.json", conn), lambda_context)
    connections.gone.add("stale")
    connections.frames.clear()
    result = broadcast.lambda_handler(event_file("broadcast_stream.json"), lambda_context)
    assert result == {"batchItemFailures": []}  # a 410 is not a failure to retry
    assert len(connections.frames["alive"]) == 2
    assert rows("stale") == [] and len(rows("alive")) == 2


def test_a_failed_push_reports_that_record_for_a_retry(connections: FakeConnections, broadcast: Any, ws: Any,
                                                       lambda_context: Any) -> None:
    ws.lambda_handler(ws_event("websocket_subscribe.json", "ok"), lambda_context)
    ws.lambda_handler(ws_event("websocket_subscribe.json", "flaky", {"action": "subscribe", "app_id": "checkout",
                                                                     "message_id": "order-1002"}), lambda_context)
    connections.broken.add("flaky")
    connections.frames.clear()
    event = event_file("broadcast_stream.json")
    other = copy.deepcopy(event["Records"][1])
    other["dynamodb"]["SequenceNumber"] = "111100000000000000000003"
    for image in ("NewImage", "OldImage"):
        other["dynamodb"][image]["message_id"] = {"S": "order-1002"}
    result = broadcast.lambda_handler({"Records": [*event["Records"], other]}, lambda_context)
    assert result == {"batchItemFailures": [{"itemIdentifier": "111100000000000000000003"}]}
    assert len(connections.frames["ok"]) == 2 and len(rows("flaky")) == 1  # not mistaken for a gone one


def test_a_batch_whose_every_push_failed_fails_the_invocation(connections: FakeConnections, broadcast: Any, ws: Any,
                                                              lambda_context: Any) -> None:
    """Powertools raises when every record failed: Lambda then retries (and bisects) the whole batch."""
    from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

    ws.lambda_handler(ws_event("websocket_subscribe_app.json", "flaky"), lambda_context)
    connections.broken.add("flaky")
    with pytest.raises(BatchProcessingError):
        broadcast.lambda_handler(event_file("broadcast_stream.json"), lambda_context)


def test_removals_and_no_subscribers_push_nothing(connections: FakeConnections, broadcast: Any,
                                                  lambda_context: Any) -> None:
    event = event_file("broadcast_stream.json")
    removal = copy.deepcopy(event["Records"][1])
    removal["eventName"] = "REMOVE"
    removal["dynamodb"].pop("NewImage")
    assert broadcast.lambda_handler({"Records": [removal, *event["Records"]]}, lambda_context) == \
        {"batchItemFailures": []}
    assert connections.frames == {}


def test_a_batchs_subscriber_lookups_run_side_by_side_once_each_and_a_failed_one_fails_its_record(
        connections: FakeConnections, broadcast: Any, ws: Any, lambda_context: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """40 single-event messages in one batch: one lookup per message and one for the app, as before, but up
    to 8 at a time (they waited on each other); a lookup that fails fails its own record only."""
    import threading
    import time

    ws.lambda_handler(ws_event("websocket_subscribe.json", "watcher", {"action": "subscribe", "app_id": "shop",
                                                                        "message_id": "m07"}), lambda_context)
    ws.lambda_handler(ws_event("websocket_subscribe_app.json", "everything"), lambda_context)  # app "checkout"
    for i in range(40):
        store("shop", f"m{i:02d}", "CREATED")
    records = [r for r in table_stream(settings().messages_table) if r["dynamodb"]["Keys"]["app_id"]["S"] == "shop"]
    assert {r["dynamodb"]["Keys"]["message_id"]["S"] for r in records} == {f"m{i:02d}" for i in range(40)}
    real = live.message_subscribers
    calls: list[str] = []
    running, peak = [0], [0]
    lock = threading.Lock()

    def slow(table: str, app_id: str, message_id: str) -> set[str]:
        with lock:
            calls.append(message_id)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.02)
            if message_id == "m13":
                raise RuntimeError("throttled")
            return real(table, app_id, message_id)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(live, "message_subscribers", slow)
    connections.frames.clear()
    result = broadcast.lambda_handler({"Records": records}, lambda_context)
    failed = [f["itemIdentifier"] for f in result["batchItemFailures"]]
    m13 = {r["dynamodb"]["SequenceNumber"] for r in records if r["dynamodb"]["Keys"]["message_id"]["S"] == "m13"}
    assert failed and set(failed) <= m13  # its lookup failed (prefetch, then its own): only m13 is retried
    assert sorted(c for c in calls if c != "m13") == [f"m{i:02d}" for i in range(40) if i != 13]  # once each
    assert calls.count("m13") == 1 + len(failed)
    assert peak[0] > 1, "the lookups ran one after another"
    assert [f["message_id"] for f in connections.frames["watcher"]] == ["m07"]
    assert "everything" not in connections.frames  # another app's subscriber


# --- frames ----------------------------------------------------------------------------------------

def test_a_huge_timeline_is_trimmed_to_one_websocket_message() -> None:
    events = [{"event": f"STEP_{i}", "created_at": f"2026-11-26T10:{i // 60 % 60:02d}:{i % 60:02d}.000000Z",
               "received_at": None, "event_id": f"id{i:05d}", "meta": {"note": "x" * 200}} for i in range(3000)]
    timeline = {"app_id": "a", "message_id": "m", "events": events, "missing": [], "status": "unknown",
                "first_seen": events[0]["created_at"], "last_seen": events[-1]["created_at"], "updated_at": None}
    frame = live.timeline_frame(timeline, {"id02999", "id02998"})
    size = len(live.encode(frame))
    assert size <= live.MAX_MESSAGE_BYTES
    sent = frame["truncated"]["events_sent"]
    assert frame["truncated"]["events_total"] == 3000 and 0 < sent < 3000
    assert frame["events"] == events[-sent:]  # the newest are kept
    assert {e["event_id"] for e in frame["new_events"]} == {"id02999", "id02998"}
    one_more = {**frame, "events": events[-sent - 1:]}
    assert len(live.encode(one_more)) > live.MAX_MESSAGE_BYTES - 300  # it kept as many as fit (give or take one)


def test_a_small_timeline_is_sent_whole() -> None:
    timeline = {"app_id": "a", "message_id": "m", "events": [{"event": "E", "created_at": "2026-11-26T10:00:00.000000Z",
                                                              "received_at": None, "event_id": "e1"}],
                "missing": [], "status": "unknown", "first_seen": None, "last_seen": None, "updated_at": None}
    frame = live.timeline_frame(timeline, {"e1"})
    assert "truncated" not in frame and frame["new_events"] == frame["events"]
