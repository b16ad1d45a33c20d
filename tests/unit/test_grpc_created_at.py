"""Mars's own gRPC load test (its README's ghz command) sends created_at "Hello": collectEvent accepts
it as Mars did (the time received, the text kept in meta), logged once per client; a strict mode
refuses it; the newer rpcs stay strict. The shim runs in this process against moto."""

from __future__ import annotations

import json
import logging
from typing import Any

import boto3
import grpc
import pytest
from mars_common import config
from mars_common.config import settings

from tests.security.test_grpc_security import event_pb2, event_pb2_grpc, shim, with_shim

# the body of Mars's README's ghz command, unchanged
SEED = {"app_id": "95625ac7-f249-49af-96a4-90352c72e2b8", "message_id": "aded42c1-e7b7-4d5c-8c4d-dc4a4c5f9382",
        "event": "Hello", "created_at": "Hello"}


def queued_events() -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    out = []
    for url in settings().events_queue_urls:
        for message in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", []):
            body = json.loads(message["Body"])
            out.extend(body.get("events", [body]) if isinstance(body, dict) else body)
    return out


def test_the_seeds_ghz_body_is_accepted_with_the_time_received(mocked_stack: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async def check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = event_pb2_grpc.MarsGrpcStub(channel)
            for _ in range(3):
                reply = await stub.collectEvent(event_pb2.EventRequest(**SEED))
                assert reply.success and reply.event_id

    with caplog.at_level(logging.WARNING, logger="mars.grpc"):
        with_shim(check)
    events = queued_events()
    assert len(events) == 3  # three calls, three events (no id of the client's to tell them apart)
    for ev in events:
        assert ev["event"] == "Hello" and ev["created_at"] == ev["received_at"]
        assert ev["meta"] == {shim.LENIENT_META_KEY: "Hello"}
    warned = [r for r in caplog.records if "created_at is not a timestamp" in r.getMessage()]
    assert len(warned) == 1 and warned[0].count == 1 and warned[0].created_at == "Hello"  # type: ignore[attr-defined]


def test_strict_mode_and_the_newer_rpcs_refuse_it(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def strict_check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await event_pb2_grpc.MarsGrpcStub(channel).collectEvent(event_pb2.EventRequest(**SEED))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "created_at" in (err.value.details() or "")

    async def bulk_check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await event_pb2_grpc.MarsGrpcStub(channel).collectEvents(
                    event_pb2.EventsRequest(events=[event_pb2.EventRequest(**SEED)]))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "events[0].created_at" in (err.value.details() or "")

    with_shim(bulk_check)
    monkeypatch.setenv("GRPC_STRICT_CREATED_AT", "true")
    config.settings.cache_clear()
    with_shim(strict_check)
    assert queued_events() == []


def test_anything_else_wrong_is_still_refused(mocked_stack: Any) -> None:
    async def check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await event_pb2_grpc.MarsGrpcStub(channel).collectEvent(
                    event_pb2.EventRequest(app_id="bad app", message_id="m", event="E", created_at="Hello"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "app_id" in (err.value.details() or "") and "created_at" in (err.value.details() or "")

    with_shim(check)
