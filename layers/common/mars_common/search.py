"""Search filters on an app's messages and the paged export (docs/SEARCH.md).

Both read the MessagesTable's ByAppUpdated index (app_id, updated_at; ALL projection) through
store.list_messages, the one listing mechanism: `from`/`to` bound updated_at in the key condition (only
that range is read); the other filters are a keep() predicate applied to each item read, cheapest first:
- `event` / `missing`: the steps a message has seen — an inline item's events, a paged (long) timeline's
  summary `steps` (or `step_stats`): no extra read;
- `meta.<key>=<value>`: some event's meta[key] == value — an inline item's events; a paged timeline's
  EventsTable pages are read (only when a meta filter is given, 1,000 events a read, stopping at the
  first match), at most META_MAX_EVENTS events per message — beyond that the request is refused (422)
  rather than answered with a guess;
- `alert=firing`: one Query of AlertsTable per message that passed the other filters (key app_id and sk
  beginning with `<message_id>\\x1f`: the message's few records, one per rule), the last filter applied.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from boto3.dynamodb.conditions import Attr, Key

from . import alerts, aws
from .events import MAX_EVENT, MAX_META_KEY, FieldError, ValidationError
from .store import STEP_STATS, decode_event_cursor, is_paged, item_events, read_timeline
from .timeline import Lifecycle

META_PREFIX = "meta."
MAX_META_FILTERS = 5
MAX_META_VALUE = 256
META_KEY_RE = re.compile(rf"^[A-Za-z0-9_.:-]{{1,{MAX_META_KEY}}}$")
META_MAX_EVENTS = 20_000  # a paged message's events a meta filter reads at most (20 reads of 1,000)
FILTER_PARAMS = ("from", "to", "event", "missing", "alert")
ALERT_VALUES = ("firing",)


class TooLongError(Exception):
    """A message holds more events than a meta filter (or an export line set) may read in one request."""


@dataclass(frozen=True)
class Filters:
    frm: str | None = None
    to: str | None = None
    event: str | None = None
    missing: str | None = None
    alert: str | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def needs_keep(self) -> bool:
        return bool(self.event or self.missing or self.alert or self.meta)


def is_filter_param(name: str) -> bool:
    return name in FILTER_PARAMS or name.startswith(META_PREFIX)


def _step(query: dict[str, str], name: str, errors: list[FieldError]) -> str | None:
    value = query.get(name)
    if value is None:
        return None
    if not 0 < len(value) <= MAX_EVENT or not value.isprintable():
        errors.append(FieldError(name, f"must be a step name of 1-{MAX_EVENT} printable characters"))
        return None
    return value


def parse_filters(query: dict[str, str], lifecycle: Lifecycle | None) -> Filters:
    """The filters of a query string; ValidationError names every bad parameter (unknown ones are the caller's)."""
    errors: list[FieldError] = []
    bounds = alerts.parse_bounds(query, errors)
    if bounds.get("from") and bounds.get("to") and str(bounds["from"]) > str(bounds["to"]):
        errors.append(FieldError("from", "must not be after to"))
    event = _step(query, "event", errors)
    missing = _step(query, "missing", errors)
    if missing is not None:
        known = set(lifecycle.events) | set(lifecycle.optional) | set(lifecycle.failure) if lifecycle else set()
        if lifecycle is None or not lifecycle.events:
            errors.append(FieldError("missing", "needs the app's lifecycle (PUT /api/apps/{app}/lifecycle first)"))
        elif missing not in known:
            errors.append(FieldError("missing", f"{missing!r} is not a step of the app's lifecycle"))
    alert = query.get("alert")
    if alert is not None and alert not in ALERT_VALUES:
        errors.append(FieldError("alert", "must be one of " + ", ".join(ALERT_VALUES)))
    meta: dict[str, str] = {}
    for name in sorted(k for k in query if k.startswith(META_PREFIX)):
        key, value = name[len(META_PREFIX):], query[name]
        if not META_KEY_RE.fullmatch(key):
            errors.append(FieldError(name, f"the meta key must be 1-{MAX_META_KEY} of letters, digits and _ . : -"))
        elif not 0 < len(value) <= MAX_META_VALUE or not value.isprintable():
            errors.append(FieldError(name, f"must be 1-{MAX_META_VALUE} printable characters"))
        else:
            meta[key] = value
    if len([k for k in query if k.startswith(META_PREFIX)]) > MAX_META_FILTERS:
        errors.append(FieldError("meta", f"at most {MAX_META_FILTERS} meta.<key> filters"))
    if errors:
        raise ValidationError(errors)
    return Filters(bounds.get("from"), bounds.get("to"), event, missing, alert, meta)


def _steps(item: dict[str, Any]) -> set[str]:
    if is_paged(item):
        return set(item.get("steps") or ()) | set(item.get(STEP_STATS) or {})
    return {e["event"] for e in item_events(item)}


def _meta_match(meta: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(meta.get(k) == v for k, v in wanted.items())


def _has_meta(messages_table: str, events_table: str, item: dict[str, Any], wanted: dict[str, str]) -> bool:
    """Some one event of the message carries every wanted meta pair (a long timeline's pages are read)."""
    if not is_paged(item):
        return any(_meta_match(e.get("meta") or {}, wanted) for e in item_events(item))
    cursor: str | None = None
    read = 0
    while True:
        page = read_timeline(messages_table, events_table, item["app_id"], item["message_id"], None,
                             limit=1000, cursor=cursor, item=item)
        if page is None:
            return False
        if any(_meta_match(e.get("meta") or {}, wanted) for e in page["events"]):
            return True
        read += len(page["events"])
        if not page["cursor"]:
            return False
        if read >= META_MAX_EVENTS:
            raise TooLongError(f"message {item['message_id']!r} has more than {META_MAX_EVENTS} events: "
                               "a meta filter reads at most that many per message")
        cursor = decode_event_cursor(page["cursor"], item["app_id"], item["message_id"])


def has_firing_alert(alerts_table: str, app_id: str, message_id: str) -> bool:
    """One Query: the message's alert records share the sk prefix `<message_id>\\x1f` (one per rule)."""
    resp = aws.table(alerts_table).query(
        KeyConditionExpression=Key("app_id").eq(app_id) & Key("sk").begins_with(message_id + alerts.SEP),
        FilterExpression=Attr("state").eq(alerts.FIRING), Select="COUNT")
    return int(resp.get("Count", 0)) > 0


def keep_for(filters: Filters, *, messages_table: str, events_table: str,
             alerts_table: str) -> Callable[[dict[str, Any], dict[str, Any]], bool] | None:
    """store.list_messages' keep() for these filters (None: nothing to apply after the read)."""
    if not filters.needs_keep():
        return None

    def keep(item: dict[str, Any], summary: dict[str, Any]) -> bool:
        steps = _steps(item) if (filters.event or filters.missing) else set()
        if filters.event and filters.event not in steps:
            return False
        if filters.missing and filters.missing in steps:
            return False
        if filters.meta and not _has_meta(messages_table, events_table, item, filters.meta):
            return False
        if filters.alert == alerts.FIRING:
            return has_firing_alert(alerts_table, item["app_id"], item["message_id"])
        return True

    return keep


# --- export -------------------------------------------------------------------------------------------
MESSAGE_COLUMNS = ("app_id", "message_id", "status", "missing", "first_seen", "last_seen", "updated_at",
                   "out_of_order", "unexpected_count")
EVENT_COLUMNS = ("app_id", "message_id", "event_id", "event", "created_at", "received_at", "meta")
FORMATS = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
EXPORT_TARGET_BYTES = 1024 * 1024  # a response stops taking messages past this (Lambda's limit: 6 MB)
EXPORT_MAX_BYTES = 4 * 1024 * 1024  # one message's lines alone above this: refused, never cut


def message_row(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in MESSAGE_COLUMNS}


def event_rows(messages_table: str, events_table: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's events as rows (a long timeline's pages read whole, at most META_MAX_EVENTS)."""
    events = list(summary.get("events") or [])
    if not events:  # a paged timeline: list_messages gives its events as []
        cursor: str | None = None
        while True:
            page = read_timeline(messages_table, events_table, summary["app_id"], summary["message_id"], None,
                                 limit=1000, cursor=cursor)
            if page is None:
                break
            events += page["events"]
            if not page["cursor"]:
                break
            if len(events) >= META_MAX_EVENTS:
                raise TooLongError(f"message {summary['message_id']!r} has more than {META_MAX_EVENTS} events: "
                                   "export it with GET /api/messages/{message_id} (paged)")
            cursor = decode_event_cursor(page["cursor"], summary["app_id"], summary["message_id"])
    events.sort(key=lambda e: (e["created_at"], e["event_id"]))
    return [{"app_id": summary["app_id"], "message_id": summary["message_id"], "event_id": e["event_id"],
             "event": e["event"], "created_at": e["created_at"], "received_at": e.get("received_at"),
             "meta": dict(e.get("meta") or {})} for e in events]


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False, sort_keys=True) if value else ""
    return str(value)


def render(rows: list[dict[str, Any]], fmt: str, columns: tuple[str, ...], *, header: bool) -> str:
    """NDJSON (one JSON object a line) or CSV (RFC 4180 quoting by the csv module; lists joined by ';',
    meta as a JSON object)."""
    if fmt == "ndjson":
        return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    if header:
        writer.writerow(columns)
    for r in rows:
        writer.writerow([_csv_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def export_page(list_page: Callable[[dict[str, Any] | None], tuple[list[dict[str, Any]], dict[str, Any] | None]],
                messages_table: str, events_table: str, *, fmt: str, events: bool, cursor: dict[str, Any] | None,
                header: bool) -> tuple[str, dict[str, Any] | None]:
    """One response's body and the next cursor (None at the end). Takes list pages (100 messages) until
    the body passes EXPORT_TARGET_BYTES; a page cut short resumes after its last message written."""
    columns = EVENT_COLUMNS if events else MESSAGE_COLUMNS
    parts = [render([], fmt, columns, header=True)] if header and fmt == "csv" else []
    size = sum(len(p.encode()) for p in parts)
    start = cursor
    while True:
        summaries, last = list_page(start)
        for summary in summaries:
            rows = event_rows(messages_table, events_table, summary) if events else [message_row(summary)]
            text = render(rows, fmt, columns, header=False)
            n = len(text.encode())
            if n > EXPORT_MAX_BYTES:
                raise TooLongError(f"message {summary['message_id']!r} alone is {n} bytes of export: "
                                   "read it with GET /api/messages/{message_id} (paged)")
            parts.append(text)
            size += n
            if size >= EXPORT_TARGET_BYTES:
                here = {"app_id": summary["app_id"], "message_id": summary["message_id"],
                        "updated_at": summary["updated_at"]}
                return "".join(parts), (here if (summary is not summaries[-1] or last) else None)
        if last is None:
            return "".join(parts), None
        start = last
