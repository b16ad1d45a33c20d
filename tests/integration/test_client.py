"""mars.client against the running stack, over HTTP, SNS and SQS."""

from __future__ import annotations

import uuid

import pytest

from mars.client import MarsClient, MarsValidationError

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
