"""Mars end to end on the local stack, over real HTTP: ingest → FIFO queues → aggregator → store → API."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from .conftest import RunningStack, wait_timeline

OUTPUT_NAMES = {"ApiUrl", "EventsQueueUrls", "DeadLetterQueueUrl", "MessagesTableName"}


def uid(prefix: str = "m") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def ts(second: int, micro: int = 0) -> str:
    return f"2026-11-26T10:{second // 60:02d}:{second % 60:02d}.{micro:06d}Z"


def post(stack: RunningStack, path: str, body: Any, **kw: Any) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(stack.url(path), data=data, headers={"Content-Type": "application/json"}, timeout=30, **kw)


def test_outputs_follow_the_contract(mars: RunningStack) -> None:
    assert OUTPUT_NAMES <= set(mars.outputs)
    assert len(mars.outputs["EventsQueueUrls"].split(",")) == 10
    assert mars.outputs["ApiUrl"].startswith("http://127.0.0.1:")


def test_single_event_reaches_the_timeline(mars: RunningStack) -> None:
    mid = uid()
    resp = post(mars, "/api/event", {"app_id": "shop", "message_id": mid, "event": "CREATED",
                                     "created_at": "2026-11-26T10:00:00+02:00", "meta": {"region": "eu"}})
    assert resp.status_code == 202, resp.text
    body = resp.json()
    assert body["success"] is True and len(body["event_ids"]) == 1
    got = wait_timeline(mars, mid)
    (timeline,) = got["timelines"]
    assert timeline["app_id"] == "shop" and timeline["message_id"] == mid
    (event,) = timeline["events"]
    assert event == {"event": "CREATED", "created_at": "2026-11-26T08:00:00.000000Z", "event_id": body["event_ids"][0],
                     "received_at": event["received_at"], "meta": {"region": "eu"}}
    assert timeline["status"] == "unknown" and timeline["missing"] == []


def test_bulk_reaches_the_timeline_sorted_by_created_at(mars: RunningStack) -> None:
    mid = uid()
    names = ["A", "B", "C", "D", "E"]
    events = [{"app_id": "shop", "message_id": mid, "event": n, "created_at": ts(i)} for i, n in enumerate(names)]
    random.shuffle(events)
    resp = post(mars, "/api/event/bulk", {"events": events})
    assert resp.status_code == 202 and len(resp.json()["event_ids"]) == 5
    timeline = wait_timeline(mars, mid, events=5)["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == names


def test_thousand_events_submitted_twice_are_stored_exactly_once_in_order(mars: RunningStack) -> None:
    """1,000 events over 100 messages and 3 apps, each submitted twice (bulk and single, reshuffled)."""
    run = uuid.uuid4().hex[:6]
    apps = [f"app-{run}-{i}" for i in range(3)]
    expected: dict[tuple[str, str], list[str]] = defaultdict(list)
    events = []
    for n in range(1000):
        app, msg = apps[n % 3], f"msg-{run}-{n % 100}"
        ev = {"app_id": app, "message_id": msg, "event": f"STEP_{n}", "created_at": ts(n % 3600, n)}
        events.append(ev)
        expected[(app, msg)].append(ev["event"])
    first = list(events)
    for start in range(0, 1000, 500):
        assert post(mars, "/api/event/bulk", {"events": first[start:start + 500]}).status_code == 202
    second = list(events)
    random.Random(7).shuffle(second)
    # the duplicates arrive again: half as bulk requests, half as single events from 8 concurrent clients
    for start in range(0, 500, 250):
        assert post(mars, "/api/event/bulk", {"events": second[start:start + 250]}).status_code == 202
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda ev: post(mars, "/api/event", ev).status_code, second[500:]))
    assert set(codes) == {202}
    mars.wait_drained(timeout=120)
    for (app, msg), names in expected.items():
        timeline = wait_timeline(mars, msg, app_id=app, events=len(names))["timelines"][0]
        got = [e["event"] for e in timeline["events"]]
        want = sorted(names, key=lambda name: ts(int(name.split("_")[1]) % 3600, int(name.split("_")[1])))
        assert got == want, f"{app}/{msg}: stored {len(got)} events, expected {len(want)} exactly once, in order"
    # a message id shared by three apps lists three timelines
    shared = requests.get(mars.url(f"/api/messages/msg-{run}-0"), timeout=10).json()
    assert sorted(t["app_id"] for t in shared["timelines"]) == sorted({apps[n % 3] for n in range(0, 1000, 100)})


INVALID = [
    ("missing field", {"app_id": "a", "event": "E"}, "message_id"),
    ("unknown field", {"app_id": "a", "message_id": "{mid}", "event": "E", "colour": "red"}, "colour"),
    ("bad timestamp", {"app_id": "a", "message_id": "{mid}", "event": "E", "created_at": "yesterday"}, "created_at"),
    ("wrong type", {"app_id": "a", "message_id": "{mid}", "event": 42}, "event"),
    ("oversize", {"app_id": "a", "message_id": "{mid}", "event": "E" * 129}, "event"),
    ("bad app id", {"app_id": "a b/c", "message_id": "{mid}", "event": "E"}, "app_id"),
    ("control chars", {"app_id": "a", "message_id": "{mid}\u0007", "event": "E"}, "message_id"),
    ("meta not flat", {"app_id": "a", "message_id": "{mid}", "event": "E", "meta": {"x": {"y": 1}}}, "meta"),
]


@pytest.mark.parametrize("case,payload,field", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_events_get_400_with_field_details_and_enqueue_nothing(mars: RunningStack, case: str,
                                                                     payload: dict[str, Any], field: str) -> None:
    mid = uid("bad")
    body = json.loads(json.dumps(payload).replace("{mid}", mid))
    resp = post(mars, "/api/event", body)
    assert resp.status_code == 400, resp.text
    err = resp.json()
    assert err["success"] is False and err["error"]["code"] == "VALIDATION_ERROR"
    assert field in [d["field"] for d in err["error"]["details"]]
    # the same item inside a bulk rejects the whole request, with its index, and stores none of it
    good = {"app_id": "a", "message_id": mid, "event": "GOOD"}
    resp = post(mars, "/api/event/bulk", {"events": [good, body, good | {"event": "GOOD2"}]})
    assert resp.status_code == 400
    assert {(d["index"], d["field"]) for d in resp.json()["error"]["details"]} >= {(1, field)}
    mars.wait_drained()
    assert requests.get(mars.url(f"/api/messages/{mid}"), timeout=10).status_code == 404


def test_malformed_requests(mars: RunningStack) -> None:
    resp = post(mars, "/api/event", b'{"app_id": "a", ')
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "INVALID_JSON"
    resp = post(mars, "/api/event", b"")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "INVALID_JSON"
    resp = post(mars, "/api/event", [1, 2])
    assert resp.status_code == 400
    many = [{"app_id": "a", "message_id": uid(), "event": "E"} for _ in range(501)]
    resp = post(mars, "/api/event/bulk", {"events": many})
    assert resp.status_code == 400 and resp.json()["error"]["details"][0]["field"] == "events"
    resp = requests.get(mars.url("/api/nope"), timeout=10)
    assert resp.status_code == 403  # API Gateway's answer for an unknown route


def test_lifecycle_missing_and_status(mars: RunningStack) -> None:
    app = uid("life")
    resp = requests.put(mars.url(f"/api/apps/{app}/lifecycle"),
                        json={"events": ["CREATED", "SENT", "DELIVERED", "ACKED"], "sla_seconds": 300}, timeout=10)
    assert resp.status_code == 200
    assert requests.get(mars.url(f"/api/apps/{app}/lifecycle"), timeout=10).json()["events"][0] == "CREATED"
    mid = uid()
    for i, name in enumerate(["CREATED", "DELIVERED", "RETRIED"]):
        assert post(mars, "/api/event", {"app_id": app, "message_id": mid, "event": name,
                                         "created_at": ts(i)}).status_code == 202
    timeline = wait_timeline(mars, mid, events=3)["timelines"][0]
    assert timeline["missing"] == ["SENT", "ACKED"] and timeline["status"] == "in_progress"
    assert timeline["first_seen"] == ts(0) and timeline["last_seen"] == ts(2)
    post(mars, "/api/event/bulk", {"events": [{"app_id": app, "message_id": mid, "event": n, "created_at": ts(9)}
                                              for n in ("SENT", "ACKED")]})
    timeline = wait_timeline(mars, mid, events=5)["timelines"][0]
    assert timeline["missing"] == [] and timeline["status"] == "complete"
    bad = requests.put(mars.url(f"/api/apps/{app}/lifecycle"), json={"events": [], "sla_seconds": -1}, timeout=10)
    assert bad.status_code == 400 and {d["field"] for d in bad.json()["error"]["details"]} == {"events", "sla_seconds"}


def test_list_messages_newest_first_paginated_and_filtered(mars: RunningStack) -> None:
    app = uid("list")
    requests.put(mars.url(f"/api/apps/{app}/lifecycle"), json={"events": ["A", "B"], "sla_seconds": 600}, timeout=10)
    mids = [f"{app}-m{i}" for i in range(7)]
    for i, mid in enumerate(mids):
        events = [{"app_id": app, "message_id": mid, "event": "A"}]
        if i % 2 == 0:
            events.append({"app_id": app, "message_id": mid, "event": "B"})
        assert post(mars, "/api/event/bulk", {"events": events}).status_code == 202
        wait_timeline(mars, mid, events=len(events))
        time.sleep(0.01)
    seen, cursor = [], None
    while True:
        params = {"app_id": app, "limit": 3, **({"cursor": cursor} if cursor else {})}
        page = requests.get(mars.url("/api/messages"), params=params, timeout=10).json()
        assert len(page["items"]) <= 3 and all("events" not in item for item in page["items"])
        seen += [item["message_id"] for item in page["items"]]
        cursor = page["cursor"]
        if not cursor:
            break
    assert seen == list(reversed(mids))
    complete = requests.get(mars.url("/api/messages"), params={"app_id": app, "status": "complete"}, timeout=10).json()
    assert sorted(i["message_id"] for i in complete["items"]) == sorted(mids[0::2])
    resp = requests.get(mars.url("/api/messages"), params={"app_id": app, "status": "lost"}, timeout=10)
    assert resp.status_code == 400


def test_queue_stats_and_status(mars: RunningStack) -> None:
    stats = requests.get(mars.url("/api/q/stats"), timeout=10).json()
    assert len(stats["queues"]) == 10 and len(stats["dead_letter"]) == 5
    assert all({"name", "visible", "in_flight", "oldest_age_seconds"} <= set(q) for q in stats["queues"])
    assert stats["event_collector_q"] == sum(q["visible"] for q in stats["queues"])
    status = requests.get(mars.url("/status"), timeout=10)
    assert status.status_code == 200 and status.json()["status"] == "ok"
    assert len(status.json()["checks"]) == 17  # 2 tables, 10 queues, 2 DLQs, 3 failure queues


def test_create_event_load_route(mars: RunningStack) -> None:
    resp = requests.get(mars.url("/api/create_event"), params={"count": 25}, timeout=10)
    assert resp.status_code == 202 and len(resp.json()["event_ids"]) == 25
    assert requests.get(mars.url("/api/create_event"), params={"count": 0}, timeout=10).status_code == 400


def test_poison_message_goes_to_the_dead_letter_queue_without_blocking(mars: RunningStack) -> None:
    sqs = mars.client("sqs")
    url = mars.outputs["EventsQueueUrls"].split(",")[3]
    sqs.send_message(QueueUrl=url, MessageBody="this is not an event", MessageGroupId="poison-" + uid(),
                     MessageDeduplicationId=uid())
    mid = uid()
    assert post(mars, "/api/event", {"app_id": "shop", "message_id": mid, "event": "AFTER_POISON"}).status_code == 202
    wait_timeline(mars, mid, timeout=10)  # other messages flow while the poison is retried

    def dead() -> int:
        stats = requests.get(mars.url("/api/q/stats"), timeout=10).json()
        return int(stats["dead_letter"][0]["visible"])

    deadline = time.monotonic() + 40
    while dead() < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dead() >= 1, "the poison message reached the dead-letter queue (maxReceiveCount 3, visibility 2 s)"
