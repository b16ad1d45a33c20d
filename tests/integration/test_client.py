"""mars.client against the running stack, over HTTP, SNS and SQS."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from mars.client import MarsClient, MarsNotFoundError, MarsValidationError

from .conftest import RunningStack, wait_timeline


@pytest.mark.parametrize("transport", ["http", "grpc", "sns", "sqs"])
def test_each_transport_reaches_the_timeline_once(mars: RunningStack, transport: str) -> None:
    if transport == "http":
        client = MarsClient.http(mars.api)
    elif transport == "grpc":
        client = MarsClient.grpc(mars.outputs["GrpcEndpoint"])
    elif transport == "sns":
        client = MarsClient.sns(mars.outputs["IngestTopicArn"], mars.client("sns"))
    else:
        client = MarsClient.sqs(mars.outputs["IngestQueueUrl"], mars.client("sqs"))
    mid = f"client-{transport}-{uuid.uuid4().hex[:8]}"
    events = [{"app_id": "shop", "message_id": mid, "event": f"STEP_{i}"} for i in range(3)]
    ids = client.send_many(events)
    again = client.send_many([{**e, "event_id": i} for e, i in zip(events, ids)])  # a caller's own retry
    assert again == ids
    timeline = wait_timeline(mars, mid, events=3)["timelines"][0]
    assert sorted(e["event_id"] for e in timeline["events"]) == sorted(ids)


def test_http_validation_errors_surface_with_details(mars: RunningStack) -> None:
    with pytest.raises(MarsValidationError) as err:
        MarsClient.http(mars.api).send({"app_id": "shop", "message_id": "x", "evnt": "TYPO"})
    assert {d["field"] for d in err.value.details} >= {"evnt", "event"}


def test_grpc_validation_errors_surface(mars: RunningStack) -> None:
    with pytest.raises(MarsValidationError) as err:
        MarsClient.grpc(mars.outputs["GrpcEndpoint"]).send({"app_id": "bad app", "message_id": "x", "event": "E"})
    assert "app_id" in str(err.value)


def test_reading_a_long_timeline_follows_its_pages(mars: RunningStack) -> None:
    """1,050 events of one message: two pages; get_message returns every event once, in order."""
    client = MarsClient.http(mars.api)
    mid = f"client-long-{uuid.uuid4().hex[:8]}"
    base = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    events = [{"app_id": "shop", "message_id": mid, "event": f"STEP_{i % 4}",
               "created_at": (base + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z")} for i in range(1050)]
    ids = client.send_many(events)
    deadline = time.monotonic() + 180
    count = 0
    while time.monotonic() < deadline and count < len(ids):
        try:
            count = client.get_message_page(mid, "shop", limit=1)["timelines"][0]["event_count"]
        except MarsNotFoundError:  # not stored yet
            count = 0
        time.sleep(0.5)
    assert count == len(ids), f"{count} of {len(ids)} stored"

    (page,) = client.get_message_page(mid, "shop")["timelines"]
    assert len(page["events"]) == 1000 and page["event_count"] == 1050 and page["cursor"]
    (timeline,) = client.get_message(mid)["timelines"]
    assert [e["event_id"] for e in timeline["events"]] == ids   # each once, in created_at order (the order sent)
    assert timeline["event_count"] == 1050 and timeline["cursor"] is None
