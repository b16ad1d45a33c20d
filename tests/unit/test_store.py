"""MessagesTable / AppsTable access (mars_common.store) against template.yaml's tables under moto."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mars_common import aws
from mars_common.config import settings
from mars_common.events import Event, parse_event
from mars_common.store import (
    UpsertResult,
    decode_cursor,
    encode_cursor,
    get_items,
    get_lifecycle,
    item_events,
    list_messages,
    put_lifecycle,
    read_timeline,
    to_timeline,
    upsert_message,
)
from mars_common.timeline import COMPLETE, IN_PROGRESS, STUCK, UNKNOWN, Lifecycle, summarize

RECEIVED = "2024-05-01T12:00:00.000000Z"
LIFECYCLE = Lifecycle(events=("CREATED", "QUEUED", "SENT", "ACKED"), sla_seconds=300)


def make(message_id: str, event: str, created_at: str, *, app_id: str = "checkout", event_id: str | None = None,
         meta: dict[str, str] | None = None, received_at: str | None = None) -> Event:
    data: dict[str, Any] = {"app_id": app_id, "message_id": message_id, "event": event, "created_at": created_at}
    if event_id is not None:
        data["event_id"] = event_id
    if meta:
        data["meta"] = meta
    return parse_event(data, received_at=received_at)


@pytest.fixture
def tables(mocked_stack: Any) -> tuple[str, str]:
    cfg = settings()
    assert cfg.messages_table and cfg.apps_table
    return cfg.messages_table, cfg.apps_table


def put(table: str, events: list[Event], retention_days: int = 30) -> UpsertResult:
    first = events[0]
    return upsert_message(table, first.app_id, first.message_id, events, retention_days)


def raw_item(table: str, app_id: str, message_id: str) -> dict[str, Any]:
    return aws.table(table).get_item(Key={"app_id": app_id, "message_id": message_id}, ConsistentRead=True)["Item"]


# --- idempotent upsert --------------------------------------------------------------------------

def test_upsert_writes_one_item_per_message(tables: tuple[str, str]) -> None:
    messages, _ = tables
    a = make("m1", "CREATED", "2024-05-01T10:00:00Z")
    b = make("m1", "QUEUED", "2024-05-01T10:00:01Z", meta={"queue": "q1"})
    assert put(messages, [a, b]) == UpsertResult(stored=2, duplicates=0)
    item = raw_item(messages, "checkout", "m1")
    assert item["e:" + a.event_id] == {"event": "CREATED", "created_at": a.created_at, "received_at": a.received_at}
    assert item["e:" + b.event_id]["meta"] == {"queue": "q1"}
    assert aws.table(messages).scan()["Count"] == 1


def test_same_event_twice_is_stored_once(tables: tuple[str, str]) -> None:
    messages, _ = tables
    a = make("m1", "CREATED", "2024-05-01T10:00:00Z")
    b = make("m1", "SENT", "2024-05-01T10:00:02Z")
    put(messages, [a])
    put(messages, [a, b])
    put(messages, [b, a, a])
    events = item_events(raw_item(messages, "checkout", "m1"))
    assert [e["event_id"] for e in events] == [a.event_id, b.event_id]


def test_duplicates_within_one_call_are_counted(tables: tuple[str, str]) -> None:
    messages, _ = tables
    a = make("m1", "CREATED", "2024-05-01T10:00:00Z")
    b = make("m1", "SENT", "2024-05-01T10:00:02Z")
    assert put(messages, [a, a, b, a]) == UpsertResult(stored=2, duplicates=2)


def test_redelivered_events_are_counted_as_duplicates(tables: tuple[str, str]) -> None:
    messages, _ = tables
    a = make("m1", "CREATED", "2024-05-01T10:00:00Z")
    b = make("m1", "SENT", "2024-05-01T10:00:02Z")
    put(messages, [a])
    assert put(messages, [a, b]) == UpsertResult(stored=1, duplicates=1)


def test_first_write_of_an_event_id_wins(tables: tuple[str, str]) -> None:
    messages, _ = tables
    first = make("m1", "CREATED", "2024-05-01T10:00:00Z", event_id="client-1")
    retry = make("m1", "CREATED_AGAIN", "2024-05-01T11:00:00Z", event_id="client-1")
    put(messages, [first])
    put(messages, [retry])
    events = item_events(raw_item(messages, "checkout", "m1"))
    assert [(e["event"], e["event_id"]) for e in events] == [("CREATED", "client-1")]


def test_more_events_than_one_update_expression_holds(tables: tuple[str, str]) -> None:
    messages, _ = tables
    events = [make("big", f"STEP_{i:03d}", f"2024-05-01T10:{i // 60:02d}:{i % 60:02d}Z") for i in range(120)]
    assert put(messages, events) == UpsertResult(stored=120, duplicates=0)
    # 120 events outgrow one item: the timeline is paged (tests/unit/test_long_timelines.py)
    stored = read_timeline(messages, settings().events_table, "checkout", "big", None, limit=1000)
    assert stored is not None and stored["event_count"] == 120 and stored["cursor"] is None
    assert [e["event"] for e in stored["events"]] == [f"STEP_{i:03d}" for i in range(120)]


# --- the property: interleaving, duplication, reordering, batching -----------------------------

POOL = [
    make("X", "CREATED", "2024-05-01T10:00:00Z", event_id="x:1"),
    make("X", "QUEUED", "2024-05-01T10:00:01.5Z", event_id="x.2"),
    make("X", "SENT", "2024-05-01T10:00:01.5Z", event_id="x-3", received_at="2024-05-01T12:00:01.000000Z"),
    make("X", "RETRY", "2024-05-01T10:00:01.5Z", event_id="x-0", received_at="2024-05-01T12:00:01.000000Z"),
    make("X", "DELIVERED", "2024-05-01T09:59:00+00:00", meta={"via": "smtp"}),
    make("X", "ACKED", "2024-05-01T12:00:03+02:00"),
    make("Y", "CREATED", "2024-05-01T10:00:00Z", event_id="x:1"),  # same client id, other message
    make("Y", "SENT", "2024-05-01T10:00:05Z"),
]
_run = itertools.count()


def _expected(events: list[Event]) -> list[dict[str, Any]]:
    out = []
    for ev in sorted(events, key=lambda e: (e.created_at, e.received_at, e.event_id)):
        entry: dict[str, Any] = {"event": ev.event, "created_at": ev.created_at, "received_at": ev.received_at,
                                 "event_id": ev.event_id}
        if ev.meta:
            entry["meta"] = ev.meta
        out.append(entry)
    return out


@given(data=st.data())
@hsettings(max_examples=40, deadline=None, database=None, derandomize=True,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_delivery_order_and_batching_yields_the_same_timeline(tables: tuple[str, str], data: Any) -> None:
    messages, _ = tables
    base = data.draw(st.permutations(range(len(POOL))), label="order")
    extra = data.draw(st.lists(st.integers(0, len(POOL) - 1), max_size=8), label="duplicates")
    deliveries = data.draw(st.permutations([*base, *extra]), label="deliveries")
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(deliveries) - 1)), max_size=5), label="cuts"))
    run = next(_run)
    prefix = f"run{run}-"
    bounds = [0, *cuts, len(deliveries)]
    for lo, hi in itertools.pairwise(bounds):
        by_message: dict[str, list[Event]] = defaultdict(list)
        for i in deliveries[lo:hi]:
            by_message[POOL[i].message_id].append(POOL[i])
        for message_id, evs in by_message.items():
            upsert_message(messages, "checkout", prefix + message_id, evs, 30)
    for message_id in ("X", "Y"):
        stored = item_events(raw_item(messages, "checkout", prefix + message_id))
        assert stored == _expected([e for e in POOL if e.message_id == message_id])


# --- reads --------------------------------------------------------------------------------------

def test_events_are_sorted_by_created_at_whatever_the_arrival_order(tables: tuple[str, str]) -> None:
    messages, _ = tables
    late = make("m1", "ACKED", "2024-05-01T10:00:09Z")
    early = make("m1", "CREATED", "2024-05-01T11:00:00+02:00")  # 09:00 UTC: earliest
    middle = make("m1", "SENT", "2024-05-01T10:00:05")
    tie_b = make("m1", "TIE_B", "2024-05-01T10:00:07Z", received_at="2024-05-01T12:00:02.000000Z")
    tie_a = make("m1", "TIE_A", "2024-05-01T10:00:07Z", received_at="2024-05-01T12:00:01.000000Z")
    put(messages, [late])
    put(messages, [tie_b, middle])
    put(messages, [tie_a, early])
    names = [e["event"] for e in item_events(raw_item(messages, "checkout", "m1"))]
    assert names == ["CREATED", "SENT", "TIE_A", "TIE_B", "ACKED"]


def test_lookup_by_message_id_alone_spans_apps(tables: tuple[str, str]) -> None:
    messages, _ = tables
    put(messages, [make("shared-id", "CREATED", "2024-05-01T10:00:00Z", app_id="zeta")])
    put(messages, [make("shared-id", "CREATED", "2024-05-01T10:00:00Z", app_id="alpha")])
    put(messages, [make("other-id", "CREATED", "2024-05-01T10:00:00Z", app_id="alpha")])
    items = get_items(messages, "shared-id")
    assert [(i["app_id"], i["message_id"]) for i in items] == [("alpha", "shared-id"), ("zeta", "shared-id")]
    assert all(len(item_events(i)) == 1 for i in items)  # full items, not the KEYS_ONLY index projection
    assert [i["app_id"] for i in get_items(messages, "shared-id", app_id="zeta")] == ["zeta"]
    assert get_items(messages, "shared-id", app_id="nobody") == []
    assert get_items(messages, "missing-id") == []


def test_unusual_message_ids_round_trip(tables: tuple[str, str]) -> None:
    messages, _ = tables
    for message_id in ("order 42 with spaces", "ünïcödé-日本語-🚀", "a/b?c=d#e", "#u :u", "x" * 256):
        put(messages, [make(message_id, "CREATED", "2024-05-01T10:00:00Z", event_id="e:1.a-b_c")])
        items = get_items(messages, message_id)
        assert [i["message_id"] for i in items] == [message_id]
        assert [e["event_id"] for e in item_events(items[0])] == ["e:1.a-b_c"]
        assert get_items(messages, message_id, app_id="checkout") == items


def test_event_ids_cannot_collide_with_the_update_expression(tables: tuple[str, str]) -> None:
    messages, _ = tables
    event_ids = ["e:1", "a.b.c", "x-y-z", "u", "x", ":u", "updated_at", "expires_at", "e:e:e", "x" * 128]
    for n, event_id in enumerate(event_ids):
        ev = make(f"m{n}", "CREATED", "2024-05-01T10:00:00Z", event_id=event_id)
        assert put(messages, [ev]).stored == 1, event_id
        item = raw_item(messages, "checkout", f"m{n}")
        assert [e["event_id"] for e in item_events(item)] == [event_id]
        assert item["updated_at"].endswith("Z") and int(item["expires_at"]) > time.time()  # bookkeeping intact
    # all of them on one message, in one update expression
    together = [make("all", "CREATED", "2024-05-01T10:00:00Z", event_id=i) for i in event_ids]
    assert put(messages, together).stored == len(event_ids)
    assert sorted(e["event_id"] for e in item_events(raw_item(messages, "checkout", "all"))) == sorted(event_ids)


def test_ttl_attribute_is_retention_days_from_now(tables: tuple[str, str]) -> None:
    messages, _ = tables
    put(messages, [make("m1", "CREATED", "2024-05-01T10:00:00Z")], retention_days=7)
    expires = int(raw_item(messages, "checkout", "m1")["expires_at"])
    assert abs(expires - (time.time() + 7 * 86400)) < 60
    put(messages, [make("m1", "SENT", "2024-05-01T10:00:01Z")], retention_days=30)
    expires = int(raw_item(messages, "checkout", "m1")["expires_at"])
    assert abs(expires - (time.time() + 30 * 86400)) < 60  # refreshed by the last event


def test_ttl_uses_the_stack_retention_days(tables: tuple[str, str]) -> None:
    assert settings().retention_days == 30  # template.yaml's RetentionDays default reaches the functions


# --- listing ------------------------------------------------------------------------------------

def _fill(messages: str, count: int, app_id: str = "checkout") -> list[str]:
    ids = []
    for i in range(count):
        message_id = f"msg-{i:02d}"
        put(messages, [make(message_id, "CREATED", "2024-05-01T10:00:00Z", app_id=app_id)])
        ids.append(message_id)
        time.sleep(0.001)  # distinct updated_at (microsecond clock)
    return ids


def _pages(messages: str, app_id: str, limit: int, lifecycle: Lifecycle | None = None,
           status: str | None = None) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    for _ in range(50):
        items, last = list_messages(messages, app_id, lifecycle, status=status, limit=limit, cursor=cursor)
        pages.append(items)
        token = encode_cursor(last)
        if token is None:
            return pages
        cursor = decode_cursor(token, app_id)  # as the API does: through the opaque string
    raise AssertionError("pagination does not end")


def test_list_is_newest_first_and_paginates_without_gaps_or_repeats(tables: tuple[str, str]) -> None:
    messages, _ = tables
    ids = _fill(messages, 8)
    _fill(messages, 2, app_id="other-app")
    pages = _pages(messages, "checkout", limit=3)
    assert [len(p) for p in pages if p] == [3, 3, 2]
    seen = [i["message_id"] for p in pages for i in p]
    assert seen == list(reversed(ids))
    first = pages[0][0]
    assert "events" not in first
    assert {"app_id", "message_id", "missing", "status", "first_seen", "last_seen"} <= set(first)


def test_list_of_an_unknown_app_is_empty(tables: tuple[str, str]) -> None:
    messages, _ = tables
    _fill(messages, 2)
    assert list_messages(messages, "nobody", None, status=None, limit=10, cursor=None) == ([], None)


def test_list_filters_by_status_across_pages(tables: tuple[str, str]) -> None:
    messages, _ = tables
    complete = []
    for i in range(9):
        message_id = f"m{i}"
        names = LIFECYCLE.events if i % 3 == 0 else LIFECYCLE.events[:2]
        put(messages, [make(message_id, n, f"2024-05-01T10:00:0{k}Z") for k, n in enumerate(names)])
        if i % 3 == 0:
            complete.append(message_id)
        time.sleep(0.001)
    pages = _pages(messages, "checkout", limit=2, lifecycle=LIFECYCLE, status=COMPLETE)
    got = [i["message_id"] for p in pages for i in p]
    assert got == list(reversed(complete))
    assert all(i["status"] == COMPLETE and i["missing"] == [] for p in pages for i in p)
    in_progress = [i for p in _pages(messages, "checkout", limit=4, lifecycle=LIFECYCLE, status=IN_PROGRESS)
                   for i in p]
    assert len(in_progress) == 6 and all(i["missing"] == ["SENT", "ACKED"] for i in in_progress)


# --- cursors ------------------------------------------------------------------------------------

def test_cursor_round_trip() -> None:
    key = {"app_id": "checkout", "message_id": "m 1 ü", "updated_at": "2024-05-01T10:00:00.000000Z"}
    token = encode_cursor(key)
    assert token and "=" not in token and "/" not in token and "+" not in token
    assert decode_cursor(token, "checkout") == key
    assert encode_cursor(None) is None and encode_cursor({}) is None


def _b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize("token", [
    "garbage!!", "Zm9v", "%%%", _b64(b"\xff\xfe\x00"), _b64([1, 2]), _b64("string"), _b64({}),
    _b64({"app_id": "checkout", "message_id": "m"}),
    _b64({"app_id": "checkout", "message_id": "m", "updated_at": "t", "extra": "x"}),
    _b64({"app_id": "checkout", "message_id": 5, "updated_at": "t"}),
])
def test_cursor_decode_rejects_garbage(token: str) -> None:
    with pytest.raises(ValueError):
        decode_cursor(token, "checkout")


def test_cursor_of_another_app_is_rejected() -> None:
    token = encode_cursor({"app_id": "other", "message_id": "m", "updated_at": "2024-05-01T10:00:00.000000Z"})
    assert token is not None
    with pytest.raises(ValueError, match="this app"):
        decode_cursor(token, "checkout")


# --- lifecycles and status ----------------------------------------------------------------------

def test_lifecycle_put_get(tables: tuple[str, str]) -> None:
    _, apps = tables
    assert get_lifecycle(apps, "checkout") is None
    item = put_lifecycle(apps, "checkout", LIFECYCLE)
    assert item["events"] == list(LIFECYCLE.events) and item["sla_seconds"] == 300
    assert get_lifecycle(apps, "checkout") == LIFECYCLE
    replaced = Lifecycle(events=("A", "B"), sla_seconds=0)
    put_lifecycle(apps, "checkout", replaced)
    assert get_lifecycle(apps, "checkout") == replaced
    assert get_lifecycle(apps, "other") is None


NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _ev(name: str, minute: int) -> dict[str, Any]:
    return {"event": name, "created_at": f"2024-05-01T11:{minute:02d}:00.000000Z", "event_id": name.lower()}


def test_summarize_complete() -> None:
    events = [_ev("CREATED", 1), _ev("QUEUED", 2), _ev("SENT", 3), _ev("ACKED", 4)]
    out = summarize(events, LIFECYCLE, "2024-05-01T11:04:00.000000Z", NOW + timedelta(days=1))
    assert out == {"missing": [], "status": COMPLETE, "first_seen": "2024-05-01T11:01:00.000000Z",
                   "last_seen": "2024-05-01T11:04:00.000000Z", "out_of_order": [], "unexpected_count": 0}


def test_summarize_in_progress_lists_missing_in_lifecycle_order() -> None:
    events = [_ev("SENT", 1), _ev("CREATED", 2)]  # out of lifecycle order
    out = summarize(events, LIFECYCLE, "2024-05-01T11:58:00.000000Z", NOW)
    assert out["status"] == IN_PROGRESS and out["missing"] == ["QUEUED", "ACKED"]


def test_summarize_stuck_after_the_sla() -> None:
    events = [_ev("CREATED", 1)]
    updated = "2024-05-01T11:50:00.000000Z"
    assert summarize(events, LIFECYCLE, updated, NOW)["status"] == STUCK  # idle 600 s > 300 s
    assert summarize(events, LIFECYCLE, updated, datetime(2024, 5, 1, 11, 54, tzinfo=UTC))["status"] \
        == IN_PROGRESS  # idle 240 s
    no_sla = Lifecycle(events=LIFECYCLE.events, sla_seconds=0)
    assert summarize(events, no_sla, updated, NOW + timedelta(days=30))["status"] == IN_PROGRESS


def test_summarize_unknown_without_lifecycle() -> None:
    events = [_ev("CREATED", 1), _ev("WHATEVER", 2)]
    for lifecycle in (None, Lifecycle(events=(), sla_seconds=60)):
        out = summarize(events, lifecycle, None, NOW)
        assert out == {"missing": [], "status": UNKNOWN, "first_seen": "2024-05-01T11:01:00.000000Z",
                       "last_seen": "2024-05-01T11:02:00.000000Z", "out_of_order": [], "unexpected_count": 0}
    assert summarize([], None, None, NOW) == {"missing": [], "status": UNKNOWN, "first_seen": None,
                                               "last_seen": None, "out_of_order": [], "unexpected_count": 0}


def test_events_outside_the_lifecycle_do_not_break_it() -> None:
    events = [_ev("CREATED", 1), _ev("RETRIED", 2), _ev("QUEUED", 3), _ev("SENT", 4), _ev("BOUNCED", 5),
              _ev("ACKED", 6)]
    out = summarize(events, LIFECYCLE, None, NOW)
    assert out["status"] == COMPLETE and out["missing"] == [] and out["last_seen"].startswith("2024-05-01T11:06")
    only_extras = summarize([_ev("RETRIED", 1)], LIFECYCLE, None, NOW)
    assert only_extras["missing"] == list(LIFECYCLE.events)


def test_to_timeline_from_the_table(tables: tuple[str, str]) -> None:
    messages, apps = tables
    put_lifecycle(apps, "checkout", LIFECYCLE)
    put(messages, [make("m1", "SENT", "2024-05-01T10:00:02Z", meta={"k": "v"}),
                   make("m1", "CREATED", "2024-05-01T10:00:00Z"), make("m1", "OTHER", "2024-05-01T10:00:01Z")])
    item = get_items(messages, "m1", "checkout")[0]
    timeline = to_timeline(item, get_lifecycle(apps, "checkout"))
    assert timeline["app_id"] == "checkout" and timeline["message_id"] == "m1"
    assert [e["event"] for e in timeline["events"]] == ["CREATED", "OTHER", "SENT"]
    assert timeline["events"][2]["meta"] == {"k": "v"} and "meta" not in timeline["events"][0]
    assert timeline["missing"] == ["QUEUED", "ACKED"] and timeline["status"] == IN_PROGRESS
    assert timeline["first_seen"] == "2024-05-01T10:00:00.000000Z"
    assert timeline["last_seen"] == "2024-05-01T10:00:02.000000Z"
    later = datetime.now(UTC) + timedelta(seconds=301)
    assert to_timeline(item, get_lifecycle(apps, "checkout"), now=later)["status"] == STUCK
    summary = to_timeline(item, None, with_events=False)
    assert "events" not in summary and summary["status"] == UNKNOWN
