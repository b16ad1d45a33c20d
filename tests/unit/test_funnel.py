"""The funnel (mars_common.funnel): maintained by StoreFunction as events are stored, read by
GET /api/apps/{app}/funnel; checked against a brute-force computation over 2,000 generated messages."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key
from mars_common import alerts, auth, aws, funnel
from mars_common.config import settings
from mars_common.events import format_ts, parse_event
from mars_common.store import put_lifecycle
from mars_common.timeline import Lifecycle

from tests.conftest import load_function
from tests.unit.test_api import Api, assert_error, fields

STEPS = ("CREATED", "PAID", "GIFT_WRAPPED", "SHIPPED", "DELIVERED")
LIFECYCLE = Lifecycle(events=STEPS, sla_seconds=86400, optional=("GIFT_WRAPPED",), failure=("FAILED",))
PRED = {"PAID": "CREATED", "GIFT_WRAPPED": "PAID", "SHIPPED": "PAID", "DELIVERED": "SHIPPED"}
START = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def store(mocked_stack: Any) -> Any:
    put_lifecycle(settings().apps_table, "shop", LIFECYCLE)
    return load_function("store")


def ev(message_id: str, step: str, at: datetime, app_id: str = "shop") -> dict[str, Any]:
    return parse_event({"app_id": app_id, "message_id": message_id, "event": step, "created_at": format_ts(at)},
                       received_at=format_ts(at)).as_dict()


def deliver(store: Any, context: Any, batches: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """One store invocation per 10 messages, as the aggregator sends them; every message must be stored."""
    for start in range(0, len(batches), 10):
        payload = {"messages": [{"app_id": "shop", "message_id": m, "events": events}
                                for m, events in batches[start:start + 10]]}
        result = store.lambda_handler(payload, context)
        assert all(r["ok"] for r in result["results"]), result


def funnel_items(app_id: str = "shop") -> list[dict[str, Any]]:
    return sorted((i for i in aws.items(settings().funnel_table, "scan") if i["pk"].startswith(app_id)),
                  key=lambda i: (i["pk"], i["sk"]))


def rank_value(values: list[float], q: float) -> float:
    """The value DDSketch estimates: the one at rank q·(n-1) (its get_quantile_value's definition)."""
    ordered = sorted(values)
    return ordered[math.floor(q * (len(ordered) - 1))]


# --- the done-when: 2,000 messages against a brute-force computation ----------------------------------
def generate(n: int, seed: int = 14) -> tuple[dict[str, dict[str, datetime]], list[tuple[str, list[dict[str, Any]]]]]:
    """Messages over three days: each stalls after a random step (some at every step), a third take the
    optional step, some steps arrive late (in a later batch than their successor), some events repeat,
    some batches are delivered twice. Returns each message's first time per step and the batches in
    delivery order."""
    rnd = random.Random(seed)
    truth: dict[str, dict[str, datetime]] = {}
    first: list[tuple[str, list[dict[str, Any]]]] = []
    later: list[tuple[str, list[dict[str, Any]]]] = []
    for i in range(n):
        m = f"order-{i:05d}"
        t = START + timedelta(seconds=rnd.uniform(0, 3 * 86400 - 1))
        stop = rnd.choice([0, 1, 2, 2, 3, 3, 4, 4, 4])  # index in STEPS of the last step reached
        times: dict[str, datetime] = {}
        for k, step in enumerate(STEPS[:stop + 1]):
            if step == "GIFT_WRAPPED" and rnd.random() < 0.66:
                continue
            if k:
                t += timedelta(seconds=rnd.lognormvariate(5 + k, 1.2))  # minutes to hours
            times[step] = t
        truth[m] = times
        events = [ev(m, s, at) for s, at in times.items()]
        if rnd.random() < 0.2:  # a repeated step: another event of it, later
            s, at = rnd.choice(list(times.items()))
            events.append(ev(m, s, at + timedelta(seconds=30)))
        if len(events) > 2 and rnd.random() < 0.25:  # late: the second step comes after its successors
            late = events.pop(1)
            first.append((m, events))
            later.append((m, [late]))
        else:
            first.append((m, events))
        if rnd.random() < 0.1:  # a redelivered batch
            later.append(first[-1])
    return truth, first + later


def brute_force(truth: dict[str, dict[str, datetime]], days: set[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {s: {"reached": 0, "stalled": 0, "durations": []} for s in STEPS}
    for times in truth.values():
        if min(times.values()).date().isoformat() not in days:
            continue
        for s in times:
            out[s]["reached"] += 1
        out[max(times, key=STEPS.index)]["stalled"] += 1
        for s, p in PRED.items():
            if s in times and p in times:
                out[s]["durations"].append(max((times[s] - times[p]).total_seconds(), 0.0))
    return out


def test_the_funnel_of_2000_messages_matches_a_brute_force_computation(store: Any, lambda_context: Any) -> None:
    """Counts exactly, p50/p90/p99 within DDSketch's relative error, per day and merged across days.

    Stock moto's TransactWriteItems deep-copies every table it touches (2,400 transactions on a table
    of 2,000 markers took minutes); the emulator's patch (docs/LOCAL.md, fix 10) copies only the items a
    transaction names. `mocked_stack` installs it with the emulator's other DynamoDB fixes, as the local
    stack does."""
    from moto.dynamodb.models import DynamoDBBackend

    assert DynamoDBBackend.transact_write_items.__qualname__.startswith("_make_transact_write_items.")  # the patch's
    truth, batches = generate(2000)
    deliver(store, lambda_context, batches)
    api = Api(load_function("api"), lambda_context)
    ranges = [("2026-11-20", "2026-11-22"), ("2026-11-21", "2026-11-21"), ("2026-11-21", "2026-11-22")]
    for frm, to in ranges:
        days = {(datetime.fromisoformat(frm) + timedelta(days=d)).date().isoformat()
                for d in range((datetime.fromisoformat(to) - datetime.fromisoformat(frm)).days + 1)}
        want = brute_force(truth, days)
        got = api.call("GET", "/api/apps/shop/funnel", resource="/api/apps/{app_id}/funnel", params={"app_id": "shop"},
                       query={"from": f"{frm}T00:00:00Z", "to": f"{to}T12:00:00Z"})
        assert got.status == 200, got.body
        assert [r["step"] for r in got.body["steps"]] == list(STEPS)
        for row in got.body["steps"]:
            w = want[row["step"]]
            assert (row["reached"], row["stalled_here"], row["durations"]) == \
                (w["reached"], w["stalled"], len(w["durations"])), row
            before = PRED.get(row["step"])
            assert row["conversion"] == (round(w["reached"] / want[before]["reached"], 4) if before else None)
            for name, q in funnel.QUANTILES:
                exact = rank_value(w["durations"], q) if w["durations"] else None
                if exact is None:
                    assert row[name] is None
                else:
                    assert abs(row[name] - exact) <= funnel.RELATIVE_ACCURACY * exact + 1e-6, (row, name, exact)
        assert sum(r["stalled_here"] for r in got.body["steps"]) == sum(
            1 for times in truth.values() if min(times.values()).date().isoformat() in days)
    whole = brute_force(truth, {"2026-11-20", "2026-11-21", "2026-11-22"})
    assert all(whole[s]["stalled"] > 0 for s in STEPS)  # the generator stalls some at every step


# --- the incremental update -----------------------------------------------------------------------------
def test_a_plan_moves_the_stall_and_adds_a_duration_once_both_ends_are_known() -> None:
    t0, t1, t3 = "2026-11-20T10:00:00.000000Z", "2026-11-20T10:01:40.000000Z", "2026-11-20T11:00:00.000000Z"
    assert funnel.plan(LIFECYCLE, {}, {"CREATED": t0}) == {"CREATED": {"r": 1, "s": 1}}
    # SHIPPED before PAID (out of order): reached and the stall move, no duration (its predecessor is unknown)
    assert funnel.plan(LIFECYCLE, {"CREATED": t0}, {"SHIPPED": t3}) == {"CREATED": {"s": -1}, "SHIPPED": {"r": 1, "s": 1}}
    # PAID arrives: its own duration and SHIPPED's, which waited for it; the stall stays on SHIPPED
    got = funnel.plan(LIFECYCLE, {"CREATED": t0, "SHIPPED": t3}, {"PAID": t1})
    assert got == {"PAID": {"r": 1, funnel.bin_attr(100.0): 1}, "SHIPPED": {funnel.bin_attr(3500.0): 1}}
    # a step created before its predecessor counts in the zero bin
    assert funnel.plan(LIFECYCLE, {"PAID": t1}, {"CREATED": t3})["PAID"] == {"z": 1}


def test_a_redelivered_batch_counts_nothing_twice(store: Any, lambda_context: Any) -> None:
    at = START + timedelta(hours=1)
    batch = [("m1", [ev("m1", "CREATED", at), ev("m1", "PAID", at + timedelta(seconds=90))])]
    deliver(store, lambda_context, batch)
    once = funnel_items()
    deliver(store, lambda_context, batch)
    deliver(store, lambda_context, [("m1", [ev("m1", "PAID", at + timedelta(seconds=95))])])  # another PAID event
    assert funnel_items() == once
    counters = {i["sk"]: i for i in once if i["pk"] == "shop#2026-11-20"}
    assert (counters["CREATED"]["r"], counters["CREATED"].get("s", 0), counters["PAID"]["r"], counters["PAID"]["s"]) == (1, 0, 1, 1)


def test_a_funnel_failure_after_the_events_were_stored_is_counted_by_the_redelivery(
        store: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The events are stored, the funnel's transaction fails: the message is reported failed, and its
    redelivery (every event now a duplicate for the store) still counts the steps, once."""
    batch = [("m1", [ev("m1", "CREATED", START), ev("m1", "PAID", START + timedelta(seconds=60))])]
    real = store.funnel.on_stored
    calls = []

    def broken(*args: Any, **kwargs: Any) -> int:
        calls.append(1)
        raise RuntimeError("transaction failed")

    monkeypatch.setattr(store.funnel, "on_stored", broken)
    result = store.lambda_handler({"messages": [{"app_id": "shop", "message_id": "m1", "events": batch[0][1]}]},
                                  lambda_context)
    assert result["results"][0]["ok"] is False and "transaction failed" in result["results"][0]["error"]
    assert funnel_items() == []
    monkeypatch.setattr(store.funnel, "on_stored", real)
    deliver(store, lambda_context, batch)
    deliver(store, lambda_context, batch)
    paid = next(i for i in funnel_items() if i["sk"] == "PAID")
    assert (paid["r"], paid["s"]) == (1, 1)


def test_a_marker_changed_by_another_store_fails_the_message_for_redelivery(
        store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A store that read the marker before another one counted a step writes nothing (the transaction is
    conditional on the marker's version) and raises, so its message is redelivered and recounted."""
    table = settings().funnel_table
    funnel.on_stored(table, "shop", "m1", [{"event": "CREATED", "created_at": format_ts(START)}], LIFECYCLE, 2**31)
    stale = aws.table(table).get_item(Key={"pk": funnel.marker_pk("shop", "m1"), "sk": "m"}, ConsistentRead=True)
    funnel.on_stored(table, "shop", "m1", [{"event": "PAID", "created_at": format_ts(START + timedelta(seconds=5))}],
                     LIFECYCLE, 2**31)
    before = funnel_items()

    class Stale:
        def get_item(self, **_: Any) -> dict[str, Any]:
            return stale

    monkeypatch.setattr(funnel.aws, "table", lambda name: Stale())
    with pytest.raises(funnel.ConcurrentFunnelWriteError):
        funnel.on_stored(table, "shop", "m1", [{"event": "SHIPPED", "created_at": format_ts(START + timedelta(seconds=9))}],
                         LIFECYCLE, 2**31)
    monkeypatch.undo()
    assert funnel_items() == before  # nothing half-written


def test_apps_without_a_lifecycle_pay_nothing(mocked_stack: Any, lambda_context: Any) -> None:
    store = load_function("store")
    result = store.lambda_handler({"messages": [{"app_id": "plain", "message_id": "m1",
                                                 "events": [ev("m1", "CREATED", START, app_id="plain")]}]}, lambda_context)
    assert result["results"][0]["ok"]
    assert list(aws.items(settings().funnel_table, "scan")) == []


def test_events_outside_the_lifecycle_cost_no_read(store: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[Any] = []
    monkeypatch.setattr(funnel.aws, "table", lambda name: reads.append(name))
    assert funnel.on_stored("t", "shop", "m1", [{"event": "FAILED", "created_at": format_ts(START)}], LIFECYCLE, 1) == 0
    monkeypatch.undo()
    assert reads == []


# --- the sketch ------------------------------------------------------------------------------------------
def test_the_sketch_bins_keep_quantiles_within_the_relative_error_and_merge() -> None:
    rnd = random.Random(7)
    parts = [[rnd.lognormvariate(4, 2) for _ in range(3000)] for _ in range(3)]
    bins: list[dict[str, int]] = []
    for part in parts:
        counts: dict[str, int] = {}
        for v in part:
            counts[funnel.bin_attr(v)] = counts.get(funnel.bin_attr(v), 0) + 1
        bins.append(counts)
    merged = funnel.sketch_of(bins[0])
    for counts in bins[1:]:
        merged.merge(funnel.sketch_of(counts))
    values = [v for part in parts for v in part]
    assert merged.count == len(values)
    for q in (0.01, 0.5, 0.9, 0.99, 0.999):
        exact = rank_value(values, q)
        assert abs(merged.get_quantile_value(q) - exact) <= funnel.RELATIVE_ACCURACY * exact, q
    assert len(bins[0]) < 1200  # the item size bound in docs/FUNNEL.md: one attribute per bin


# --- the API -----------------------------------------------------------------------------------------
def funnel_call(api: Api, app_id: str, query: dict[str, str] | None = None, key: str | None = None) -> Any:
    event = api.event("GET", f"/api/apps/{app_id}/funnel", resource="/api/apps/{app_id}/funnel",
                      params={"app_id": app_id}, query=query)
    if key is not None:
        event["headers"][auth.HEADER] = key
        event["multiValueHeaders"][auth.HEADER] = [key]
    return api.send(event)


@pytest.mark.parametrize(("query", "bad"), [
    ({"from": "yesterday"}, {"from"}), ({"to": "2026-13-01"}, {"to"}),
    ({"from": "2026-11-22T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, {"from"}),
    ({"from": "2026-01-01T00:00:00Z", "to": "2026-11-21T00:00:00Z"}, {"from"}),
    ({"step": "PAID"}, {"step"}),
])
def test_bad_funnel_queries_are_400s_naming_the_parameter(store: Any, lambda_context: Any, query: dict[str, str],
                                                          bad: set[str]) -> None:
    api = Api(load_function("api"), lambda_context)
    assert fields(assert_error(funnel_call(api, "shop", query), 400, "VALIDATION_ERROR")) == bad


def test_an_app_without_a_lifecycle_has_no_funnel(store: Any, lambda_context: Any) -> None:
    api = Api(load_function("api"), lambda_context)
    assert_error(funnel_call(api, "plain"), 404, "NOT_FOUND")
    assert_error(funnel_call(api, "bad app"), 400)


def test_the_default_range_is_the_last_seven_days_and_alerts_count_on_their_step(store: Any, lambda_context: Any) -> None:
    now = datetime.now(UTC)
    deliver(store, lambda_context, [("m1", [ev("m1", "CREATED", now - timedelta(days=2)),
                                            ev("m1", "PAID", now - timedelta(days=2) + timedelta(minutes=5))]),
                                    ("m0", [ev("m0", "CREATED", now - timedelta(days=9))])])
    table = settings().alerts_table
    alerts.arm_deadline(table, "shop", "m1", __import__("mars_common.timeline").timeline.Deadline("SHIPPED", "PAID", 60),
                        format_ts(now - timedelta(hours=3)), 2**31)
    assert alerts.fire_deadline(table, "shop", "m1", "SHIPPED", "PAID", format_ts(now - timedelta(hours=1)))
    assert alerts.fire_failure(table, "shop", "m2", "FAILED", format_ts(now - timedelta(hours=1)), 2**31)
    got = funnel_call(Api(load_function("api"), lambda_context), "shop")
    assert got.status == 200, got.body
    rows = {r["step"]: r for r in got.body["steps"]}
    assert (rows["CREATED"]["reached"], rows["PAID"]["reached"], rows["PAID"]["conversion"]) == (1, 1, 1.0)
    assert rows["PAID"]["p50_seconds"] == pytest.approx(300, rel=funnel.RELATIVE_ACCURACY)
    assert rows["SHIPPED"]["alerts"] == 1 and rows["SHIPPED"]["conversion"] == 0.0
    assert got.body["alerts_without_step"] == 1 and rows["CREATED"]["alerts"] == 0  # FAILED: no lifecycle step
    assert set(got.body) >= {"app_id", "from", "to", "steps"}
    assert set(rows["CREATED"]) >= {"step", "reached", "conversion", "p50_seconds", "p90_seconds", "p99_seconds",
                                    "stalled_here", "alerts"}
    assert rows["CREATED"]["conversion"] is None and rows["CREATED"]["p50_seconds"] is None


def test_a_key_sees_only_its_apps_funnels(auth_on: Any, lambda_context: Any) -> None:
    cfg = settings()
    for app_id in ("shop", "bank"):
        put_lifecycle(cfg.apps_table, app_id, LIFECYCLE)
    api = Api(load_function("api"), lambda_context)
    shop, admin = auth.create_key(cfg.keys_table, ["shop"])[1], auth.create_key(cfg.keys_table, [], admin=True)[1]
    assert funnel_call(api, "shop").status == 401
    assert funnel_call(api, "shop", key=shop).status == 200
    assert_error(funnel_call(api, "bank", key=shop), 403, "FORBIDDEN")
    assert funnel_call(api, "bank", key=admin).status == 200


def test_bucket_items_are_keyed_by_the_cohort_day(store: Any, lambda_context: Any) -> None:
    late_night = datetime(2026, 11, 20, 23, 59, tzinfo=UTC)
    deliver(store, lambda_context, [("m1", [ev("m1", "CREATED", late_night)])])
    deliver(store, lambda_context, [("m1", [ev("m1", "PAID", late_night + timedelta(hours=2))])])  # next day: same cohort
    keys = list(aws.items(settings().funnel_table, KeyConditionExpression=Key("pk").eq("shop#2026-11-20")))
    assert {i["sk"] for i in keys} == {"CREATED", "PAID", "PAID\x1f" + funnel.bin_attr(7200.0)}
