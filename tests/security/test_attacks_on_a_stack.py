"""Issue 12: every attack of the security review replayed against running local stacks, as a user of
the stack (or a web page in their browser) would make it: `mars` (auth off, the local default) and
`mars_auth` (`mars up --auth`, keys made by `mars keys create`). Real HTTP, websocket and gRPC clients.

Not here: (2) API Gateway key values and (10) IAM exist only deployed (tests/security/test_keys_apigateway.py,
tests/unit/test_template_iam.py); (5) the local HTTP server's limits have their own tests; (6) auth
failing closed is a configuration rule (tests/security/test_auth_config.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import grpc
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tests.integration.conftest import MARS, ROOT, RunningStack, wait_timeline

sys.path.insert(0, str(ROOT / "grpc_shim"))
import event_pb2  # noqa: E402
import event_pb2_grpc  # noqa: E402

EVIL = "https://evil.example"
ESC = "\x1b]0;owned\x07\x1b[2J"  # an OSC title change and a screen clear: what a terminal would run


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def browser(origin: str | None = None, site: str | None = None) -> dict[str, str]:
    """The headers a browser adds to a request a page makes (Origin on writes, Fetch Metadata)."""
    headers = {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty", "User-Agent": "Mozilla/5.0"}
    if origin is not None:
        headers["Origin"] = origin
    if site is not None:
        headers["Sec-Fetch-Site"] = site
    return headers


def event(app_id: str = "web", message_id: str | None = None, **extra: object) -> dict[str, object]:
    return {"app_id": app_id, "message_id": message_id or uid("m"), "event": "CREATED", **extra}


# --- (1) existence oracle across apps ------------------------------------------------------------------

def test_another_apps_message_id_answers_a_scoped_key_exactly_like_an_unused_id(mars_auth: RunningStack) -> None:
    used_by_bank, unused = uid("bank-secret"), uid("nobody")
    resp = requests.post(mars_auth.url("/api/event"), json=event("bank", used_by_bank),
                         headers={"x-api-key": mars_auth.keys["bank"]}, timeout=10)
    assert resp.status_code == 202, resp.text
    wait_timeline(mars_auth, used_by_bank)  # stored (read with the admin key)

    shop = {"x-api-key": mars_auth.keys["shop"]}
    answers = {mid: requests.get(mars_auth.url(f"/api/messages/{mid}"), headers=shop, timeout=10)
               for mid in (used_by_bank, unused)}
    assert [a.status_code for a in answers.values()] == [404, 404]
    # the same body, but for the id it names
    bodies = {mid: a.text.replace(mid, "<id>") for mid, a in answers.items()}
    assert bodies[used_by_bank] == bodies[unused], bodies
    assert "bank'" not in bodies[used_by_bank] and "\"bank\"" not in bodies[used_by_bank]  # the app is not named
    # and bank's own key reads it
    mine = requests.get(mars_auth.url(f"/api/messages/{used_by_bank}"), headers={"x-api-key": mars_auth.keys["bank"]},
                        timeout=10)
    assert mine.status_code == 200 and mine.json()["timelines"][0]["app_id"] == "bank"


# --- (3) the local AWS emulator and web pages -----------------------------------------------------------

def test_the_emulator_refuses_a_web_page_and_a_foreign_host(mars: RunningStack) -> None:
    endpoint = mars.state["endpoint"]
    port = urlsplit(endpoint).port
    scan = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.ListTables"}
    # a page of another site: a preflight and the no-preflight request itself
    preflight = requests.options(endpoint, headers={"Origin": EVIL, "Access-Control-Request-Method": "POST",
                                                    "Access-Control-Request-Headers": "x-amz-target"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in preflight.headers
    for resp in (preflight, requests.post(endpoint, data="{}", headers={**scan, "Origin": EVIL}, timeout=10)):
        assert resp.status_code == 403, (resp.status_code, resp.text[:200])
        assert "Access-Control-Allow-Origin" not in resp.headers
    # DNS rebinding: the attacker's name resolving to 127.0.0.1 arrives as the Host header
    rebound = requests.post(endpoint, data="{}", headers={**scan, "Host": f"rebind.evil.example:{port}"}, timeout=10)
    assert rebound.status_code == 403
    # the SDK (Host = its endpoint, no Origin) keeps working
    assert mars.client("dynamodb").list_tables()["TableNames"]


# --- (4) cross-site requests with auth off ---------------------------------------------------------------

def test_cross_site_writes_are_refused_and_curl_still_writes(mars: RunningStack) -> None:
    url = mars.url("/api/event")
    body = json.dumps(event())
    # a form on another site posting JSON as text/plain (no preflight), and the same with Fetch Metadata only
    refused = [
        requests.post(url, data=body, headers={**browser(EVIL, "cross-site"), "Content-Type": "text/plain"}, timeout=10),
        requests.post(url, data=body, headers={**browser(EVIL), "Content-Type": "application/json"}, timeout=10),
        requests.post(url, data=body, headers={**browser(site="cross-site"), "Content-Type": "text/plain"}, timeout=10),
        requests.post(mars.url("/api/event/bulk"), data=json.dumps({"events": [event()]}),
                      headers={**browser("null"), "Content-Type": "text/plain"}, timeout=10),
    ]
    for resp in refused:
        assert resp.status_code == 403 and resp.json()["error"]["code"] == "CROSS_SITE", resp.text
        assert "Access-Control-Allow-Origin" not in resp.headers
    # the dashboard's own origin, but a body no page may send without a preflight
    own = origin_of(mars.api)
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        resp = requests.post(url, data=body, headers={**browser(own, "same-origin"), "Content-Type": content_type},
                             timeout=10)
        assert resp.status_code == 415, (content_type, resp.text)
    # a link on another site to the load-test route
    link = requests.get(mars.url("/api/create_event"), params={"count": 5}, headers=browser(site="cross-site"),
                        timeout=10)
    assert link.status_code == 403 and link.json()["error"]["code"] == "CROSS_SITE"
    # curl (no Origin, no Sec-Fetch-*): JSON, and curl -d's form type, as before; the dashboard's own JSON too
    ok = [requests.post(url, json=event(), timeout=10),
          requests.post(url, data=json.dumps(event()), headers={"Content-Type": "application/x-www-form-urlencoded"},
                        timeout=10),
          requests.post(url, data=json.dumps(event()), headers={**browser(own, "same-origin"),
                                                                 "Content-Type": "application/json"}, timeout=10)]
    assert [r.status_code for r in ok] == [202, 202, 202], [r.text for r in ok]


def test_the_websocket_refuses_a_page_of_another_site(mars: RunningStack) -> None:
    url = mars.outputs["WebSocketUrl"]
    for origin in (EVIL, "null", origin_of(mars.api).replace("http://", "https://")):
        with pytest.raises(InvalidStatus) as refused:
            connect(url, origin=origin, open_timeout=10)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403, origin
    # the dashboard's own page (under any loopback name with its port), and clients without an Origin
    port = urlsplit(mars.api).port
    for origin in (origin_of(mars.api), f"http://localhost:{port}", None):
        with connect(url, origin=origin, open_timeout=10) as ws:  # type: ignore[arg-type]
            ws.send(json.dumps({"action": "ping"}))
            assert json.loads(ws.recv(timeout=10)) == {"type": "pong"}


# --- (7) revocation reaches open websockets -------------------------------------------------------------

def keys_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARS, "keys", *args, "--stack-name", stack.stack_name, "--state-dir", str(stack.state_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_revoked_keys_open_websocket_gets_no_more_pushes_and_is_closed(mars_auth: RunningStack) -> None:
    created = keys_cli(mars_auth, "create", "--app", "revokee", "--note", "attack replay")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    mid = uid("revoked")
    with connect(f"{mars_auth.outputs['WebSocketUrl']}?api_key={key}", open_timeout=10) as ws:
        ws.send(json.dumps({"action": "subscribe", "app_id": "revokee", "message_id": mid}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        assert json.loads(ws.recv(timeout=10))["type"] == "timeline"

        revoked = keys_cli(mars_auth, "revoke", key.split("_")[1])
        assert revoked.returncode == 0, revoked.stderr
        # the key's subscriptions went at once: a new event of that message is stored, not pushed
        resp = requests.post(mars_auth.url("/api/event"), json=event("revokee", mid),
                             headers={"x-api-key": mars_auth.keys["admin"]}, timeout=10)
        assert resp.status_code == 202
        wait_timeline(mars_auth, mid)
        with pytest.raises(TimeoutError):
            ws.recv(timeout=2)

        # within the key cache window (30 s) a subscribe may still be answered from the cache; then
        # it is refused and the socket closed
        deadline = time.monotonic() + 45
        frames: list[dict[str, object]] = []
        with pytest.raises(ConnectionClosed):
            while time.monotonic() < deadline:
                ws.send(json.dumps({"action": "subscribe", "app_id": "revokee"}))
                frames.append(json.loads(ws.recv(timeout=10)))
                if frames[-1]["type"] == "error":
                    ws.recv(timeout=10)  # the server closes the socket next
                time.sleep(1)
        assert frames and frames[-1]["type"] == "error" and frames[-1]["code"] == "UNAUTHORIZED", frames[-3:]


# --- (8) terminal escapes in meta ---------------------------------------------------------------------

def test_meta_with_terminal_escapes_is_refused_on_http_and_grpc(mars: RunningStack) -> None:
    for meta in ({"note": ESC}, {ESC: "x"}, {"": "x"}):
        resp = requests.post(mars.url("/api/event"), json=event(meta=meta), timeout=10)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "VALIDATION_ERROR", resp.text
        assert any(d["field"].startswith("meta") for d in resp.json()["error"]["details"]), resp.text
    with grpc.insecure_channel(mars.outputs["GrpcEndpoint"]) as channel:
        stub = event_pb2_grpc.MarsGrpcStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.collectEvent(event_pb2.EventRequest(app_id="web", message_id=uid("m"), event="CREATED",
                                                     meta={"note": ESC}), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "meta" in err.value.details()


# --- (9) /status without a key -----------------------------------------------------------------------------

def test_anonymous_status_names_nothing_and_the_admin_key_sees_the_detail(mars_auth: RunningStack) -> None:
    for headers in ({}, {"x-api-key": mars_auth.keys["shop"]}, {"x-api-key": "mk_AAAAAAAA_" + "A" * 43}):
        resp = requests.get(mars_auth.url("/status"), headers=headers, timeout=10)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}, resp.text
    detail = requests.get(mars_auth.url("/status"), headers={"x-api-key": mars_auth.keys["admin"]}, timeout=10).json()
    assert detail["status"] == "ok" and detail["stage"] and len(detail["checks"]) >= 10


# --- (11) smaller items -------------------------------------------------------------------------------------

def list_services(channel: grpc.Channel, key: str | None) -> list[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                        metadata=(("x-api-key", key),) if key else None, timeout=10)
    return [s.name for reply in replies for s in reply.list_services_response.service]


def test_grpc_reflection_wants_a_key_and_health_stays_open(mars_auth: RunningStack) -> None:
    with grpc.insecure_channel(mars_auth.outputs["GrpcEndpoint"]) as channel:
        for key in (None, "mk_AAAAAAAA_" + "A" * 43):
            with pytest.raises(grpc.RpcError) as err:
                list_services(channel, key)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "MarsWeb.GrpcService.MarsGrpc" in list_services(channel, mars_auth.keys["shop"])
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_the_local_connections_endpoint_refuses_unsigned_posts(mars: RunningStack) -> None:
    management = next(iter(mars.state["websockets"].values()))[1]
    resp = requests.post(f"{management}/@connections/AAAAAAAAAAAAAAA=", data="{}",
                         headers={"Content-Type": "text/plain", "Origin": EVIL}, timeout=10)
    assert resp.status_code == 403, (resp.status_code, resp.text)
    assert resp.headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
