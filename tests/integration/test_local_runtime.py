"""The local runtime on a SAM app that is not Mars: template-driven resources, REST proxy events,
and Lambda's SQS semantics (batching, partial failures, redelivery, DLQ, FIFO groups and order)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

from samlocal.stack import Config, LocalRuntime
from tests.integration.conftest import free_port

PROBE = Path(__file__).resolve().parent.parent / "fixtures" / "probe_app" / "template.yaml"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalRuntime, Path]]:
    tmp = tmp_path_factory.mktemp("probe")
    record = tmp / "record.jsonl"
    record.touch()
    stack = LocalRuntime(Config(template=PROBE, stack_name="probe", api_port=free_port(), ws_port=free_port(),
                              emulator_port=free_port(),
                              parameter_overrides={"RecordFile": str(record)}, state_dir=tmp / "state"))
    stack.start()
    yield stack, record
    stack.stop()


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def received(stack: LocalRuntime, output: str) -> list[dict[str, Any]]:
    """Up to 10 messages of the queue an output names (a dead-letter queue), with their attributes."""
    return stack.client("sqs").receive_message(QueueUrl=stack.outputs()[output], MaxNumberOfMessages=10,
                                               WaitTimeSeconds=1, AttributeNames=["All"],
                                               MessageAttributeNames=["All"]).get("Messages", [])


def batches_with(path: Path, tag: str) -> list[dict[str, Any]]:
    return [r for r in records(path) if r["kind"] == "batch" and any(b.get("tag") == tag for b in r["bodies"])]


def send_fifo(stack: LocalRuntime, bodies: list[tuple[str, dict[str, Any]]]) -> None:
    """One SendMessageBatch per 10, so a group's messages arrive together (one receive sees them all)."""
    sqs = stack.client("sqs")
    url = stack.outputs()["WorkQueueUrl"]
    for start in range(0, len(bodies), 10):
        entries = [{"Id": str(i), "MessageBody": json.dumps(body), "MessageGroupId": group,
                    "MessageDeduplicationId": str(uuid.uuid4())} for i, (group, body) in enumerate(bodies[start:start + 10])]
        assert not sqs.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")


def test_resources_and_outputs_come_from_the_template(probe: tuple[LocalRuntime, Path]) -> None:
    stack, _ = probe
    out = stack.outputs()
    assert out["WorkQueueUrl"].endswith("/probe-WorkQueue.fifo")
    assert out["ApiUrl"].startswith("http://127.0.0.1:") and out["ApiUrl"].endswith("/")
    attrs = stack.client("sqs").get_queue_attributes(QueueUrl=out["WorkQueueUrl"], AttributeNames=["All"])["Attributes"]
    assert attrs["FifoQueue"] == "true" and attrs["VisibilityTimeout"] == "2"
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["maxReceiveCount"] == 3 and redrive["deadLetterTargetArn"].endswith(":probe-WorkDeadLetters.fifo")


def test_rest_proxy_event_shape_and_environment(probe: tuple[LocalRuntime, Path]) -> None:
    stack, _ = probe
    base = stack.outputs()["ApiUrl"]
    resp = requests.get(base + "hello/w%C3%B6rld%20x?a=1&a=2&b=", headers={"X-Trace": "t1"}, timeout=10)
    assert resp.status_code == 200 and resp.headers["X-Probe"] == "1"
    got = resp.json()
    ev = got["event"]
    assert ev["resource"] == "/hello/{name}" and ev["httpMethod"] == "GET"
    assert ev["pathParameters"] == {"name": "wörld x"}
    assert ev["queryStringParameters"] == {"a": "2", "b": ""}
    assert ev["multiValueQueryStringParameters"] == {"a": ["1", "2"], "b": [""]}
    assert ev["headers"]["X-Trace"] == "t1" and ev["multiValueHeaders"]["X-Trace"] == ["t1"]
    assert ev["requestContext"]["stage"] == "Prod" and ev["requestContext"]["resourcePath"] == "/hello/{name}"
    assert ev["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert ev["requestContext"]["path"] == ev["path"] == "/hello/wörld x"  # no stage in local URLs (custom-domain shape)
    assert ev["body"] is None and ev["isBase64Encoded"] is False
    assert got["function_name"] == "probe-ProbeFunction"
    assert 0 < got["remaining_ms"] <= 2000
    env = got["env"]
    assert env["FROM_GLOBALS"] == "globals" and env["FROM_FUNCTION"] == "hello-us-east-1"
    assert env["AWS_ENDPOINT_URL"] == stack.endpoint and env["WORK_QUEUE"] == stack.outputs()["WorkQueueUrl"]
    # the greedy route takes the rest, with any method and a body
    resp = requests.post(base + "deep/er/path", data=b'{"x": 1}', timeout=10)
    ev = resp.json()["event"]
    assert ev["resource"] == "/{proxy+}" and ev["pathParameters"] == {"proxy": "deep/er/path"}
    assert ev["body"] == '{"x": 1}'


def test_gateway_errors(probe: tuple[LocalRuntime, Path]) -> None:
    stack, _ = probe
    base = stack.outputs()["ApiUrl"]
    resp = requests.get(base + "hello/x?raise=1", timeout=10)
    assert resp.status_code == 502 and resp.json() == {"message": "Internal server error"}


def test_fifo_batches_groups_and_order(probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    tag = "order-" + uuid.uuid4().hex[:6]
    bodies = [(f"g{n % 3}", {"tag": tag, "group": f"g{n % 3}", "n": n}) for n in range(30)]
    send_fifo(stack, bodies)
    wait_for(lambda: sum(len(b["bodies"]) for b in batches_with(record, tag)) >= 30)
    time.sleep(0.5)
    batches = batches_with(record, tag)
    seen = [b for batch in batches for b in batch["bodies"]]
    assert sorted(b["n"] for b in seen) == list(range(30)), "each message exactly once"
    assert all(len(batch["bodies"]) <= 10 for batch in batches)
    for g in ("g0", "g1", "g2"):
        order = [b["n"] for batch in sorted(batches, key=lambda x: x["start"]) for b in batch["bodies"] if b["group"] == g]
        assert order == sorted(order), f"group {g} out of order: {order}"
        spans = sorted((batch["start"], batch["end"]) for batch in batches if g in batch["groups"])
        for (_s1, e1), (s2, _e2) in zip(spans, spans[1:]):
            assert s2 >= e1, f"two batches of group {g} were in flight at once"


def test_partial_failure_redelivers_only_the_failed_and_in_order(probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    tag = "partial-" + uuid.uuid4().hex[:6]
    # m0 of group A fails on its first receive; m1, m2 of A must then wait and come back after it, in order.
    send_fifo(stack, [("A-" + tag, {"tag": tag, "n": 0, "fail_until": 2}),
                      ("A-" + tag, {"tag": tag, "n": 1}), ("A-" + tag, {"tag": tag, "n": 2}),
                      ("B-" + tag, {"tag": tag, "n": 10})])
    wait_for(lambda: any(0 in [b["n"] for b in batch["bodies"]] and not batch["failed"]
                         for batch in batches_with(record, tag)), timeout=30)
    batches = sorted(batches_with(record, tag), key=lambda x: x["start"])
    first_a = next(batch for batch in batches if 0 in [b["n"] for b in batch["bodies"]])
    assert [b["n"] for b in first_a["bodies"] if b["n"] < 10] == [0, 1, 2], "the scenario needs A's three in one batch"
    assert len(first_a["failed"]) >= 3, "m0 failed, so m1 and m2 were failed with it"
    delivered_ok = [b["n"] for batch in batches for b, mid in zip(batch["bodies"], batch["message_ids"])
                    if mid not in batch["failed"]]
    assert sorted(delivered_ok) == [0, 1, 2, 10], "every message succeeds exactly once"
    a_order = [n for n in delivered_ok if n < 10]
    assert a_order == [0, 1, 2], f"group A redelivered out of order: {a_order}"
    second = next(batch for batch in batches if 0 in [b["n"] for b in batch["bodies"]] and not batch["failed"])
    assert [b["n"] for b in second["bodies"]][:3] == [0, 1, 2], "the redelivered group starts at its first message"
    assert second["receive_counts"][0] == 2


def test_poison_goes_to_the_dead_letter_queue_without_blocking_others(probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    tag = "poison-" + uuid.uuid4().hex[:6]
    send_fifo(stack, [("P-" + tag, {"tag": tag, "n": 0, "fail": True}), ("Q-" + tag, {"tag": tag, "n": 1})])
    wait_for(lambda: any(1 in [b["n"] for b in batch["bodies"]] for batch in batches_with(record, tag)), timeout=10)
    msgs = wait_for(lambda: received(stack, "DeadLettersUrl"), timeout=40, interval=0.5)
    assert [json.loads(m["Body"])["n"] for m in msgs] == [0]
    attempts = [batch for batch in batches_with(record, tag) if 0 in [b["n"] for b in batch["bodies"]]]
    assert len(attempts) == 3, "maxReceiveCount receives, then the dead-letter queue"


def test_standard_queue_without_partial_reports_and_function_errors(probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    tag = "plain-" + uuid.uuid4().hex[:6]
    sqs = stack.client("sqs")
    url = stack.outputs()["PlainQueueUrl"]
    for n in range(7):
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"tag": tag, "n": n}))
    wait_for(lambda: sum(len(b["bodies"]) for b in batches_with(record, tag)) >= 7)
    assert all(len(b["bodies"]) <= 5 for b in batches_with(record, tag)), "BatchSize 5"
    # a raising handler fails its whole batch: the message comes back after the visibility timeout
    tag2 = "raise-" + uuid.uuid4().hex[:6]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"tag": tag2, "raise": True}))
    wait_for(lambda: len([r for r in records(record) if r["kind"] == "raise"
                          and r["bodies"][0].get("tag") == tag2]) >= 2, timeout=15)


def test_timeout_kills_the_invocation_and_the_message_returns(probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    tag = "slow-" + uuid.uuid4().hex[:6]
    sqs = stack.client("sqs")
    url = stack.outputs()["PlainQueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"tag": tag, "sleep": 5}))
    # the handler never gets to record a finished batch: it is killed after the 2 s timeout
    time.sleep(6)
    assert batches_with(record, tag) == []
    pool = stack.invoker.pools["ProbeFunction"]
    assert pool.spec.timeout == 2.0
    sqs.purge_queue(QueueUrl=url)


def test_event_source_mappings_pause_and_resume_through_the_lambda_api(probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    lam = boto3.client("lambda", endpoint_url=stack.lambda_endpoint, region_name="us-east-1",
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    mappings = lam.list_event_source_mappings(FunctionName="probe-ProbeFunction")["EventSourceMappings"]
    work = next(m for m in mappings if m["EventSourceArn"].endswith(":probe-WorkQueue.fifo"))
    assert work["State"] == "Enabled" and work["BatchSize"] == 10
    assert work["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert lam.update_event_source_mapping(UUID=work["UUID"], Enabled=False)["State"] == "Disabled"
    # sent at once: the poll waiting when the mapping was disabled (20 s long polls) was ended by the pause
    tag = "paused-" + uuid.uuid4().hex[:6]
    send_fifo(stack, [("P", {"tag": tag, "n": 1})])
    time.sleep(2)
    assert batches_with(record, tag) == [], "a disabled mapping does not poll"
    lam.update_event_source_mapping(UUID=work["UUID"], Enabled=True)
    wait_for(lambda: batches_with(record, tag), timeout=10)


def test_aws_calls_are_counted_through_botocore_hooks(probe: tuple[LocalRuntime, Path]) -> None:
    stack, _ = probe
    calls = requests.get(stack.lambda_endpoint + "/_local/aws-calls", timeout=10).json()
    assert calls["runtime"].get("sqs.ReceiveMessage", 0) > 0
    assert calls["runtime"].get("sqs.DeleteMessageBatch", 0) > 0
    assert "ProbeFunction" in calls["functions"]


def test_sns_trigger_delivers_lambda_sns_events_and_dead_letters_after_three_attempts(
        probe: tuple[LocalRuntime, Path]) -> None:
    stack, record = probe
    sns = stack.client("sns")
    topic = stack.outputs()["TopicArn"]
    tag = "sns-" + uuid.uuid4().hex[:6]
    sns.publish(TopicArn=topic, Message=json.dumps({"tag": tag, "n": 1}), Subject="hello",
                MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}})

    def sns_records(t: str) -> list[dict[str, Any]]:
        return [r for r in records(record) if r["kind"] == "sns" and r["bodies"][0].get("tag") == t]

    got = wait_for(lambda: sns_records(tag), timeout=15)
    assert got[0]["topic"] == topic and got[0]["subject"] == "hello" and got[0]["count"] == 1
    assert got[0]["attributes"] == {"k": {"Type": "String", "Value": "v"}}
    assert got[0]["subscription"].startswith(topic + ":")
    bad = "sns-bad-" + uuid.uuid4().hex[:6]
    sns.publish(TopicArn=topic, Message=json.dumps({"tag": bad, "raise": True}))
    msgs = wait_for(lambda: received(stack, "AsyncDeadLettersUrl"), timeout=20, interval=0.5)
    assert len(sns_records(bad)) == 3, "Lambda's async invoke: three attempts"
    assert json.loads(json.loads(msgs[0]["Body"])["Records"][0]["Sns"]["Message"])["tag"] == bad
    assert msgs[0]["MessageAttributes"]["ErrorMessage"]["StringValue"] == "asked to raise"


# --- websocket API ---------------------------------------------------------------------------------

def ws_events(path: Path, route: str) -> list[dict[str, Any]]:
    return [r["event"] for r in records(path) if r["kind"] == "ws" and r["event"]["requestContext"]["routeKey"] == route]


def test_websocket_connect_message_and_disconnect_events(probe: tuple[LocalRuntime, Path]) -> None:
    from websockets.sync.client import connect

    stack, record = probe
    url = stack.outputs()["SocketUrl"]
    assert url.startswith("ws://127.0.0.1:")
    with connect(url + "/live?team=blue", additional_headers={"X-Probe": "1"}) as ws:
        ws.send(json.dumps({"action": "echo", "n": 1}))
        answer = json.loads(ws.recv(timeout=10))
        conn_id = answer["connection_id"]
    assert answer["echo"] == {"action": "echo", "n": 1}
    assert len(conn_id) == 16 and conn_id.endswith("=")
    connect_event = next(e for e in ws_events(record, "$connect") if e["requestContext"]["connectionId"] == conn_id)
    ctx = connect_event["requestContext"]
    assert (ctx["eventType"], ctx["stage"], ctx["messageDirection"]) == ("CONNECT", "live", "IN")
    assert ctx["apiId"] and ctx["domainName"].startswith("127.0.0.1:") and ctx["identity"]["sourceIp"] == "127.0.0.1"
    assert connect_event["queryStringParameters"] == {"team": "blue"}
    assert connect_event["headers"]["X-Probe"] == "1" and "Sec-WebSocket-Key" in connect_event["headers"]
    message = next(e for e in ws_events(record, "echo") if e["requestContext"]["connectionId"] == conn_id)
    assert message["requestContext"]["eventType"] == "MESSAGE" and message["requestContext"]["messageId"]
    assert json.loads(message["body"]) == {"action": "echo", "n": 1} and message["isBase64Encoded"] is False
    gone = wait_for(lambda: [e for e in ws_events(record, "$disconnect") if e["requestContext"]["connectionId"] == conn_id])
    assert gone[0]["requestContext"]["eventType"] == "DISCONNECT"
    assert gone[0]["requestContext"]["disconnectStatusCode"] == 1000


def test_websocket_connect_route_can_refuse(probe: tuple[LocalRuntime, Path]) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    stack, _ = probe
    with pytest.raises(InvalidStatus) as refused:
        connect(stack.outputs()["SocketUrl"] + "?deny=403")
    assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as wrong_stage:
        connect(stack.outputs()["SocketUrl"] + "/prod")
    assert wrong_stage.value.response.status_code == 403


def test_websocket_routes_two_way_forbidden_and_errors(probe: tuple[LocalRuntime, Path]) -> None:
    from websockets.sync.client import connect

    stack, _ = probe
    with connect(stack.outputs()["SocketUrl"]) as ws:
        ws.send(json.dumps({"action": "reply", "x": 1}))  # a route with a RouteResponse: the body comes back
        assert json.loads(ws.recv(timeout=10)) == {"reply": {"action": "reply", "x": 1}}
        ws.send(json.dumps({"action": "nothing-routes-here"}))  # no such route and no $default
        forbidden = json.loads(ws.recv(timeout=10))
        assert forbidden["message"] == "Forbidden" and forbidden["connectionId"] and forbidden["requestId"]
        ws.send("not json at all")
        assert json.loads(ws.recv(timeout=10))["message"] == "Forbidden"
        ws.send(json.dumps({"action": "echo", "raise": True}))
        assert json.loads(ws.recv(timeout=10))["message"] == "Internal server error"
        ws.send(json.dumps({"action": "echo", "n": 2}))  # the connection survives all of that
        assert json.loads(ws.recv(timeout=10))["echo"]["n"] == 2


def test_connections_api_post_get_delete_gone_and_limits(probe: tuple[LocalRuntime, Path]) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    stack, record = probe
    with connect(stack.outputs()["SocketUrl"], max_size=None) as ws:
        ws.send(json.dumps({"action": "echo", "big": True, "gone": True, "describe": True, "pad": 100_000}))
        answer = json.loads(ws.recv(timeout=10))
        assert answer["big"] == {"error": "PayloadTooLargeException", "status": 413}
        assert answer["gone"] == {"error": "GoneException", "status": 410}
        assert "error" not in answer["describe"], answer["describe"]
        assert answer["describe"]["Identity"]["SourceIp"] == "127.0.0.1" and answer["describe"]["ConnectedAt"]
        assert len(answer["pad"]) == 100_000  # over 32 KB: sent as several frames, received as one message
        conn_id = answer["connection_id"]
        ws.send(json.dumps({"action": "echo", "hangup": True}))  # DELETE @connections/{own id}
        ws.recv(timeout=10)
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    gone = wait_for(lambda: [e for e in ws_events(record, "$disconnect") if e["requestContext"]["connectionId"] == conn_id])
    assert gone[0]["requestContext"]["disconnectStatusCode"] == 1000
    # from outside, with the functions' credentials (what the broadcaster holds): the closed connection is Gone
    endpoint = next(iter(stack.websocket_urls.values()))[1]
    creds = stack.credentials
    mgmt = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint + "/live", region_name="us-east-1",
                        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
                        aws_session_token=creds.token)
    with pytest.raises(mgmt.exceptions.GoneException):
        mgmt.post_to_connection(ConnectionId=conn_id, Data=b"{}")
    # anyone else is refused as AWS refuses an unsigned or foreign-signed call
    other = boto3.client("apigatewaymanagementapi", endpoint_url=endpoint + "/live", region_name="us-east-1",
                         aws_access_key_id="t", aws_secret_access_key="t")
    with pytest.raises(other.exceptions.ClientError) as refused:
        other.post_to_connection(ConnectionId=conn_id, Data=b"{}")
    assert refused.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_client_message_over_128_kb_closes_the_socket_with_1009(probe: tuple[LocalRuntime, Path]) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    stack, _ = probe
    with connect(stack.outputs()["SocketUrl"]) as ws:
        ws.send(json.dumps({"action": "echo", "pad": "x" * (128 * 1024)}))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_function_environment_urls_point_at_the_local_servers(probe: tuple[LocalRuntime, Path]) -> None:
    stack, _ = probe
    env = stack.invoker.pools["SocketFunction"].spec.environment
    ws_url, management = next(iter(stack.websocket_urls.values()))
    # as for REST APIs, the stage is not part of a local URL (the gateway accepts it in the path too)
    assert env["CONNECTIONS_URL"] == management
    assert stack.outputs()["SocketUrl"] == ws_url
