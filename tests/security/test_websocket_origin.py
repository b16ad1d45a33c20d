"""Issue 12, item 4: the websocket refuses a browser whose page is not the dashboard (a foreign
`Origin`), before the key is read; clients that are not browsers send no Origin and connect as before."""

from __future__ import annotations

from typing import Any

import pytest
from mars_common import config, live
from mars_common.origins import is_own_origin

from tests.conftest import load_function
from tests.unit.test_live import FakeConnections, ws_event

DASHBOARD = "https://abc123.execute-api.us-east-1.amazonaws.com/dev/"


@pytest.mark.parametrize(("origin", "own"), [
    ("https://abc123.execute-api.us-east-1.amazonaws.com", True),
    ("https://abc123.execute-api.us-east-1.amazonaws.com:443", True),
    ("https://evil.example", False),
    ("http://abc123.execute-api.us-east-1.amazonaws.com", False),  # another scheme is another origin
    ("https://abc123.execute-api.us-east-1.amazonaws.com.evil.example", False),
    ("null", False),
    ("file://", False),
    ("", False),
    ("https://[::1", False),
])
def test_only_the_dashboards_origin_is_its_own(origin: str, own: bool) -> None:
    assert is_own_origin(origin, DASHBOARD) is own


def test_a_local_dashboard_is_its_own_under_every_loopback_name_with_its_port() -> None:
    local = "http://127.0.0.1:4000/"
    for origin in ("http://127.0.0.1:4000", "http://localhost:4000", "http://[::1]:4000", "http://mars.localhost:4000"):
        assert is_own_origin(origin, local), origin
    for origin in ("http://127.0.0.1:4001", "http://rebind.evil.example:4000", "https://localhost:4000"):
        assert not is_own_origin(origin, local), origin
    assert not is_own_origin("http://127.0.0.1:4000", "")  # no dashboard configured: no browser may connect


@pytest.fixture
def ws(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DASHBOARD_URL", DASHBOARD)
    config.settings.cache_clear()
    monkeypatch.setattr(live, "management_client", lambda endpoint: FakeConnections())
    return load_function("websocket")


def connect(handler: Any, context: Any, connection_id: str, origin: str | None) -> Any:
    event = ws_event("websocket_connect.json", connection_id)
    if origin is not None:
        event["headers"]["Origin"] = origin
    return handler.lambda_handler(event, context)


def test_connect_refuses_a_foreign_origin_and_stores_nothing(ws: Any, lambda_context: Any) -> None:
    for n, origin in enumerate(["https://evil.example", "null", "http://abc123.execute-api.us-east-1.amazonaws.com"]):
        assert connect(ws, lambda_context, f"bad{n}", origin) == {"statusCode": 403}, origin
        assert live.connection_rows(config.settings().connections_table, f"bad{n}") == []


def test_connect_accepts_the_dashboard_and_clients_without_an_origin(ws: Any, lambda_context: Any) -> None:
    assert connect(ws, lambda_context, "page", "https://abc123.execute-api.us-east-1.amazonaws.com") == {"statusCode": 200}
    assert connect(ws, lambda_context, "cli", None) == {"statusCode": 200}
    assert len(live.connection_rows(config.settings().connections_table, "cli")) == 1
