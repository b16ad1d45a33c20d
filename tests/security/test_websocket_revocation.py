"""Issue 12, item 6: a key revoked while its websocket is open stops subscribing within the key cache
window, and the socket loses its subscriptions (no more pushes) and is closed."""

from __future__ import annotations

from typing import Any

import pytest
from mars_common import auth, config, live
from mars_common.config import settings

from tests.conftest import load_function
from tests.unit.test_live import FakeConnections, ws_event


class ClosableConnections(FakeConnections):
    def __init__(self) -> None:
        super().__init__()
        self.closed: list[str] = []

    def delete_connection(self, ConnectionId: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.closed.append(ConnectionId)
        return {}


@pytest.fixture
def ws(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ClosableConnections]:
    monkeypatch.setenv("AUTH_REQUIRED", "true")
    config.settings.cache_clear()
    auth.clear_cache()
    fake = ClosableConnections()
    monkeypatch.setattr(live, "management_client", lambda endpoint: fake)
    return load_function("websocket"), fake


def subscribe(handler: Any, context: Any, connection_id: str, app_id: str) -> None:
    handler.lambda_handler(ws_event("websocket_subscribe.json", connection_id,
                                    {"action": "subscribe", "app_id": app_id}), context)


def test_a_revoked_keys_socket_cannot_subscribe_and_loses_its_subscriptions(
        ws: tuple[Any, ClosableConnections], lambda_context: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    handler, fake = ws
    table = settings().keys_table
    key_id, key = auth.create_key(table, ["shop", "shop2"])
    connect = ws_event("websocket_connect.json", "c1")
    connect["queryStringParameters"] = {"api_key": key}
    assert handler.lambda_handler(connect, lambda_context) == {"statusCode": 200}
    (row,) = live.connection_rows(settings().connections_table, "c1")
    assert row["key_hash"] == auth.key_hash(key) and key not in str(row)  # the hash, never the key
    subscribe(handler, lambda_context, "c1", "shop")
    assert fake.types("c1") == ["subscribed"]

    assert auth.revoke_key(table, key_id)
    # within the cache window (auth.CACHE_SECONDS) the lookup may still answer from the cache; past it:
    clock = [auth.time.monotonic() + auth.CACHE_SECONDS + 1]
    monkeypatch.setattr(auth.time, "monotonic", lambda: clock[0])
    subscribe(handler, lambda_context, "c1", "shop2")
    frame = fake.frames["c1"][-1]
    assert (frame["type"], frame["code"]) == ("error", "UNAUTHORIZED"), frame
    subs = [r["sk"] for r in live.connection_rows(settings().connections_table, "c1") if r["sk"] != "conn"]
    assert subs == [], "the revoked key's subscriptions (pushes) must go"
    assert live.subscribers(settings().connections_table, "shop", "m1") == set()
    assert fake.closed == ["c1"]


def test_mars_keys_revoke_removes_the_subscriptions_of_the_keys_open_sockets(
        ws: tuple[Any, ClosableConnections], lambda_context: Any, tmp_path: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Pushes stop at once, not at the socket's next subscribe: `mars keys revoke` deletes them."""
    import json

    from mars import cli

    handler, _fake = ws
    keys_table, connections = settings().keys_table, settings().connections_table
    revoked_id, revoked = auth.create_key(keys_table, ["shop"])
    _, other = auth.create_key(keys_table, ["shop"])
    for connection_id, key in (("c1", revoked), ("c2", revoked), ("c3", other)):
        connect = ws_event("websocket_connect.json", connection_id)
        connect["queryStringParameters"] = {"api_key": key}
        handler.lambda_handler(connect, lambda_context)
        subscribe(handler, lambda_context, connection_id, "shop")
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"KeysTableName": keys_table, "ConnectionsTableName": connections}))
    assert cli.main(["keys", "revoke", revoked_id, "--stack-outputs", str(outputs)]) == 0
    assert "removed 2 subscription(s) of 2 open websocket(s)" in capsys.readouterr().err
    assert live.subscribers(connections, "shop", "m1") == {"c3"}
