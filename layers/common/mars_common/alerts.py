"""Alerts as records: one per (message, rule) in AlertsTable, and the one way a transition reaches people.

Rules (docs/ALERTS.md): `deadline` (a lifecycle step not seen within `within_seconds` of `after`'s
first event), `sla` (the message saw no event for longer than the app's sla_seconds) and `failure`
(a failure step arrived). A record's `state`:
- `pending` (deadlines only): armed by the store when `after` arrives, with `due_at`; the ByDue index
  holds only pending records, so the sweep reads exactly the deadlines that passed;
- `met`: the step arrived in time (or before `after`): nothing fires, ever;
- `firing`: set once by a conditional write, so a rule never fires twice for a message while it fires;
- `resolved`: the late step arrived (deadline), or a new event ended the stuck spell (sla). A failure
  never resolves. An sla alert fires again on the message's next stuck spell (resolved → firing, the
  same record); a deadline cannot (its step was seen).

AlertsTable (template.yaml): key (app_id, sk = `<message_id>\\x1f<kind>\\x1f<step>\\x1f<after>`; \\x1f is
not printable, so no message id or step contains it). ByAppFired (app_id, fired_at) lists an app's
alerts newest first; ByDue (app_id, due_at) finds the deadlines due. Its stream feeds AlertsFunction,
which calls notify() once per transition record (at least once: a failed notify is retried).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from boto3.dynamodb.conditions import Attr, ConditionBase, Key
from botocore.exceptions import ClientError

from . import aws, delivery
from .events import FieldError, format_ts, parse_timestamp
from .timeline import Deadline, Lifecycle

DEADLINE, SLA, FAILURE = "deadline", "sla", "failure"
PENDING, MET, FIRING, RESOLVED = "pending", "met", "firing", "resolved"
STATES = (FIRING, RESOLVED)  # what the API lists; pending and met are bookkeeping
SEP = "\x1f"
BY_APP_FIRED_INDEX = "ByAppFired"
BY_DUE_INDEX = "ByDue"
MAX_DUE_PER_RUN = 500  # deadlines one sweep handles per app; the rest wait a minute (the index keeps them)


def alert_sk(message_id: str, kind: str, step: str | None, after: str | None) -> str:
    return SEP.join((message_id, kind, step or "", after or ""))


def alert_id(app_id: str, sk: str) -> str:
    """Stable per (app, message, rule): a redelivered transition carries the same id (receivers dedupe on it)."""
    return hashlib.sha256(f"mars-alert\0{app_id}\0{sk}".encode()).hexdigest()[:32]


def _fail_check(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _write(table: str, app_id: str, message_id: str, kind: str, step: str | None, after: str | None, *,
           sets: dict[str, Any], removes: tuple[str, ...] = (), condition: str,
           cond_values: dict[str, Any] | None = None, expires_at: int | None = None) -> bool:
    """One conditional UpdateItem of the (message, rule) record; False when the condition refused it."""
    sk = alert_sk(message_id, kind, step, after)
    fields = {"alert_id": alert_id(app_id, sk), "message_id": message_id,
              "rule": {"kind": kind, "step": step, "after": after}, **sets}
    if expires_at is not None:
        fields["expires_at"] = expires_at
    names = {f"#a{i}": k for i, k in enumerate(fields)}
    values: dict[str, Any] = {f":a{i}": v for i, v in enumerate(fields.values())}
    expression = "SET " + ", ".join(f"#a{i} = :a{i}" for i in range(len(fields)))
    if removes:
        names.update({f"#r{i}": k for i, k in enumerate(removes)})
        expression += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(removes)))
    names.update({k: v for k, v in (("#k", "sk"), ("#st", "state"), ("#due", "due_at")) if k in condition})
    values.update(cond_values or {})
    try:
        aws.table(table).update_item(Key={"app_id": app_id, "sk": sk}, UpdateExpression=expression,
                                     ConditionExpression=condition, ExpressionAttributeNames=names,
                                     ExpressionAttributeValues=values)
        return True
    except ClientError as exc:
        if _fail_check(exc):
            return False
        raise


def arm_deadline(table: str, app_id: str, message_id: str, deadline: Deadline, after_at: str, expires_at: int) -> bool:
    """`after` arrived at `after_at` (created_at): the deadline is due within_seconds later. Idempotent; an
    earlier `after` event arriving late moves the due time earlier; a fired or met record is left alone."""
    moment = datetime.fromisoformat(after_at.replace("Z", "+00:00")).timestamp() + deadline.within_seconds
    due = format_ts(datetime.fromtimestamp(moment, UTC))
    return _write(table, app_id, message_id, DEADLINE, deadline.step, deadline.after,
                  sets={"state": PENDING, "due_at": due}, expires_at=expires_at,
                  condition="attribute_not_exists(#k) OR (#st = :pending AND #due > :due)",
                  cond_values={":pending": PENDING, ":due": due})


def step_arrived(table: str, app_id: str, message_id: str, deadline: Deadline, now: str) -> str | None:
    """The deadline's step arrived: a pending one is met, a firing alert resolves. Returns the new state.
    Met is tried first: a step in time (the common case) costs one write, a late one two."""
    if _write(table, app_id, message_id, DEADLINE, deadline.step, deadline.after, sets={"state": MET}, removes=("due_at",),
              condition="#st = :pending", cond_values={":pending": PENDING}):
        return MET
    if _write(table, app_id, message_id, DEADLINE, deadline.step, deadline.after, sets={"state": RESOLVED, "resolved_at": now},
              condition="#st = :firing", cond_values={":firing": FIRING}):
        return RESOLVED
    return None  # not armed (the step came before `after`), or already resolved/met: nothing to do


def fire_deadline(table: str, app_id: str, message_id: str, step: str, after: str, now: str) -> bool:
    return _write(table, app_id, message_id, DEADLINE, step, after, sets={"state": FIRING, "fired_at": now},
                  removes=("due_at",), condition="#st = :pending", cond_values={":pending": PENDING})


def meet_deadline(table: str, app_id: str, message_id: str, step: str, after: str) -> bool:
    """The sweep found the step already there (it came before `after`, or the store's write was late)."""
    return _write(table, app_id, message_id, DEADLINE, step, after, sets={"state": MET}, removes=("due_at",),
                  condition="#st = :pending", cond_values={":pending": PENDING})


def fire_failure(table: str, app_id: str, message_id: str, step: str, now: str, expires_at: int) -> bool:
    """A failure step arrived: fires once per (message, failure step), never resolves."""
    return _write(table, app_id, message_id, FAILURE, step, None, sets={"state": FIRING, "fired_at": now},
                  expires_at=expires_at, condition="attribute_not_exists(#k)")


def fire_sla(table: str, app_id: str, message_id: str, now: str, expires_at: int) -> bool:
    """The message went stuck: fires unless it is firing (a resolved one fires again: a new stuck spell)."""
    return _write(table, app_id, message_id, SLA, None, None,
                  sets={"state": FIRING, "fired_at": now}, removes=("resolved_at",), expires_at=expires_at,
                  condition="attribute_not_exists(#k) OR #st = :resolved", cond_values={":resolved": RESOLVED})


def resolve_sla(table: str, app_id: str, message_id: str, now: str) -> bool:
    return _write(table, app_id, message_id, SLA, None, None, sets={"state": RESOLVED, "resolved_at": now},
                  condition="#st = :firing", cond_values={":firing": FIRING})


def on_stored(table: str, app_id: str, message_id: str, events: list[dict[str, Any]], lifecycle: Lifecycle,
              expires_at: int, *, unstuck: bool) -> int:
    """What a stored batch does to its message's alerts (the store calls this only for an app with rules or
    a message that was stuck): arm deadlines, meet or resolve them, fire failures, resolve an sla alert.
    Every write is conditional, so a redelivered batch changes nothing twice. Returns the writes made."""
    now = format_ts(datetime.now(UTC))
    writes = 0
    firsts: dict[str, str] = {}
    for e in events:
        firsts[e["event"]] = min(firsts.get(e["event"], e["created_at"]), e["created_at"])
    for deadline in lifecycle.deadlines:
        if deadline.after in firsts:
            writes += arm_deadline(table, app_id, message_id, deadline, firsts[deadline.after], expires_at)
        if deadline.step in firsts:
            writes += step_arrived(table, app_id, message_id, deadline, now) is not None
    for step in lifecycle.failure:
        if step in firsts:
            writes += fire_failure(table, app_id, message_id, step, now, expires_at)
    if unstuck:
        writes += resolve_sla(table, app_id, message_id, now)
    return writes


def due_deadlines(table: str, app_id: str, now: datetime, limit: int | None = None) -> list[dict[str, Any]]:
    """Pending deadlines of an app due by `now`, oldest first, at most `limit` (MAX_DUE_PER_RUN; one Query)."""
    resp = aws.table(table).query(IndexName=BY_DUE_INDEX, Limit=limit or MAX_DUE_PER_RUN,
                                  KeyConditionExpression=Key("app_id").eq(app_id) & Key("due_at").lte(format_ts(now)))
    return list(resp.get("Items", []))


# --- reads ------------------------------------------------------------------------------------------
def public(item: dict[str, Any], dashboard_url: str = "") -> dict[str, Any]:
    """The alert shape (API, websocket frame, SNS and webhook body): extend, never rename."""
    rule = item.get("rule") or {}
    app_id, message_id = item["app_id"], item["message_id"]
    base = dashboard_url.rstrip("/")
    link = f"search/event?message_id={quote(message_id, safe='')}&app_id={quote(app_id, safe='')}"
    return {"type": "alert", "alert_id": item["alert_id"], "app_id": app_id, "message_id": message_id,
            "rule": {"kind": rule.get("kind"), "step": rule.get("step"), "after": rule.get("after")},
            "state": item.get("state"), "fired_at": item.get("fired_at"), "resolved_at": item.get("resolved_at"),
            "timeline_url": f"{base}/{link}" if base else link}


def parse_time(name: str, value: str | None) -> str | None:
    """A query's from/to in the stored form (fixed-width UTC); ValueError names the parameter."""
    if value is None or value == "":
        return None
    try:
        return parse_timestamp(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an RFC 3339 time, e.g. 2026-11-30T10:00:00Z") from exc


def parse_bounds(query: dict[str, str], errors: list[FieldError]) -> dict[str, str | None]:
    """A query's `from` and `to` (parse_time), each bad one added to `errors`."""
    bounds: dict[str, str | None] = {}
    for name in ("from", "to"):
        try:
            bounds[name] = parse_time(name, query.get(name))
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
    return bounds


CURSOR_FIELDS = frozenset({"app_id", "sk", "fired_at"})  # a ByAppFired key: store.encode_cursor / decode_cursor


def list_alerts(table: str, app_id: str, *, state: str | None, frm: str | None, to: str | None,
                message_id: str | None, limit: int, cursor: dict[str, Any] | None,
                max_pages: int = 10) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """An app's alerts that fired (newest first), optionally one message's, one state's, fired in [from, to].
    Like list_messages, a filter is applied after the read: up to `max_pages` pages fill a page."""
    key: ConditionBase = Key("app_id").eq(app_id)
    if frm and to:
        key = key & Key("fired_at").between(frm, to)
    elif frm:
        key = key & Key("fired_at").gte(frm)
    elif to:
        key = key & Key("fired_at").lte(to)
    filt: ConditionBase | None = None
    if state is not None:
        filt = Attr("state").eq(state)
    if message_id is not None:
        # \x1f sorts below every printable character: exactly this message's records share the prefix
        at_message = Attr("sk").begins_with(message_id + SEP)
        filt = at_message if filt is None else filt & at_message
    out: list[dict[str, Any]] = []
    start = cursor
    for _ in range(max_pages):
        kwargs: dict[str, Any] = {"IndexName": BY_APP_FIRED_INDEX, "KeyConditionExpression": key,
                                  "ScanIndexForward": False, "Limit": limit}
        if filt is not None:
            kwargs["FilterExpression"] = filt
        if start:
            kwargs["ExclusiveStartKey"] = start
        resp = aws.table(table).query(**kwargs)
        for item in resp.get("Items", []):
            out.append(item)
            if len(out) == limit:
                return out, {"app_id": app_id, "sk": item["sk"], "fired_at": item["fired_at"]}
        start = resp.get("LastEvaluatedKey")
        if not start:
            return out, None
    return out, start


# --- the one way a transition reaches people ---------------------------------------------------------
def subject(alert: dict[str, Any]) -> str:
    rule = alert["rule"]
    what = {SLA: "a message is stuck", FAILURE: f"a message failed ({rule.get('step')})",
            DEADLINE: f"{rule.get('step')} not within its deadline after {rule.get('after')}"}.get(rule.get("kind"), "alert")
    return f"Mars {alert['state']}: {what}"[:100]  # SNS: a Subject of at most 100 characters


def notify(alert: dict[str, Any]) -> None:
    """Every alert transition (firing, resolved) goes out here, once per transition record: AlertsTopic
    (SNS; subscribers filter on the `app_id`, `state` and `kind` message attributes), then one delivery
    per destination of the app (mars_common.delivery: webhooks, Slack, SNS topics, docs/DESTINATIONS.md).
    Raises on failure, so the stream consumer retries the record: at least once — a retry may publish
    or enqueue again, and receivers dedupe on the webhook-id, stable per transition."""
    topic = os.environ.get("ALERTS_TOPIC_ARN", "")
    if not topic:
        raise RuntimeError("ALERTS_TOPIC_ARN is not set: alerts cannot be delivered")
    attributes = {"app_id": alert["app_id"], "state": alert["state"], "kind": alert["rule"]["kind"]}
    aws.client("sns").publish(TopicArn=topic, Subject=subject(alert), Message=json.dumps(alert),
                              MessageAttributes={k: {"DataType": "String", "StringValue": str(v)}
                                                 for k, v in attributes.items() if v})
    delivery.fan_out(alert)  # raises FanOutError naming what was not enqueued
