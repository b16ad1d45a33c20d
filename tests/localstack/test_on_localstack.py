"""Mars's pipeline, dead-letter queue and SNS/SQS producers on LocalStack (DynamoDB embedded)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from typing import Any

import pytest
import requests

from tests.integration.conftest import MARS, ROOT, RunningStack, wait_timeline
from tests.integration.test_live import next_frame, subscribed

LOCALSTACK_ACCOUNT = "000000000000"


def uid(prefix: str = "ls") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def mars_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARS, *args, "--stack-name", stack.stack_name, "--state-dir", str(stack.state_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_stack_lives_in_localstacks_account_with_dynamodb_embedded(mars_ls: RunningStack,
                                                                        localstack_endpoint: str) -> None:
    state = mars_ls.state
    assert state["endpoint"] == localstack_endpoint and state["account_id"] == LOCALSTACK_ACCOUNT
    embedded = state["service_endpoints"]
    assert embedded["dynamodb"] == embedded["dynamodbstreams"] != localstack_endpoint
    assert set(embedded) == {"dynamodb", "dynamodbstreams"}, "everything else is LocalStack's"
    out = mars_ls.outputs
    assert f":{LOCALSTACK_ACCOUNT}:" in out["IngestTopicArn"]
    assert all(u.startswith(f"{localstack_endpoint}/{LOCALSTACK_ACCOUNT}/") for u in out["EventsQueueUrls"].split(","))
    # the RedrivePolicy names the DLQ by the ARN LocalStack gave it: else messages vanish at maxReceiveCount
    sqs = mars_ls.client("sqs")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=out["DeadLetterQueueUrl"],
                                       AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = sqs.get_queue_attributes(QueueUrl=out["EventsQueueUrls"].split(",")[0],
                                      AttributeNames=["RedrivePolicy"])["Attributes"]["RedrivePolicy"]
    assert json.loads(policy)["deadLetterTargetArn"] == dlq_arn
    # the embedded emulator answers in the same account, so its table and stream ARNs agree
    table = mars_ls.client("dynamodb").describe_table(TableName=out["MessagesTableName"])["Table"]
    assert f":{LOCALSTACK_ACCOUNT}:" in table["TableArn"] and f":{LOCALSTACK_ACCOUNT}:" in table["LatestStreamArn"]


def test_an_event_over_http_is_stored_and_read_back(mars_ls: RunningStack) -> None:
    mid = uid()
    resp = requests.post(mars_ls.url("/api/event"), json={"app_id": "shop", "message_id": mid, "event": "CREATED",
                                                         "created_at": "2026-11-26T10:00:00Z"}, timeout=30)
    assert resp.status_code == 202, resp.text
    (timeline,) = wait_timeline(mars_ls, mid)["timelines"]
    assert [(e["event"], e["event_id"]) for e in timeline["events"]] == [("CREATED", resp.json()["event_ids"][0])]


def test_producers_via_sns_and_sqs_reach_the_timeline(mars_ls: RunningStack) -> None:
    mid = uid("producer")
    event = {"app_id": "shop", "message_id": mid}
    mars_ls.client("sns").publish(TopicArn=mars_ls.outputs["IngestTopicArn"],
                                  Message=json.dumps({**event, "event": "CREATED", "created_at": "2026-11-26T10:00:00Z"}))
    mars_ls.client("sqs").send_message(QueueUrl=mars_ls.outputs["IngestQueueUrl"],
                                       MessageBody=json.dumps({**event, "event": "PAID",
                                                               "created_at": "2026-11-26T10:00:01Z"}))
    timeline = wait_timeline(mars_ls, mid, events=2)["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["CREATED", "PAID"]


def test_the_websocket_gets_a_new_event_through_the_embedded_stream(mars_ls: RunningStack) -> None:
    app_id, mid = uid("live"), uid()
    with subscribed(mars_ls, app_id, mid) as ws:
        next_frame(ws)  # the timeline so far: empty
        assert requests.post(mars_ls.url("/api/event"), json={"app_id": app_id, "message_id": mid, "event": "CREATED"},
                             timeout=30).status_code == 202
        pushed = next_frame(ws, message_id=mid)
    assert [e["event"] for e in pushed["new_events"]] == ["CREATED"]


@pytest.mark.parametrize("transport", ["sns", "sqs", "http", "grpc"])
def test_mars_send_uses_the_stacks_recorded_endpoints(mars_ls: RunningStack, transport: str) -> None:
    mid = uid(transport)
    got = mars_cli(mars_ls, "send", "--app", "cli", "--message", mid, "--event", "CREATED", "--transport", transport)
    assert got.returncode == 0, got.stderr
    (event_id,) = got.stdout.split()
    (timeline,) = wait_timeline(mars_ls, mid, app_id="cli")["timelines"]
    assert [e["event_id"] for e in timeline["events"]] == [event_id]


def _dead_letters(stack: RunningStack) -> list[dict[str, Any]]:
    got = stack.client("sqs").receive_message(QueueUrl=stack.outputs["DeadLetterQueueUrl"], MaxNumberOfMessages=10,
                                              VisibilityTimeout=0)
    return list(got.get("Messages", []))


def test_a_poison_message_that_exhausts_its_receives_lands_in_the_dlq(mars_ls: RunningStack) -> None:
    sqs = mars_ls.client("sqs")
    body = f"not an event {uid('poison')}"
    sqs.send_message(QueueUrl=mars_ls.outputs["EventsQueueUrls"].split(",")[3], MessageBody=body,
                     MessageGroupId=uid("poison"), MessageDeduplicationId=uid())
    mid = uid()
    assert requests.post(mars_ls.url("/api/event"), json={"app_id": "shop", "message_id": mid, "event": "AFTER_POISON"},
                         timeout=30).status_code == 202
    wait_timeline(mars_ls, mid, timeout=15)  # other messages flow while the poison is retried
    deadline = time.monotonic() + 45  # 3 receives (MaxReceiveCount) × 3 s visibility, and slack
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not found:
        found = [m for m in _dead_letters(mars_ls) if m["Body"] == body]
        time.sleep(0.5)
    assert found, "the poison message reached the dead-letter queue on LocalStack (not dropped at maxReceiveCount)"
    stats = requests.get(mars_ls.url("/api/q/stats"), timeout=10).json()
    assert stats["dead_letter"][0]["visible"] + stats["dead_letter"][0]["in_flight"] >= 1, "counted in /api/q/stats"
    got = mars_cli(mars_ls, "redrive", "--queue", "events", "--dry-run", "--json")  # finds it on LocalStack
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["kept"]["events"]["invalid"]["count"] >= 1, "poison is kept, never redriven"
