"""The websocket gateway's API Gateway semantics with stand-in functions: frame limits, the $connect
answer's headers in the handshake, and @connections reached the way AWS's samples reach it,
`https://{requestContext.domainName}/{requestContext.stage}`, over TLS with the local CA."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import boto3
import botocore.exceptions
import pytest
import requests
from botocore.config import Config
from botocore.credentials import Credentials
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from samlocal.apigw_websocket import WebSocketApi, WebSocketGateway, WsRoute, serve_api
from samlocal.httpserver import Server
from samlocal.invoker import InvokeResult
from samlocal.tls import LocalCa, make_ca


@dataclass
class FakePool:
    answer: Callable[[dict[str, Any]], InvokeResult]
    events: list[dict[str, Any]] = field(default_factory=list)

    options: list[dict[str, Any]] = field(default_factory=list)

    def invoke(self, event: dict[str, Any], *, trigger: str, source: str = "", **options: Any) -> InvokeResult:
        self.events.append(event)
        self.options.append(options)
        return self.answer(event)


@dataclass
class FakeInvoker:
    pools: dict[str, FakePool]


def ok(payload: Any = None) -> Callable[[dict[str, Any]], InvokeResult]:
    return lambda _event: InvokeResult(True, payload=payload if payload is not None else {"statusCode": 200})


# What the runtime gives its functions; only these may manage connections.
FUNCTIONS = Credentials("testing", "a-secret-only-the-functions-know", "testing")


def management(endpoint: str, credentials: Credentials = FUNCTIONS, **options: Any) -> Any:
    return boto3.client("apigatewaymanagementapi", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=credentials.access_key, aws_secret_access_key=credentials.secret_key,
                        aws_session_token=credentials.token, **options)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCa:
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def start(ca: LocalCa) -> Iterator[Callable[..., tuple[WebSocketGateway, list[Server]]]]:
    """`start({route: answer})` → a running API (stage `dev`, routes on $request.body.action)."""
    running: list[tuple[WebSocketGateway, list[Server]]] = []

    def _start(routes: dict[str, Callable[[dict[str, Any]], InvokeResult]]) -> tuple[WebSocketGateway, list[Server]]:
        api = WebSocketApi("Chat", "wsapi00001", "dev", ["action"],
                           {key: WsRoute(key, f"Fn{i}") for i, key in enumerate(routes)})
        invoker = FakeInvoker({f"Fn{i}": FakePool(answer) for i, answer in enumerate(routes.values())})
        got = serve_api(api, invoker, "127.0.0.1", 0, tls=ca.server_context(),  # type: ignore[arg-type]
                        credentials=FUNCTIONS, region="us-east-1")
        running.append(got)
        return got

    yield _start
    for gateway, servers in running:
        gateway.stop()
        for server in servers:
            server.stop()


def url(gateway: WebSocketGateway) -> str:
    return f"ws://127.0.0.1:{gateway.port}"


def test_a_client_frame_over_32_kb_closes_with_1009_a_fragmented_message_passes(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]]) -> None:
    def default(event: dict[str, Any]) -> InvokeResult:
        return InvokeResult(True, payload={"statusCode": 200, "body": str(len(event["body"]))})

    gateway, _ = start({"$default": default})
    gateway.api.routes["$default"].two_way = True  # the body comes back: the message was delivered whole
    with connect(url(gateway)) as ws:
        ws.send(["x" * 30_000] * 3)  # 90 KB in frames of 30 KB: one message, as API Gateway allows
        assert ws.recv(timeout=5) == "90000"
        ws.send("x" * (32 * 1024 + 1))  # one frame just over 32 KB
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def test_the_connect_answers_headers_go_out_in_the_handshake(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]]) -> None:
    gateway, _ = start({"$connect": ok({"statusCode": 200, "headers": {"Sec-WebSocket-Protocol": "chat.v2",
                                                                       "X-Greeting": "hi"}})})
    with connect(url(gateway), subprotocols=["chat.v1", "chat.v2"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "chat.v2"
        assert ws.response is not None and ws.response.headers["X-Greeting"] == "hi"


def test_a_function_reaches_connections_at_https_domain_name_stage(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]], ca: LocalCa, caplog: pytest.LogCaptureFixture) -> None:
    """What aws-samples/simple-websockets-chat-app's handlers do, with boto3 trusting the local CA (in a
    function, through AWS_CA_BUNDLE)."""
    calls: dict[str, Any] = {}

    def hello(event: dict[str, Any]) -> InvokeResult:
        ctx = event["requestContext"]
        api = management(f"https://{ctx['domainName']}/{ctx['stage']}", verify=str(ca.bundle))
        api.post_to_connection(ConnectionId=ctx["connectionId"], Data=json.dumps({"greeting": "hello"}).encode())
        calls["get"] = api.get_connection(ConnectionId=ctx["connectionId"])
        try:
            api.post_to_connection(ConnectionId="nobody", Data=b"{}")
        except api.exceptions.GoneException:
            calls["gone"] = True
        if json.loads(event["body"]).get("bye"):
            api.delete_connection(ConnectionId=ctx["connectionId"])
        return InvokeResult(True, payload={"statusCode": 200, "body": "done"})

    gateway, servers = start({"hello": hello})
    gateway.api.routes["hello"].two_way = True  # "done" comes back once the function has made its calls
    assert gateway.domain_name == f"127.0.0.1:{servers[1].port}"
    with caplog.at_level(logging.INFO, logger="samlocal.websocket"), connect(url(gateway)) as ws:
        ws.send(json.dumps({"action": "hello"}))
        assert json.loads(ws.recv(timeout=10)) == {"greeting": "hello"}
        assert ws.recv(timeout=10) == "done"
        assert calls["get"]["Identity"]["SourceIp"] == "127.0.0.1" and calls["gone"] is True
        ws.send(json.dumps({"action": "hello", "bye": True}))
        assert json.loads(ws.recv(timeout=10)) == {"greeting": "hello"}
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
    failed = [r for r in caplog.records if r.getMessage() == "@connections call failed"]
    assert failed and all(r.levelname == "ERROR" for r in failed)
    assert failed[0].status == 410 and failed[0].path == "/dev/@connections/nobody"  # type: ignore[attr-defined]


def test_a_client_that_does_not_trust_the_local_ca_leaves_an_error_line(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]], caplog: pytest.LogCaptureFixture) -> None:
    gateway, _ = start({"$default": ok()})
    with caplog.at_level(logging.INFO, logger="samlocal.websocket"):
        with pytest.raises(requests.exceptions.SSLError):
            requests.post(f"https://{gateway.domain_name}/dev/@connections/x", data=b"{}", timeout=5)
        mgmt = management(f"https://{gateway.domain_name}/dev", config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(botocore.exceptions.SSLError):
            mgmt.post_to_connection(ConnectionId="x", Data=b"{}")
    lines = [r for r in caplog.records if r.levelname == "ERROR" and "TLS handshake" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]


def test_the_plain_http_management_endpoint_still_answers(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]]) -> None:
    gateway, servers = start({"$default": ok()})
    with connect(url(gateway)):
        deadline = time.monotonic() + 5
        while not gateway.connections and time.monotonic() < deadline:  # registered just after the handshake
            time.sleep(0.01)
        conn_id = next(iter(gateway.connections))
        got = management(f"http://127.0.0.1:{servers[0].port}/dev").get_connection(ConnectionId=conn_id)
        assert "ConnectedAt" in got


def test_connections_calls_need_the_functions_sigv4_signature(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]], caplog: pytest.LogCaptureFixture) -> None:
    """AWS lets only IAM-signed calls manage connections: unsigned (a web page, curl), signed with
    another secret, with another key or for another service are refused 403 as AWS words it, and
    each refusal is an ERROR line; nothing reaches the socket."""
    gateway, servers = start({"$default": ok()})
    endpoint = f"http://127.0.0.1:{servers[0].port}/dev"
    with connect(url(gateway)) as ws:
        deadline = time.monotonic() + 5
        while not gateway.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        target = f"{endpoint}/@connections/{quote(next(iter(gateway.connections)), safe='')}"
        unsigned = requests.post(target, data=b'{"evil": 1}', headers={"Origin": "https://evil.example"}, timeout=5)
        assert unsigned.status_code == 403 and unsigned.json() == {"message": "Missing Authentication Token"}
        assert unsigned.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert requests.delete(target, timeout=5).status_code == 403
        assert requests.get(target, timeout=5).status_code == 403
        conn_id = next(iter(gateway.connections))
        once = Config(retries={"total_max_attempts": 1})
        for creds, kind in ((Credentials("testing", "testing", "testing"), "InvalidSignatureException"),
                            (Credentials("AKIAOTHER", FUNCTIONS.secret_key, "testing"), "UnrecognizedClientException"),
                            (Credentials("testing", FUNCTIONS.secret_key, "another-token"),
                             "UnrecognizedClientException")):
            with pytest.raises(botocore.exceptions.ClientError) as refused:
                management(endpoint, creds, config=once).post_to_connection(ConnectionId=conn_id, Data=b"{}")
            assert refused.value.response["Error"]["Code"] == kind
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
        # a signature for another service's scope does not manage connections either
        other = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key=FUNCTIONS.secret_key,
                                      aws_session_token="testing").client(
            "apigatewaymanagementapi", endpoint_url=endpoint, region_name="eu-west-1", config=once)
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            other.post_to_connection(ConnectionId=conn_id, Data=b"{}")
        assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.3)  # nothing refused was delivered
        management(endpoint).post_to_connection(ConnectionId=conn_id, Data=b'{"ok": 1}')  # the functions' may
        assert json.loads(ws.recv(timeout=5)) == {"ok": 1}
    refusals = [r for r in caplog.records if r.getMessage() == "@connections call failed" and r.status == 403]  # type: ignore[attr-defined]
    assert len(refusals) == 7 and all(r.levelname == "ERROR" for r in refusals)


def test_a_throttled_function_is_an_internal_error_at_once_not_a_wait(
        start: Callable[..., tuple[WebSocketGateway, list[Server]]]) -> None:
    def throttled(_event: dict[str, Any]) -> InvokeResult:
        return InvokeResult(False, error={"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded."})

    gateway, _ = start({"$default": throttled})
    with connect(url(gateway)) as ws:
        ws.send(json.dumps({"action": "anything"}))
        frame = json.loads(ws.recv(timeout=5))
    assert frame["message"] == "Internal server error"
    pool = gateway.invoker.pools["Fn0"]  # type: ignore[attr-defined]
    assert pool.options and all(o.get("throttle") is True for o in pool.options)

