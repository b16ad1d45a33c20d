"""API keys scoped to apps (mars_common.auth) and every path that checks them: the HTTP API, the
websocket routes, `mars keys` — allowed and denied — against template.yaml's tables under mock_aws."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from mars_common import auth, aws, live
from mars_common.config import settings
from mars_common.events import parse_event
from mars_common.store import put_lifecycle, upsert_message
from mars_common.timeline import Lifecycle

from tests.conftest import load_function
from tests.unit.test_api import Api
from tests.unit.test_live import FakeConnections, ws_event


@pytest.fixture
def keys(auth_on: Any) -> dict[str, str]:
    table = settings().keys_table
    return {"shop": auth.create_key(table, ["shop"])[1], "bank": auth.create_key(table, ["bank", "bank2"])[1],
            "admin": auth.create_key(table, [], admin=True)[1]}


@pytest.fixture
def api(auth_on: Any, lambda_context: Any) -> Api:
    return Api(load_function("api"), lambda_context)


def call(api: Api, method: str, path: str, key: str | None, **kwargs: Any) -> Any:
    event = api.event(method, path, **kwargs)
    if key is not None:
        event["headers"]["x-api-key"] = key
        event["multiValueHeaders"]["x-api-key"] = [key]
    return api.send(event)


# --- keys ------------------------------------------------------------------------------------------

def test_a_key_is_stored_hashed_and_looks_as_designed(auth_on: Any) -> None:
    table = settings().keys_table
    key_id, key = auth.create_key(table, ["shop", "shop"], note="ci")
    assert auth.KEY_RE.fullmatch(key) and key.startswith(f"mk_{key_id}_")
    assert set(key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
    items = aws.table(table).scan()["Items"]
    assert len(items) == 1 and key not in json.dumps(items, default=str)
    assert items[0]["key_hash"] == auth.key_hash(key) and items[0]["apps"] == ["shop"]
    assert auth.lookup(table, key) == auth.Principal(key_id, frozenset({"shop"}))
    listed = auth.list_keys(table)
    assert listed == [{"key_id": key_id, "apps": ["shop"], "admin": False, "note": "ci",
                       "created_at": listed[0]["created_at"], "revoked_at": None}]


def test_unknown_malformed_and_revoked_keys_are_refused(auth_on: Any) -> None:
    table = settings().keys_table
    key_id, key = auth.create_key(table, ["shop"])
    assert auth.lookup(table, key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert auth.lookup(table, "not-a-key") is None
    assert auth.revoke_key(table, key_id) and not auth.revoke_key(table, "nope1234")
    auth.clear_cache()  # a revocation takes effect once the cache (CACHE_SECONDS) has passed
    assert auth.lookup(table, key) is None
    assert auth.list_keys(table)[0]["revoked_at"]


@pytest.mark.parametrize("apps,admin", [([], False), (["bad app"], False)])
def test_create_refuses_keys_without_a_valid_scope(auth_on: Any, apps: list[str], admin: bool) -> None:
    with pytest.raises(ValueError):
        auth.create_key(settings().keys_table, apps, admin=admin)


def test_auth_off_acts_as_admin_without_reading_the_table() -> None:
    assert auth.authenticate("no-such-table", False, None) is auth.ANONYMOUS_ADMIN


# --- HTTP ------------------------------------------------------------------------------------------

def event(app_id: str, message_id: str = "m1", name: str = "CREATED") -> dict[str, Any]:
    return {"app_id": app_id, "message_id": message_id, "event": name}


@pytest.mark.parametrize("method,path,kwargs", [
    ("POST", "/api/event", {"body": event("shop")}),
    ("POST", "/api/event/bulk", {"body": {"events": [event("shop")]}}),
    ("GET", "/api/q/stats", {}),
    ("GET", "/api/messages/m1", {"resource": "/api/messages/{message_id}", "params": {"message_id": "m1"}}),
    ("GET", "/api/messages", {"query": {"app_id": "shop"}}),
    ("GET", "/api/messages/m1/trace", {"resource": "/api/messages/{message_id}/trace", "params": {"message_id": "m1"},
                                       "query": {"app_id": "shop"}}),
    ("PUT", "/api/apps/shop/lifecycle", {"resource": "/api/apps/{app_id}/lifecycle", "params": {"app_id": "shop"},
                                         "body": {"events": ["A"]}}),
    ("GET", "/api/apps/shop/lifecycle", {"resource": "/api/apps/{app_id}/lifecycle", "params": {"app_id": "shop"}}),
    ("GET", "/api/create_event", {"query": {"count": "1"}}),
    ("GET", "/api/test_socket", {"query": {"message_id": "m1"}}),
])
def test_every_private_route_wants_a_valid_key(api: Api, keys: dict[str, str], method: str, path: str,
                                               kwargs: dict[str, Any]) -> None:
    for key in (None, "mk_AAAAAAAA_" + "x" * 43, "garbage"):
        reply = call(api, method, path, key, **kwargs)
        assert reply.status == 401 and reply.body["error"]["code"] == "UNAUTHORIZED", (key, reply)


@pytest.mark.parametrize("path", ["/status", "/api/config", "/", "/search/event"])
def test_public_routes_need_no_key(api: Api, keys: dict[str, str], path: str) -> None:
    event = api.event("GET", path)
    out = api.module.app(event, api.context)
    assert out["statusCode"] in (200, 503), out  # /status is 503 when a resource is unreachable


def test_config_says_auth_is_required(api: Api) -> None:
    assert call(api, "GET", "/api/config", None).body["auth_required"] is True


def test_ingest_is_allowed_for_the_keys_apps_only(api: Api, keys: dict[str, str]) -> None:
    assert call(api, "POST", "/api/event", keys["shop"], body=event("shop")).status == 202
    denied = call(api, "POST", "/api/event", keys["shop"], body=event("bank"))
    assert denied.status == 403 and denied.body["error"]["code"] == "FORBIDDEN"
    mixed = call(api, "POST", "/api/event/bulk", keys["bank"],
                 body={"events": [event("bank"), event("shop"), event("bank2"), event("evil")]})
    assert mixed.status == 403
    assert [(d["index"], d["field"]) for d in mixed.body["error"]["details"]] == [(1, "app_id"), (3, "app_id")]
    assert call(api, "POST", "/api/event/bulk", keys["admin"], body={"events": [event("x"), event("y")]}).status == 202


def test_reads_are_scoped_and_another_apps_timeline_is_not_even_hinted(api: Api, keys: dict[str, str]) -> None:
    table = settings().messages_table
    for app_id in ("shop", "bank"):
        upsert_message(table, app_id, "shared-id", [parse_event(event(app_id, "shared-id"))], 30)
    get = {"resource": "/api/messages/{message_id}", "params": {"message_id": "shared-id"}}
    mine = call(api, "GET", "/api/messages/shared-id", keys["shop"], **get)
    assert mine.status == 200 and [t["app_id"] for t in mine.body["timelines"]] == ["shop"]
    assert [t["app_id"] for t in call(api, "GET", "/api/messages/shared-id", keys["admin"], **get).body["timelines"]] \
        == ["bank", "shop"]
    other = call(api, "GET", "/api/messages/shared-id", keys["shop"], query={"app_id": "bank"}, **get)
    assert other.status == 403
    upsert_message(table, "bank", "bank-only", [parse_event(event("bank", "bank-only"))], 30)
    hidden = call(api, "GET", "/api/messages/bank-only", keys["shop"], resource="/api/messages/{message_id}",
                  params={"message_id": "bank-only"})
    assert hidden.status == 404  # the same answer as for an id nobody used
    assert call(api, "GET", "/api/messages", keys["shop"], query={"app_id": "bank"}).status == 403
    assert call(api, "GET", "/api/messages", keys["bank"], query={"app_id": "bank"}).status == 200


def test_lifecycles_are_scoped(api: Api, keys: dict[str, str]) -> None:
    route = {"resource": "/api/apps/{app_id}/lifecycle", "params": {"app_id": "bank"}}
    assert call(api, "PUT", "/api/apps/bank/lifecycle", keys["shop"], body={"events": ["A"]}, **route).status == 403
    assert call(api, "PUT", "/api/apps/bank/lifecycle", keys["bank"], body={"events": ["A"]}, **route).status == 200
    assert call(api, "GET", "/api/apps/bank/lifecycle", keys["shop"], **route).status == 403
    assert call(api, "GET", "/api/apps/bank/lifecycle", keys["bank"], **route).status == 200


def test_queue_stats_for_any_key_and_the_load_test_route_for_admins(api: Api, keys: dict[str, str]) -> None:
    assert call(api, "GET", "/api/q/stats", keys["shop"]).status == 200
    assert call(api, "GET", "/api/create_event", keys["shop"], query={"count": "1"}).status == 403
    assert call(api, "GET", "/api/create_event", keys["admin"], query={"count": "1"}).status == 202


def test_test_socket_pushes_only_to_the_keys_apps(api: Api, keys: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    table = settings().connections_table
    live.subscribe(table, "c-shop", live.Subscription("shop", "m1"))
    live.subscribe(table, "c-bank", live.Subscription("bank", "m1"))
    pushed = call(api, "GET", "/api/test_socket", keys["shop"], query={"message_id": "m1"})
    assert pushed.status == 200 and pushed.body["delivered"] == 1 and set(fake.frames) == {"c-shop"}
    assert call(api, "GET", "/api/test_socket", keys["shop"], query={"message_id": "m1", "app_id": "bank"}).status == 403


# --- websocket -------------------------------------------------------------------------------------

@pytest.fixture
def ws(auth_on: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, FakeConnections]:
    fake = FakeConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    return load_function("websocket"), fake


def connect_event(connection_id: str, key: str | None) -> dict[str, Any]:
    event = ws_event("websocket_connect.json", connection_id)
    if key is not None:
        event["queryStringParameters"] = {"api_key": key}
    return event


def test_websocket_connect_wants_a_valid_key(ws: tuple[Any, FakeConnections], keys: dict[str, str],
                                             lambda_context: Any) -> None:
    handler, _ = ws
    assert handler.lambda_handler(connect_event("c1", None), lambda_context) == {"statusCode": 401}
    assert handler.lambda_handler(connect_event("c1", "mk_nope"), lambda_context) == {"statusCode": 401}
    assert live.connection_rows(settings().connections_table, "c1") == []
    assert handler.lambda_handler(connect_event("c1", keys["shop"]), lambda_context) == {"statusCode": 200}
    (row,) = live.connection_rows(settings().connections_table, "c1")
    assert row["apps"] == ["shop"] and row["admin"] is False and "api_key" not in json.dumps(row, default=str)


def test_websocket_subscribe_is_scoped_to_the_connections_key(ws: tuple[Any, FakeConnections], keys: dict[str, str],
                                                              lambda_context: Any) -> None:
    handler, fake = ws
    put_lifecycle(settings().apps_table, "shop", Lifecycle(("CREATED",), 0))
    handler.lambda_handler(connect_event("c1", keys["shop"]), lambda_context)
    for app_id in ("bank", "shop"):
        handler.lambda_handler(ws_event("websocket_subscribe.json", "c1", {"action": "subscribe", "app_id": app_id}),
                               lambda_context)
    denied, allowed = fake.frames["c1"]
    assert (denied["type"], denied["code"]) == ("error", "FORBIDDEN") and allowed["type"] == "subscribed"
    subs = [r["sk"] for r in live.connection_rows(settings().connections_table, "c1") if r["sk"] != "conn"]
    assert subs == ["app#shop"]
    # a connection $connect never stored (or already cleaned up) may subscribe to nothing
    handler.lambda_handler(ws_event("websocket_subscribe.json", "ghost", {"action": "subscribe", "app_id": "shop"}),
                           lambda_context)
    assert fake.frames["ghost"][0]["code"] == "FORBIDDEN"


# --- mars keys (deployed form: --stack-outputs) ----------------------------------------------------

def test_mars_keys_against_a_deployed_stack_registers_the_key_in_the_usage_plan(
        auth_on: Any, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from mars import cli

    apigw = boto3.client("apigateway", region_name="us-east-1")
    api_id = apigw.create_rest_api(name="mars")["id"]
    plan = apigw.create_usage_plan(name="mars", apiStages=[])["id"]
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps([{"OutputKey": "KeysTableName", "OutputValue": settings().keys_table},
                                   {"OutputKey": "UsagePlanId", "OutputValue": plan},
                                   {"OutputKey": "ApiUrl", "OutputValue": f"https://{api_id}.example/dev/"}]))
    assert cli.main(["keys", "create", "--app", "shop", "--note", "ci", "--stack-outputs", str(outputs)]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert auth.KEY_RE.fullmatch(key)
    registered = apigw.get_api_keys(includeValues=True)["items"]
    key_id = key.split("_")[1]
    assert [k["value"] for k in registered] == [auth.usage_key_value(key_id)]  # never the key itself
    assert [k["id"] for k in apigw.get_usage_plan_keys(usagePlanId=plan)["items"]] == [registered[0]["id"]]
    assert cli.main(["keys", "list", "--json", "--stack-outputs", str(outputs)]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["apps"] == ["shop"] and listed["revoked_at"] is None
    assert cli.main(["keys", "revoke", listed["key_id"], "--stack-outputs", str(outputs)]) == 0
    assert apigw.get_api_keys()["items"][0]["enabled"] is False
    assert cli.main(["keys", "revoke", "zzzzzzzz", "--stack-outputs", str(outputs)]) == 1
    assert cli.main(["keys", "create", "--stack-outputs", str(outputs)]) == 2  # no app, no --admin
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    assert cli.main(["keys", "list", "--stack-outputs", str(bad)]) == 2
    assert "is not JSON" in capsys.readouterr().err
