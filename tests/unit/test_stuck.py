"""The stuck sweep (functions/stuck), its push (functions/broadcast) and the local scheduler that runs it."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from mars_common import aws, live
from mars_common.config import settings
from mars_common.events import format_ts, parse_event
from mars_common.store import STUCK_AT, put_lifecycle, upsert_message
from mars_common.timeline import Lifecycle

from samlocal.invoker import InvokeResult
from samlocal.triggers.schedule import Schedule, Scheduler, scheduled_event
from tests.conftest import load_function, table_stream
from tests.unit.test_live import FakeConnections, stream_records, ws_event


def ago(seconds: float) -> str:
    """A timestamp `seconds` before now (at call time: the suite may run long after this module loads)."""
    return format_ts(datetime.now(UTC) - timedelta(seconds=seconds))


def put_message(app_id: str, message_id: str, events: list[str], written_ago: float) -> None:
    """An item as the store wrote it `written_ago` seconds ago."""
    item: dict[str, Any] = {"app_id": app_id, "message_id": message_id, "updated_at": ago(written_ago),
                            "expires_at": int(time.time()) + 86400}
    for i, name in enumerate(events):
        item[f"e:{message_id}-{i}"] = {"event": name, "created_at": ago(written_ago + 1), "received_at": ago(written_ago)}
    aws.table(settings().messages_table).put_item(Item=item)


@pytest.fixture
def stuck(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("ALERTS_TOPIC_ARN", mocked_stack.ref("AlertsTopic"))
    return load_function("stuck")


def alert_stream() -> list[dict[str, Any]]:
    """AlertsTable's stream as Lambda would deliver it."""
    return table_stream(settings().alerts_table)


@pytest.fixture
def alerts(mocked_stack: Any, lambda_context: Any) -> Any:
    """A queue subscribed to AlertsTopic: what an operator's subscription would receive, once AlertsFunction
    has read the AlertsTable stream (the sweep writes alert records; their stream notifies)."""
    consumer = load_function("alerts")
    done: set[str] = set()
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.create_queue(QueueName="alerts-probe")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    boto3.client("sns", region_name="us-east-1").subscribe(TopicArn=mocked_stack.ref("AlertsTopic"), Protocol="sqs",
                                                           Endpoint=arn, Attributes={"RawMessageDelivery": "true"})

    def read() -> list[dict[str, Any]]:
        records = [r for r in alert_stream() if r["dynamodb"]["SequenceNumber"] not in done]
        done.update(r["dynamodb"]["SequenceNumber"] for r in records)
        if records:
            assert consumer.lambda_handler({"Records": records}, lambda_context) == {"batchItemFailures": []}
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        for m in got:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        return [json.loads(m["Body"]) for m in got]
    return read


def item(app_id: str, message_id: str) -> dict[str, Any]:
    return aws.table(settings().messages_table).get_item(Key={"app_id": app_id, "message_id": message_id})["Item"]


def test_a_message_past_its_sla_is_marked_and_alerted_once(stuck: Any, alerts: Any, lambda_context: Any) -> None:
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "PAID", "SHIPPED"), 60))
    put_lifecycle(settings().apps_table, "free", Lifecycle(("CREATED", "DONE"), 0))  # no SLA: never stuck
    put_message("shop", "late", ["CREATED"], written_ago=120)
    put_message("shop", "fresh", ["CREATED"], written_ago=10)
    put_message("shop", "done", ["CREATED", "PAID", "SHIPPED"], written_ago=120)
    put_message("shop", "ancient", ["CREATED"], written_ago=60 + 7200)  # swept long ago (outside the lookback)
    put_message("free", "slow", ["CREATED"], written_ago=500)
    swept = stuck.lambda_handler({}, lambda_context)
    assert (swept["candidates"], swept["marked"]) == (1, 1)
    (alert,) = alerts()  # an sla alert record, notified from its stream (docs/ALERTS.md)
    assert alert["type"] == "alert" and (alert["app_id"], alert["message_id"]) == ("shop", "late")
    assert alert["rule"] == {"kind": "sla", "step": None, "after": None} and alert["state"] == "firing"
    assert STUCK_AT in item("shop", "late") and STUCK_AT not in item("shop", "fresh")
    swept = stuck.lambda_handler({}, lambda_context)
    assert (swept["candidates"], swept["marked"]) == (0, 0)  # once per stuck spell
    assert alerts() == []


def test_a_new_event_clears_the_mark_so_the_message_can_alert_again(stuck: Any, alerts: Any, lambda_context: Any) -> None:
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "PAID", "SHIPPED"), 60))
    put_message("shop", "m", ["CREATED"], written_ago=120)
    stuck.lambda_handler({}, lambda_context)
    upsert_message(settings().messages_table, "shop", "m", [parse_event({"app_id": "shop", "message_id": "m",
                                                                         "event": "PAID"})], 30)
    assert STUCK_AT not in item("shop", "m")
    assert [a["state"] for a in alerts()] == ["firing"]  # the store resolves the alert: tests/unit/test_alerts.py


def test_a_message_written_since_it_was_read_is_not_marked(mocked_stack: Any) -> None:
    from mars_common.store import mark_stuck

    put_message("shop", "raced", ["CREATED"], written_ago=120)
    read = item("shop", "raced")
    upsert_message(settings().messages_table, "shop", "raced", [parse_event({"app_id": "shop", "message_id": "raced",
                                                                             "event": "PAID"})], 30)
    assert mark_stuck(settings().messages_table, read, format_ts(datetime.now(UTC))) is False
    assert mark_stuck(settings().messages_table, item("shop", "raced"), format_ts(datetime.now(UTC))) is True
    assert mark_stuck(settings().messages_table, item("shop", "raced"), format_ts(datetime.now(UTC))) is False  # already marked


def test_going_stuck_is_pushed_live_with_an_alert(stuck: Any, alerts: Any, lambda_context: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "PAID"), 60))
    load_function("websocket").lambda_handler(ws_event("websocket_subscribe.json", "c1",
                                                       {"action": "subscribe", "app_id": "shop"}), lambda_context)
    put_message("shop", "late", ["CREATED"], written_ago=120)
    stuck.lambda_handler({}, lambda_context)
    records = [r for r in stream_records("shop", "late") if r["eventName"] == "MODIFY"]
    load_function("broadcast").lambda_handler({"Records": records}, lambda_context)
    (frame,) = [f for f in fake.frames["c1"] if f["type"] == "timeline"]
    assert frame["status"] == "stuck" and frame["new_events"] == [] and frame["alert"]["type"] == "stuck"


# --- the local scheduler ---------------------------------------------------------------------------

@pytest.mark.parametrize("expression,after,expected", [
    ("rate(1 minute)", 1_000.0, 1_060.0),
    ("rate(5 minutes)", 1_000.0, 1_300.0),
    ("rate(2 hours)", 0.0, 7_200.0),
    ("rate(1 day)", 0.0, 86_400.0),
    ("cron(0/15 * * * ? *)", datetime(2026, 11, 26, 10, 7, tzinfo=UTC).timestamp(),
     datetime(2026, 11, 26, 10, 15, tzinfo=UTC).timestamp()),
    ("cron(0 8 ? * MON-FRI *)", datetime(2026, 11, 27, 9, 0, tzinfo=UTC).timestamp(),  # a Friday, after 08:00
     datetime(2026, 11, 30, 8, 0, tzinfo=UTC).timestamp()),                          # → Monday 08:00
    ("cron(0 8 ? * MON 2027)", 0.0, datetime(2027, 1, 4, 8, 0, tzinfo=UTC).timestamp()),  # a year: its first Monday
])
def test_schedule_expressions(expression: str, after: float, expected: float) -> None:
    assert Schedule("r", expression).next_after(after) == expected


@pytest.mark.parametrize("expression", ["rate(0 minutes)", "rate(1 fortnight)", "cron(0 8 * * ?)",
                                        "cron(0 8 * * MON *)", "every minute"])
def test_bad_schedule_expressions_are_refused(expression: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        Schedule("r", expression).validate()


def test_the_templates_schedule_and_the_scheduled_event_shape(mocked_stack: Any) -> None:
    events = mocked_stack.resources["StuckFunction"]["Properties"]["Events"]
    (schedule,) = Scheduler.sources_for(mocked_stack, "StuckFunction", events)
    assert (schedule.expression, schedule.enabled) == ("rate(1 minute)", True)
    event = scheduled_event(schedule, "us-east-1", "123456789012", 1_795_600_800)
    assert event["detail-type"] == "Scheduled Event" and event["source"] == "aws.events"
    assert event["time"] == "2026-11-25T10:00:00Z" and event["detail"] == {}
    assert event["resources"] == [f"arn:aws:events:us-east-1:123456789012:rule/{schedule.name}"]
    custom = Scheduler.sources_for(mocked_stack, "F", {"E": {"Type": "ScheduleV2", "Properties": {
        "ScheduleExpression": "rate(1 hour)", "Input": '{"sweep": "all"}', "State": "DISABLED"}}})
    assert custom[0].enabled is False and scheduled_event(custom[0], "r", "a", 0) == {"sweep": "all"}


class FakePool:
    def __init__(self, outcomes: list[bool]) -> None:
        self.outcomes, self.events = outcomes, []
        self.spec = type("Spec", (), {"name": "fake"})()

    def invoke(self, event: Any, *, trigger: str, source: str = "", **_kwargs: Any) -> InvokeResult:
        self.events.append((event, trigger, source))
        return InvokeResult(self.outcomes.pop(0))


def test_the_scheduler_fires_on_time_and_retries_a_failure_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = FakePool([False, False, True, True])
    timer = Scheduler(pool, Schedule("tick", "rate(1 minute)"), "us-east-1", "123456789012")  # type: ignore[arg-type]
    monkeypatch.setattr(Schedule, "next_after", lambda self, moment: moment + 0.05)
    monkeypatch.setattr("samlocal.triggers.async_invoke.RETRY_DELAYS", (0.01, 0.01))
    timer.start()
    deadline = time.monotonic() + 5
    while len(pool.events) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    timer.stop()
    assert len(pool.events) >= 4 and timer.fired >= 2
    assert all(trigger == "schedule" and source == "tick" for _e, trigger, source in pool.events)
