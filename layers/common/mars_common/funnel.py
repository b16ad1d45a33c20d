"""The funnel of an app: per lifecycle step, messages that reached it, conversion, step-to-step time
(p50/p90/p99 from a DDSketch), messages stalled there, alerts fired on it. Maintained as events are
stored (docs/FUNNEL.md), never by scanning an app's history.

FunnelTable (pk, sk):
- a message's marker, pk `<app_id>!<message_id>`, sk `m`: the first created_at of each lifecycle step
  counted (`t`), the message's cohort day (`b`) and a version (`v`). It is how a step is counted once:
  the store's on_stored reads it, and counts only the steps it lacks.
- a (cohort day, step) counter, pk `<app_id>#<YYYY-MM-DD>`, sk the step: `r` messages that reached it,
  `s` messages whose last reached step it is;
- a (cohort day, step, bin) count `n`, same pk, sk `<step>\x1f<bin>`: one bin of the DDSketch of the time
  from the previous step (`k<key>` of the library's mapping, `z` below 1 ms). One small item per bin
  keeps every write at the 1 KB minimum however many bins a day fills. \x1f is in no step name, and app
  ids have neither '!' nor '#': no key is ambiguous.
The counters and the marker change in one TransactWriteItems conditional on the marker's version, so a
redelivered batch (or a store that failed after it) adds nothing twice, and a crash adds nothing half.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from boto3.dynamodb.conditions import Key
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError
from ddsketch import DDSketch

from . import alerts, aws
from .timeline import Lifecycle

RELATIVE_ACCURACY = 0.01  # DDSketch alpha: a quantile is within 1 % of the true value at its rank
ZERO_SECONDS = 0.001  # durations below this (and out-of-order steps: negative) count in the zero bin
MARKER_SK = "m"
SEP = "\x1f"  # between a step and its bin in a bin item's sk
MAX_RANGE_DAYS = 92  # one Query per day: a range reads at most this many buckets
DEFAULT_RANGE_DAYS = 7
MAX_ALERTS_COUNTED = 20_000  # alert records read per answer; beyond, `alerts_truncated` says so
QUANTILES = (("p50_seconds", 0.5), ("p90_seconds", 0.9), ("p99_seconds", 0.99))
_serializer = TypeSerializer()


class ConcurrentFunnelWriteError(Exception):
    """The marker changed between its read and the transaction: the batch comes back (redelivery)."""


def _sketch() -> DDSketch:
    return DDSketch(relative_accuracy=RELATIVE_ACCURACY)


def bin_attr(seconds: float) -> str:
    """The attribute of a duration's DDSketch bin: `k<key>` of the library's logarithmic mapping, `z` for ~0."""
    if seconds < ZERO_SECONDS:
        return "z"
    return f"k{_sketch()._mapping.key(seconds)}"


def sketch_of(item: dict[str, Any]) -> DDSketch:
    """A day's sketch rebuilt from its bins {attr: count} (each bin's representative value, its count)."""
    sketch = _sketch()
    mapping = sketch._mapping
    for attr, count in item.items():
        if attr == "z" and count > 0:
            sketch.add(0.0, float(count))
        elif attr.startswith("k") and attr[1:].lstrip("-").isdigit() and count > 0:
            sketch.add(mapping.value(int(attr[1:])), float(count))
    return sketch


def bucket_of(created_at: str) -> str:
    """A message's cohort: the UTC day of its first lifecycle event seen by the funnel."""
    return created_at[:10]


def bucket_pk(app_id: str, day: str) -> str:
    return f"{app_id}#{day}"


def marker_pk(app_id: str, message_id: str) -> str:
    return f"{app_id}!{message_id}"


def predecessors(lifecycle: Lifecycle) -> dict[str, str]:
    """Per step: the previous required step (an optional step may be skipped, so it is nobody's predecessor)."""
    out: dict[str, str] = {}
    previous: str | None = None
    optional = set(lifecycle.optional)
    for step in lifecycle.events:
        if previous is not None:
            out[step] = previous
        if step not in optional:
            previous = step
    return out


def _seconds(frm: str, to: str) -> float:
    def parse(ts: str) -> datetime:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return (parse(to) - parse(frm)).total_seconds()


def plan(lifecycle: Lifecycle, counted: dict[str, str], new: dict[str, str]) -> dict[str, dict[str, int]]:
    """What a message's new steps add, per step: {"r": reached, "s": stalled delta, bin attr: count}.

    `counted`: first created_at of the steps already counted; `new`: of the steps now first seen. A
    duration is added once both ends are known, by whichever arrives second."""
    order = {step: i for i, step in enumerate(lifecycle.events)}
    merged = {**counted, **new}
    out: dict[str, dict[str, int]] = {}

    def add(step: str, attr: str, n: int) -> None:
        out.setdefault(step, {})[attr] = out.setdefault(step, {}).get(attr, 0) + n

    for step in new:
        add(step, "r", 1)
    last_old = max(counted, key=order.__getitem__, default=None)
    last_new = max(merged, key=order.__getitem__)
    if last_old != last_new:
        if last_old is not None:
            add(last_old, "s", -1)
        add(last_new, "s", 1)
    for step, before in predecessors(lifecycle).items():
        if step in merged and before in merged and (step in new or before in new):
            add(step, bin_attr(_seconds(merged[before], merged[step])), 1)
    return {step: {k: v for k, v in deltas.items() if v} for step, deltas in out.items()}


def on_stored(table: str, app_id: str, message_id: str, events: Iterable[dict[str, Any]], lifecycle: Lifecycle,
              expires_at: int) -> int:
    """Counts the lifecycle steps of a stored batch that its message had not counted yet. Costs nothing
    for a batch without lifecycle steps; else one GetItem of the marker and, when a step is new, one
    transaction: the marker, the counters of the steps touched (the new ones and the previous last step)
    and one bin item per duration completed — at most 100 items for a lifecycle of 50 steps. Returns the
    items written."""
    steps = set(lifecycle.events)
    firsts: dict[str, str] = {}
    for e in events:
        if e["event"] in steps:
            firsts[e["event"]] = min(firsts.get(e["event"], e["created_at"]), e["created_at"])
    if not firsts:
        return 0
    ddb = aws.table(table)
    marker = ddb.get_item(Key={"pk": marker_pk(app_id, message_id), "sk": MARKER_SK}, ConsistentRead=True).get("Item")
    counted: dict[str, str] = dict((marker or {}).get("t") or {})
    new = {step: t for step, t in firsts.items() if step not in counted}
    if not new:
        return 0  # a redelivery, or another event of a step already counted
    day = str(marker["b"]) if marker else bucket_of(min(new.values()))
    version = int(marker["v"]) if marker else 0
    writes: list[dict[str, Any]] = [{"Update": {
        "TableName": table, "Key": _key(marker_pk(app_id, message_id), MARKER_SK),
        "UpdateExpression": "SET #t = :t, #b = :b, #v = :v1, #x = :x",
        "ConditionExpression": "#v = :v" if marker else "attribute_not_exists(#v)",
        "ExpressionAttributeNames": {"#t": "t", "#b": "b", "#v": "v", "#x": "expires_at"},
        "ExpressionAttributeValues": _values({":t": {**counted, **new}, ":b": day, ":v1": version + 1,
                                              ":x": expires_at, **({":v": version} if marker else {})}),
    }}]
    items: dict[str, dict[str, int]] = {}  # sk -> attribute deltas: the step's counters, one item per bin
    for step, deltas in plan(lifecycle, counted, new).items():
        for attr, n in deltas.items():
            if attr in ("r", "s"):
                items.setdefault(step, {})[attr] = n
            else:
                items[f"{step}{SEP}{attr}"] = {"n": n}
    for sk, deltas in sorted(items.items()):
        names = {"#x": "expires_at"}
        values: dict[str, Any] = {":x": expires_at}
        adds = []
        for i, (attr, n) in enumerate(sorted(deltas.items())):
            names[f"#a{i}"] = attr
            values[f":a{i}"] = n
            adds.append(f"#a{i} :a{i}")
        writes.append({"Update": {
            "TableName": table, "Key": _key(bucket_pk(app_id, day), sk),
            "UpdateExpression": "SET #x = :x ADD " + ", ".join(adds),
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": _values(values)}})
    try:
        aws.client("dynamodb").transact_write_items(TransactItems=writes)  # low level: values in DynamoDB JSON
    except ClientError as exc:
        reasons = [r.get("Code") for r in exc.response.get("CancellationReasons") or []]
        if exc.response.get("Error", {}).get("Code") == "TransactionCanceledException" and "ConditionalCheckFailed" in reasons:
            raise ConcurrentFunnelWriteError(f"the funnel marker of {message_id!r} changed while it was counted") from exc
        raise
    return len(writes)


def _key(pk: str, sk: str) -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def _values(values: dict[str, Any]) -> dict[str, Any]:
    return {k: _serializer.serialize(v) for k, v in values.items()}


# --- reads ------------------------------------------------------------------------------------------
def days(frm: datetime, to: datetime) -> list[str]:
    out = []
    day = frm.date()
    while day <= to.date():
        out.append(day.isoformat())
        day += timedelta(days=1)
    return out


def default_range(now: datetime | None = None) -> tuple[datetime, datetime]:
    to = now or datetime.now(UTC)
    return to - timedelta(days=DEFAULT_RANGE_DAYS - 1), to


def read_funnel(table: str, alerts_table: str, app_id: str, lifecycle: Lifecycle, frm: datetime,
                to: datetime) -> dict[str, Any]:
    """The funnel of the messages whose cohort day is in [from, to] (whole UTC days): one Query per day,
    counts added and sketches merged; alerts are those fired in [from, to], per rule step."""
    reached: dict[str, int] = dict.fromkeys(lifecycle.events, 0)
    stalled: dict[str, int] = dict.fromkeys(lifecycle.events, 0)
    sketches: dict[str, DDSketch] = {step: _sketch() for step in lifecycle.events}
    for day in days(frm, to):
        bins: dict[str, dict[str, int]] = {}
        for item in aws.items(table, KeyConditionExpression=Key("pk").eq(bucket_pk(app_id, day))):
            step, _, attr = str(item["sk"]).partition(SEP)
            if step not in reached:
                continue  # a step the lifecycle no longer has
            if attr:
                bins.setdefault(step, {})[attr] = int(item.get("n", 0))
            else:
                reached[step] += int(item.get("r", 0))
                stalled[step] += int(item.get("s", 0))
        for step, counts in bins.items():  # this day's sketch of the step, merged into the range's
            sketches[step].merge(sketch_of(counts))
    fired, truncated = _alerts_by_step(alerts_table, app_id, frm, to) if alerts_table else ({}, False)
    previous = predecessors(lifecycle)
    steps = []
    for step in lifecycle.events:
        before = previous.get(step)
        base = reached[before] if before else None
        row: dict[str, Any] = {"step": step, "reached": reached[step],
                               "conversion": round(reached[step] / base, 4) if base else None}
        sketch = sketches[step]
        for name, q in QUANTILES:
            value = sketch.get_quantile_value(q) if sketch.count else None
            row[name] = round(value, 6) if value is not None else None
        row["stalled_here"] = stalled[step]
        row["alerts"] = fired.pop(step, 0)
        row["after"] = before
        row["durations"] = int(sketch.count)
        steps.append(row)
    return {"app_id": app_id, "from": frm.date().isoformat() + "T00:00:00Z",
            "to": to.date().isoformat() + "T23:59:59Z", "bucket": "day", "relative_error": RELATIVE_ACCURACY,
            "steps": steps, "alerts_without_step": sum(fired.values()), "alerts_truncated": truncated}


def _alerts_by_step(table: str, app_id: str, frm: datetime, to: datetime) -> tuple[dict[str, int], bool]:
    """Alerts that fired in the range, by the rule's step (sla alerts name none: key ""); bounded."""
    low = frm.strftime("%Y-%m-%dT00:00:00")
    high = to.strftime("%Y-%m-%dT23:59:59.999999Z")
    out: dict[str, int] = {}
    n = 0
    for item in aws.items(table, IndexName=alerts.BY_APP_FIRED_INDEX, ProjectionExpression="#r",
                          ExpressionAttributeNames={"#r": "rule"},
                          KeyConditionExpression=Key("app_id").eq(app_id) & Key("fired_at").between(low, high)):
        step = (item.get("rule") or {}).get("step") or ""
        out[step] = out.get(step, 0) + 1
        n += 1
        if n >= MAX_ALERTS_COUNTED:
            return out, True
    return out, False
