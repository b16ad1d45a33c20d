"""Lifecycle rules (optional, failure, deadlines), status/missing/out_of_order, and alerts as records:
their transitions (firing once, resolved, an sla alert firing again), the sweep, the stream consumer
(notify + live frame), GET /api/alerts and its auth scoping."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from mars_common import alerts, auth, aws, live, store
from mars_common.config import settings
from mars_common.events import format_ts, parse_event
from mars_common.store import put_lifecycle, to_timeline, upsert_message
from mars_common.timeline import Deadline, Lifecycle, event_flags, summarize

from tests.conftest import load_function, table_stream
from tests.unit.test_api import Api, assert_error, each_case, fields
from tests.unit.test_live import FakeConnections, ws_event

RULES = Lifecycle(("CREATED", "PAID", "GIFT_WRAPPED", "SHIPPED", "DELIVERED"), 0, optional=("GIFT_WRAPPED",),
                  failure=("FAILED",), deadlines=(Deadline("SHIPPED", "PAID", 2), Deadline("DELIVERED", "SHIPPED", 3)))
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def ev(name: str, second: int) -> dict[str, Any]:
    t = f"2026-11-30T10:00:{second:02d}.000000Z"
    return {"event": name, "created_at": t, "received_at": t, "event_id": f"{name}-{second}"}


# --- status, missing, out_of_order, unexpected --------------------------------------------------------

def test_optional_steps_are_never_missing_and_a_failure_step_ends_the_message_as_failed() -> None:
    done = summarize([ev("CREATED", 0), ev("PAID", 1), ev("SHIPPED", 2), ev("DELIVERED", 3)], RULES, None, NOW)
    assert done["missing"] == [] and done["status"] == "complete"  # GIFT_WRAPPED was optional
    failed = summarize([ev("CREATED", 0), ev("PAID", 1), ev("FAILED", 2)], RULES, None, NOW)
    assert failed["status"] == "failed" and failed["missing"] == ["SHIPPED", "DELIVERED"]
    assert failed["unexpected_count"] == 0  # a failure step is declared, not unexpected


def test_an_event_before_its_predecessor_is_out_of_order_and_unexpected_events_are_counted() -> None:
    events = [ev("CREATED", 0), ev("SHIPPED", 1), ev("RETRY", 2), ev("PAID", 3), ev("RETRY", 4)]
    out = summarize(events, RULES, None, NOW)
    assert out["out_of_order"] == ["SHIPPED"] and out["unexpected_count"] == 2
    assert event_flags(events, RULES) == [[], ["out_of_order"], ["unexpected"], [], ["unexpected"]]
    in_order = summarize([ev("CREATED", 0), ev("PAID", 1), ev("SHIPPED", 2)], RULES, None, NOW)
    assert in_order["out_of_order"] == [] and in_order["unexpected_count"] == 0


def test_a_long_timelines_summary_keeps_per_step_stats_so_it_reports_the_same(mocked_stack: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store, "INLINE_MAX_BYTES", 600)  # pages after a few events
    events = [ev("CREATED", 0), ev("SHIPPED", 1), ev("RETRY", 2), ev("PAID", 3), ev("RETRY", 4), ev("RETRY", 5)]
    for i, e in enumerate(events):  # one batch each, as a slow producer sends them
        raw = {"app_id": "shop", "message_id": "long", "event": e["event"], "created_at": e["created_at"]}
        upsert_message(settings().messages_table, "shop", "long", [parse_event(raw)], 30)
        if i == 2:  # a redelivery of the same batch counts nothing twice
            upsert_message(settings().messages_table, "shop", "long", [parse_event(raw)], 30)
    item = aws.table(settings().messages_table).get_item(Key={"app_id": "shop", "message_id": "long"})["Item"]
    assert item.get("paged") and item["step_stats"]["RETRY"]["n"] == 3
    paged = to_timeline(item, RULES, with_events=False, now=NOW)
    inline = summarize(events, RULES, None, NOW)
    for key in ("missing", "status", "out_of_order", "unexpected_count", "first_seen", "last_seen"):
        assert paged[key] == inline[key], key
    del item["step_stats"]  # a summary written before the stats: what is not known says so
    old = to_timeline(item, RULES, with_events=False, now=NOW)
    assert old["unexpected_count"] is None and old["missing"] == ["DELIVERED"]


# --- the lifecycle route ------------------------------------------------------------------------------

@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any) -> Api:
    return Api(load_function("api"), lambda_context)


def put(api: Api, body: Any, app_id: str = "shop") -> Any:
    return api.call("PUT", f"/api/apps/{app_id}/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                    params={"app_id": app_id}, body=body)


BODY = {"events": ["CREATED", "PAID", "SHIPPED", "DELIVERED"], "sla_seconds": 86400, "optional": ["DELIVERED"],
        "failure": ["FAILED"], "deadlines": [{"step": "SHIPPED", "after": "PAID", "within_seconds": 3600}]}


def test_rules_round_trip_and_old_bodies_keep_working(api: Api) -> None:
    reply = put(api, BODY)
    assert reply.status == 200, reply.body
    got = api.call("GET", "/api/apps/shop/lifecycle", resource="/api/apps/{app_id}/lifecycle", params={"app_id": "shop"})
    assert {k: got.body[k] for k in BODY} == BODY
    assert put(api, {"events": ["A"], "sla_seconds": 5}).status == 200
    got = api.call("GET", "/api/apps/shop/lifecycle", resource="/api/apps/{app_id}/lifecycle", params={"app_id": "shop"})
    assert (got.body["optional"], got.body["failure"], got.body["deadlines"]) == ([], [], [])


def _with(**changes: Any) -> dict[str, Any]:
    return {**BODY, **changes}


def _deadline(**changes: Any) -> dict[str, Any]:
    return _with(deadlines=[{"step": "SHIPPED", "after": "PAID", "within_seconds": 3600, **changes}])


INVALID_RULES = [
    pytest.param(_deadline(step="LOST"), {"deadlines[0].step"}, id="deadline-unknown-step"),
    pytest.param(_deadline(after="NOPE"), {"deadlines[0].after"}, id="deadline-unknown-after"),
    pytest.param(_deadline(after="SHIPPED"), {"deadlines[0].after"}, id="after-equals-step"),
    pytest.param(_deadline(step="PAID", after="SHIPPED"), {"deadlines[0].after"}, id="after-comes-later"),
    pytest.param(_deadline(within_seconds=0), {"deadlines[0].within_seconds"}, id="zero-seconds"),
    pytest.param(_deadline(within_seconds="60"), {"deadlines[0].within_seconds"}, id="string-seconds"),
    pytest.param(_deadline(within_seconds=True), {"deadlines[0].within_seconds"}, id="bool-seconds"),
    pytest.param(_deadline(extra=1), {"deadlines[0].extra"}, id="deadline-unknown-field"),
    pytest.param(_with(deadlines=[{"step": "SHIPPED", "after": "PAID", "within_seconds": 5}] * 2), {"deadlines[1]"},
                 id="repeated-deadline"),
    pytest.param(_with(deadlines="SHIPPED"), {"deadlines"}, id="deadlines-not-a-list"),
    pytest.param(_with(deadlines=["SHIPPED"]), {"deadlines[0]"}, id="deadline-not-an-object"),
    pytest.param(_with(optional=["GIFT"]), {"optional"}, id="optional-not-in-events"),
    pytest.param(_with(optional="PAID"), {"optional"}, id="optional-not-a-list"),
    pytest.param(_with(failure=["PAID"]), {"failure"}, id="failure-also-in-events"),
    pytest.param(_with(failure=["X", "X"]), {"failure"}, id="failure-duplicates"),
    pytest.param(_with(failure=[""]), {"failure"}, id="failure-empty-name"),
]


def test_rule_validation_names_each_problem(api: Api) -> None:
    def check(body: Any, bad_fields: set[str]) -> None:
        assert fields(assert_error(put(api, body, "rules"), 400, "VALIDATION_ERROR")) == bad_fields
        got = api.call("GET", "/api/apps/rules/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                       params={"app_id": "rules"})
        assert got.status == 404  # nothing was written

    each_case(INVALID_RULES, check)


# --- transitions ---------------------------------------------------------------------------------------

def ago(seconds: float) -> str:
    return format_ts(datetime.now(UTC) - timedelta(seconds=seconds))


def record(message_id: str, kind: str, step: str | None = None, after: str | None = None) -> dict[str, Any] | None:
    return aws.table(settings().alerts_table).get_item(
        Key={"app_id": "shop", "sk": alerts.alert_sk(message_id, kind, step, after)}).get("Item")


@pytest.fixture
def stack(mocked_stack: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The store, the sweep and the alerts consumer, AlertsTopic subscribed by a probe queue, a websocket
    subscriber of app shop (FakeConnections)."""
    monkeypatch.setenv("ALERTS_TOPIC_ARN", mocked_stack.ref("AlertsTopic"))
    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "PAID", "SHIPPED", "DELIVERED"), 60,
                                                           failure=("FAILED",),
                                                           deadlines=(Deadline("SHIPPED", "PAID", 30),
                                                                      Deadline("DELIVERED", "SHIPPED", 30))))
    load_function("websocket").lambda_handler(ws_event("websocket_subscribe.json", "c1",
                                                       {"action": "subscribe", "app_id": "shop"}), lambda_context)
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="alerts-probe")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns", region_name="us-east-1").subscribe(TopicArn=mocked_stack.ref("AlertsTopic"), Protocol="sqs",
                                                           Endpoint=arn, Attributes={"RawMessageDelivery": "true"})

    class Stack:
        store, stuck, consumer = load_function("store"), load_function("stuck"), load_function("alerts")
        frames = fake.frames
        position: str | None = None  # the AlertsTable stream read so far

        def send(self, message_id: str, *names_and_ages: tuple[str, float]) -> None:
            events = [parse_event({"app_id": "shop", "message_id": message_id, "event": n, "created_at": ago(a)}).as_dict()
                      for n, a in names_and_ages]
            result = self.store.lambda_handler({"messages": [{"app_id": "shop", "message_id": message_id,
                                                              "events": events}]}, lambda_context)
            assert all(r["ok"] for r in result["results"]), result

        def sweep(self) -> dict[str, int]:
            return dict(self.stuck.lambda_handler({}, lambda_context))

        def deliver(self) -> list[dict[str, Any]]:
            """The AlertsTable stream's new records through AlertsFunction; what AlertsTopic received."""
            records = self.new_records()
            if records:
                assert self.consumer.lambda_handler({"Records": records}, lambda_context) == {"batchItemFailures": []}
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            for m in got:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
            return [json.loads(m["Body"]) for m in got]

        def new_records(self) -> list[dict[str, Any]]:
            out = table_stream(settings().alerts_table)
            seen = self.position
            self.position = out[-1]["dynamodb"]["SequenceNumber"] if out else seen
            return [r for r in out if seen is None or int(r["dynamodb"]["SequenceNumber"]) > int(seen)]

    return Stack()


def kinds(sent: list[dict[str, Any]]) -> list[tuple[str, str | None, str]]:
    return sorted((a["rule"]["kind"], a["rule"]["step"], a["state"]) for a in sent)


def test_a_deadline_fires_once_then_resolves_when_the_late_step_arrives(stack: Any) -> None:
    stack.send("late", ("CREATED", 100), ("PAID", 90))   # SHIPPED was due 60 s ago
    stack.send("ontime", ("CREATED", 100), ("PAID", 90), ("SHIPPED", 80))  # shipped in time: DELIVERED is late
    stack.send("fresh", ("CREATED", 5), ("PAID", 4))     # not due yet
    assert record("late", "deadline", "SHIPPED", "PAID")["state"] == "pending"
    assert record("ontime", "deadline", "SHIPPED", "PAID")["state"] == "met"
    assert stack.deliver() == []  # pending and met are bookkeeping: nothing goes out
    swept = stack.sweep()
    assert (swept["deadlines_due"], swept["deadlines_fired"]) == (2, 2)
    sent = stack.deliver()
    assert sorted((a["message_id"], a["rule"]["step"], a["state"]) for a in sent) == [
        ("late", "SHIPPED", "firing"), ("ontime", "DELIVERED", "firing")]
    (alert,) = [a for a in sent if a["message_id"] == "late"]
    assert set(alert) == {"type", "alert_id", "app_id", "message_id", "rule", "state", "fired_at", "resolved_at",
                          "timeline_url"}
    assert alert["rule"] == {"kind": "deadline", "step": "SHIPPED", "after": "PAID"} and alert["resolved_at"] is None
    assert alert["timeline_url"].endswith("search/event?message_id=late&app_id=shop")
    assert [f for f in stack.frames["c1"] if f["type"] == "alert" and f["message_id"] == "late"] == [alert]
    assert stack.sweep()["deadlines_fired"] == 0 and stack.deliver() == []  # never twice while it fires
    stack.send("late", ("SHIPPED", 0))
    stack.send("late", ("SHIPPED", 0))  # a redelivery: nothing changes twice
    (resolved,) = stack.deliver()
    assert (resolved["alert_id"], resolved["state"]) == (alert["alert_id"], "resolved") and resolved["resolved_at"]
    assert record("late", "deadline", "DELIVERED", "SHIPPED")["state"] == "pending"  # the next deadline is armed


def test_a_sweep_handles_a_bounded_number_of_deadlines_oldest_first_and_the_next_run_the_rest(
        stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "MAX_DUE_PER_RUN", 2)
    for i, age in enumerate((90, 100, 80)):
        stack.send(f"m{i}", ("PAID", age))
    first = stack.sweep()
    assert (first["deadlines_due"], first["deadlines_fired"]) == (2, 2)
    assert sorted(a["message_id"] for a in stack.deliver()) == ["m0", "m1"]  # the two oldest
    assert record("m2", "deadline", "SHIPPED", "PAID")["state"] == "pending"  # the newest waits a minute
    second = stack.sweep()
    assert (second["deadlines_due"], second["deadlines_fired"]) == (1, 1)
    assert record("m2", "deadline", "SHIPPED", "PAID")["state"] == "firing"


def test_an_earlier_after_event_arriving_late_moves_the_deadline_earlier(stack: Any) -> None:
    stack.send("m", ("PAID", 10))  # due in 20 s
    due = record("m", "deadline", "SHIPPED", "PAID")["due_at"]
    stack.send("m", ("PAID", 100))  # an earlier PAID, delivered late: due 70 s ago
    assert record("m", "deadline", "SHIPPED", "PAID")["due_at"] < due
    stack.send("m", ("PAID", 5))  # a later one changes nothing
    assert stack.sweep()["deadlines_fired"] == 1


def test_a_step_that_came_before_its_after_step_never_fires(stack: Any) -> None:
    stack.send("odd", ("SHIPPED", 100))
    stack.send("odd", ("PAID", 90))  # arms SHIPPED-after-PAID: the sweep finds SHIPPED there
    assert stack.sweep()["deadlines_fired"] == 1
    assert record("odd", "deadline", "SHIPPED", "PAID")["state"] == "met"
    assert kinds(stack.deliver()) == [("deadline", "DELIVERED", "firing")]  # only DELIVERED-after-SHIPPED is late


def test_a_failure_step_fires_once_and_its_deadlines_do_not(stack: Any) -> None:
    stack.send("bad", ("CREATED", 100), ("PAID", 90), ("FAILED", 85))
    stack.send("bad", ("FAILED", 85))  # redelivered
    stack.send("bad", ("FAILED", 10))  # another FAILED event: the rule already fired for this message
    assert stack.sweep()["deadlines_fired"] == 0  # a failed message's deadlines are met, not fired
    assert kinds(stack.deliver()) == [("failure", "FAILED", "firing")]


def test_an_sla_alert_fires_resolves_and_fires_again_on_the_next_stuck_spell(stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "DONE"), 60))
    item = {"app_id": "shop", "message_id": "slow", "updated_at": ago(120), "expires_at": int(time.time()) + 86400,
            "e:x": {"event": "CREATED", "created_at": ago(121), "received_at": ago(120)}}
    aws.table(settings().messages_table).put_item(Item=item)
    assert stack.sweep()["marked"] == 1
    (fired,) = stack.deliver()
    assert (fired["rule"]["kind"], fired["state"]) == ("sla", "firing")
    assert stack.sweep()["marked"] == 0 and stack.deliver() == []
    stack.send("slow", ("PING", 1))  # a new event ends the stuck spell
    assert kinds(stack.deliver()) == [("sla", None, "resolved")]
    later = datetime.now(UTC) + timedelta(seconds=120)
    monkeypatch.setattr(stack.stuck, "datetime", type("D", (), {"now": staticmethod(lambda tz=None: later)}))
    assert stack.sweep()["marked"] == 1
    (again,) = stack.deliver()
    assert (again["alert_id"], again["state"], again["resolved_at"]) == (fired["alert_id"], "firing", None)


def test_a_failed_notify_is_retried_not_lost(stack: Any, lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stack.send("bad", ("FAILED", 1))
    records = stack.new_records()
    monkeypatch.setattr(alerts, "notify", lambda alert: (_ for _ in ()).throw(RuntimeError("SNS throttled")))
    firing = [r["dynamodb"]["SequenceNumber"] for r in records
              if r["dynamodb"].get("NewImage", {}).get("state", {}).get("S") == "firing"]
    try:
        failed = stack.consumer.lambda_handler({"Records": records}, lambda_context)
        retried = [f["itemIdentifier"] for f in failed["batchItemFailures"]]
    except BatchProcessingError:  # every record of the batch failed: the invocation fails, all come back
        retried = [r["dynamodb"]["SequenceNumber"] for r in records]
        # (stock moto adds a keys-only INSERT before the real one, which succeeds; the emulator's patch,
        # installed by an earlier test in the same process, does not: the batch is then the firing alone)
    assert firing and set(firing) <= set(retried) and (len(records) == len(firing) or retried == firing)
    assert stack.frames.get("c1", []) == [f for f in stack.frames.get("c1", []) if f["type"] != "alert"]  # no frame either


def test_the_store_without_rules_makes_no_alert_call(stack: Any, lambda_context: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    put_lifecycle(settings().apps_table, "plain", Lifecycle(("A", "B"), 60))
    calls: list[Any] = []
    monkeypatch.setattr(alerts, "on_stored", lambda *a, **k: calls.append(a) or 0)
    events = [parse_event({"app_id": "plain", "message_id": "m", "event": "A"}).as_dict()]
    stack.store.lambda_handler({"messages": [{"app_id": "plain", "message_id": "m", "events": events}]}, lambda_context)
    assert calls == []


# --- GET /api/alerts -------------------------------------------------------------------------------------

def alerts_call(api: Api, query: dict[str, str], key: str | None = None) -> Any:
    event = api.event("GET", "/api/alerts", query=query)
    if key is not None:
        event["headers"][auth.HEADER] = key
        event["multiValueHeaders"][auth.HEADER] = [key]
    return api.send(event)


def seed(app_id: str, n: int) -> None:
    for i in range(n):
        alerts.fire_failure(settings().alerts_table, app_id, f"m{i}", "FAILED", f"2026-11-30T10:00:{i:02d}.000000Z", 2**31)
    alerts.resolve_sla(settings().alerts_table, app_id, "m0", "x")  # not firing: no change
    alerts.fire_sla(settings().alerts_table, app_id, "m1", "2026-11-30T11:00:00.000000Z", 2**31)
    alerts.resolve_sla(settings().alerts_table, app_id, "m1", "2026-11-30T11:05:00.000000Z")


def test_alerts_are_listed_newest_first_filtered_and_paged(api: Api) -> None:
    seed("shop", 5)
    alerts.arm_deadline(settings().alerts_table, "shop", "m9", Deadline("B", "A", 5), "2026-11-30T10:00:00Z", 2**31)
    got = alerts_call(api, {"app_id": "shop"})
    assert got.status == 200, got.body
    assert [(a["message_id"], a["rule"]["kind"]) for a in got.body["items"]] == [
        ("m1", "sla"), ("m4", "failure"), ("m3", "failure"), ("m2", "failure"), ("m1", "failure"), ("m0", "failure")]
    assert got.body["cursor"] is None  # the pending deadline of m9 is not an alert
    assert [a["state"] for a in alerts_call(api, {"app_id": "shop", "state": "resolved"}).body["items"]] == ["resolved"]
    window = alerts_call(api, {"app_id": "shop", "from": "2026-11-30T10:00:01Z", "to": "2026-11-30T10:00:03Z"})
    assert [a["message_id"] for a in window.body["items"]] == ["m3", "m2", "m1"]
    one = alerts_call(api, {"app_id": "shop", "message_id": "m1"})
    assert [a["rule"]["kind"] for a in one.body["items"]] == ["sla", "failure"]
    pages, cursor = [], None
    while True:
        page = alerts_call(api, {"app_id": "shop", "limit": "4", **({"cursor": cursor} if cursor else {})})
        pages.append([a["alert_id"] for a in page.body["items"]])
        cursor = page.body["cursor"]
        if not cursor:
            break
    assert [len(p) for p in pages] == [4, 2] and sum(pages, []) == [a["alert_id"] for a in got.body["items"]]


@pytest.mark.parametrize("query,bad", [
    ({}, {"app_id"}), ({"app_id": "shop", "state": "pending"}, {"state"}), ({"app_id": "shop", "from": "yesterday"}, {"from"}),
    ({"app_id": "shop", "cursor": "nope"}, {"cursor"}), ({"app_id": "shop", "limit": "0"}, {"limit"}),
    ({"app_id": "shop", "severity": "high"}, {"severity"}),
])
def test_bad_alert_queries_are_400s_naming_the_parameter(api: Api, query: dict[str, str], bad: set[str]) -> None:
    assert fields(assert_error(alerts_call(api, query), 400, "VALIDATION_ERROR")) == bad


def test_a_cursor_of_another_app_is_refused(api: Api) -> None:
    seed("shop", 3)
    cursor = alerts_call(api, {"app_id": "shop", "limit": "1"}).body["cursor"]
    assert fields(assert_error(alerts_call(api, {"app_id": "bank", "cursor": cursor}), 400)) == {"cursor"}


def test_a_key_sees_only_its_apps_alerts(auth_on: Any, lambda_context: Any) -> None:
    api = Api(load_function("api"), lambda_context)
    table = settings().keys_table
    shop, admin = auth.create_key(table, ["shop"])[1], auth.create_key(table, [], admin=True)[1]
    seed("shop", 1)
    seed("bank", 1)
    assert alerts_call(api, {"app_id": "shop"}).status == 401
    mine = alerts_call(api, {"app_id": "shop"}, shop)
    assert mine.status == 200 and {a["app_id"] for a in mine.body["items"]} == {"shop"}
    assert_error(alerts_call(api, {"app_id": "bank"}, shop), 403, "FORBIDDEN")
    assert alerts_call(api, {"app_id": "bank"}, admin).status == 200


def test_every_transition_reaches_the_apps_destinations_through_the_delivery_queue(stack: Any) -> None:
    """alerts.notify → delivery.fan_out: a firing and its resolution each become one delivery per
    destination of the app, with a webhook-id stable per transition (what receivers dedupe on)."""
    from mars_common import delivery, destinations

    cfg = settings()
    made = destinations.create(cfg.destinations_table, cfg.destination_secrets_table, "shop",
                               destinations.NewDestination("webhook", url="http://127.0.0.1:9/hook", format="standard"))
    sqs = boto3.client("sqs", region_name="us-east-1")

    def queued() -> list[dict[str, Any]]:
        got = sqs.receive_message(QueueUrl=cfg.alert_delivery_queue_url, MaxNumberOfMessages=10).get("Messages", [])
        for m in got:
            sqs.delete_message(QueueUrl=cfg.alert_delivery_queue_url, ReceiptHandle=m["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in got]

    stack.send("late", ("CREATED", 100), ("PAID", 90))
    stack.sweep()
    (fired,) = stack.deliver()
    (firing,) = queued()
    assert firing["destination_id"] == made["id"] and firing["alert"] == fired
    assert firing["webhook_id"] == delivery.webhook_id(fired)
    stack.send("late", ("SHIPPED", 0))
    (resolved,) = stack.deliver()
    (resolution,) = queued()
    assert resolution["alert"] == resolved and resolved["state"] == "resolved"
    assert resolution["webhook_id"] != firing["webhook_id"]  # another transition, another id


def test_alert_transitions_and_their_pushes_are_counted_in_emf(stack: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from mars_common import metrics as m

    from tests.unit.test_emf_metrics import metrics_of, total

    stack.send("late", ("CREATED", 100), ("PAID", 90))
    stack.sweep()
    capsys.readouterr()
    stack.deliver()
    lines = [line for line in metrics_of(capsys) if line.get("service") == "mars-alerts"]
    assert total(lines, m.ALERT_TRANSITIONS, state="firing") == 1
    assert total(lines, m.WEBSOCKET_PUSHES) == 1  # the app's one subscriber (c1)
    stack.send("late", ("SHIPPED", 0))
    stack.deliver()
    lines = [line for line in metrics_of(capsys) if line.get("service") == "mars-alerts"]
    assert total(lines, m.ALERT_TRANSITIONS, state="resolved") == 1
