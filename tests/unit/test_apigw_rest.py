"""The REST gateway's API Gateway semantics, driven over HTTP with stand-in functions: what the
integration's result becomes (502, 504, base64) and what the proxy event carries."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from samlocal import apigw_rest
from samlocal.apigw_rest import RestApi, Route, build_apis, serve
from samlocal.httpserver import Server
from samlocal.invoker import InvokeResult
from samlocal.template import Stack

API_ID = "a1b2c3d4e5"


@dataclass
class FakeSpec:
    timeout: float = 3.0


@dataclass
class FakePool:
    """A function: `answer` maps the event to what the invocation returns."""

    answer: Callable[[dict[str, Any]], InvokeResult]
    spec: FakeSpec = field(default_factory=FakeSpec)
    events: list[dict[str, Any]] = field(default_factory=list)

    def invoke(self, event: dict[str, Any], *, trigger: str, source: str = "", **_: Any) -> InvokeResult:
        self.events.append(event)
        result = self.answer(event)
        result.request_id = result.request_id or "req-1"
        return result


@dataclass
class FakeInvoker:
    pools: dict[str, FakePool]


def returns(payload: Any) -> Callable[[dict[str, Any]], InvokeResult]:
    return lambda _event: InvokeResult(True, payload=payload)


def echo(event: dict[str, Any]) -> InvokeResult:
    return InvokeResult(True, payload={"statusCode": 200, "body": json.dumps(event)})


@pytest.fixture
def gateway() -> Iterator[Callable[..., tuple[str, FakePool]]]:
    """Starts a one-function API: `start(answer, binary_types=(), timeout=3)` → (base URL, pool)."""
    servers: list[Server] = []

    def start(answer: Callable[[dict[str, Any]], InvokeResult], binary_types: tuple[str, ...] = (),
              timeout: float = 3.0) -> tuple[str, FakePool]:
        pool = FakePool(answer, FakeSpec(timeout))
        routes = sorted([Route.make("/items/{id}", "GET", "Fn"), Route.make("/other", "GET", "Fn"),
                         Route.make("/", "GET", "Fn"), Route.make("/{proxy+}", "ANY", "Fn")], key=lambda r: r.specificity(), reverse=True)
        api = RestApi("Api", API_ID, "Prod", routes, binary_types)
        server = serve(api, FakeInvoker({"Fn": pool}), "127.0.0.1", 0)  # type: ignore[arg-type]
        servers.append(server)
        return f"http://127.0.0.1:{server.port}", pool

    yield start
    for server in servers:
        server.stop()


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "samlocal.apigw" and r.levelname == "ERROR"]


@pytest.mark.parametrize("body", [{"ok": True}, 42, ["a"], True])
def test_a_body_that_is_not_a_string_is_a_502_with_an_error_line(
        gateway: Callable[..., tuple[str, FakePool]], caplog: pytest.LogCaptureFixture, body: Any) -> None:
    url, _ = gateway(returns({"statusCode": 200, "body": body}))
    with caplog.at_level(logging.INFO, logger="samlocal.apigw"):
        resp = requests.get(url + "/items/1", timeout=5)
    assert resp.status_code == 502 and resp.json() == {"message": "Internal server error"}
    (line,) = errors(caplog)
    assert line.getMessage().startswith("malformed Lambda proxy response")
    assert f"body is {type(body).__name__}, not a string" in line.reason  # type: ignore[attr-defined]
    assert line.function == "Fn" and line.route == "GET /items/{id}"  # type: ignore[attr-defined]


def test_other_malformed_results_and_function_errors_are_502s_with_an_error_line(
        gateway: Callable[..., tuple[str, FakePool]], caplog: pytest.LogCaptureFixture) -> None:
    bad = iter([InvokeResult(True, payload="not a dict"), InvokeResult(True, payload={"body": "x"}),
                InvokeResult(False, error={"errorMessage": "boom", "errorType": "ValueError"}),
                InvokeResult(True, payload={"statusCode": 200, "headers": {"X-A": "v\r\nSet-Cookie: s=1"}}),
                InvokeResult(True, payload={"statusCode": 200, "multiValueHeaders": {"X-B": ["ok", "v\nw"]}})])
    url, _ = gateway(lambda _e: next(bad))
    with caplog.at_level(logging.INFO, logger="samlocal.apigw"):
        for _ in range(5):
            resp = requests.get(url + "/other", timeout=5)
            assert resp.status_code == 502 and "Set-Cookie" not in resp.headers
    lines = errors(caplog)
    assert [r.getMessage().split(":")[0] for r in lines] == (["malformed Lambda proxy response"] * 2 + ["function error"]
                                                             + ["malformed Lambda proxy response"] * 2)
    assert lines[2].error == "boom" and lines[2].error_type == "ValueError"  # type: ignore[attr-defined]
    assert "line break" in lines[3].reason and "line break" in lines[4].reason  # type: ignore[attr-defined]


def test_a_throttled_function_is_a_500_with_an_error_line(
        gateway: Callable[..., tuple[str, FakePool]], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Lambda docs (services-apigateway-errors): the Lambda API refusing the invoke (a throttle past the
    # reserved concurrency) is a 500; a function error a 502; both {"message": "Internal server error"}.
    asked: list[Any] = []

    def invoke(self: FakePool, event: dict[str, Any], *, trigger: str, source: str = "", **kwargs: Any) -> InvokeResult:
        asked.append(kwargs.get("throttle"))
        return InvokeResult(False, error={"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded."},
                            request_id="req-9")

    monkeypatch.setattr(FakePool, "invoke", invoke)
    url, _ = gateway(returns({}))
    with caplog.at_level(logging.INFO, logger="samlocal.apigw"):
        resp = requests.get(url + "/other", timeout=5)
    assert resp.status_code == 500 and resp.json() == {"message": "Internal server error"}
    assert asked == [True], "the gateway asks Lambda to throttle rather than wait"
    (line,) = errors(caplog)
    assert line.getMessage() == "function throttled: 500" and line.request_id == "req-9"  # type: ignore[attr-defined]


def test_the_integration_times_out_after_29_seconds_whatever_the_functions_timeout(
        gateway: Callable[..., tuple[str, FakePool]], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert apigw_rest.INTEGRATION_TIMEOUT_SECONDS == 29
    monkeypatch.setattr(apigw_rest, "INTEGRATION_TIMEOUT_SECONDS", 0.3)

    def slow(_event: dict[str, Any]) -> InvokeResult:
        time.sleep(1.5)
        return InvokeResult(True, payload={"statusCode": 200, "body": "late"})

    url, pool = gateway(slow, timeout=900)  # a function allowed 15 minutes
    started = time.monotonic()
    with caplog.at_level(logging.INFO, logger="samlocal.apigw"):
        resp = requests.get(url + "/other", timeout=5)
    assert time.monotonic() - started < 1.2
    assert resp.status_code == 504 and resp.json() == {"message": "Endpoint request timed out"}
    (line,) = errors(caplog)
    assert line.integration_timeout_seconds == 0.3  # type: ignore[attr-defined]
    assert len(pool.events) == 1  # the invocation went on: Lambda does not stop it either


def test_binary_media_types_decide_whether_the_request_body_is_base64(
        gateway: Callable[..., tuple[str, FakePool]]) -> None:
    url, _ = gateway(echo, binary_types=("image/*", "application/x-protobuf"))

    def event_for(content_type: str, data: bytes) -> dict[str, Any]:
        resp = requests.post(url + "/upload", data=data, headers={"Content-Type": content_type}, timeout=5)
        return json.loads(resp.content)

    png = event_for("image/png", b"\x89PNG\r\n")
    assert png["isBase64Encoded"] is True and base64.b64decode(png["body"]) == b"\x89PNG\r\n"
    proto = event_for("application/x-protobuf; charset=binary", b"\x08\x01")
    assert proto["isBase64Encoded"] is True and base64.b64decode(proto["body"]) == b"\x08\x01"
    # not declared: text, even for a type that is usually binary
    octets = event_for("application/octet-stream", b"plain")
    assert octets["isBase64Encoded"] is False and octets["body"] == "plain"
    text = event_for("application/json", b'{"a": 1}')
    assert text["isBase64Encoded"] is False and text["body"] == '{"a": 1}'

    url, _ = gateway(echo, binary_types=("*/*",))
    every = json.loads(requests.post(url + "/upload", data=b'{"a": 1}', headers={"Content-Type": "application/json"},
                                     timeout=5).content)
    assert every["isBase64Encoded"] is True and base64.b64decode(every["body"]) == b'{"a": 1}'


def test_a_base64_response_is_decoded_when_the_first_accept_type_is_binary(
        gateway: Callable[..., tuple[str, FakePool]]) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00"
    payload = {"statusCode": 200, "headers": {"Content-Type": "image/png"}, "isBase64Encoded": True,
               "body": base64.b64encode(png).decode()}
    url, _ = gateway(returns(payload), binary_types=("image/png",))
    assert requests.get(url + "/img", headers={"Accept": "image/png"}, timeout=5).content == png
    # A browser's first Accept type is text/html: API Gateway hands back the base64 text.
    browser = requests.get(url + "/img", headers={"Accept": "text/html,image/png"}, timeout=5)
    assert browser.status_code == 200 and browser.content == payload["body"].encode()

    url, _ = gateway(returns(payload), binary_types=("*/*",))
    assert requests.get(url + "/img", headers={"Accept": "text/html,image/png"}, timeout=5).content == png


def test_request_context_resource_id_is_shaped_as_aws_and_path_has_no_stage(
        gateway: Callable[..., tuple[str, FakePool]]) -> None:
    url, _ = gateway(echo)
    first = json.loads(requests.get(url + "/items/42", timeout=5).content)["requestContext"]
    again = json.loads(requests.get(url + "/items/43", timeout=5).content)["requestContext"]
    other = json.loads(requests.get(url + "/other", timeout=5).content)["requestContext"]
    assert re.fullmatch(r"[a-z0-9]{6}", first["resourceId"])
    assert first["resourceId"] == again["resourceId"] != other["resourceId"]  # one per resource
    assert first["resourcePath"] == "/items/{id}"
    root = json.loads(requests.get(url + "/", timeout=5).content)["requestContext"]
    assert root["resourceId"] == API_ID[:6]  # the API's RootResourceId
    # locally URLs carry no stage, as behind a custom domain: requestContext.path is the path as asked
    assert first["path"] == "/items/42" and first["stage"] == "Prod"


def test_build_apis_reads_binary_media_types_from_the_api_and_globals(tmp_path: Path) -> None:
    template = {
        "Globals": {"Api": {"BinaryMediaTypes": ["image~1png"]}},
        "Resources": {
            "Api": {"Type": "AWS::Serverless::Api",
                    "Properties": {"StageName": "v1", "BinaryMediaTypes": ["application~1octet-stream", "font/*"]}},
            "Fn": {"Type": "AWS::Serverless::Function", "Properties": {
                "Handler": "app.handler", "Events": {
                    "Own": {"Type": "Api", "Properties": {"Path": "/a", "Method": "get", "RestApiId": {"Ref": "Api"}}},
                    "Implicit": {"Type": "Api", "Properties": {"Path": "/b", "Method": "get"}}}}},
        },
    }
    stack = Stack(template, tmp_path, physical={"Api": {"Ref": "apiid00001"},
                                                "ServerlessRestApi": {"Ref": "apiid00002"}})
    apis = {a.logical_id: a for a in build_apis(stack)}
    assert apis["Api"].binary_types == ("image/png", "application/octet-stream", "font/*")
    assert apis["ServerlessRestApi"].binary_types == ("image/png",)  # Globals.Api shapes SAM's implicit API


def raw_answers(port: int, raw: bytes, seconds: float = 3) -> tuple[list[int], bool]:
    """The statuses of what the server answers to `raw` sent at once, and whether it then closed."""
    from tests.unit.test_httpserver import answer_within

    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        _status, data, closed = answer_within(sock, seconds)
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) [A-Z]", data)], closed


def test_an_unknown_route_is_a_403_before_the_body_is_read(gateway: Callable[..., tuple[str, FakePool]]) -> None:
    url, pool = gateway(echo)  # POST / is no route (GET / is; /{proxy+} takes any path but the root)
    port = int(url.rsplit(":", 1)[1])
    # a declared megabyte that never comes: the answer does not wait for it, and the connection closes
    started = time.monotonic()
    statuses, closed = raw_answers(port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")
    assert statuses == [403] and closed and time.monotonic() - started < 2 and not pool.events
    # a body already there is dropped and the connection stays open for the next request
    statuses, closed = raw_answers(port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                                         b"GET /items/2 HTTP/1.1\r\nHost: h\r\n\r\n", seconds=1)
    assert statuses == [403, 200] and not closed


def test_a_body_over_10_mb_is_a_413_before_it_is_read(gateway: Callable[..., tuple[str, FakePool]]) -> None:
    url, pool = gateway(echo)
    statuses, closed = raw_answers(int(url.rsplit(":", 1)[1]),
                                   b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (10 * 1024 * 1024 + 1))
    assert statuses == [413] and closed and not pool.events
