"""Live, end to end on the local stack: a real websocket client subscribes, events are POSTed over
HTTP, and the pushes arrive from the MessagesTable stream through BroadcastFunction."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import pytest
import requests
from websockets.sync.client import ClientConnection, connect

from .conftest import MARS, ROOT, RunningStack


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextmanager
def subscribed(stack: RunningStack, app_id: str, message_id: str | None = None) -> Iterator[ClientConnection]:
    with connect(stack.outputs["WebSocketUrl"], open_timeout=10) as ws:
        ws.send(json.dumps({"action": "subscribe", "app_id": app_id,
                            **({"message_id": message_id} if message_id else {})}))
        ack = json.loads(ws.recv(timeout=10))
        assert ack == {"type": "subscribed", "app_id": app_id, **({"message_id": message_id} if message_id else {})}
        yield ws


def next_frame(ws: ClientConnection, kind: str = "timeline", timeout: float = 20, **match: Any) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind} frame matching {match} within {timeout}s")
        frame = json.loads(ws.recv(timeout=left))
        if frame.get("type") == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


def post(stack: RunningStack, app_id: str, message_id: str, event: str, **extra: Any) -> None:
    resp = requests.post(stack.url("/api/event"), json={"app_id": app_id, "message_id": message_id, "event": event,
                                                        **extra}, timeout=10)
    assert resp.status_code == 202, resp.text


def connections_table(stack: RunningStack) -> Any:
    state = json.loads((stack.state_dir / f"{stack.stack_name}.json").read_text())
    endpoint = state["service_endpoints"].get("dynamodb", state["endpoint"])
    return boto3.resource("dynamodb", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                          aws_secret_access_key="testing").Table(stack.outputs["ConnectionsTableName"])


def test_a_message_subscription_gets_the_timeline_then_every_new_event(mars: RunningStack) -> None:
    app_id, mid = uid("live"), uid("msg")
    requests.put(mars.url(f"/api/apps/{app_id}/lifecycle"), json={"events": ["CREATED", "SENT", "ACKED"],
                                                                 "sla_seconds": 300}, timeout=10).raise_for_status()
    with subscribed(mars, app_id, mid) as ws:
        first = next_frame(ws)
        assert (first["events"], first["new_events"], first["missing"]) == ([], [], ["CREATED", "SENT", "ACKED"])
        post(mars, app_id, mid, "CREATED", created_at="2026-11-26T10:00:00Z", meta={"region": "eu"})
        pushed = next_frame(ws, message_id=mid)
        assert [e["event"] for e in pushed["new_events"]] == ["CREATED"]
        assert pushed["new_events"][0]["meta"] == {"region": "eu"}
        assert pushed["missing"] == ["SENT", "ACKED"] and pushed["status"] == "in_progress"
        post(mars, app_id, mid, "SENT", created_at="2026-11-26T10:00:01Z")
        pushed = next_frame(ws, message_id=mid)
        assert [e["event"] for e in pushed["events"]] == ["CREATED", "SENT"]
        assert [e["event"] for e in pushed["new_events"]] == ["SENT"] and pushed["missing"] == ["ACKED"]


def test_an_app_subscription_gets_every_message_of_that_app_only(mars: RunningStack) -> None:
    app_id, other_app = uid("live-app"), uid("live-other")
    with subscribed(mars, app_id) as ws:
        post(mars, other_app, uid("m"), "CREATED")
        mids = [uid("m") for _ in range(3)]
        for mid in mids:
            post(mars, app_id, mid, "CREATED")
        got = set()
        while got != set(mids):
            frame = next_frame(ws)
            assert frame["app_id"] == app_id, "a push of another app"
            got.add(frame["message_id"])


def test_a_duplicate_resend_pushes_nothing_new(mars: RunningStack) -> None:
    app_id, mid = uid("live-dup"), uid("m")
    with subscribed(mars, app_id, mid) as ws:
        next_frame(ws)
        for _ in range(2):
            post(mars, app_id, mid, "CREATED", event_id=f"{mid}-created")
        post(mars, app_id, mid, "SENT", created_at="2030-01-01T00:00:00Z")
        frames = [next_frame(ws, message_id=mid), next_frame(ws, message_id=mid)]
        assert [[e["event"] for e in f["new_events"]] for f in frames] == [["CREATED"], ["SENT"]]


def test_test_socket_reaches_the_subscriber(mars: RunningStack) -> None:
    app_id, mid = uid("live-test"), uid("m")
    with subscribed(mars, app_id, mid) as ws:
        next_frame(ws)
        answer = requests.get(mars.url("/api/test_socket"), params={"message_id": mid}, timeout=10).json()
        assert (answer["subscribers"], answer["delivered"]) == (1, 1)
        frame = next_frame(ws, test=True)
        assert [e["event"] for e in frame["new_events"]] == ["TEST_SOCKET"]


def test_a_closed_client_leaves_no_rows_and_a_dead_one_is_removed_by_the_next_broadcast(mars: RunningStack) -> None:
    app_id, mid = uid("live-gone"), uid("m")
    table = connections_table(mars)
    with subscribed(mars, app_id) as ws:
        ws.send(json.dumps({"action": "ping"}))
        assert next_frame(ws, "pong")
        mine = [r for r in table.scan()["Items"] if r.get("app_id") == app_id]
        assert len(mine) == 1
        conn_id = mine[0]["connection_id"]
    # $disconnect removed the connection and its subscription
    deadline = time.monotonic() + 10
    while table.query(KeyConditionExpression="connection_id = :c",
                      ExpressionAttributeValues={":c": conn_id})["Items"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert table.query(KeyConditionExpression="connection_id = :c", ExpressionAttributeValues={":c": conn_id})["Items"] == []
    # a connection that vanished without $disconnect (it happens in AWS) is found Gone and removed
    dead = "DeadConnAAAAAA0="
    table.put_item(Item={"connection_id": dead, "sk": f"app#{app_id}", "topic": f"app#{app_id}", "app_id": app_id,
                         "expires_at": int(time.time()) + 3600})
    with subscribed(mars, app_id) as ws:
        post(mars, app_id, mid, "CREATED")
        next_frame(ws, message_id=mid)  # the live subscriber got it …
        deadline = time.monotonic() + 10
        while table.get_item(Key={"connection_id": dead, "sk": f"app#{app_id}"}).get("Item"):
            assert time.monotonic() < deadline, "the dead connection's row is still there"
            time.sleep(0.1)


def test_bad_frames_get_error_frames_and_the_connection_keeps_working(mars: RunningStack) -> None:
    with connect(mars.outputs["WebSocketUrl"], open_timeout=10) as ws:
        for raw, code in (("{not json", "INVALID_JSON"), (json.dumps({"action": "dance"}), "UNKNOWN_ACTION"),
                          (json.dumps({"action": "subscribe", "app_id": "bad app"}), "VALIDATION_ERROR"),
                          (json.dumps({"app_id": "a"}), "MISSING_ACTION")):
            ws.send(raw)
            assert next_frame(ws, "error")["code"] == code
        ws.send(json.dumps({"action": "ping"}))
        assert next_frame(ws, "pong") == {"type": "pong"}


def test_mars_tail_prints_one_line_per_new_event_and_the_missing_steps(mars: RunningStack) -> None:
    app_id, mid = uid("tail"), uid("m")
    requests.put(mars.url(f"/api/apps/{app_id}/lifecycle"), json={"events": ["CREATED", "SENT", "ACKED"]},
                 timeout=10).raise_for_status()
    post(mars, app_id, mid, "CREATED", created_at="2026-11-26T10:00:00Z")
    cmd = [*MARS, "tail", "--app", app_id, "--stack-name", mars.stack_name, "--state-dir", str(mars.state_dir)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "live on" in proc.stderr.readline()  # subscribed: every change from now on is printed
        post(mars, app_id, mid, "SENT", created_at="2026-11-26T10:00:01.250Z")
        # CREATED may still be on its way through the stream when tail subscribes: then it prints first
        line = proc.stdout.readline()
        if f"{mid}  CREATED" in line:
            assert proc.stdout.readline().strip() == f"{mid}  missing: SENT, ACKED"
            line = proc.stdout.readline()
        assert f"{app_id}  {mid}  SENT" in line and "+1.250s" in line and "in_progress" in line
        assert proc.stdout.readline().strip() == f"{mid}  missing: ACKED"
        post(mars, app_id, mid, "ACKED", created_at="2026-11-26T10:00:02Z")
        line = proc.stdout.readline()
        assert f"{mid}  ACKED" in line and "complete" in line  # nothing missing: no "missing:" line follows
    finally:
        proc.terminate()
        proc.wait(10)


def test_mars_tail_exits_1_when_the_subscription_is_refused(mars: RunningStack) -> None:
    got = subprocess.run([*MARS, "tail", "--app", "not valid!", "--url", mars.outputs["WebSocketUrl"]], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert got.returncode == 1 and "VALIDATION_ERROR" in got.stderr


@pytest.mark.parametrize("argv", [["tail"], ["tail", "--message", "m"]])
def test_mars_tail_requires_an_app(argv: list[str]) -> None:
    got = subprocess.run([sys.executable, "-m", "mars.cli", *argv], cwd=ROOT, capture_output=True, text=True)
    assert got.returncode == 2 and "--app" in got.stderr


def test_a_message_going_stuck_is_pushed_live_and_alerted(mars: RunningStack) -> None:
    app_id, mid = uid("live-stuck"), uid("m")
    requests.put(mars.url(f"/api/apps/{app_id}/lifecycle"), json={"events": ["CREATED", "DONE"], "sla_seconds": 3},
                 timeout=10).raise_for_status()
    sqs, sns = mars.client("sqs"), mars.client("sns")
    inbox = sqs.create_queue(QueueName=uid("alerts"))["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=mars.outputs["AlertsTopicArn"], Protocol="sqs", Endpoint=inbox_arn,
                  Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps({"app_id": [app_id]})})
    with subscribed(mars, app_id, mid) as ws:
        next_frame(ws)
        post(mars, app_id, mid, "CREATED")
        assert next_frame(ws, message_id=mid)["status"] == "in_progress"
        time.sleep(3.5)  # past the SLA
        state = json.loads((mars.state_dir / f"{mars.stack_name}.json").read_text())
        lam = boto3.client("lambda", endpoint_url=state["lambda_endpoint"], region_name="us-east-1",
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        # what the every-minute schedule does (the schedule itself is covered in tests/unit/test_stuck.py)
        swept = json.loads(lam.invoke(FunctionName=f"{mars.stack_name}-StuckFunction",
                                      Payload=json.dumps({"source": "aws.events"}))["Payload"].read())
        assert swept["marked"] >= 1
        # the stuck timeline and the sla alert record's frame (docs/ALERTS.md), in either order
        got: dict[str, dict[str, Any]] = {}
        while len(got) < 2:
            pushed = json.loads(ws.recv(timeout=20))
            if pushed.get("message_id") == mid and pushed["type"] in ("timeline", "alert"):
                got[pushed["type"]] = pushed
        frame = got["timeline"]
        assert frame["status"] == "stuck" and frame["alert"]["type"] == "stuck" and frame["missing"] == ["DONE"]
        assert (got["alert"]["rule"]["kind"], got["alert"]["state"]) == ("sla", "firing")
    (alert,) = [json.loads(m["Body"]) for m in sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=5)["Messages"]]
    assert (alert["app_id"], alert["message_id"], alert["rule"]["kind"]) == (app_id, mid, "sla")
    assert any(line.get("msg") == "schedule" and line.get("function") == "StuckFunction" for line in mars.log_lines())
