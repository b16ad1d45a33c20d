"""MessagesTable and AppsTable access: the idempotent upsert and every read pattern.

Data model (docs/ARCHITECTURE.md): one item per message, key (app_id, message_id); each event is a
top-level attribute `e:<event_id>` written with if_not_exists, so a write is idempotent and
order-independent in a single UpdateItem, whatever arrived before it.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from . import aws
from .events import Event, format_ts, utc_now
from .timeline import Lifecycle, summarize

EVENT_PREFIX = "e:"
BY_MESSAGE_INDEX = "ByMessage"
BY_APP_INDEX = "ByAppUpdated"
MAX_EVENTS_PER_UPDATE = 50  # keeps an UpdateExpression far below DynamoDB's 4 KB limit
STUCK_AT = "stuck_at"  # set by the stuck sweep (an alert was sent), removed by the next event


@dataclass(frozen=True)
class UpsertResult:
    stored: int
    duplicates: int


def upsert_message(table_name: str, app_id: str, message_id: str, events: list[Event],
                   retention_days: int) -> UpsertResult:
    """Adds events to a message's item; an event id already present is left as it was."""
    unique: dict[str, Event] = {}
    for ev in events:
        unique.setdefault(ev.event_id, ev)
    batch = list(unique.values())
    duplicates = len(events) - len(batch)
    stored = 0
    for start in range(0, len(batch), MAX_EVENTS_PER_UPDATE):
        chunk = batch[start:start + MAX_EVENTS_PER_UPDATE]
        names = {"#u": "updated_at", "#x": "expires_at"}
        values: dict[str, Any] = {":u": utc_now(), ":x": int(time.time()) + retention_days * 86400}
        sets = ["#u = :u", "#x = :x"]
        for i, ev in enumerate(chunk):
            names[f"#e{i}"] = EVENT_PREFIX + ev.event_id
            entry: dict[str, Any] = {"event": ev.event, "created_at": ev.created_at, "received_at": ev.received_at}
            if ev.meta:
                entry["meta"] = ev.meta
            values[f":e{i}"] = entry
            sets.append(f"#e{i} = if_not_exists(#e{i}, :e{i})")
        names["#s"] = STUCK_AT  # a new event ends a stuck spell: the next one alerts again
        resp = aws.table(table_name).update_item(
            Key={"app_id": app_id, "message_id": message_id},
            UpdateExpression="SET " + ", ".join(sets) + " REMOVE #s",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_OLD",
        )
        # An event attribute already in the old item was a duplicate. (ALL_OLD, not UPDATED_OLD: emulators
        # differ on whether an if_not_exists that kept the old value counts as "updated".)
        before = resp.get("Attributes", {})
        old = sum(1 for i in range(len(chunk)) if names[f"#e{i}"] in before)
        duplicates += old
        stored += len(chunk) - old
    return UpsertResult(stored=stored, duplicates=duplicates)


def item_events(item: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of an item, sorted by created_at (ties: received_at, then id, so order is stable)."""
    out = []
    for key, value in item.items():
        if key.startswith(EVENT_PREFIX):
            ev = {"event": value["event"], "created_at": value["created_at"],
                  "received_at": value.get("received_at"), "event_id": key[len(EVENT_PREFIX):]}
            if value.get("meta"):
                ev["meta"] = dict(value["meta"])
            out.append(ev)
    out.sort(key=lambda e: (e["created_at"], e["received_at"] or "", e["event_id"]))
    return out


def to_timeline(item: dict[str, Any], lifecycle: Lifecycle | None, *, with_events: bool = True,
                now: datetime | None = None) -> dict[str, Any]:
    events = item_events(item)
    summary = summarize(events, lifecycle, item.get("updated_at"), now or datetime.now(UTC))
    out: dict[str, Any] = {"app_id": item["app_id"], "message_id": item["message_id"]}
    if with_events:
        out["events"] = events
    out.update(summary)
    out["updated_at"] = item.get("updated_at")
    return out


def get_items(table_name: str, message_id: str, app_id: str | None = None, *,
              apps: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """The items of a message id: `app_id`'s; else those of `apps` (a scoped key's); else every
    app's (found through the KEYS_ONLY ByMessage index).

    With `apps`, no other app's item or key is read, so neither the answer nor its timing depends
    on another app having used the id (docs/SECURITY.md: no existence oracle)."""
    table = aws.table(table_name)
    if app_id is not None:
        item = table.get_item(Key={"app_id": app_id, "message_id": message_id}).get("Item")
        return [item] if item else []
    if apps is not None:
        keys = [{"app_id": a, "message_id": message_id} for a in sorted(set(apps))]
    else:
        keys = [{"app_id": i["app_id"], "message_id": i["message_id"]}
                for i in aws.items(table_name, IndexName=BY_MESSAGE_INDEX,
                                   KeyConditionExpression=Key("message_id").eq(message_id))]
    items: list[dict[str, Any]] = []
    for start in range(0, len(keys), 100):
        request = {table_name: {"Keys": keys[start:start + 100], "ConsistentRead": True}}
        while request:
            got = table.meta.client.batch_get_item(RequestItems=request)
            items.extend(got.get("Responses", {}).get(table_name, []))
            request = got.get("UnprocessedKeys") or {}
    items.sort(key=lambda i: i["app_id"])
    return items


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, app_id: str) -> dict[str, Any]:
    """Raises ValueError on a cursor that was not made by encode_cursor for this app."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ValueError("cursor is not valid") from exc
    if (not isinstance(key, dict) or set(key) != {"app_id", "message_id", "updated_at"}
            or key.get("app_id") != app_id or not all(isinstance(v, str) for v in key.values())):
        raise ValueError("cursor is not valid for this app")
    return key


def list_messages(table_name: str, app_id: str, lifecycle: Lifecycle | None, *, status: str | None,
                  limit: int, cursor: dict[str, Any] | None, max_pages: int = 10) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Newest first. A status filter is applied after the read (status depends on time), so
    up to `max_pages` index pages are read to fill a page; the cursor resumes exactly after the last item."""
    table = aws.table(table_name)
    out: list[dict[str, Any]] = []
    start = cursor
    now = datetime.now(UTC)
    for _ in range(max_pages):
        kwargs: dict[str, Any] = {"IndexName": BY_APP_INDEX, "KeyConditionExpression": Key("app_id").eq(app_id),
                                  "ScanIndexForward": False, "Limit": limit}
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = table.query(**kwargs)
        for item in resp.get("Items", []):
            summary = to_timeline(item, lifecycle, with_events=False, now=now)
            if status is None or summary["status"] == status:
                out.append(summary)
                if len(out) == limit:
                    last = {"app_id": item["app_id"], "message_id": item["message_id"],
                            "updated_at": item["updated_at"]}
                    return out, last
        start = resp.get("LastEvaluatedKey")
        if not start:
            return out, None
    return out, start


def get_lifecycle(table_name: str, app_id: str) -> Lifecycle | None:
    item = aws.table(table_name).get_item(Key={"app_id": app_id}).get("Item")
    return _lifecycle(item) if item else None


def _lifecycle(item: dict[str, Any]) -> Lifecycle:
    return Lifecycle(events=tuple(item.get("events", [])), sla_seconds=int(item.get("sla_seconds", 0)),
                     updated_at=item.get("updated_at"))


def put_lifecycle(table_name: str, app_id: str, lifecycle: Lifecycle) -> dict[str, Any]:
    item = {"app_id": app_id, "events": list(lifecycle.events), "sla_seconds": lifecycle.sla_seconds,
            "updated_at": utc_now()}
    aws.table(table_name).put_item(Item=item)
    return item


def stuck_candidates(table_name: str, app_id: str, lifecycle: Lifecycle, now: datetime,
                     lookback_seconds: int) -> list[dict[str, Any]]:
    """Messages of an app that are stuck now and not yet marked: last written between
    `lookback` before the SLA cut-off and the cut-off (older ones were swept by earlier runs)."""
    if lifecycle.sla_seconds <= 0 or not lifecycle.events:
        return []
    cutoff = now.timestamp() - lifecycle.sla_seconds
    low = format_ts(datetime.fromtimestamp(cutoff - lookback_seconds, UTC))
    high = format_ts(datetime.fromtimestamp(cutoff, UTC))
    written = aws.items(table_name, IndexName=BY_APP_INDEX,
                        KeyConditionExpression=Key("app_id").eq(app_id) & Key("updated_at").between(low, high))
    return [item for item in written if STUCK_AT not in item
            and to_timeline(item, lifecycle, with_events=False, now=now)["status"] == "stuck"]


def mark_stuck(table_name: str, item: dict[str, Any], now: str) -> bool:
    """Marks a message stuck unless it was marked or written since it was read (then False)."""
    try:
        aws.table(table_name).update_item(
            Key={"app_id": item["app_id"], "message_id": item["message_id"]},
            UpdateExpression="SET #s = :now",
            ConditionExpression="attribute_not_exists(#s) AND #u = :u",
            ExpressionAttributeNames={"#s": STUCK_AT, "#u": "updated_at"},
            ExpressionAttributeValues={":now": now, ":u": item["updated_at"]},
        )
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            return False
        raise


def lifecycles(table_name: str) -> dict[str, Lifecycle]:
    """Every app's lifecycle (AppsTable holds one small item per app)."""
    return {item["app_id"]: _lifecycle(item) for item in aws.items(table_name, "scan")}
