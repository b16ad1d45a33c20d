"""API keys on a local stack started with `mars up --auth`, keys made by `mars keys create`:
gRPC metadata, websocket connect and subscribe, revocation, listing — allowed and denied.
(Every HTTP operation's 401/403 is driven in test_openapi_contract.py on the same stack.)"""

from __future__ import annotations

import json
import subprocess
import uuid

import grpc
import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from grpc_shim import event_pb2, event_pb2_grpc

from .conftest import MARS, ROOT, RunningStack, wait_timeline


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def keys_cli(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARS, "keys", *args, "--stack-name", stack.stack_name, "--state-dir", str(stack.state_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def stub(mars_auth: RunningStack) -> event_pb2_grpc.MarsGrpcStub:
    return event_pb2_grpc.MarsGrpcStub(grpc.insecure_channel(mars_auth.outputs["GrpcEndpoint"]))


def request(app_id: str, message_id: str, name: str = "CREATED") -> event_pb2.EventRequest:
    return event_pb2.EventRequest(app_id=app_id, message_id=message_id, event=name)


# --- gRPC ------------------------------------------------------------------------------------------

def test_grpc_without_a_valid_key_is_unauthenticated(mars_auth: RunningStack, stub: event_pb2_grpc.MarsGrpcStub) -> None:
    for metadata in ((), (("x-api-key", "mk_AAAAAAAA_" + "A" * 43),)):
        with pytest.raises(grpc.RpcError) as err:
            stub.collectEvent(request("shop", uid("m")), metadata=metadata, timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_grpc_writes_only_to_the_keys_apps(mars_auth: RunningStack, stub: event_pb2_grpc.MarsGrpcStub) -> None:
    shop = (("x-api-key", mars_auth.keys["shop"]),)
    with pytest.raises(grpc.RpcError) as err:
        stub.collectEvent(request("bank", uid("m")), metadata=shop, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "bank" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.collectEvents(event_pb2.EventsRequest(events=[request("shop", uid("m")), request("bank", uid("m"))]),
                           metadata=shop, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as err:
        stub.streamEvents(iter([request("shop", uid("m")), request("bank2", uid("m"))]), metadata=shop, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    mid = uid("grpc-auth")
    reply = stub.collectEvent(request("shop", mid), metadata=shop, timeout=10)
    assert reply.success
    assert wait_timeline(mars_auth, mid, app_id="shop")["timelines"][0]["events"][0]["event_id"] == reply.event_id


# --- websocket -------------------------------------------------------------------------------------

def test_websocket_connect_is_refused_without_a_valid_key(mars_auth: RunningStack) -> None:
    url = mars_auth.outputs["WebSocketUrl"]
    for suffix in ("", "?api_key=mk_AAAAAAAA_" + "A" * 43):
        with pytest.raises(InvalidStatus) as refused:
            connect(url + suffix, open_timeout=10)
        assert refused.value.response.status_code == 401


def test_websocket_subscribe_is_scoped_and_pushes_arrive(mars_auth: RunningStack) -> None:
    mid = uid("ws-auth")
    with connect(f"{mars_auth.outputs['WebSocketUrl']}?api_key={mars_auth.keys['shop']}", open_timeout=10) as ws:
        ws.send(json.dumps({"action": "subscribe", "app_id": "bank"}))
        denied = json.loads(ws.recv(timeout=10))
        assert (denied["type"], denied["code"]) == ("error", "FORBIDDEN")
        ws.send(json.dumps({"action": "subscribe", "app_id": "shop", "message_id": mid}))
        assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        assert json.loads(ws.recv(timeout=10))["type"] == "timeline"
        resp = requests.post(mars_auth.url("/api/event"), json={"app_id": "shop", "message_id": mid, "event": "CREATED"},
                             headers={"x-api-key": mars_auth.keys["shop"]}, timeout=10)
        assert resp.status_code == 202
        pushed = json.loads(ws.recv(timeout=20))
        assert pushed["type"] == "timeline" and [e["event"] for e in pushed["new_events"]] == ["CREATED"]


# --- keys ------------------------------------------------------------------------------------------

def test_a_revoked_key_is_refused_everywhere(mars_auth: RunningStack, stub: event_pb2_grpc.MarsGrpcStub) -> None:
    created = keys_cli(mars_auth, "create", "--app", "shop")
    assert created.returncode == 0
    key = created.stdout.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    revoked = keys_cli(mars_auth, "revoke", key_id)
    assert revoked.returncode == 0 and "revoked" in revoked.stderr
    resp = requests.get(mars_auth.url("/api/messages"), params={"app_id": "shop"}, headers={"x-api-key": key}, timeout=10)
    assert resp.status_code == 401
    with pytest.raises(grpc.RpcError) as err:
        stub.collectEvent(request("shop", uid("m")), metadata=(("x-api-key", key),), timeout=10)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(InvalidStatus):
        connect(f"{mars_auth.outputs['WebSocketUrl']}?api_key={key}", open_timeout=10)
    assert keys_cli(mars_auth, "revoke", "zzzzzzzz").returncode == 1


def test_keys_list_shows_ids_and_scopes_never_the_keys(mars_auth: RunningStack) -> None:
    table = keys_cli(mars_auth, "list")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["KEY", "ID", "APPS"]
    assert "bank,bank2" in table.stdout and "* (admin)" in table.stdout
    assert not any(k in table.stdout for k in mars_auth.keys.values())
    listed = json.loads(keys_cli(mars_auth, "list", "--json").stdout)
    assert {k["key_id"] for k in listed} >= {k.split("_")[1] for k in mars_auth.keys.values()}


def test_keys_create_needs_a_scope_and_a_running_stack(mars_auth: RunningStack, tmp_path: object) -> None:
    assert keys_cli(mars_auth, "create").returncode == 2
    assert keys_cli(mars_auth, "create", "--app", "not valid!").returncode == 2
    missing = subprocess.run([*MARS, "keys", "list", "--stack-name", "nope", "--state-dir", str(tmp_path)],
                             capture_output=True, text=True, cwd=ROOT)
    assert missing.returncode == 2 and "make up AUTH=1" in missing.stderr
