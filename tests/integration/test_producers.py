"""Producers that speak SNS or SQS: boto3 and a stack Output are all they need (DESIGN §2)."""

from __future__ import annotations

import json
import time
import uuid

import requests

from .conftest import RunningStack, wait_timeline


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def dead_letters(stack: RunningStack) -> int:
    stats = requests.get(stack.url("/api/q/stats"), timeout=10).json()
    return int(stats["dead_letter"][1]["visible"])


def test_outputs_name_the_producer_entry_points(mars: RunningStack) -> None:
    assert mars.outputs["IngestTopicArn"].startswith("arn:aws:sns:")
    assert mars.outputs["IngestQueueUrl"].startswith("http://127.0.0.1:")


def test_sns_publish_single_and_bulk_reach_the_timeline(mars: RunningStack) -> None:
    sns = mars.client("sns")
    topic = mars.outputs["IngestTopicArn"]
    mid = uid("sns")
    sns.publish(TopicArn=topic, Message=json.dumps({"app_id": "shop", "message_id": mid, "event": "CREATED",
                                                    "created_at": "2026-11-26T10:00:00Z"}))
    sns.publish(TopicArn=topic, Message=json.dumps({"events": [
        {"app_id": "shop", "message_id": mid, "event": "PAID", "created_at": "2026-11-26T10:00:01Z"},
        {"app_id": "shop", "message_id": mid, "event": "SHIPPED", "created_at": "2026-11-26T10:00:02Z"}]}))
    timeline = wait_timeline(mars, mid, events=3)["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["CREATED", "PAID", "SHIPPED"]


def test_sqs_send_needs_no_group_or_dedup_id_and_duplicates_are_stored_once(mars: RunningStack) -> None:
    sqs = mars.client("sqs")
    url = mars.outputs["IngestQueueUrl"]
    mid = uid("sqs")
    body = json.dumps({"app_id": "shop", "message_id": mid, "event": "CREATED", "created_at": "2026-11-26T10:00:00Z"})
    sqs.send_message(QueueUrl=url, MessageBody=body)
    sqs.send_message(QueueUrl=url, MessageBody=body)  # a producer's retry
    mars.client("sns").publish(TopicArn=mars.outputs["IngestTopicArn"], Message=body)  # and once more by SNS
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"app_id": "shop", "message_id": mid, "event": "SENT",
                                                           "created_at": "2026-11-26T10:00:05Z"}))
    timeline = wait_timeline(mars, mid, events=2)["timelines"][0]
    time.sleep(1.5)  # every copy has been routed by now
    timeline = wait_timeline(mars, mid, events=2)["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["CREATED", "SENT"], "each event exactly once"


def test_malformed_producer_messages_are_dead_lettered_without_blocking_neighbours(mars: RunningStack) -> None:
    sqs, sns = mars.client("sqs"), mars.client("sns")
    before = dead_letters(mars)
    good = uid("good")
    entries = [
        {"Id": "0", "MessageBody": "not json at all"},
        {"Id": "1", "MessageBody": json.dumps({"app_id": "shop", "message_id": good, "event": "OK"})},
        {"Id": "2", "MessageBody": json.dumps({"app_id": "shop", "message_id": uid("bad"), "evnt": "TYPO"})},
    ]
    assert not sqs.send_message_batch(QueueUrl=mars.outputs["IngestQueueUrl"], Entries=entries).get("Failed")
    sns.publish(TopicArn=mars.outputs["IngestTopicArn"], Message=json.dumps({"events": "nope"}))
    wait_timeline(mars, good)  # the valid neighbour went through at once
    deadline = time.monotonic() + 20
    while dead_letters(mars) < before + 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert dead_letters(mars) == before + 3, "three invalid producer messages, each dead-lettered once"
    got = sqs.receive_message(QueueUrl=mars.outputs["IngestDeadLetterQueueUrl"], MaxNumberOfMessages=10,
                              MessageAttributeNames=["All"], VisibilityTimeout=0).get("Messages", [])
    reasons = [m["MessageAttributes"]["ErrorMessage"]["StringValue"] for m in got]
    assert any("evnt" in r for r in reasons) and any(r.startswith("not JSON") for r in reasons)
