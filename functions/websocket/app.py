"""WebSocketFunction: every route of the websocket API ($connect, $disconnect, subscribe,
unsubscribe, ping, $default). Replies go through @connections, like every other push."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import auth, live
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import ValidationError
from mars_common.origins import is_own_origin
from mars_common.store import event_count, get_items, get_lifecycle, is_paged, to_timeline

logger = Logger(service="mars-websocket")
metrics, tracer = m.for_service("mars-websocket")
OK = {"statusCode": 200}


def _reply(connection_id: str, frame: dict[str, Any]) -> None:
    delivered = live.post(settings().websocket_management_url, connection_id, frame)
    m.count(metrics, m.WEBSOCKET_PUSHES if delivered else m.GONE_CONNECTIONS)


def _error(connection_id: str, code: str, message: str, details: list[dict[str, Any]] | None = None,
           action: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message, "details": details or []}
    m.count_by(metrics, m.WEBSOCKET_ERRORS, "reason", code)
    if action:
        frame["action"] = action
    _reply(connection_id, frame)
    return OK


def _body(event: dict[str, Any]) -> dict[str, Any] | None:
    try:
        body = json.loads(event.get("body") or "")
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return body if isinstance(body, dict) else None


def _origin(event: dict[str, Any]) -> str | None:
    for name, value in (event.get("headers") or {}).items():
        if str(name).lower() == "origin":
            return str(value)
    return None


def connect(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    """Browsers cannot set headers on a websocket: the key comes as `?api_key=` (DESIGN §2). A browser
    sends its page's `Origin`: only the dashboard's own (DASHBOARD_URL) may connect, before the key is
    read (with auth off nothing else would stop another site's page). Clients that are not browsers
    (`mars tail`, SDKs) send no Origin."""
    cfg = settings()
    origin = _origin(event)
    if origin is not None and not is_own_origin(origin, cfg.dashboard_url):
        logger.info("connection refused", extra={"connection_id": connection_id, "reason": "CROSS_SITE",
                                                  "origin": origin[:100]})
        m.count_by(metrics, m.CONNECTIONS_REFUSED, "reason", "CROSS_SITE")
        return {"statusCode": 403}
    key = (event.get("queryStringParameters") or {}).get("api_key")
    try:
        principal = auth.authenticate(cfg.keys_table, cfg.auth_required, key)
    except auth.AuthError as err:
        logger.info("connection refused", extra={"connection_id": connection_id, "reason": err.code})
        m.count_by(metrics, m.CONNECTIONS_REFUSED, "reason", err.code)
        return {"statusCode": err.status}  # API Gateway refuses the handshake with this status
    identity = event.get("requestContext", {}).get("identity", {})
    # The key's hash (never the key) is kept, so every subscribe can ask whether it was revoked since.
    live.put_connection(cfg.connections_table, connection_id,
                        source_ip=identity.get("sourceIp") or "", user_agent=(identity.get("userAgent") or "")[:256],
                        key_id=principal.key_id, apps=sorted(principal.apps), admin=principal.admin,
                        **({"key_hash": auth.key_hash(key)} if cfg.auth_required and key else {}))
    m.count(metrics, m.CONNECTIONS_OPENED)
    return OK


def _connection_principal(connection_id: str) -> tuple[auth.Principal | None, bool]:
    """(principal, revoked): the key stored at $connect, looked up again (cached for auth.CACHE_SECONDS),
    so a key revoked since the socket opened stops within that window. (None, False): an unknown connection."""
    cfg = settings()
    if not cfg.auth_required:
        return auth.ANONYMOUS_ADMIN, False
    row = live.get_connection(cfg.connections_table, connection_id)
    if row is None:
        return None, False
    digest = row.get("key_hash")
    principal = auth.lookup_hash(cfg.keys_table, str(digest)) if digest else None
    return principal, principal is None  # a row without a key hash predates the check: treated as revoked


def _revoked(connection_id: str) -> dict[str, Any]:
    """The key of this socket was revoked: its subscriptions go (no more pushes), the client is told, the socket closed."""
    cfg = settings()
    removed = live.delete_subscriptions(cfg.connections_table, connection_id)
    logger.info("revoked key's connection closed", extra={"connection_id": connection_id, "subscriptions_removed": removed})
    _error(connection_id, "UNAUTHORIZED", "this connection's API key is not valid any more (revoked); "
           "its subscriptions were removed: reconnect with a valid key", action="subscribe")
    live.close(cfg.websocket_management_url, connection_id)
    return OK


def disconnect(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    removed = live.delete_connection(settings().connections_table, connection_id)
    logger.info("disconnected", extra={"connection_id": connection_id, "rows_removed": removed,
                                       "status": event.get("requestContext", {}).get("disconnectStatusCode")})
    return OK


def subscribe(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    cfg = settings()
    sub = _subscription(event, connection_id, "subscribe")
    if sub is None:
        return OK
    principal, revoked = _connection_principal(connection_id)
    if revoked:
        return _revoked(connection_id)
    if principal is None or not principal.can(sub.app_id):
        return _error(connection_id, "FORBIDDEN", f"this connection's API key may not read app {sub.app_id!r}",
                      [{"field": "app_id", "message": "is not one of the key's apps"}], action="subscribe")
    try:
        live.subscribe(cfg.connections_table, connection_id, sub)
    except live.TooManySubscriptionsError as exc:
        return _error(connection_id, "TOO_MANY_SUBSCRIPTIONS", str(exc), action="subscribe")
    # Stored first, then acknowledged: a client may rely on every change after this frame.
    _reply(connection_id, {"type": "subscribed", **sub.as_dict()})
    if sub.message_id is not None:
        items = get_items(cfg.messages_table, sub.message_id, sub.app_id)
        lifecycle = get_lifecycle(cfg.apps_table, sub.app_id)
        item = items[0] if items else {"app_id": sub.app_id, "message_id": sub.message_id}
        frame = live.timeline_frame(to_timeline(item, lifecycle))
        if is_paged(item):  # a long timeline: its summary; the client pages its events from the API
            frame["event_count"] = event_count(item)
            frame["truncated"] = {"events_total": frame["event_count"], "events_sent": 0}
        _reply(connection_id, frame)
    return OK


def unsubscribe(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    sub = _subscription(event, connection_id, "unsubscribe")
    if sub is None:
        return OK
    existed = live.unsubscribe(settings().connections_table, connection_id, sub)
    _reply(connection_id, {"type": "unsubscribed", **sub.as_dict(), "existed": existed})
    return OK


def ping(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    _reply(connection_id, {"type": "pong"})
    return OK


def default(event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    """Anything the route selection did not match: say precisely what was wrong."""
    if event.get("isBase64Encoded"):  # API Gateway routes every binary frame here, whatever it holds
        return _error(connection_id, "BINARY_FRAME", "send actions as text frames (UTF-8 JSON), not binary")
    body = _body(event)
    if body is None:
        return _error(connection_id, "INVALID_JSON",
                      'send a JSON object (nested at most a few hundred levels) such as '
                      '{"action": "subscribe", "app_id": "..."}')
    action = body.get("action")
    if action is None:
        return _error(connection_id, "MISSING_ACTION", "the frame has no action",
                      [{"field": "action", "message": "is required: subscribe, unsubscribe or ping"}])
    return _error(connection_id, "UNKNOWN_ACTION", f"unknown action {str(action)[:64]!r}",
                  [{"field": "action", "message": "must be subscribe, unsubscribe or ping"}])


def _subscription(event: dict[str, Any], connection_id: str, action: str) -> live.Subscription | None:
    body = _body(event)
    if body is None:
        _error(connection_id, "INVALID_JSON", "the frame is not a JSON object", action=action)
        return None
    try:
        return live.parse_subscription(body)
    except ValidationError as err:
        _error(connection_id, "VALIDATION_ERROR", "the request is not valid", [e.as_dict() for e in err.errors],
               action=action)
        return None


ROUTES: dict[str, Callable[[dict[str, Any], str], dict[str, Any]]] = {
    "$connect": connect, "$disconnect": disconnect, "subscribe": subscribe, "unsubscribe": unsubscribe,
    "ping": ping, "$default": default,
}


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    ctx = event.get("requestContext", {})
    route, connection_id = ctx.get("routeKey", ""), ctx.get("connectionId", "")
    handler = ROUTES.get(route)
    if handler is None:
        logger.error("no handler for route", extra={"route": route})
        return {"statusCode": 500}
    return handler(event, connection_id)
