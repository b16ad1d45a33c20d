"""Issue 12, HTTP API: no existence oracle across apps, no cross-site writes, a quiet /status.

Each test failed on the code before its fix (docs/SECURITY.md, "Checks and their tests")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mars_common import auth, aws, config
from mars_common.config import settings
from mars_common.events import parse_event
from mars_common.store import upsert_message

from tests.conftest import load_function
from tests.unit.test_api import Api

GET_MESSAGE = "/api/messages/{message_id}"


@pytest.fixture
def keys(auth_on: Any) -> dict[str, str]:
    table = settings().keys_table
    return {"a": auth.create_key(table, ["app-a"])[1], "admin": auth.create_key(table, [], admin=True)[1]}


@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any) -> Api:
    return Api(load_function("api"), lambda_context)


def call(api: Api, method: str, path: str, key: str | None = None, headers: dict[str, str] | None = None,
         **kwargs: Any) -> Any:
    event = api.event(method, path, **kwargs)
    for name, value in {**({auth.HEADER: key} if key else {}), **(headers or {})}.items():
        event["headers"][name] = value
        event["multiValueHeaders"][name] = [value]
    return api.send(event)


class DynamoCalls:
    """Every DynamoDB call of this process: operation, request and response (botocore's event hooks)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self._params: dict[str, Any] = {}

    def attach(self, client: Any) -> None:
        client.meta.events.register("provide-client-params.dynamodb.*", self._before)
        client.meta.events.register("after-call.dynamodb.*", self._after)

    def _before(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self._params = dict(params)

    def _after(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, self._params, parsed))

    def text(self) -> str:
        return json.dumps([[op, req, resp] for op, req, resp in self.calls], default=str)


# --- 1. existence oracle ----------------------------------------------------------------------------

def test_a_scoped_key_never_reads_another_apps_item_and_gets_the_same_404(api: Api, keys: dict[str, str]) -> None:
    table = settings().messages_table
    big = {f"k{i}": "x" * 60 for i in range(25)}  # B's item is large: reading it would cost measurable time
    upsert_message(table, "app-b", "b-only", [parse_event({"app_id": "app-b", "message_id": "b-only",
                                                           "event": f"E{i}", "meta": big}) for i in range(40)], 30)
    upsert_message(table, "app-b", "shared", [parse_event({"app_id": "app-b", "message_id": "shared", "event": "B"})], 30)
    upsert_message(table, "app-a", "shared", [parse_event({"app_id": "app-a", "message_id": "shared", "event": "A"})], 30)
    recorder = DynamoCalls()
    recorder.attach(aws.table(table).meta.client)
    recorder.attach(aws.client("dynamodb"))

    def get(message_id: str, key: str) -> Any:
        return call(api, "GET", f"/api/messages/{message_id}", key, resource=GET_MESSAGE,
                    params={"message_id": message_id})

    used_by_b, unused = get("b-only", keys["a"]), get("never-used", keys["a"])
    assert used_by_b.status == unused.status == 404
    # identical bodies but for the id the caller sent
    assert json.dumps(used_by_b.body).replace("b-only", "ID") == json.dumps(unused.body).replace("never-used", "ID")
    shared = get("shared", keys["a"])
    assert shared.status == 200 and [t["app_id"] for t in shared.body["timelines"]] == ["app-a"]
    seen = recorder.text()
    assert recorder.calls, "the recorder saw no DynamoDB call"
    assert "app-b" not in seen, "a scoped key's read touched app-b (an item, or a key of the ByMessage index)"
    # an admin key still sees every app's timeline (through the KEYS_ONLY index)
    assert [t["app_id"] for t in get("shared", keys["admin"]).body["timelines"]] == ["app-a", "app-b"]


# --- 4. cross-site writes ---------------------------------------------------------------------------

EVENT = {"app_id": "shop", "message_id": "m1", "event": "CREATED"}
STATE_CHANGING = [
    ("POST", "/api/event", {"body": EVENT}),
    ("POST", "/api/event/bulk", {"body": {"events": [EVENT]}}),
    ("PUT", "/api/apps/shop/lifecycle", {"resource": "/api/apps/{app_id}/lifecycle", "params": {"app_id": "shop"},
                                         "body": {"events": ["CREATED"]}}),
    ("GET", "/api/create_event", {"query": {"count": "1"}}),
    ("GET", "/api/test_socket", {"query": {"message_id": "m1"}}),
    ("POST", "/api/apps/shop/destinations", {"resource": "/api/apps/{app_id}/destinations", "params": {"app_id": "shop"},
                                             "body": {"type": "sns", "topic_arn": "arn:aws:sns:us-east-1:123456789012:t"}}),
    ("DELETE", "/api/apps/shop/destinations/dst_0123456789abcdef", {
        "resource": "/api/apps/{app_id}/destinations/{destination_id}",
        "params": {"app_id": "shop", "destination_id": "dst_0123456789abcdef"}}),
    ("POST", "/api/apps/shop/destinations/dst_0123456789abcdef/test", {
        "resource": "/api/apps/{app_id}/destinations/{destination_id}/test",
        "params": {"app_id": "shop", "destination_id": "dst_0123456789abcdef"}}),
]


@pytest.mark.parametrize("method,path,kwargs", STATE_CHANGING, ids=[f"{m} {p}" for m, p, _ in STATE_CHANGING])
@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Origin": "http://localhost:4001"},  # another port is another origin
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
], ids=["foreign-origin", "null-origin", "other-port", "sec-fetch-cross-site"])
def test_state_changing_routes_refuse_cross_site_requests(api: Api, method: str, path: str, kwargs: dict[str, Any],
                                                          headers: dict[str, str]) -> None:
    reply = call(api, method, path, headers={"Host": "localhost:4000", **headers}, **kwargs)
    assert reply.status == 403, reply.body
    assert reply.body["success"] is False and reply.body["error"]["code"] == "CROSS_SITE"
    assert set(reply.body["error"]) == {"code", "message", "details"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_a_browser_may_not_send_form_or_text_bodies(api: Api, content_type: str) -> None:
    """Even from the API's own origin: a form body from a browser is never the dashboard's JSON."""
    same = {"Host": "localhost:4000", "Origin": "http://localhost:4000", "Sec-Fetch-Site": "same-origin"}
    reply = call(api, "POST", "/api/event", headers=same, body=EVENT, content_type=content_type)
    assert reply.status == 415 and reply.body["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE", reply.body


def test_same_origin_json_curl_and_wrk_keep_working(api: Api) -> None:
    same = {"Host": "localhost:4000", "Origin": "http://localhost:4000", "Sec-Fetch-Site": "same-origin"}
    assert call(api, "POST", "/api/event", headers=same, body=EVENT).status == 202
    assert call(api, "GET", "/api/create_event", headers={"Host": "localhost:4000", "Sec-Fetch-Site": "same-origin"},
                query={"count": "1"}).status == 202
    deployed = {"Host": "abc123.execute-api.us-east-1.amazonaws.com",
                "Origin": "https://abc123.execute-api.us-east-1.amazonaws.com"}
    assert call(api, "POST", "/api/event", headers=deployed, body=EVENT).status == 202
    for content_type in ("application/x-www-form-urlencoded", "text/plain"):  # curl -d, wrk: no Origin, no Sec-Fetch
        assert call(api, "POST", "/api/event", body=EVENT, content_type=content_type).status == 202, content_type
    # reading routes stay open to other origins (nothing changes; the answer is not readable without CORS)
    assert call(api, "GET", "/api/q/stats", headers={"Origin": "https://evil.example"}).status == 200


# --- 8. /status -------------------------------------------------------------------------------------

def test_anonymous_status_says_only_ok_or_degraded(api: Api, keys: dict[str, str]) -> None:
    anonymous = call(api, "GET", "/status")
    assert anonymous.status == 200 and anonymous.body == {"status": "ok"}
    scoped = call(api, "GET", "/status", keys["a"])
    assert scoped.body == {"status": "ok"}  # an app's key is not an operator's
    admin = call(api, "GET", "/status", keys["admin"])
    assert admin.status == 200 and len(admin.body["checks"]) == 17 and admin.body["stage"] == "dev"
    assert call(api, "GET", "/status", "mk_AAAAAAAA_" + "x" * 43).body == {"status": "ok"}  # no 401: a public route


def test_anonymous_degraded_status_names_nothing(api: Api, keys: dict[str, str]) -> None:
    aws.client("sqs").delete_queue(QueueUrl=settings().events_queue_urls[5])
    reply = call(api, "GET", "/status")
    assert reply.status == 503 and reply.body == {"status": "degraded"}


def test_with_auth_off_status_shows_the_detail(api: Api) -> None:
    """Auth off (local default): every caller is admin."""
    reply = call(api, "GET", "/status")
    assert reply.status == 200 and len(reply.body["checks"]) == 17


def test_status_checks_are_cached_per_environment(api: Api, keys: dict[str, str]) -> None:
    recorder = DynamoCalls()
    recorder.attach(aws.client("dynamodb"))
    for _ in range(20):
        assert call(api, "GET", "/status").status == 200
    described = [op for op, _req, _resp in recorder.calls if op == "DescribeTable"]
    assert len(described) == 2, f"20 calls within {api.module.STATUS_CACHE_SECONDS} s ran the checks more than once"


# --- 10. the dashboard's CSP ------------------------------------------------------------------------

def csp(api: Api) -> dict[str, list[str]]:
    out = api.module.app(api.event("GET", "/"), api.context)
    header = {k.lower(): v for k, v in out["headers"].items()}["content-security-policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in header.split(";")) if d}


@pytest.mark.parametrize("configured,allowed", [
    ("wss://abc123.execute-api.us-east-1.amazonaws.com/dev", "wss://abc123.execute-api.us-east-1.amazonaws.com/dev"),
    ("ws://127.0.0.1:4001", "ws://127.0.0.1:4001"),
    ("https://ws.example.com/live", "wss://ws.example.com/live"),  # the page turns http(s) into ws(s) too
])
def test_the_dashboard_may_connect_only_to_its_own_websocket(api: Api, monkeypatch: pytest.MonkeyPatch,
                                                             configured: str, allowed: str) -> None:
    monkeypatch.setenv("WEBSOCKET_URL", configured)
    config.settings.cache_clear()
    assert call(api, "GET", "/api/config").body["websocket_url"] == configured
    assert csp(api)["connect-src"] == ["'self'", allowed]


@pytest.mark.parametrize("configured", ["", "ws://x; script-src *", "javascript:alert(1)", "ws://a b"])
def test_an_odd_websocket_url_never_reaches_the_csp(api: Api, monkeypatch: pytest.MonkeyPatch, configured: str) -> None:
    monkeypatch.setenv("WEBSOCKET_URL", configured)
    config.settings.cache_clear()
    policy = csp(api)
    assert policy["connect-src"] == ["'self'"] and policy["script-src"] == ["'self'"]
