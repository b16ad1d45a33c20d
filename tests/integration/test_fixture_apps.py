"""SAM apps that are not Mars, run with `mars up --template …` and driven as a client would drive the
deployed app: API Gateway's answers (REST 502s, with the reason in the runtime's log) and a websocket
function that reaches @connections at https://{requestContext.domainName}/{requestContext.stage}."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
from websockets.sync.client import connect

from tests.integration.conftest import RunningStack, start_stack

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
WS_GREETING = FIXTURES / "ws_greeting" / "template.yaml"
REST_ERRORS = FIXTURES / "rest_errors" / "template.yaml"


def log_line(stack: RunningStack, match: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
    """The first line of the stack's log that `match`es (the runtime writes it just after answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in stack.log_lines() if match(line)]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no such log line in {stack.log_path}")


def test_rest_errors_a_raising_handler_and_a_non_string_body_are_502s_logged_with_the_reason(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, "rest-errors", template=REST_ERRORS)
    try:
        api = stack.outputs["ApiUrl"]
        assert api.startswith("http://127.0.0.1:")  # the deployed URL, rewritten to the local server
        ok = requests.get(api + "ok", timeout=20)
        assert ok.status_code == 200 and ok.json() == {"ok": True}
        for path in ("boom", "dict-body"):
            resp = requests.get(api + path, timeout=20)
            assert resp.status_code == 502 and resp.json() == {"message": "Internal server error"}, path

        boom = log_line(stack, lambda x: x.get("level") == "ERROR" and x.get("route") == "GET /boom")
        assert boom["logger"] == "samlocal.apigw" and boom["msg"].startswith("function error")
        assert boom["error_type"] == "BoomError" and boom["error"] == "the handler failed on purpose"
        assert boom["function"] == "ErrorsFunction" and boom["request_id"]
        dict_body = log_line(stack, lambda x: x.get("level") == "ERROR" and x.get("route") == "GET /dict-body")
        assert dict_body["msg"].startswith("malformed Lambda proxy response")
        assert "body is dict, not a string" in dict_body["reason"]
    finally:
        stack.stop()


def test_ws_greeting_hello_posts_back_through_connections_at_domain_name_and_stage(tmp_path: Path) -> None:
    stack = start_stack(tmp_path, "ws-greeting", template=WS_GREETING)
    try:
        uri = stack.outputs["WebSocketURI"]
        assert uri.startswith("ws://127.0.0.1:")
        with connect(uri, open_timeout=20) as ws:
            ws.send(json.dumps({"action": "hello", "name": "mars"}))
            greeting = json.loads(ws.recv(timeout=30))
            assert greeting["greeting"] == "hello, mars"
            assert greeting["registered"] is True  # $connect stored the connection before the route ran
            own_id = greeting["connection_id"]
            # a greeting for a connection that is gone: the function gets GoneException (410), the client
            # API Gateway's error frame, and the runtime's log an ERROR line naming the call
            ws.send(json.dumps({"action": "hello", "to": "R0neAAAAAAAAAAA="}))
            error = json.loads(ws.recv(timeout=30))
            assert error["message"] == "Internal server error" and error["connectionId"] == own_id
        failed = log_line(stack, lambda x: x.get("level") == "ERROR" and x.get("msg") == "@connections call failed")
        assert failed["status"] == 410 and failed["method"] == "POST"
        assert failed["path"] == "/Prod/@connections/R0neAAAAAAAAAAA%3D"
        invoke = log_line(stack, lambda x: x.get("msg") == "invoke" and x.get("function") == "ws-greeting-HelloFunction"
                          and x.get("outcome") == "error")
        assert "GoneException" in invoke["error"]
    finally:
        stack.stop()
