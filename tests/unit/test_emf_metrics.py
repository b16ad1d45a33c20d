"""Every function (and the gRPC shim) writes its metrics as CloudWatch EMF lines on stdout: captured
and parsed here, the way Powertools documents testing Metrics (capsys, json.loads of each line)."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from mars_common import aws, live
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.store import put_lifecycle
from mars_common.timeline import Lifecycle

from mars import emf
from tests.conftest import event_file, load_function
from tests.unit.test_aggregator import FakeLambda
from tests.unit.test_api import Api
from tests.unit.test_live import FakeConnections, ws_event
from tests.unit.test_stuck import put_message as put


def metrics_of(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The EMF objects printed since the last call (every one in namespace Mars)."""
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]
    for line in lines:
        assert [d["Namespace"] for d in line["_aws"]["CloudWatchMetrics"]] == [m.NAMESPACE]
    return lines


def total(lines: list[dict[str, Any]], name: str, **dims: str) -> float:
    """The sum of `name` over the lines whose dimension set is exactly service (+ `dims`) with those values."""
    out = 0.0
    for line in lines:
        for directive in line["_aws"]["CloudWatchMetrics"]:
            names = {d["Name"] for d in directive["Metrics"]}
            for keys in directive["Dimensions"]:
                wanted = {"service", *dims}
                if name in names and set(keys) == wanted and all(line[k] == v for k, v in dims.items()):
                    values = line[name]
                    out += sum(values) if isinstance(values, list) else values
    return out


def services(lines: list[dict[str, Any]]) -> set[str]:
    return {line["service"] for line in lines if "service" in line}


@pytest.fixture
def fake_connections(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> FakeConnections:
    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    return fake


def test_store_counts_stored_duplicates_latency_and_batch(mocked_stack: Any, lambda_context: Any,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    store = load_function("store")
    payload = event_file("store_messages.json")
    events = sum(len(msg["events"]) for msg in payload["messages"])
    store.lambda_handler(payload, lambda_context)
    first = metrics_of(capsys)
    assert services(first) == {"mars-store"}
    assert total(first, m.EVENTS_STORED) == events
    assert total(first, m.DUPLICATES_DROPPED) == 0
    assert total(first, m.BATCH_SIZE) == len(payload["messages"])
    latency = [line[m.STORE_LATENCY] for line in first if m.STORE_LATENCY in line]
    assert len(latency) == 1 and len(latency[0]) == len(payload["messages"]) and min(latency[0]) > 0
    store.lambda_handler(payload, lambda_context)  # a redelivery: every event a duplicate
    again = metrics_of(capsys)
    assert (total(again, m.EVENTS_STORED), total(again, m.DUPLICATES_DROPPED)) == (0, events)


def test_store_counts_a_failed_message(mocked_stack: Any, lambda_context: Any, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = load_function("store")
    monkeypatch.setattr(store, "upsert_message", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("down")))
    payload = event_file("store_messages.json")
    store.lambda_handler(payload, lambda_context)
    assert total(metrics_of(capsys), m.STORE_FAILED) == len(payload["messages"])


def test_aggregator_counts_its_batch_poison_and_store_failures(mocked_stack: Any, lambda_context: Any,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    aggregator, store = load_function("aggregator"), load_function("store")
    fake = FakeLambda(store, lambda_context)
    real_client = aws.client
    batch = event_file("aggregator_sqs_batch.json")
    poisoned = copy.deepcopy(batch)
    poisoned["Records"][0]["body"] = "not json"
    with pytest.MonkeyPatch.context() as mp:  # undone before mocked_stack clears aws.client's cache
        mp.setattr(aws, "client", lambda service: fake if service == "lambda" else real_client(service))
        aggregator.lambda_handler(poisoned, lambda_context)
        lines = metrics_of(capsys)
        assert {"mars-aggregator", "mars-store"} <= services(lines)  # the fake store runs in this process
        mine = [line for line in lines if line.get("service") == "mars-aggregator"]
        assert total(mine, m.BATCH_SIZE) == len(batch["Records"])
        assert total(mine, m.POISON_RECORDS) == 1
        fake.mode = "raise"
        aggregator.lambda_handler(batch, lambda_context)
        mine = [line for line in metrics_of(capsys) if line.get("service") == "mars-aggregator"]
        assert total(mine, m.STORE_FAILED) >= 1


def test_api_counts_accepted_batch_sizes_and_rejections_by_reason(mocked_stack: Any, lambda_context: Any,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    api = Api(load_function("api"), lambda_context)
    ok = {"app_id": "shop", "message_id": "m1", "event": "CREATED"}
    assert api.call("POST", "/api/event/bulk", body={"events": [ok, {**ok, "event": "PAID"}]}).status == 202
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-api"}
    assert (total(lines, m.EVENTS_ACCEPTED), total(lines, m.BATCH_SIZE)) == (2, 2)
    assert api.call("POST", "/api/event", body={**ok, "event": ""}).status == 400
    assert api.call("POST", "/api/event", raw="{", content_type="application/json").status == 400
    lines = metrics_of(capsys)
    assert total(lines, m.INGEST_REJECTED, reason="VALIDATION_ERROR") == 1
    assert total(lines, m.INGEST_REJECTED, reason="INVALID_JSON") == 1
    assert total(lines, m.EVENTS_ACCEPTED) == 0
    assert api.call("GET", "/api/q/stats").status == 200  # a read: no ingest metric
    assert total(metrics_of(capsys), m.INGEST_REJECTED) == 0


def test_api_counts_events_it_could_not_enqueue(mocked_stack: Any, lambda_context: Any,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_function("api")
    from mars_common.queues import EnqueueFailure

    monkeypatch.setattr(module, "enqueue", lambda events, urls: [EnqueueFailure(0, events[0].event_id, "X", "down")])
    api = Api(module, lambda_context)
    assert api.call("POST", "/api/event", body={"app_id": "a", "message_id": "m", "event": "E"}).status == 503
    lines = metrics_of(capsys)
    assert (total(lines, m.ENQUEUE_FAILED), total(lines, m.EVENTS_ACCEPTED)) == (1, 0)


def test_router_counts_accepted_events_and_rejections(mocked_stack: Any, lambda_context: Any,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    router = load_function("router")
    good = {"events": [{"app_id": "a", "message_id": "m", "event": "E1"}, {"app_id": "a", "message_id": "m", "event": "E2"}]}
    records = [{"messageId": str(i), "body": body, "attributes": {"SentTimestamp": "1764150000000"}}
               for i, body in enumerate([json.dumps(good), "not json", json.dumps({"app_id": "a"})])]
    router.lambda_handler({"Records": records}, lambda_context)
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-router"}
    assert (total(lines, m.EVENTS_ACCEPTED), total(lines, m.BATCH_SIZE)) == (2, 3)
    assert total(lines, m.INGEST_REJECTED, reason="INVALID_JSON") == 1
    assert total(lines, m.INGEST_REJECTED, reason="VALIDATION_ERROR") == 1


def test_stuck_counts_alerts_fired_in_total_and_per_app(mocked_stack: Any, lambda_context: Any,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTS_TOPIC_ARN", mocked_stack.ref("AlertsTopic"))
    stuck = load_function("stuck")
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED", "PAID", "SHIPPED"), 60))
    put("shop", "late-1", ["CREATED"], written_ago=120)
    put("shop", "late-2", ["CREATED"], written_ago=120)
    stuck.lambda_handler({}, lambda_context)
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-stuck"}
    assert total(lines, m.ALERTS_FIRED) == 2
    assert total(lines, m.ALERTS_FIRED, app_id="shop") == 2
    stuck.lambda_handler({}, lambda_context)  # marked once: no second alert
    assert total(metrics_of(capsys), m.ALERTS_FIRED) == 0


def test_authorizer_counts_its_decisions(mocked_stack: Any, lambda_context: Any,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    authorizer = load_function("authorizer")
    with pytest.raises(authorizer.UnauthorizedError):
        authorizer.lambda_handler({"headers": {}, "methodArn": "arn:aws:execute-api:us-east-1:1:api/dev/GET/x"},
                                  lambda_context)
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-authorizer"}
    assert total(lines, m.AUTHORIZER_DECISIONS, decision="deny") == 1


def test_websocket_counts_connections_refusals_replies_and_error_frames(
        fake_connections: FakeConnections, lambda_context: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ws = load_function("websocket")
    ws.lambda_handler(ws_event("websocket_connect.json", "c1"), lambda_context)
    refused = ws_event("websocket_connect.json", "c2")
    refused["headers"] = {**(refused.get("headers") or {}), "Origin": "https://evil.example"}
    assert ws.lambda_handler(refused, lambda_context) == {"statusCode": 403}
    ws.lambda_handler(ws_event("websocket_ping.json", "c1"), lambda_context)
    ws.lambda_handler(ws_event("websocket_default.json", "c1", body="nope"), lambda_context)
    fake_connections.gone.add("c1")
    ws.lambda_handler(ws_event("websocket_ping.json", "c1"), lambda_context)
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-websocket"}
    assert total(lines, m.CONNECTIONS_OPENED) == 1
    assert total(lines, m.CONNECTIONS_REFUSED, reason="CROSS_SITE") == 1
    assert total(lines, m.WEBSOCKET_PUSHES) == 2  # the pong and the error frame
    assert total(lines, m.WEBSOCKET_ERRORS, reason="INVALID_JSON") == 1
    assert total(lines, m.GONE_CONNECTIONS) == 1


def test_broadcast_counts_pushes_gone_connections_and_batch(fake_connections: FakeConnections, lambda_context: Any,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    ws, broadcast = load_function("websocket"), load_function("broadcast")
    for conn in ("alive", "stale"):
        ws.lambda_handler(ws_event("websocket_connect.json", conn), lambda_context)
        ws.lambda_handler(ws_event("websocket_subscribe_app.json", conn), lambda_context)
    fake_connections.gone.add("stale")
    metrics_of(capsys)
    stream = event_file("broadcast_stream.json")
    broadcast.lambda_handler(stream, lambda_context)
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-broadcast"}
    assert total(lines, m.BATCH_SIZE) == len(stream["Records"])
    assert total(lines, m.WEBSOCKET_PUSHES) == len(stream["Records"])  # each change to "alive"
    # a 410 per push to "stale": its rows go at the first, but the batch read its subscribers once
    assert total(lines, m.GONE_CONNECTIONS) == len(stream["Records"])
    assert total(lines, m.PUSH_FAILED) == 0


def test_the_grpc_shim_sums_its_counts_into_one_emf_line_per_interval(capsys: pytest.CaptureFixture[str]) -> None:
    from mars_common.events import parse_event
    from mars_common.queues import EnqueueFailure

    from grpc_shim import server

    sent: list[int] = []

    def fake_send(url: str, items: list[tuple[int, Any]]) -> list[EnqueueFailure]:
        sent.append(len(items))
        return [EnqueueFailure(i, ev.event_id, "X", "down") for i, ev in items if ev.event == "FAIL"]

    shim_metrics = server.ShimMetrics()
    batcher = server.Batcher(("q0",), shim_metrics)
    events = [parse_event({"app_id": "a", "message_id": "m", "event": name}) for name in ("E1", "E2", "FAIL")]
    original = server.send_batch
    server.send_batch = fake_send
    try:
        asyncio.run(batcher.enqueue(events))
    finally:
        server.send_batch = original
    shim_metrics.reject("INVALID_ARGUMENT")
    shim_metrics.reject("INVALID_ARGUMENT")
    shim_metrics.flush()
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-grpc"}
    assert (total(lines, m.EVENTS_ACCEPTED), total(lines, m.ENQUEUE_FAILED)) == (2, 1)
    assert total(lines, m.BATCH_SIZE) == 2  # events accepted per SendMessageBatch, this interval
    assert total(lines, m.INGEST_REJECTED, reason="INVALID_ARGUMENT") == 2
    shim_metrics.flush()  # nothing since: no line
    assert metrics_of(capsys) == []


def test_mars_stats_sums_what_the_functions_printed(mocked_stack: Any, lambda_context: Any,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    store = load_function("store")
    payload = event_file("store_messages.json")
    store.lambda_handler(payload, lambda_context)
    store.lambda_handler(payload, lambda_context)
    rows = {(s.metric, tuple(sorted(s.dimensions.items()))): s.as_dict()
            for s in emf.summarize(capsys.readouterr().out.splitlines())}
    events = sum(len(msg["events"]) for msg in payload["messages"])
    assert rows[(m.EVENTS_STORED, (("service", "mars-store"),))]["sum"] == events
    assert rows[(m.DUPLICATES_DROPPED, (("service", "mars-store"),))]["sum"] == events
    assert rows[(m.STORE_LATENCY, (("service", "mars-store"),))]["samples"] == 2 * len(payload["messages"])
