"""Long timelines (issue 13): a summary in MessagesTable, events in EventsTable pages, reads that page."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mars_common import aws, store
from mars_common.config import settings
from mars_common.events import Event, parse_event
from mars_common.store import (
    EVENT_PREFIX,
    MAX_PAGE_LIMIT,
    PAGE_MAX_BYTES,
    UpsertResult,
    decode_event_cursor,
    item_size,
    put_lifecycle,
    read_timeline,
    to_timeline,
    upsert_message,
)
from mars_common.timeline import COMPLETE, IN_PROGRESS, STUCK, Lifecycle

META = {"note": "x" * 150}
BASE = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def ev(message_id: str, i: int, *, name: str | None = None, app_id: str = "checkout", event_id: str | None = None,
       meta: dict[str, str] | None = META, seconds: float | None = None) -> Event:
    created = BASE + timedelta(seconds=i if seconds is None else seconds)
    data: dict[str, Any] = {"app_id": app_id, "message_id": message_id, "event": name or f"STEP_{i % 7}",
                            "created_at": created.isoformat()}
    if event_id is not None:
        data["event_id"] = event_id
    if meta:
        data["meta"] = meta
    return parse_event(data)


@pytest.fixture
def tables(mocked_stack: Any) -> tuple[str, str]:
    cfg = settings()
    assert cfg.messages_table and cfg.events_table and cfg.apps_table
    return cfg.messages_table, cfg.events_table


def put(events: list[Event]) -> UpsertResult:
    return upsert_message(settings().messages_table, events[0].app_id, events[0].message_id, events, 30)


def read_all(message_id: str, app_id: str = "checkout", limit: int | None = None,
             lifecycle: Lifecycle | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every event through the paged read, and every page's answer."""
    cfg = settings()
    pages, cursor = [], None
    for _ in range(1000):
        key = decode_event_cursor(cursor, app_id, message_id) if cursor else None
        page = read_timeline(cfg.messages_table, cfg.events_table, app_id, message_id, lifecycle,
                             limit=limit or MAX_PAGE_LIMIT, cursor=key)
        assert page is not None
        pages.append(page)
        cursor = page["cursor"]
        if cursor is None:
            return [e for p in pages for e in p["events"]], pages
    raise AssertionError("paging does not end")


def summary_item(message_id: str, app_id: str = "checkout") -> dict[str, Any]:
    return aws.table(settings().messages_table).get_item(Key={"app_id": app_id, "message_id": message_id},
                                                         ConsistentRead=True)["Item"]


def pages_of(message_id: str, app_id: str = "checkout") -> list[dict[str, Any]]:
    return list(aws.items(settings().events_table, KeyConditionExpression="pk = :p",
                          ExpressionAttributeValues={":p": f"{app_id}#{message_id}"}))


def expected_ids(events: list[Event]) -> list[str]:
    unique = {e.event_id: e for e in reversed(events)}  # the first version of an id wins
    return [e.event_id for e in sorted(unique.values(), key=lambda e: (e.created_at, e.event_id))]


# --- no ceiling, O(1) writes ------------------------------------------------------------------------

def test_a_message_past_the_old_400_kb_ceiling_is_stored_and_read_in_pages(tables: tuple[str, str]) -> None:
    events = [ev("chatty", i) for i in range(1500)]  # ~480 KB of events: the old model failed at ~1,010
    for start in range(0, len(events), 50):
        assert put(events[start:start + 50]) == UpsertResult(stored=50, duplicates=0)
    got, pages = read_all("chatty")
    assert [e["event_id"] for e in got] == expected_ids(events)
    assert [len(p["events"]) for p in pages] == [1000, 500]
    assert all(p["event_count"] == 1500 for p in pages)
    assert got[0]["meta"] == META and set(got[0]) == {"event", "created_at", "received_at", "event_id", "meta"}
    item = summary_item("chatty")
    assert not any(k.startswith(EVENT_PREFIX) for k in item)  # the summary holds no events
    assert item_size(item) < 1024  # so its write costs 1 WRU however long the message
    assert max(item_size(p) for p in pages_of("chatty")) <= PAGE_MAX_BYTES


def test_a_short_timeline_stays_in_one_item_as_before(tables: tuple[str, str]) -> None:
    events = [ev("short", i, meta=None) for i in range(8)]
    put(events)
    assert pages_of("short") == []
    item = summary_item("short")
    assert sum(1 for k in item if k.startswith(EVENT_PREFIX)) == 8
    timeline = read_timeline(settings().messages_table, settings().events_table, "checkout", "short", None)
    assert timeline is not None and "cursor" not in timeline and len(timeline["events"]) == 8  # today's shape


def test_writes_to_a_long_message_do_not_grow_with_it(tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    records: list[str] = []
    table_cls = type(aws.table(settings().events_table))
    real_put, real_update = table_cls.put_item, table_cls.update_item

    def put_item(self: Any, **kw: Any) -> Any:
        sizes.append(item_size(kw["Item"]))
        return real_put(self, **kw)

    def update_item(self: Any, **kw: Any) -> Any:
        if self.name == settings().events_table and kw["Key"]["sk"].startswith(store.ATTEMPT_PREFIX):
            records.append(kw["Key"]["sk"])  # the commit's attempt record, written before its pages
        elif self.name == settings().events_table:
            sizes.append(-1)  # an append to an existing page: none for in-order traffic
        return real_update(self, **kw)

    monkeypatch.setattr(table_cls, "put_item", put_item)
    monkeypatch.setattr(table_cls, "update_item", update_item)
    for start in range(0, 600, 10):
        put([ev("steady", i) for i in range(start, start + 10)])
    # in-order traffic: one new page per batch, the same size each time (the first one holds the 10 events that
    # were inline too), and one summary update whose item stays under 1 KB
    assert len(sizes) == 59 and -1 not in sizes
    assert len(records) == len(set(records)) == 59  # one small attempt record per commit
    assert max(sizes[1:]) - min(sizes[1:]) < 50 and max(sizes[1:]) < 4 * 1024
    assert item_size(summary_item("steady")) < 1024
    # the records live apart from the pages, so a page Query (which the local emulator answers by reading
    # the whole partition) does not grow with one record per commit
    assert {p["sk"][:2] for p in pages_of("steady")} == {store.PAGE_PREFIX}
    assert len(list(aws.items(settings().events_table, KeyConditionExpression="pk = :p",
                              ExpressionAttributeValues={":p": store.attempts_pk("checkout", "steady")}))) == 59


# --- exactly once, in any order ---------------------------------------------------------------------

def test_redelivery_and_duplicate_ids_never_double_count(tables: tuple[str, str]) -> None:
    events = [ev("dups", i) for i in range(60)]
    put(events[:40])
    assert put(events[20:60]) == UpsertResult(stored=20, duplicates=20)
    assert put(events[:60]) == UpsertResult(stored=0, duplicates=60)
    retry = ev("dups", 5, name="CHANGED")  # same id (same created_at), other content: the first version stays
    assert retry.event_id != events[5].event_id  # derived ids include the event name...
    put([retry])
    client = [ev("dups", 100 + i, event_id=f"client-{i}") for i in range(3)]
    put(client)
    put([ev("dups", 100, name="OTHER", event_id="client-0")])  # ...a client's id is its own key
    got, pages = read_all("dups", limit=25)
    assert len(got) == pages[0]["event_count"] == 63 + 1  # +1: the derived-id retry with another name is another event
    assert [e["event"] for e in got if e["event_id"] == "client-0"] == [client[0].event]


def test_a_store_that_fails_between_pages_and_summary_is_counted_once_on_redelivery(
        tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    put([ev("crash", i) for i in range(30)])  # paged already
    batch = [ev("crash", i) for i in range(30, 40)]
    real = store._commit
    monkeypatch.setattr(store, "_commit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("timed out")))
    with pytest.raises(RuntimeError):
        put(batch)
    got, pages = read_all("crash")
    assert len(got) == pages[0]["event_count"] == 30  # written but not committed: not shown, not counted
    monkeypatch.setattr(store, "_commit", real)
    assert put(batch[:4]) == UpsertResult(stored=10, duplicates=0)  # a regrouped redelivery commits the whole attempt
    assert put(batch) == UpsertResult(stored=0, duplicates=10)
    got, pages = read_all("crash")
    assert len(got) == pages[0]["event_count"] == 40


def test_a_failed_move_to_pages_is_redone_exactly(tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    put([ev("move", i) for i in range(10)])  # inline: 10 events of ~330 bytes
    assert not pages_of("move") and len([k for k in summary_item("move") if k.startswith(EVENT_PREFIX)]) == 10
    real = store._commit
    monkeypatch.setattr(store, "_commit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("throttled")))
    with pytest.raises(RuntimeError):
        put([ev("move", i) for i in range(10, 20)])
    assert pages_of("move") and len([k for k in summary_item("move") if k.startswith(EVENT_PREFIX)]) == 10
    monkeypatch.setattr(store, "_commit", real)
    assert put([ev("move", i) for i in range(10, 20)]).stored == 10
    got, pages = read_all("move")
    assert len(got) == pages[0]["event_count"] == 20


POOL = [ev("P", i, seconds=s, meta={"k": str(i)}) for i, s in enumerate([5, 1, 1, 9, 3, 3, 3, 0, 7, 2, 8, 6])]
POOL += [ev("P", 99, event_id=f"c{i}", seconds=4, meta={"k": f"c{i}"}) for i in range(4)]  # one timestamp, many events
RESTAMPED = [ev("P", 98, event_id="c0", seconds=s, meta={"k": "c0"}) for s in (0.5, 10)]  # c0 again, other created_at
_run = itertools.count()


@given(data=st.data())
@hsettings(max_examples=15, deadline=None, database=None, derandomize=True,
           phases=[Phase.explicit, Phase.generate],  # moto is slow to shrink against: a failure prints its draws
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_delivery_order_and_batching_yields_the_same_long_timeline(tables: tuple[str, str], data: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "INLINE_MAX_BYTES", data.draw(st.sampled_from([0, 700]), label="inline budget"))
    monkeypatch.setattr(store, "PAGE_MAX_BYTES", data.draw(st.sampled_from([300, 900, 8192]), label="page size"))
    pool = [*POOL, *RESTAMPED]
    order = data.draw(st.permutations(range(len(pool))), label="order")
    extra = data.draw(st.lists(st.integers(0, len(pool) - 1), max_size=6), label="duplicates")
    deliveries = data.draw(st.permutations([*order, *extra]), label="deliveries")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(deliveries) - 1), max_size=6), label="cuts"))
    message_id = f"P{next(_run)}"
    for lo, hi in itertools.pairwise([0, *cuts, len(deliveries)]):
        batch = [Event(**{**pool[i].__dict__, "message_id": message_id}) for i in deliveries[lo:hi]]
        upsert_message(settings().messages_table, "checkout", message_id, batch, 30)
    got, pages = read_all(message_id, limit=data.draw(st.sampled_from([1, 3, 1000]), label="limit"))
    # c0's three versions: the first delivered is the one stored, once, in its created_at's place
    first_c0 = next(pool[i] for i in deliveries if pool[i].event_id == "c0")
    assert [e["event_id"] for e in got] == expected_ids([first_c0, *POOL])
    assert [e["created_at"] for e in got if e["event_id"] == "c0"] == [first_c0.created_at]
    assert pages[0]["event_count"] == len(POOL)
    assert {e["meta"]["k"] for e in got} == {p.meta["k"] for p in POOL}


# --- the summary: status, first/last seen, the stuck sweep -----------------------------------------

def test_the_summary_of_a_long_timeline_gives_status_and_first_last_seen(tables: tuple[str, str]) -> None:
    lifecycle = Lifecycle(("CREATED", "SENT", "ACKED"), 300)
    events = [ev("sum", i, name="NOISE") for i in range(1, 40)]
    random.Random(3).shuffle(events)
    put(events[:20])
    put([ev("sum", 50, name="SENT"), ev("sum", 0, name="CREATED")])  # the earliest event arrives late
    put(events[20:])
    item = summary_item("sum")
    timeline = to_timeline(item, lifecycle, with_events=False)
    assert timeline["first_seen"] == ev("sum", 0).created_at and timeline["last_seen"] == ev("sum", 50).created_at
    assert timeline["missing"] == ["ACKED"] and timeline["status"] == IN_PROGRESS
    later = datetime.now(UTC) + timedelta(seconds=301)
    assert to_timeline(item, lifecycle, with_events=False, now=later)["status"] == STUCK
    put([ev("sum", 60, name="ACKED")])
    assert to_timeline(summary_item("sum"), lifecycle, with_events=False, now=later)["status"] == COMPLETE


def test_the_stuck_sweep_marks_a_long_timeline(tables: tuple[str, str], mocked_stack: Any,
                                                lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import load_function

    put_lifecycle(settings().apps_table, "checkout", Lifecycle(("STEP_0", "DONE"), 60))
    put([ev("slow", i) for i in range(40)])
    monkeypatch.setenv("ALERTS_TOPIC_ARN", mocked_stack.ref("AlertsTopic"))
    sweep = load_function("stuck")
    monkeypatch.setattr(sweep, "datetime", type("Clock", (), {"now": staticmethod(
        lambda tz=None: datetime.now(UTC) + timedelta(seconds=120))}))
    swept = sweep.lambda_handler({}, lambda_context)
    assert (swept["candidates"], swept["marked"]) == (1, 1)
    assert store.STUCK_AT in summary_item("slow")
    put([ev("slow", 41)])
    assert store.STUCK_AT not in summary_item("slow")  # the next event clears the mark


# --- items of the old model -----------------------------------------------------------------------

def test_an_item_of_the_old_model_reads_and_moves_to_pages_on_its_next_event(tables: tuple[str, str]) -> None:
    old = [ev("legacy", i) for i in range(300)]  # ~100 KB in one item, as the old store wrote it
    item: dict[str, Any] = {"app_id": "checkout", "message_id": "legacy", "updated_at": "2024-05-01T12:00:00.000000Z",
                            "expires_at": 2_000_000_000}
    for e in old:
        item[EVENT_PREFIX + e.event_id] = {"event": e.event, "created_at": e.created_at, "received_at": e.received_at,
                                           "meta": e.meta}
    aws.table(settings().messages_table).put_item(Item=item)
    got, pages = read_all("legacy", limit=120)
    assert [e["event_id"] for e in got] == expected_ids(old) and pages[0]["event_count"] == 300
    plain = read_timeline(settings().messages_table, settings().events_table, "checkout", "legacy", None)
    assert plain is not None and len(plain["events"]) == 300 and "cursor" not in plain
    assert put([ev("legacy", 300), old[0]]) == UpsertResult(stored=1, duplicates=1)
    got, pages = read_all("legacy")
    assert [e["event_id"] for e in got] == expected_ids([*old, ev("legacy", 300)]) and pages[0]["event_count"] == 301
    assert not any(k.startswith(EVENT_PREFIX) for k in summary_item("legacy"))


# --- cursors ----------------------------------------------------------------------------------------

def test_cursors_belong_to_one_message(tables: tuple[str, str]) -> None:
    put([ev("cur", i) for i in range(30)])
    _, pages = read_all("cur", limit=10)
    cursor = pages[0]["cursor"]
    assert cursor and decode_event_cursor(cursor, "checkout", "cur")
    for app_id, message_id in (("other", "cur"), ("checkout", "other")):
        with pytest.raises(ValueError):
            decode_event_cursor(cursor, app_id, message_id)
    for garbage in ("!!", "Zm9v", "e30"):
        with pytest.raises(ValueError):
            decode_event_cursor(garbage, "checkout", "cur")
    assert pages[-1]["cursor"] is None and [len(p["events"]) for p in pages] == [10, 10, 10]


def test_a_small_page_of_a_long_timeline_reads_about_as_many_pages_as_it_shows(
        tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll of `limit=1` (what tests/integration/test_long_timeline.py does every second while 20,000
    events are stored) read 1 MB of pages per Query, ~400 of a long message's; the pages a read takes
    now follow its limit, and every page of the answer is the same."""
    for start in range(0, 600, 10):  # in-order traffic: one page per batch of 10
        put([ev("polled", i) for i in range(start, start + 10)])
    table_cls = type(aws.table(settings().events_table))
    real_query = table_cls.query
    read: list[int] = []

    def query(self: Any, **kw: Any) -> Any:
        resp = real_query(self, **kw)
        read.append(len(resp.get("Items", [])))
        return resp

    monkeypatch.setattr(table_cls, "query", query)
    first = read_timeline(settings().messages_table, settings().events_table, "checkout", "polled", None, limit=1)
    assert first is not None and first["event_count"] == 600 and len(first["events"]) == 1
    assert sum(read) <= 3, read  # two pages: the first group's, and the next one's that ends it (was 60)
    read.clear()
    got, pages = read_all("polled", limit=25)
    assert [e["event_id"] for e in got] == expected_ids([ev("polled", i) for i in range(600)])
    assert [len(p["events"]) for p in pages] == [25] * 24
    assert sum(read) <= 24 * 7, read  # per answer: a cursor's Query (one page), ~4 pages (was the rest of the message)


# --- GET /api/messages/{id}: pages ------------------------------------------------------------------

def test_the_api_pages_a_long_timeline_and_keeps_a_short_ones_shape(mocked_stack: Any, lambda_context: Any) -> None:
    from tests.conftest import load_function
    from tests.unit.test_api import Api
    from tests.unit.test_openapi_document import component, schema_errors

    api = Api(load_function("api"), lambda_context)
    events = [ev("api-long", i) for i in range(2500)]
    for start in range(0, len(events), 100):
        put(events[start:start + 100])
    put([ev("api-short", i, meta=None) for i in range(3)])
    kwargs: dict[str, Any] = {"resource": "/api/messages/{message_id}"}

    short = api.call("GET", "/api/messages/api-short", params={"message_id": "api-short"}, **kwargs)
    assert short.status == 200 and "cursor" not in short.body["timelines"][0]  # today's shape
    assert len(short.body["timelines"][0]["events"]) == 3

    got, cursor, counts = [], None, []
    for _ in range(10):
        query = {"app_id": "checkout", **({"cursor": cursor} if cursor else {})}
        reply = api.call("GET", "/api/messages/api-long", params={"message_id": "api-long"}, query=query, **kwargs)
        assert reply.status == 200, reply.body
        assert schema_errors(reply.body, component("TimelineList")) == []
        (timeline,) = reply.body["timelines"]
        got += timeline["events"]
        counts.append(len(timeline["events"]))
        assert timeline["event_count"] == 2500 and timeline["status"] == "unknown"
        cursor = timeline["cursor"]
        if cursor is None:
            break
    assert counts == [1000, 1000, 500]
    assert [e["event_id"] for e in got] == expected_ids(events)

    small = api.call("GET", "/api/messages/api-short", params={"message_id": "api-short"},
                     query={"app_id": "checkout", "limit": "2"}, **kwargs).body["timelines"][0]
    assert len(small["events"]) == 2 and small["event_count"] == 3 and small["cursor"]
    rest = api.call("GET", "/api/messages/api-short", params={"message_id": "api-short"},
                    query={"app_id": "checkout", "limit": "2", "cursor": small["cursor"]}, **kwargs).body["timelines"][0]
    assert len(rest["events"]) == 1 and rest["cursor"] is None
    no_app = api.call("GET", "/api/messages/api-long", params={"message_id": "api-long"}, query={"limit": "5"}, **kwargs)
    assert len(no_app.body["timelines"][0]["events"]) == 5  # every app's first page

    for query in ({"app_id": "checkout", "limit": "0"}, {"app_id": "checkout", "limit": "1001"},
                  {"cursor": small["cursor"]}, {"app_id": "checkout", "cursor": "garbage"},
                  {"app_id": "checkout", "cursor": small["cursor"], "x": "1"}):
        reply = api.call("GET", "/api/messages/api-long", params={"message_id": "api-long"}, query=query, **kwargs)
        assert reply.status == 400, (query, reply.body)
    other = api.call("GET", "/api/messages/api-long", params={"message_id": "api-long"},
                     query={"app_id": "checkout", "cursor": small["cursor"]}, **kwargs)  # api-short's cursor
    assert other.status == 400


# --- live frames ------------------------------------------------------------------------------------

def test_a_long_timelines_frame_carries_the_new_events_and_the_summary(mocked_stack: Any, lambda_context: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from mars_common import live

    from tests.conftest import load_function
    from tests.unit.test_live import FakeConnections, stream_records, ws_event

    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    ws, broadcast = load_function("websocket"), load_function("broadcast")
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "subscribe", "app_id": "checkout",
                                                                "message_id": "live"}), lambda_context)
    events = [ev("live", i, meta={"pad": "y" * 1500}) for i in range(120)]  # ~200 KB: never one frame
    for start in range(0, 120, 10):
        put(events[start:start + 10])
    put(events[:10])  # redelivered: no commit, no push
    fake.frames.clear()
    broadcast.lambda_handler({"Records": stream_records("checkout", "live")}, lambda_context)
    frames = fake.frames["c1"]
    assert all(f["type"] == "timeline" for f in frames)
    assert [e["event_id"] for f in frames for e in f["new_events"]] == expected_ids(events)
    last = frames[-1]
    assert [e["event_id"] for e in last["events"]] == expected_ids(events)[-10:]  # the new events, not the history
    assert last["event_count"] == 120 and last["truncated"] == {"events_total": 120, "events_sent": 10}
    assert last["first_seen"] == events[0].created_at and last["last_seen"] == events[-1].created_at
    fake.frames.clear()
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c2", {"action": "subscribe", "app_id": "checkout",
                                                                "message_id": "live"}), lambda_context)
    _, first = fake.frames["c2"]
    assert first["type"] == "timeline" and first["event_count"] == 120 and first["events"] == []


def test_the_broadcaster_reads_subscribers_once_per_message_and_app_per_batch(
        mocked_stack: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mars_common import live

    from tests.conftest import load_function
    from tests.unit.test_live import FakeConnections, stream_records, ws_event

    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    ws, broadcast = load_function("websocket"), load_function("broadcast")
    ws.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "subscribe", "app_id": "checkout"}),
                      lambda_context)
    for i in range(6):
        put([ev("busy", i, meta=None)])
    queries: list[str] = []
    real = live._topic_rows
    monkeypatch.setattr(live, "_topic_rows", lambda table, topic, app_id: (queries.append(topic), real(table, topic, app_id))[1])
    broadcast.lambda_handler({"Records": stream_records("checkout", "busy")}, lambda_context)
    assert fake.types("c1") == ["subscribed"] + ["timeline"] * 6
    assert sorted(queries) == ["app#checkout", "msg#busy"]  # two queries for six changes (was twelve)


# --- retention per app ------------------------------------------------------------------------------

def test_an_apps_retention_sets_the_ttl_of_its_summaries_and_pages_never_beyond_the_stacks(
        mocked_stack: Any, lambda_context: Any) -> None:
    import time

    from tests.conftest import load_function

    store_fn = load_function("store")
    put_lifecycle(settings().apps_table, "short-lived", Lifecycle(("A",), 0, retention_days=7))
    put_lifecycle(settings().apps_table, "greedy", Lifecycle(("A",), 0, retention_days=3650))
    payload = {"messages": [{"app_id": app, "message_id": "m", "events": [e.as_dict() for e in
                                                                          [ev("m", i, app_id=app) for i in range(30)]]}
                            for app in ("short-lived", "greedy", "checkout")]}
    assert all(r["ok"] for r in store_fn.lambda_handler(payload, lambda_context)["results"])
    for app, days in (("short-lived", 7), ("greedy", 30), ("checkout", 30)):  # the stack's RetentionDays is 30
        expiries = [int(summary_item("m", app)["expires_at"])] + [int(p["expires_at"]) for p in pages_of("m", app)]
        assert all(abs(x - (time.time() + days * 86400)) < 120 for x in expiries), (app, days)


def test_a_failed_store_across_groups_is_counted_once_whatever_the_retry_holds(
        tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for start in range(0, 40, 10):
        put([ev("groups", i) for i in range(start, start + 10)])  # four groups, one per batch
    late, new = ev("groups", 5, name="LATE", event_id="late-1"), [ev("groups", i) for i in range(40, 45)]
    real = store._commit
    monkeypatch.setattr(store, "_commit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("timed out")))
    with pytest.raises(RuntimeError):
        put([late, *new])  # writes into an old group and a new one, then fails before its commit
    monkeypatch.setattr(store, "_commit", real)
    assert put(new[:2]).stored == 6  # the retry holds only new events: the late one is found through `sib`
    assert put([late, *new]) == UpsertResult(stored=0, duplicates=6)
    got, pages = read_all("groups")
    assert len(got) == pages[0]["event_count"] == 46


# --- one event id, one event: across created_at, and the failure window of the count ----------------

def _resent(e: Event, seconds: float) -> Event:
    """The same event (same client id) sent again with another created_at, as a client's retry that restamps it."""
    return Event(**{**e.__dict__, "created_at": ev(e.message_id, 0, seconds=seconds).created_at})


@pytest.mark.parametrize("order", ["first-then-resend", "resend-lands-earlier"])
def test_a_client_id_resent_with_another_created_at_is_stored_once_on_a_long_timeline(
        tables: tuple[str, str], order: str) -> None:
    message_id = f"restamp-{order}"
    for start in range(0, 40, 10):
        put([ev(message_id, i) for i in range(start, start + 10)])  # paged, four groups
    original = ev(message_id, 25, name="PAID", event_id="pay-1")  # in the third group (the first holds 0-19)
    later = _resent(original, 500 if order == "first-then-resend" else -500)  # a key in another group
    assert put([original]) == UpsertResult(stored=1, duplicates=0)
    assert put([later]) == UpsertResult(stored=0, duplicates=1)
    assert put([later, ev(message_id, 41)]) == UpsertResult(stored=1, duplicates=1)  # redelivered beside a new one
    assert put([original]) == UpsertResult(stored=0, duplicates=1)
    got, pages = read_all(message_id, limit=7)
    assert len(got) == pages[0]["event_count"] == 42
    assert [e["created_at"] for e in got if e["event_id"] == "pay-1"] == [original.created_at]  # the first stored wins


def test_a_client_id_first_stored_inline_keeps_its_created_at_after_the_move_to_pages(tables: tuple[str, str]) -> None:
    original = ev("moved", 3, name="PAID", event_id="pay-2")
    put([ev("moved", 0), original])  # inline
    put([_resent(original, 900), *[ev("moved", i) for i in range(4, 20)]])  # the batch that moves it to pages
    assert store.is_paged(summary_item("moved"))
    put([ev("moved", i) for i in range(20, 30)])  # a second group
    assert put([_resent(original, 1800)]).stored == 0  # after the move, in the second group's range
    got, pages = read_all("moved")
    assert len(got) == pages[0]["event_count"] == 28
    assert [e["created_at"] for e in got if e["event_id"] == "pay-2"] == [original.created_at]


def test_a_client_id_resent_with_another_created_at_is_stored_once_on_a_short_timeline(tables: tuple[str, str]) -> None:
    original = ev("short-restamp", 1, meta=None, event_id="pay-3")
    put([original])
    assert put([_resent(original, 60)]) == UpsertResult(stored=0, duplicates=1)
    timeline = read_timeline(settings().messages_table, settings().events_table, "checkout", "short-restamp", None)
    assert timeline is not None and [e["created_at"] for e in timeline["events"]] == [original.created_at]


def test_a_failed_attempt_whose_events_never_come_back_is_counted_by_the_next_commit(
        tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The old window: pages written, the commit failed, the batch dead-lettered; the message's next batch
    (into another group) made the orphaned entries visible without counting them."""
    for start in range(0, 40, 10):
        put([ev("orphan", i) for i in range(start, start + 10)])
    late = [ev("orphan", 5, name="LATE", event_id=f"late-{i}") for i in range(3)]  # into the first group only
    real = store._commit
    monkeypatch.setattr(store, "_commit", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("throttled")))
    with pytest.raises(RuntimeError):
        put(late)
    monkeypatch.setattr(store, "_commit", real)
    got, pages = read_all("orphan")
    assert len(got) == pages[0]["event_count"] == 40  # written, not committed: hidden
    assert put([ev("orphan", i) for i in range(40, 45)]) == UpsertResult(stored=8, duplicates=0)  # never the late ones
    got, pages = read_all("orphan")
    assert len(got) == pages[0]["event_count"] == 48
    assert {e["event"] for e in got} >= {"LATE"} and "LATE" in summary_item("orphan")["steps"]
    assert put(late) == UpsertResult(stored=0, duplicates=3)  # their redrive, much later: already there
    assert read_all("orphan")[1][0]["event_count"] == 48


def test_a_short_timeline_is_written_without_a_read_and_an_old_item_without_the_guard_still_grows_right(
        tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    table_cls = type(aws.table(settings().messages_table))
    reads: list[str] = []
    real_get = table_cls.get_item
    monkeypatch.setattr(table_cls, "get_item", lambda self, **kw: reads.append(self.name) or real_get(self, **kw))
    put([ev("noread", i, meta=None) for i in range(5)])
    put([ev("noread", i, meta=None) for i in range(3, 8)])
    assert reads == []
    assert len([k for k in summary_item("noread") if k.startswith(EVENT_PREFIX)]) == 8
    reads.clear()
    # an item written before the guard (no inline_bytes), near the inline budget: the write is refused, the
    # item it returns decides, and the batch moves it to pages — with no GetItem either
    near = [ev("unguarded", i) for i in range(14)]
    item: dict[str, Any] = {"app_id": "checkout", "message_id": "unguarded", "updated_at": "2024-05-01T12:00:00.000000Z",
                            "expires_at": 2_000_000_000}
    for e in near:
        item[EVENT_PREFIX + e.event_id] = {"event": e.event, "created_at": e.created_at, "received_at": e.received_at,
                                           "meta": e.meta}
    aws.table(settings().messages_table).put_item(Item=item)
    assert put([ev("unguarded", 14)]) == UpsertResult(stored=1, duplicates=0)
    assert reads == []
    assert store.is_paged(summary_item("unguarded"))
    assert [e["event_id"] for e in read_all("unguarded")[0]] == expected_ids([*near, ev("unguarded", 14)])


def test_a_crash_after_the_attempt_record_and_before_any_page_is_redone_exactly(
        tables: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    put([ev("early", i) for i in range(10)])  # inline
    table_cls = type(aws.table(settings().events_table))
    real_put = table_cls.put_item

    def no_pages(self: Any, **kw: Any) -> Any:
        if kw["Item"]["sk"].startswith(store.PAGE_PREFIX):
            raise RuntimeError("crashed")
        return real_put(self, **kw)

    monkeypatch.setattr(table_cls, "put_item", no_pages)
    with pytest.raises(RuntimeError):
        put([ev("early", i, event_id=f"c-{i}") for i in range(10, 20)])  # the move: records and claims, then the crash
    assert {p["sk"][:2] for p in pages_of("early")} == {store.MARKER_PREFIX}  # claims, no page yet
    monkeypatch.setattr(table_cls, "put_item", real_put)
    assert put([ev("early", i, event_id=f"c-{i}") for i in range(10, 20)]).stored == 10  # the page queries skip them
    got, pages = read_all("early")
    assert len(got) == pages[0]["event_count"] == 20
