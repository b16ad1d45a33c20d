"""`mars redrive` on the real local stack: real poison stays put, dead-lettered events and failed
producer deliveries come back to their timelines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import requests
from mars_common.events import parse_event
from mars_common.sharding import message_key, shard

from .conftest import ROOT, RunningStack, wait_timeline

APP = "redrive-it"


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def redrive(stack: RunningStack, *args: str) -> tuple[int, dict[str, Any], str]:
    got = subprocess.run([sys.executable, "-m", "mars.redrive", "--stack-name", stack.stack_name,
                          "--state-dir", str(stack.state_dir), "--json", *args],
                         capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert got.stdout, got.stderr
    return got.returncode, json.loads(got.stdout), got.stderr


def peek(stack: RunningStack, url: str) -> dict[str, dict[str, Any]]:
    """A dead-letter queue's messages by body, left visible (nothing else reads a DLQ)."""
    sqs, seen = stack.client("sqs"), {}
    for _ in range(3):
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0,
                                     MessageAttributeNames=["All"]).get("Messages", []):
            seen[m["Body"]] = m
    return seen


def wait_in(stack: RunningStack, url: str, body: str, timeout: float = 45) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = peek(stack, url).get(body)
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{body[:80]} did not reach {url} within {timeout}s")


def remove(stack: RunningStack, url: str, body: str) -> None:
    """Takes this test's poison out of the shared stack's DLQ (the tool itself never deletes it)."""
    sqs = stack.client("sqs")
    for _ in range(5):
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=5).get("Messages", []):
            if m["Body"] == body:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
                return
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)


def test_poison_stays_and_dead_lettered_events_return_to_their_timeline(mars: RunningStack) -> None:
    sqs, dlq = mars.client("sqs"), mars.outputs["DeadLetterQueueUrl"]
    queues = mars.outputs["EventsQueueUrls"].split(",")
    # Real poison: valid JSON the aggregator cannot read as an event (an unknown field), sent where
    # the sharding function would put that message; 3 receives (visibility 2 s) later it is in the DLQ.
    bad = uid("poison")
    poison = json.dumps({"app_id": APP, "message_id": bad, "event": "CREATED", "colour": "red"})
    sqs.send_message(QueueUrl=queues[shard(APP, bad, len(queues))], MessageBody=poison,
                     MessageGroupId=message_key(APP, bad), MessageDeduplicationId=uid("d"))
    # Events that failed earlier (as if the store had been down): in the DLQ, in their group's order.
    mid = uid("late")
    events = [parse_event({"app_id": APP, "message_id": mid, "event": name, "created_at": f"2026-11-26T10:00:0{i}Z"}).to_json()
              for i, name in enumerate(["CREATED", "SENT", "DELIVERED"])]
    for body in events:
        sqs.send_message(QueueUrl=dlq, MessageBody=body, MessageGroupId=message_key(APP, mid), MessageDeduplicationId=uid("d"))
    wait_in(mars, dlq, poison)
    target = queues[shard(APP, mid, len(queues))].rsplit("/", 1)[-1]

    code, report, err = redrive(mars, "--queue", "events", "--dry-run")
    assert code == 0, err
    assert report["dry_run"] is True and report["moved"].get(target, 0) >= 3
    assert report["kept"]["events"]["invalid"]["count"] >= 1
    assert set(events) | {poison} <= set(peek(mars, dlq)), "a dry run changes nothing"
    assert requests.get(mars.url(f"/api/messages/{mid}"), timeout=10).status_code == 404

    code, report, err = redrive(mars, "--queue", "events")
    assert code == 0, err
    assert report["dry_run"] is False and report["moved"].get(target, 0) >= 3
    assert report["kept"]["events"]["invalid"]["count"] >= 1 and report["kept"]["events"]["invalid"]["sample"]
    timeline = wait_timeline(mars, mid, events=3)["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["CREATED", "SENT", "DELIVERED"]
    left = peek(mars, dlq)
    assert poison in left, "poison is never deleted: it stays in the DLQ, visible"
    assert not set(events) & set(left)
    remove(mars, dlq, poison)


def test_failed_producer_deliveries_return_and_invalid_ones_stay(mars: RunningStack) -> None:
    sqs, dlq = mars.client("sqs"), mars.outputs["IngestDeadLetterQueueUrl"]
    # Real: the router refuses a message with a typo and dead-letters it with the reason.
    refused = json.dumps({"app_id": APP, "message_id": uid("typo"), "evnt": "CREATED"})
    sqs.send_message(QueueUrl=mars.outputs["IngestQueueUrl"], MessageBody=refused)
    # An SNS delivery that failed its 3 attempts, as Lambda's async DLQ holds it (no created_at: the
    # SNS Timestamp stands in, then and now).
    sns_mid = uid("sns")
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"Records": [{"EventSource": "aws:sns", "Sns": {
        "Type": "Notification", "Timestamp": "2026-11-26T09:00:00.000Z",
        "Message": json.dumps({"app_id": APP, "message_id": sns_mid, "event": "CREATED"})}}]}), MessageAttributes={
        "RequestID": {"DataType": "String", "StringValue": uid("req")},
        "ErrorCode": {"DataType": "Number", "StringValue": "200"},
        "ErrorMessage": {"DataType": "String", "StringValue": "events of an SNS notification were not enqueued"}})
    # A producer's SQS message the router failed on maxReceiveCount times (moved by the redrive policy).
    sqs_mid = uid("sqs")
    sqs.send_message(QueueUrl=dlq, MessageBody=json.dumps({"events": [
        {"app_id": APP, "message_id": sqs_mid, "event": "CREATED", "created_at": "2026-11-26T10:00:00Z"},
        {"app_id": APP, "message_id": sqs_mid, "event": "SENT", "created_at": "2026-11-26T10:00:01Z"}]}))
    kept_before = wait_in(mars, dlq, refused)
    assert kept_before["MessageAttributes"]["Source"]["StringValue"] == "sqs"

    code, report, err = redrive(mars, "--queue", "ingest")
    assert code == 0, err
    assert report["moved"].get(mars.outputs["IngestQueueUrl"].rsplit("/", 1)[-1], 0) >= 2
    assert report["kept"]["ingest"]["invalid"]["count"] >= 1
    assert report["kept"]["ingest"]["invalid"]["sample"].startswith("refused by the router")
    sns_events = wait_timeline(mars, sns_mid)["timelines"][0]["events"]
    assert sns_events[0]["created_at"] == "2026-11-26T09:00:00.000000Z"
    assert [e["event"] for e in wait_timeline(mars, sqs_mid, events=2)["timelines"][0]["events"]] == ["CREATED", "SENT"]
    assert refused in peek(mars, dlq), "invalid: kept, visible"
    remove(mars, dlq, refused)


def test_no_running_stack_exits_2(tmp_path: Any) -> None:
    got = subprocess.run([sys.executable, "-m", "mars.redrive", "--state-dir", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert got.returncode == 2 and "make up" in got.stderr and got.stdout == ""
