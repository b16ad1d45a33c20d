"""Nothing lost, nothing invented, under faults (issue 5): events through every way in — HTTP single
and bulk, gRPC unary, bulk and streaming, SNS, SQS and the client library — while

- StoreFunction fails ~10 % of its invocations *after* writing (`--fault StoreFunction=0.1:after`),
- the aggregator's environment is killed after the store answered, before SQS hears of it
  (`--fault AggregatorFunction=0.03:kill`: the batch comes back, already stored),
- DynamoDB throttles ~5 % of UpdateItem calls (`--emulator-fault …=0.05:ProvisionedThroughputExceededException`),
- clients resend ~10 % of the events (same event_id, or the same content without one).

After the drain every accepted event is on its timeline exactly once and nothing else is. The size is
`MARS_FAULT_EVENTS` (600 in `make test`, 10,000 in `make soak`); the counts go to stdout and to
build/faults-report.json.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import grpc
import pytest
import requests

from grpc_shim import event_pb2, event_pb2_grpc
from mars.client import MarsClient
from tests.integration.conftest import ROOT, RunningStack, start_stack

EVENTS = int(os.environ.get("MARS_FAULT_EVENTS", "600"))
STEPS = ["CREATED", "QUEUED", "SENT", "DELIVERED", "ACKED"]
PATHS = ["http", "http_bulk", "grpc", "grpc_bulk", "grpc_stream", "sns", "sqs", "client"]
FAULTS = ["--fault", "StoreFunction=0.1:after", "--fault", "AggregatorFunction=0.03:kill",
          "--emulator-fault", "DynamoDB_20120810.UpdateItem=0.05:ProvisionedThroughputExceededException",
          "--fault-seed", "20261126"]


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # Poison is not part of this test: enough receives that a message survives its unlucky streak
    # (P(20 failures in a row) ≈ 0.15^20).
    stack = start_stack(tmp_path_factory.mktemp("faults"), "mars-faults", *FAULTS,
                        parameters=("MaxReceiveCount=20", "QueueVisibilityTimeout=10", "QueueFunctionTimeout=10"))
    yield stack
    stack.stop()


def state(stack: RunningStack) -> dict[str, Any]:
    return json.loads((stack.state_dir / f"{stack.stack_name}.json").read_text())


def aws(stack: RunningStack, service: str) -> Any:
    st = state(stack)
    return boto3.client(service, endpoint_url=st["service_endpoints"].get(service, st["endpoint"]),
                        region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


def make_events(app_id: str, count: int) -> list[dict[str, Any]]:
    """`count` events, five lifecycle steps per message; half carry an event_id, half are identified
    by their content (created_at given), so both kinds of resend are exercised."""
    events = []
    for i in range(count):
        mid, step = f"m{i // len(STEPS):05d}", STEPS[i % len(STEPS)]
        ev: dict[str, Any] = {"app_id": app_id, "message_id": mid, "event": step,
                              "created_at": f"2026-11-26T10:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z"}
        if i % 2 == 0:
            ev["event_id"] = f"{mid}-{step}"
        events.append(ev)
    return events


class Sender:
    """Sends batches of events over one way in; returns how many were accepted."""

    def __init__(self, stack: RunningStack) -> None:
        self.stack = stack
        self.api = stack.url("/api")
        self.channel = grpc.insecure_channel(stack.outputs["GrpcEndpoint"])
        self.stub = event_pb2_grpc.MarsGrpcStub(self.channel)
        self.sns, self.sqs = stack.client("sns"), stack.client("sqs")
        self.client = MarsClient.http(stack.api)

    @staticmethod
    def _pb(ev: dict[str, Any]) -> event_pb2.EventRequest:
        req = event_pb2.EventRequest(app_id=ev["app_id"], message_id=ev["message_id"], event=ev["event"],
                                     created_at=ev["created_at"])
        if "event_id" in ev:
            req.event_id = ev["event_id"]
        return req

    def send(self, path: str, batch: list[dict[str, Any]]) -> int:
        if path == "http":
            return sum(requests.post(self.api + "/event", json=ev, timeout=30).status_code == 202 for ev in batch)
        if path == "http_bulk":
            resp = requests.post(self.api + "/event/bulk", json={"events": batch}, timeout=30)
            return len(resp.json().get("event_ids", [])) if resp.status_code in (202, 207) else 0
        if path == "grpc":
            return sum(self.stub.collectEvent(self._pb(ev), timeout=30).success for ev in batch)
        if path == "grpc_bulk":
            return len(self.stub.collectEvents(event_pb2.EventsRequest(events=[self._pb(e) for e in batch]),
                                               timeout=30).event_ids)
        if path == "grpc_stream":
            return self.stub.streamEvents(iter([self._pb(e) for e in batch]), timeout=30).accepted
        if path == "sns":
            self.sns.publish(TopicArn=self.stack.outputs["IngestTopicArn"], Message=json.dumps({"events": batch}))
            return len(batch)
        if path == "sqs":
            self.sqs.send_message(QueueUrl=self.stack.outputs["IngestQueueUrl"], MessageBody=json.dumps({"events": batch}))
            return len(batch)
        return len(self.client.send_many(batch))


def stored_timelines(stack: RunningStack, app_id: str) -> dict[str, list[str]]:
    """message_id → stored event ids, read straight from MessagesTable."""
    table = aws(stack, "dynamodb")
    out: dict[str, list[str]] = {}
    kwargs: dict[str, Any] = {"TableName": stack.outputs["MessagesTableName"], "FilterExpression": "app_id = :a",
                              "ExpressionAttributeValues": {":a": {"S": app_id}}}
    while True:
        page = table.scan(**kwargs)
        for item in page["Items"]:
            out[item["message_id"]["S"]] = [k[2:] for k in item if k.startswith("e:")]
        if "LastEvaluatedKey" not in page:
            return out
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def dead_letters(stack: RunningStack) -> int:
    sqs = aws(stack, "sqs")
    return sum(int(sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["ApproximateNumberOfMessages"])
                   ["Attributes"]["ApproximateNumberOfMessages"])
               for u in (stack.outputs["DeadLetterQueueUrl"], stack.outputs["IngestDeadLetterQueueUrl"]))


def invocation_outcomes(stack: RunningStack) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in stack.log_lines():
        if line.get("msg") == "invoke" and line.get("outcome") in ("error", "timeout"):
            kind = "killed" if "killed" in line.get("error", "") else (
                "store_fault" if "injected fault" in line.get("error", "") else "other_error")
            counts[f"{line.get('function', '').rsplit('-', 1)[-1]}:{kind}"] += 1
    return counts


def test_every_accepted_event_is_stored_exactly_once_under_faults(faulty: RunningStack,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    app_id = f"faults-{uuid.uuid4().hex[:8]}"
    events = make_events(app_id, EVENTS)
    rng = random.Random(7)
    resends = rng.sample(events, len(events) // 10)  # the client "did not hear back" and sent again
    work: list[tuple[str, list[dict[str, Any]]]] = []
    # Each message's events go through one way in, in lifecycle order (ways in differ per message).
    by_message: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_message[ev["message_id"]].append(ev)
    per_path: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for n, (_mid, evs) in enumerate(sorted(by_message.items())):
        per_path[PATHS[n % len(PATHS)]].extend(evs)
    for path, evs in per_path.items():
        size = {"http": 5, "grpc": 5}.get(path, 25)
        work += [(path, evs[i:i + size]) for i in range(0, len(evs), size)]
    for i in range(0, len(resends), 20):
        work.append((PATHS[(i // 20) % len(PATHS)], resends[i:i + 20]))
    sender = Sender(faulty)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        accepted = sum(pool.map(lambda job: sender.send(*job), work))
    sent = len(events) + len(resends)
    send_seconds = time.monotonic() - started

    expected: dict[str, set[str]] = {}
    for mid, evs in by_message.items():
        expected[mid] = set()
        for ev in evs:
            expected[mid].add(ev.get("event_id") or "")
    deadline = time.monotonic() + 120 + EVENTS / 20
    stored: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        stored = stored_timelines(faulty, app_id)
        if sum(len(v) for v in stored.values()) >= len(events) and faulty.drained():
            break
        time.sleep(1)
    drain_seconds = time.monotonic() - started - send_seconds

    total_stored = sum(len(v) for v in stored.values())
    report = {"events": len(events), "sent": sent, "accepted": accepted, "resent_duplicates": len(resends),
              "stored": total_stored, "duplicates_dropped": accepted - total_stored,
              "dead_lettered": dead_letters(faulty), "messages": len(by_message),
              "send_seconds": round(send_seconds, 1), "drain_seconds": round(drain_seconds, 1),
              "injected": {**invocation_outcomes(faulty),
                           **{f"emulator:{k}": v["injected"] for k, v in
                              requests.get(state(faulty)["service_endpoints"]["dynamodb"] + "/_local/faults",
                                           timeout=10).json().items()}}}
    Path(ROOT / "build").mkdir(exist_ok=True)
    (ROOT / "build" / "faults-report.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():
        print("\nfault injection:", json.dumps(report))

    assert accepted == sent, "every event was accepted (no ingress path was faulted)"
    assert report["injected"].get("StoreFunction:store_fault", 0) > 0, "the store faults did happen"
    assert report["injected"].get("AggregatorFunction:killed", 0) > 0, "environments were killed"
    assert report["injected"]["emulator:DynamoDB_20120810.UpdateItem"] > 0, "DynamoDB did throttle"
    assert set(stored) == set(by_message), "every message has a timeline, and no other appeared"
    for mid, ids in stored.items():
        assert len(ids) == len(set(ids)) == len(STEPS), (mid, ids)  # five events, each once
        with_ids = {e["event_id"] for e in by_message[mid] if "event_id" in e}
        assert with_ids <= set(ids), (mid, ids)  # a client's event_id is kept as given
    assert total_stored == len(events) and report["duplicates_dropped"] == len(resends)
    assert report["dead_lettered"] == 0
