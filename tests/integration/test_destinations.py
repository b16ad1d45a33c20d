"""Alert destinations on the real local stack (issue 14 part 3): a loopback receiver gets a signed test alert
that `standardwebhooks` verifies; one that answers 500 three times still gets it; one that never answers 2xx
ends in the delivery DLQ with an ERROR line and `mars redrive` puts it back; an SNS destination gets the alert.
The stack's retry window is 20 s (TEST_PARAMETERS), the first retry 1 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from standardwebhooks.webhooks import Webhook

from tests.conftest import wait_until
from tests.integration.conftest import ROOT, RunningStack, free_port

APP = "dest-it"


class Receiver:
    """A webhook receiver on 127.0.0.1 answering `statuses` in turn, then 200; keeps every request."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.requests = list(statuses), []  # type: list[int], list[tuple[dict[str, str], bytes]]
        outer = self
        self.times: list[float] = []
        self.start = time.monotonic()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                outer.times.append(time.monotonic() - outer.start)
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/mars"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses or []))
        return made[-1]
    yield make
    for r in made:
        r.close()


def create(mars: RunningStack, body: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(mars.url(f"/api/apps/{APP}/destinations"), json=body, timeout=30)
    assert resp.status_code == 201, resp.text
    return dict(resp.json())


def send_test(mars: RunningStack, destination_id: str) -> dict[str, Any]:
    resp = requests.post(mars.url(f"/api/apps/{APP}/destinations/{destination_id}/test"), timeout=30)
    assert resp.status_code == 202, resp.text
    return dict(resp.json())


def test_the_test_route_delivers_a_signed_alert_the_library_verifies(mars: RunningStack, receivers: Any) -> None:
    receiver = receivers()
    made = create(mars, {"type": "webhook", "url": receiver.url})
    listed = requests.get(mars.url(f"/api/apps/{APP}/destinations"), timeout=30).json()
    assert made["id"] in [d["id"] for d in listed["items"]] and made["secret"] not in json.dumps(listed)
    queued = send_test(mars, made["id"])
    wait_until(lambda: receiver.requests, timeout=30, what="the test alert")
    ((headers, body),) = receiver.requests
    alert = Webhook(made["secret"]).verify(body, headers)
    assert alert == queued["alert"] and alert["rule"]["kind"] == "test" and alert["state"] == "firing"
    assert set(alert) == {"type", "alert_id", "app_id", "message_id", "rule", "state", "fired_at", "resolved_at",
                          "timeline_url"}
    assert headers["webhook-id"] == queued["webhook_id"]


def test_a_receiver_that_answers_500_three_times_still_gets_it(mars: RunningStack, receivers: Any) -> None:
    receiver = receivers([500, 500, 500])
    made = create(mars, {"type": "webhook", "url": receiver.url, "format": "slack"})
    queued = send_test(mars, made["id"])
    wait_until(lambda: len(receiver.requests) >= 4, timeout=30, what="the fourth attempt")
    time.sleep(1.5)  # nothing more comes once it was delivered
    assert len(receiver.requests) == 4
    assert {h["webhook-id"] for h, _ in receiver.requests} == {queued["webhook_id"]}  # receivers dedupe on it
    headers, body = receiver.requests[-1]
    slack = Webhook(made["secret"]).verify(body, headers)
    assert set(slack) == {"text", "blocks"} and APP in slack["text"] and "mars-destination-test" in slack["text"]
    lines = mars.log_lines()
    mine = [line for line in lines if line.get("destination_id") == made["id"]]
    retries = [line for line in mine if line.get("message") == "alert delivery failed; will retry"]
    assert all((r["level"], r["status"], r["url_host"]) == ("WARNING", 500, "127.0.0.1") for r in retries), retries
    assert [(line["attempt"], line["status"]) for line in mine if line.get("message") == "alert delivered"] == [(4, 200)]
    # Each failed attempt leaves a line: the function's WARNING — or, when a starved machine kept the
    # invocation past its timeout (the shared stack's 5 s) after the receiver had answered, the runtime's
    # ERROR for it, and SQS counts the receive all the same (seen once in a fresh clone's loaded run).
    # Only the timeouts between this destination's creation and its delivery count.
    window = lines[lines.index(mine[0]):lines.index(mine[-1])]
    attempts = [r["attempt"] for r in retries]
    timed_out = [line for line in window if line.get("logger") == "samlocal.lambda" and line.get("outcome") == "timeout"
                 and str(line.get("function", "")).endswith("-DeliveryFunction")]
    assert attempts == sorted(set(attempts)) and set(attempts) <= {1, 2, 3}, retries
    assert 3 - len(attempts) <= len(timed_out), (retries, timed_out)


def test_a_receiver_that_never_succeeds_ends_in_the_dlq_and_redrive_puts_it_back(mars: RunningStack,
                                                                                 receivers: Any) -> None:
    receiver = receivers([503] * 1000)
    made = create(mars, {"type": "webhook", "url": receiver.url})
    queued = send_test(mars, made["id"])
    dlq = mars.outputs["AlertDeliveryDeadLetterQueueUrl"]
    sqs = mars.client("sqs")

    def dead() -> list[dict[str, Any]]:
        got = sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=1,
                                  MessageAttributeNames=["All"]).get("Messages", [])
        return [m for m in got if json.loads(m["Body"]).get("destination_id") == made["id"]]
    (letter,) = wait_until(dead, timeout=60, what="the dead-lettered delivery", poll=0.5)
    assert letter["MessageAttributes"]["ErrorMessage"]["StringValue"].startswith("HTTP 503")
    attempts = len(receiver.requests)
    # retries 1 s, 2 s, 2 s … apart for 20 s (9 attempts measured, ~1 s of poll latency each): the backoff's
    # visibility change is honoured; the queue's own 5 s visibility timeout would allow at most 5
    gaps = [b - a for a, b in zip(receiver.times, receiver.times[1:])]
    assert attempts >= 6 and min(gaps) < 4, receiver.times
    errors = [line for line in mars.log_lines() if line.get("level") == "ERROR"
              and line.get("destination_id") == made["id"]]
    assert len(errors) == 1 and errors[0]["status"] == 503 and errors[0]["url_host"] == "127.0.0.1"
    receiver.statuses.clear()  # the receiver is fixed
    got = subprocess.run([sys.executable, "-m", "mars.redrive", "--stack-name", mars.stack_name, "--state-dir",
                          str(mars.state_dir), "--queue", "delivery", "--json"], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert got.returncode == 0, got.stderr
    assert sum(json.loads(got.stdout)["moved"].values()) >= 1
    wait_until(lambda: len(receiver.requests) > attempts, timeout=30, what="the redriven delivery")
    headers, body = receiver.requests[-1]
    assert headers["webhook-id"] == queued["webhook_id"]
    assert Webhook(made["secret"]).verify(body, headers) == queued["alert"]


def test_an_sns_destination_gets_the_alert(mars: RunningStack) -> None:
    sns, sqs = mars.client("sns"), mars.client("sqs")
    topic = sns.create_topic(Name="dest-it-alerts")["TopicArn"]
    inbox = sqs.create_queue(QueueName="dest-it-inbox")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=inbox, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
    made = create(mars, {"type": "sns", "topic_arn": topic})
    assert made["secret"] is None
    queued = send_test(mars, made["id"])
    got = wait_until(lambda: sqs.receive_message(QueueUrl=inbox, WaitTimeSeconds=1).get("Messages"), timeout=30,
                     what="the alert on the topic's queue")
    assert json.loads(got[0]["Body"]) == queued["alert"]
