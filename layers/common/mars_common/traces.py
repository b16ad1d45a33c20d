"""A message's timeline as an OpenTelemetry trace, in OTLP/JSON (the encoding of OTLP/HTTP's JSON
body: ids in hex, times as strings of Unix nanoseconds, enums as numbers).

- The trace id is a hash of (app, message): the same message gives the same trace every time, so a
  tracing backend that receives it twice keeps one trace.
- A root span covers the message from its first event to its last; its attributes carry the status,
  the missing steps and the event count; its status is ERROR when the message is stuck, OK when
  complete.
- Each event is a child span from the previous event to it (the step's duration), named after the
  event, with its meta as attributes and span events for what the lifecycle did not expect: a step
  outside the lifecycle (`unexpected`) and one created before an earlier step's first event (`out_of_order`:
  it arrived before its predecessor; timeline.event_flags, the one definition the timeline uses too).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from .store import MAX_PAGE_LIMIT, decode_event_cursor, read_timeline
from .timeline import COMPLETE, FAILED, STUCK, Lifecycle, event_flags

MAX_SPANS = 10_000  # child spans in one answer; the rest are counted in mars.spans_dropped
SPAN_KIND_INTERNAL = 1
STATUS_OK, STATUS_ERROR = 1, 2


def trace_id(app_id: str, message_id: str) -> str:
    return hashlib.sha256(f"mars\0{app_id}\0{message_id}".encode()).hexdigest()[:32]


def span_id(trace: str, key: str) -> str:
    return hashlib.sha256(f"{trace}\0{key}".encode()).hexdigest()[:16]


def nanos(timestamp: str) -> str:
    """Unix nanoseconds of an RFC 3339 time, exactly (no float rounding)."""
    dt = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    whole = int(dt.replace(microsecond=0).timestamp())
    return str(whole * 1_000_000_000 + dt.microsecond * 1_000)


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # OTLP/JSON writes 64-bit integers as strings
    if isinstance(value, list):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def attributes(values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in values.items() if value is not None]


def timeline_trace(timeline: dict[str, Any], events: list[dict[str, Any]], lifecycle: Lifecycle | None,
                   event_count: int) -> dict[str, Any]:
    """The OTLP/JSON `TracesData` of one app's timeline; `events` are its events in order (at most
    MAX_SPANS of them), `event_count` the total."""
    app_id, message_id = timeline["app_id"], timeline["message_id"]
    trace = trace_id(app_id, message_id)
    root = span_id(trace, "root")
    status = timeline.get("status")
    missing = list(timeline.get("missing") or [])
    root_status: dict[str, Any] = {}
    if status == COMPLETE:
        root_status = {"code": STATUS_OK}
    elif status == STUCK:
        root_status = {"code": STATUS_ERROR, "message": "stuck; missing " + ", ".join(missing)}
    elif status == FAILED:
        root_status = {"code": STATUS_ERROR, "message": "failed"}
    spans: list[dict[str, Any]] = [{
        "traceId": trace, "spanId": root, "name": f"message {message_id}", "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": nanos(timeline["first_seen"]), "endTimeUnixNano": nanos(timeline["last_seen"]),
        "attributes": attributes({"messaging.message.id": message_id, "mars.app_id": app_id, "mars.status": status,
                                  "mars.missing": missing, "mars.event_count": event_count,
                                  "mars.spans_dropped": max(0, event_count - len(events)) or None}),
        "status": root_status,
    }]
    previous = timeline["first_seen"]
    for event, flags in zip(events, event_flags(events, lifecycle), strict=True):
        at = nanos(event["created_at"])
        spans.append({
            "traceId": trace, "spanId": span_id(trace, event["event_id"]), "parentSpanId": root,
            "name": event["event"], "kind": SPAN_KIND_INTERNAL,
            "startTimeUnixNano": min(nanos(previous), at, key=int), "endTimeUnixNano": at,
            "attributes": attributes({**(event.get("meta") or {}), "mars.event_id": event["event_id"],
                                      "mars.received_at": event.get("received_at")}),
            "events": [{"timeUnixNano": at, "name": flag, "attributes": attributes({"mars.event": event["event"]})}
                       for flag in flags],
            "status": {},
        })
        previous = event["created_at"]
    return {"resourceSpans": [{
        "resource": {"attributes": attributes({"service.name": "mars", "mars.app_id": app_id})},
        "scopeSpans": [{"scope": {"name": "mars"}, "spans": spans}],
    }]}


def read_trace(messages_table: str, events_table: str, app_id: str, message_id: str,
               lifecycle: Lifecycle | None) -> dict[str, Any] | None:
    """The trace of one app's timeline as stored now (None when it has none), read the way the API reads
    a timeline: a long one page by page, up to MAX_SPANS events."""
    timeline = read_timeline(messages_table, events_table, app_id, message_id, lifecycle, limit=MAX_PAGE_LIMIT)
    if timeline is None:
        return None
    events = list(timeline["events"])
    cursor = timeline.get("cursor")
    while cursor and len(events) < MAX_SPANS:
        page = read_timeline(messages_table, events_table, app_id, message_id, lifecycle,
                             limit=min(MAX_PAGE_LIMIT, MAX_SPANS - len(events)),
                             cursor=decode_event_cursor(cursor, app_id, message_id))
        events.extend(page["events"] if page else [])
        cursor = page.get("cursor") if page else None
    return timeline_trace(timeline, events[:MAX_SPANS], lifecycle, int(timeline["event_count"]))
