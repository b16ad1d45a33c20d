"""The local REST gateway before and while its functions start: API Gateway's 503, never a dropped
connection or a raw traceback (issue: requests during start-up)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from samlocal import apigw_rest
from samlocal.httpserver import Server
from samlocal.invoker import Invoker, InvokeResult


class FakePool:
    """Stands in for a FunctionPool: what the gateway calls, and nothing else."""

    def __init__(self, result: InvokeResult | Exception) -> None:
        self.result = result
        self.spec = SimpleNamespace(timeout=3, name="StatusFunction")  # shorter than the 29 s integration limit

    def invoke(self, event: Any, **_: Any) -> InvokeResult:
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


@pytest.fixture
def gateway() -> Iterator[tuple[Server, Invoker, threading.Event]]:
    api = apigw_rest.RestApi("Api", "abc123", "Prod", [apigw_rest.Route.make("/status", "GET", "StatusFunction")])
    invoker, ready = Invoker(), threading.Event()
    server = apigw_rest.serve(api, invoker, "127.0.0.1", 0, ready)
    yield server, invoker, ready
    server.stop()


def get(server: Server, path: str = "/status") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_503_until_ready_then_served(gateway: tuple[Server, Invoker, threading.Event]) -> None:
    server, invoker, ready = gateway
    status, headers, body = get(server)
    assert status == 503 and headers["retry-after"] == "1"
    assert headers["x-amzn-errortype"] == "ServiceUnavailableException"
    assert json.loads(body) == {"message": "Service Unavailable"}
    invoker.pools["StatusFunction"] = FakePool(InvokeResult(True, {"statusCode": 200, "body": "up"}))  # type: ignore[assignment]
    assert get(server)[0] == 503  # the environment exists, but the stack has not said it is ready
    ready.set()
    status, _, body = get(server)
    assert (status, body) == (200, b"up")
    assert get(server, "/nope")[0] == 403  # unknown routes answer as before, ready or not


def test_ready_but_function_missing_is_503_not_a_dropped_connection(gateway: tuple[Server, Invoker, threading.Event]) -> None:
    server, _, ready = gateway
    ready.set()
    assert get(server)[0] == 503


def test_a_gateway_failure_answers_500_and_logs_one_structured_line(
        gateway: tuple[Server, Invoker, threading.Event], caplog: pytest.LogCaptureFixture) -> None:
    server, invoker, ready = gateway
    invoker.pools["StatusFunction"] = FakePool(RuntimeError("boom"))  # type: ignore[assignment]
    ready.set()
    with caplog.at_level(logging.ERROR, logger="samlocal.apigw"):
        status, _, body = get(server)
    assert status == 500 and json.loads(body) == {"message": "Internal server error"}
    failed = [r for r in caplog.records if r.name == "samlocal.apigw" and r.levelno == logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info and failed[0].error_type == "RuntimeError"


def test_503_while_starting_comes_before_the_body_is_read(gateway: tuple[Server, Invoker, threading.Event]) -> None:
    server, _, _ = gateway
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: h\r\nContent-Length: 1000000\r\n\r\n")  # no body follows
        sock.settimeout(3)
        assert sock.recv(12) == b"HTTP/1.1 503"
