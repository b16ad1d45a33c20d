"""Live timelines: websocket subscriptions (ConnectionsTable), timeline frames, and pushing them.

ConnectionsTable (template.yaml): key (connection_id, sk). sk "conn" is the connection itself; a
subscription is sk "app#<app_id>" or "msg#<app_id>#<message_id>" with topic "app#<app_id>" or
"msg#<message_id>", and the ByTopic index finds a change's subscribers with two queries. Every row
carries expires_at (TTL) so a connection whose $disconnect never ran disappears on its own.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from . import aws
from .events import APP_ID_RE, MAX_MESSAGE_ID, FieldError, ValidationError, check_text

CONNECTION_SK = "conn"
BY_TOPIC_INDEX = "ByTopic"
# API Gateway closes a connection after 2 hours; rows outlive that a little, then TTL removes them.
CONNECTION_TTL_SECONDS = 3 * 3600
MAX_SUBSCRIPTIONS = 100
# API Gateway's limit for one message (post_to_connection Data); frames above it are trimmed.
MAX_MESSAGE_BYTES = 128 * 1024
_FANOUT = ThreadPoolExecutor(max_workers=8, thread_name_prefix="push")


@dataclass(frozen=True)
class Subscription:
    app_id: str
    message_id: str | None = None

    @property
    def sk(self) -> str:
        return f"app#{self.app_id}" if self.message_id is None else f"msg#{self.app_id}#{self.message_id}"

    @property
    def topic(self) -> str:
        return f"app#{self.app_id}" if self.message_id is None else f"msg#{self.message_id}"

    def as_dict(self) -> dict[str, str]:
        out = {"app_id": self.app_id}
        if self.message_id is not None:
            out["message_id"] = self.message_id
        return out


def parse_subscription(body: dict[str, Any]) -> Subscription:
    """`{"action", "app_id", "message_id"?}` → Subscription; every problem named, unknown fields rejected."""
    errors: list[FieldError] = []
    for key in sorted(set(body) - {"action", "app_id", "message_id"}):
        errors.append(FieldError(key, "is not a known field (allowed: action, app_id, message_id)"))
    app_id = body.get("app_id")
    if not isinstance(app_id, str) or not APP_ID_RE.fullmatch(app_id):
        errors.append(FieldError("app_id", "is required: 1-128 characters of letters, digits and . _ : -"))
    message_id = None
    if body.get("message_id") is not None:
        message_id = check_text(body, "message_id", MAX_MESSAGE_ID, errors)
    if errors:
        raise ValidationError(errors)
    assert isinstance(app_id, str)
    return Subscription(app_id, message_id)


# --- ConnectionsTable -----------------------------------------------------------------------------
def _expires() -> int:
    return int(time.time()) + CONNECTION_TTL_SECONDS


def put_connection(table: str, connection_id: str, **attributes: Any) -> None:
    aws.table(table).put_item(Item={"connection_id": connection_id, "sk": CONNECTION_SK,
                                    "connected_at": int(time.time()), "expires_at": _expires(), **attributes})


def get_connection(table: str, connection_id: str) -> dict[str, Any] | None:
    item: dict[str, Any] | None = aws.table(table).get_item(
        Key={"connection_id": connection_id, "sk": CONNECTION_SK}).get("Item")
    return item


def connection_rows(table: str, connection_id: str) -> list[dict[str, Any]]:
    return list(aws.items(table, KeyConditionExpression=Key("connection_id").eq(connection_id)))


def delete_connection(table: str, connection_id: str) -> int:
    """Removes a connection and all its subscriptions; returns the rows deleted."""
    rows = connection_rows(table, connection_id)
    with aws.table(table).batch_writer() as batch:
        for row in rows:
            batch.delete_item(Key={"connection_id": row["connection_id"], "sk": row["sk"]})
    return len(rows)


def delete_subscriptions(table: str, connection_id: str) -> int:
    """Removes a connection's subscriptions (not the connection row); returns how many."""
    rows = [r for r in connection_rows(table, connection_id) if r["sk"] != CONNECTION_SK]
    with aws.table(table).batch_writer() as batch:
        for row in rows:
            batch.delete_item(Key={"connection_id": row["connection_id"], "sk": row["sk"]})
    return len(rows)


def drop_key_subscriptions(table: str, key_id: str) -> tuple[int, int]:
    """At revocation: removes the subscriptions of every open connection of that key, so nothing is
    pushed to them from now on (their next subscribe is refused too). Returns (connections, subscriptions).
    A Scan, but revocations are rare and the table holds only open connections."""
    connections = [r["connection_id"] for r in aws.items(
        table, "scan", FilterExpression=Attr("sk").eq(CONNECTION_SK) & Attr("key_id").eq(key_id))]
    return len(connections), sum(delete_subscriptions(table, c) for c in connections)


class TooManySubscriptionsError(Exception):
    pass


def subscribe(table: str, connection_id: str, sub: Subscription) -> None:
    existing = [r for r in connection_rows(table, connection_id) if r["sk"] != CONNECTION_SK]
    if len(existing) >= MAX_SUBSCRIPTIONS and sub.sk not in {r["sk"] for r in existing}:
        raise TooManySubscriptionsError(f"a connection holds at most {MAX_SUBSCRIPTIONS} subscriptions")
    item: dict[str, Any] = {"connection_id": connection_id, "sk": sub.sk, "topic": sub.topic,
                            "app_id": sub.app_id, "expires_at": _expires()}
    if sub.message_id is not None:
        item["message_id"] = sub.message_id
    aws.table(table).put_item(Item=item)


def unsubscribe(table: str, connection_id: str, sub: Subscription) -> bool:
    resp = aws.table(table).delete_item(Key={"connection_id": connection_id, "sk": sub.sk}, ReturnValues="ALL_OLD")
    return bool(resp.get("Attributes"))


def _topic_rows(table: str, topic: str, app_id: str | None) -> list[dict[str, Any]]:
    kwargs: dict[str, Any] = {"IndexName": BY_TOPIC_INDEX, "KeyConditionExpression": Key("topic").eq(topic)}
    if app_id is not None:
        kwargs["FilterExpression"] = Attr("app_id").eq(app_id)
    return list(aws.items(table, **kwargs))


def subscribers(table: str, app_id: str, message_id: str) -> set[str]:
    """Connections subscribed to this message, or to every message of its app."""
    return message_subscribers(table, app_id, message_id) | app_subscribers(table, app_id)


def message_subscribers(table: str, app_id: str, message_id: str) -> set[str]:
    return {r["connection_id"] for r in _topic_rows(table, f"msg#{message_id}", app_id)}


def app_subscribers(table: str, app_id: str) -> set[str]:
    return {r["connection_id"] for r in _topic_rows(table, f"app#{app_id}", None)}


def message_subscriptions(table: str, message_id: str, app_id: str | None = None) -> list[dict[str, Any]]:
    """Rows subscribed to one message id (any app, or `app_id`'s)."""
    return _topic_rows(table, f"msg#{message_id}", app_id)


# --- frames ---------------------------------------------------------------------------------------
def timeline_frame(timeline: dict[str, Any], new_event_ids: set[str] | None = None, *,
                   limit: int = MAX_MESSAGE_BYTES) -> dict[str, Any]:
    """A `timeline` frame (DESIGN §2) that fits in one websocket message.

    A frame over the limit keeps its newest events (and every new event it can) and says what it
    left out in `truncated`; the client fetches the rest from GET /api/messages/{id}?app_id=…
    """
    events = list(timeline.get("events", []))
    new_ids = new_event_ids or set()
    frame = {"type": "timeline", **{k: v for k, v in timeline.items() if k != "events"},
             "events": events, "new_events": [e for e in events if e["event_id"] in new_ids]}
    if _size(frame) <= limit:
        return frame
    total = len(events)
    # Halve the kept tail until it fits, then grow back: a few encodes, whatever the timeline's size.
    low, high = 0, total
    while low < high:
        mid = (low + high + 1) // 2
        frame["events"] = events[total - mid:]
        frame["new_events"] = [e for e in frame["events"] if e["event_id"] in new_ids]
        frame["truncated"] = {"events_total": total, "events_sent": mid}
        if _size(frame) <= limit:
            low = mid
        else:
            high = mid - 1
    frame["events"] = events[total - low:] if low else []
    frame["new_events"] = [e for e in frame["events"] if e["event_id"] in new_ids]
    frame["truncated"] = {"events_total": total, "events_sent": low}
    return frame


def _size(frame: dict[str, Any]) -> int:
    return len(encode(frame))


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, default=str).encode()


# --- pushing --------------------------------------------------------------------------------------
def management_client(endpoint: str) -> Any:
    return aws.endpoint_client("apigatewaymanagementapi", endpoint)


def post(endpoint: str, connection_id: str, frame: dict[str, Any]) -> bool:
    """Sends one frame; False when the connection is gone (410), which the caller cleans up."""
    try:
        management_client(endpoint).post_to_connection(ConnectionId=connection_id, Data=encode(frame))
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "GoneException":
            return False
        raise


def close(endpoint: str, connection_id: str) -> bool:
    """Closes a connection through @connections (DELETE); False when it was already gone or the call failed."""
    try:
        management_client(endpoint).delete_connection(ConnectionId=connection_id)
        return True
    except Exception:  # best effort: the subscriptions are already gone, $disconnect cleans the rest
        return False


@dataclass
class PushResult:
    delivered: int = 0
    stale: int = 0
    failed: int = 0


def push(endpoint: str, table: str, connection_ids: set[str], frame: dict[str, Any]) -> PushResult:
    """Sends a frame to many connections at once; a gone connection's rows are deleted (that one
    connection, not the sender's); other failures are counted and logged by the caller."""
    result = PushResult()
    if not connection_ids:
        return result

    def one(connection_id: str) -> str:
        try:
            if post(endpoint, connection_id, frame):
                return "delivered"
            delete_connection(table, connection_id)
            return "stale"
        except Exception:
            return "failed"

    for outcome in _FANOUT.map(one, sorted(connection_ids)):
        setattr(result, outcome, getattr(result, outcome) + 1)
    return result
