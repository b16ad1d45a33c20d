"""Lifecycle rules and alerts end to end on the local stack: two per-step deadlines (seconds) and a
failure step; each alert fires once, the late step resolves it, and every transition is in
GET /api/alerts, on the app's websocket and on AlertsTopic (SNS) exactly once."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import boto3
import requests

from mars.client import MarsClient

from .conftest import RunningStack
from .test_live import post, subscribed, uid


def sweep(stack: RunningStack) -> dict[str, Any]:
    """What the every-minute schedule does (the schedule itself: tests/unit/test_stuck.py)."""
    state = json.loads((stack.state_dir / f"{stack.stack_name}.json").read_text())
    lam = boto3.client("lambda", endpoint_url=state["lambda_endpoint"], region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    out = lam.invoke(FunctionName=f"{stack.stack_name}-StuckFunction", Payload=json.dumps({"source": "aws.events"}))
    assert "FunctionError" not in out, out
    return dict(json.loads(out["Payload"].read()))


def listed(stack: RunningStack, app_id: str, **query: str) -> list[dict[str, Any]]:
    got = requests.get(stack.url("/api/alerts"), params={"app_id": app_id, **query}, timeout=10)
    assert got.status_code == 200, got.text
    return list(got.json()["items"])


def wait_for(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


def test_deadlines_and_a_failure_step_fire_once_resolve_and_reach_the_api_the_socket_and_sns(mars: RunningStack) -> None:
    app_id = uid("rules")
    lifecycle = {"events": ["CREATED", "PAID", "SHIPPED", "DELIVERED"], "sla_seconds": 0, "failure": ["FAILED"],
                 "deadlines": [{"step": "SHIPPED", "after": "PAID", "within_seconds": 2},
                               {"step": "DELIVERED", "after": "SHIPPED", "within_seconds": 2}]}
    requests.put(mars.url(f"/api/apps/{app_id}/lifecycle"), json=lifecycle, timeout=10).raise_for_status()
    sqs, sns = mars.client("sqs"), mars.client("sns")
    inbox = sqs.create_queue(QueueName=uid("alerts"))["QueueUrl"]
    inbox_arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=mars.outputs["AlertsTopicArn"], Protocol="sqs", Endpoint=inbox_arn,
                  Attributes={"RawMessageDelivery": "true", "FilterPolicy": json.dumps({"app_id": [app_id]})})
    late, shipped, failed = uid("late"), uid("shipped"), uid("failed")
    frames: list[dict[str, Any]] = []

    def alert_frames(ws: Any, n: int) -> None:
        while sum(1 for f in frames if f["type"] == "alert") < n:
            frames.append(json.loads(ws.recv(timeout=30)))

    def event_count(message_id: str) -> int:
        got = requests.get(mars.url(f"/api/messages/{message_id}"), params={"app_id": app_id}, timeout=10)
        return len(got.json()["timelines"][0]["events"]) if got.status_code == 200 else 0

    posted = {late: ["CREATED", "PAID"], shipped: ["CREATED", "PAID", "SHIPPED"], failed: ["CREATED", "FAILED"]}
    with subscribed(mars, app_id) as ws:
        for message_id, steps in posted.items():
            for step in steps:
                post(mars, app_id, message_id, step)
        alert_frames(ws, 1)  # the failure fires when it is stored
        # every event, not only every message: a message is found once its first event is stored
        wait_for("every event stored", lambda: all(event_count(m) == len(steps) for m, steps in posted.items()))
        time.sleep(2.5)  # past both deadlines
        # The store arms a deadline just after it stores the step it counts from; on a busy machine a
        # sweep can come first: sweep until both have fired — exactly two, whatever the number of sweeps.
        fired: list[int] = []

        def swept_both() -> bool:
            fired.append(sweep(mars)["deadlines_fired"])
            return sum(fired) >= 2

        wait_for("both deadlines fired by the sweep", swept_both)
        assert sum(fired) == 2, fired
        alert_frames(ws, 3)
        assert sweep(mars)["deadlines_fired"] == 0  # never twice while it fires
        post(mars, app_id, late, "SHIPPED")  # the late step: SHIPPED's alert resolves
        alert_frames(ws, 4)
    alerts = [f for f in frames if f["type"] == "alert"]
    assert sorted((a["message_id"], a["rule"]["kind"], a["rule"]["step"], a["state"]) for a in alerts) == sorted([
        (failed, "failure", "FAILED", "firing"), (late, "deadline", "SHIPPED", "firing"),
        (shipped, "deadline", "DELIVERED", "firing"), (late, "deadline", "SHIPPED", "resolved")])
    resolved = next(a for a in alerts if a["state"] == "resolved")
    assert resolved["resolved_at"] and resolved["timeline_url"].endswith(f"search/event?message_id={late}&app_id={app_id}")
    assert resolved["timeline_url"].startswith("http://127.0.0.1:")

    # GET /api/alerts: one record per (message, rule), its latest state
    api = listed(mars, app_id)
    assert sorted((a["message_id"], a["rule"]["step"], a["state"]) for a in api) == sorted([
        (failed, "FAILED", "firing"), (late, "SHIPPED", "resolved"), (shipped, "DELIVERED", "firing")])
    assert [a["message_id"] for a in listed(mars, app_id, state="resolved")] == [late]
    assert {a["alert_id"] for a in api} == {a["alert_id"] for a in alerts}
    # the Python client: pages of one, cursor after cursor, the same alerts in the same order
    client = MarsClient.http(mars.api)
    assert list(client.iter_alerts(app_id, limit=1)) == api
    assert [a["message_id"] for a in client.iter_alerts(app_id, state="resolved")] == [late]

    # AlertsTopic: every transition exactly once, the alert shape as the body
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while len(got) < 4 and time.monotonic() < deadline:
        for m in sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=2, MaxNumberOfMessages=10).get("Messages", []):
            got.append(json.loads(m["Body"]))
            sqs.delete_message(QueueUrl=inbox, ReceiptHandle=m["ReceiptHandle"])
    assert Counter((a["alert_id"], a["state"]) for a in got) == Counter((a["alert_id"], a["state"]) for a in alerts)
    assert not sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1).get("Messages")
