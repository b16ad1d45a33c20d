"""Small SAM apps of the common AWS patterns, not Mars, run unmodified with `mars up --template`
(tests/fixtures/<app>/): each checked end to end through boto3 and the app's own Outputs, and through
`mars outputs` / `mars stats` / `mars stacks` for that stack."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import MARS, ROOT, RunningStack, start_stack

FIXTURES = ROOT / "tests" / "fixtures"


@pytest.fixture
def app(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RunningStack]:
    name = request.param
    stack = start_stack(tmp_path, name.replace("_", "-"), template=FIXTURES / name / "template.yaml")
    try:
        yield stack
    finally:
        stack.stop()


def wait_for(get: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = get()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s")


def scan(stack: RunningStack, table: str) -> list[dict[str, Any]]:
    return list(stack.client("dynamodb").scan(TableName=table)["Items"])


def mars_json(stack: RunningStack, *args: str) -> Any:
    got = subprocess.run([*MARS, *args, "--stack-name", stack.stack_name, "--state-dir", str(stack.state_dir), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


@pytest.mark.parametrize("app", ["sqs_batch_dlq"], indirect=True)
def test_sqs_partial_batch_failures_and_dead_letter_queue(app: RunningStack) -> None:
    out = app.outputs
    assert set(out) == {"OrdersQueueUrl", "OrdersDeadLetterQueueUrl", "ResultsTableName"}  # no Mars outputs
    sqs = app.client("sqs")
    for i in range(5):
        sqs.send_message(QueueUrl=out["OrdersQueueUrl"], MessageBody=f"order-{i}")
    sqs.send_message(QueueUrl=out["OrdersQueueUrl"], MessageBody="poison")
    items = wait_for(lambda: len(scan(app, out["ResultsTableName"])) >= 5 and scan(app, out["ResultsTableName"]))
    assert sorted(i["body"]["S"] for i in items) == [f"order-{i}" for i in range(5)]
    # the poison message fails every receive and, after maxReceiveCount (2), is in the DLQ - not lost, not stuck
    dead = wait_for(lambda: sqs.receive_message(QueueUrl=out["OrdersDeadLetterQueueUrl"], WaitTimeSeconds=1)
                    .get("Messages"), timeout=45)
    assert [m["Body"] for m in dead] == ["poison"]
    stats = mars_json(app, "stats")
    assert [q["name"] for q in stats["dead_letter"]] == [out["OrdersDeadLetterQueueUrl"].rsplit("/", 1)[-1]]
    assert [q["name"] for q in stats["queues"]] == [out["OrdersQueueUrl"].rsplit("/", 1)[-1]]
    assert stats["queues"][0]["visible"] == 0 and stats["queues"][0]["in_flight"] == 0
    failed = [line for line in app.log_lines() if line.get("function", "").endswith("ProcessorFunction")
              and line.get("outcome") == "partial"]
    assert failed, "the partial batch failures are in the log"
    listed = subprocess.run([*MARS, "stacks", "--state-dir", str(app.state_dir), "--json"], capture_output=True,
                            text=True, cwd=ROOT, timeout=60)
    assert [s["stack"] for s in json.loads(listed.stdout)] == [app.stack_name]


@pytest.mark.parametrize("app", ["sqs_batch_dlq"], indirect=True)
def test_sqs_binary_message_attributes_arrive_base64_encoded(app: RunningStack) -> None:
    out, sqs = app.outputs, app.client("sqs")
    blob = bytes(range(256))
    sqs.send_message(QueueUrl=out["OrdersQueueUrl"], MessageBody="with-binary",
                     MessageAttributes={"blob": {"DataType": "Binary", "BinaryValue": blob},
                                        "kind": {"DataType": "String", "StringValue": "k"}})
    items = wait_for(lambda: scan(app, out["ResultsTableName"]), timeout=20)
    attrs = json.loads(items[0]["messageAttributes"]["S"])
    assert base64.b64decode(attrs["blob"]["binaryValue"]) == blob and attrs["blob"]["dataType"] == "Binary"
    assert attrs["kind"]["stringValue"] == "k"


@pytest.mark.parametrize("app", ["sns_to_lambda"], indirect=True)
def test_sns_notification_reaches_the_function(app: RunningStack) -> None:
    out = app.outputs
    sent = app.client("sns").publish(TopicArn=out["TopicArn"], Message=json.dumps({"order": 42}), Subject="new order",
                                     MessageAttributes={"kind": {"DataType": "String", "StringValue": "order"}})
    items = wait_for(lambda: scan(app, out["SeenTableName"]))
    item = items[0]
    assert item["id"]["S"] == sent["MessageId"] and json.loads(item["message"]["S"]) == {"order": 42}
    assert item["subject"]["S"] == "new order" and item["topic"]["S"] == out["TopicArn"]
    assert item["source"]["S"] == "aws:sns"
    assert json.loads(item["attributes"]["S"])["kind"] == {"Type": "String", "Value": "order"}


@pytest.mark.parametrize("app", ["api_stream"], indirect=True)
def test_rest_api_to_dynamodb_to_stream_to_function(app: RunningStack) -> None:
    out = app.outputs
    url = out["ItemsApi"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/items")  # the deployed URL, rewritten
    created = requests.post(url, json={"id": "item-1", "colour": "red"}, timeout=10)
    assert created.status_code == 201 and created.json() == {"id": "item-1", "colour": "red"}
    assert requests.post(url, data="not json", timeout=10).status_code == 400
    items = wait_for(lambda: scan(app, out["AuditTableName"]))
    assert items[0]["id"]["S"] == "item-1" and items[0]["eventName"]["S"] == "INSERT"
    assert items[0]["eventSource"]["S"] == "aws:dynamodb"
    assert json.loads(items[0]["newImage"]["S"])["colour"] == {"S": "red"}
