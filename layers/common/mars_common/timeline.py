"""What a user reads on a timeline: missing steps, status, out-of-order and unexpected events, from the
app's declared lifecycle (its rules: ordered steps, optional steps, failure steps, per-step deadlines)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .events import MAX_EVENT, FieldError

COMPLETE, IN_PROGRESS, STUCK, FAILED, UNKNOWN = "complete", "in_progress", "stuck", "failed", "unknown"
STATUSES = (COMPLETE, IN_PROGRESS, STUCK, UNKNOWN, FAILED)
MAX_STEPS = 50  # events, optional and failure names each; deadlines too
MAX_DEADLINE_SECONDS = 30 * 86400


MAX_RETENTION_DAYS = 3650  # template.yaml's RetentionDays MaxValue


@dataclass(frozen=True)
class Deadline:
    """`step` must be seen within `within_seconds` of `after`'s first event (by created_at)."""

    step: str
    after: str
    within_seconds: int

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.step, "after": self.after, "within_seconds": self.within_seconds}


@dataclass(frozen=True)
class Lifecycle:
    events: tuple[str, ...]
    sla_seconds: int
    updated_at: str | None = field(default=None, compare=False)
    retention_days: int | None = None  # the app's own, under the stack's RetentionDays (None: the stack's)
    optional: tuple[str, ...] = ()  # steps of `events` a message may skip: never missing
    failure: tuple[str, ...] = ()  # terminal steps outside `events`: one seen ends the message as failed
    deadlines: tuple[Deadline, ...] = ()

    def retention(self, stack_days: int) -> int:
        """Days this app's events are kept: its own retention, never beyond the stack's."""
        return min(self.retention_days, stack_days) if self.retention_days else stack_days

    @property
    def has_rules(self) -> bool:
        """Rules the store acts on when an event arrives (failure steps, deadlines): apps without pay nothing."""
        return bool(self.failure or self.deadlines)

    def rules_dict(self) -> dict[str, Any]:
        return {"optional": list(self.optional), "failure": list(self.failure),
                "deadlines": [d.as_dict() for d in self.deadlines]}


def _names(body: dict[str, Any], key: str, errors: list[FieldError]) -> tuple[str, ...]:
    value = body.get(key, [])
    if (not isinstance(value, list) or len(value) > MAX_STEPS
            or not all(isinstance(e, str) and 0 < len(e) <= MAX_EVENT and e.isprintable() for e in value)):
        errors.append(FieldError(key, f"must be a list of at most {MAX_STEPS} printable names of 1-{MAX_EVENT} characters"))
        return ()
    if len(set(value)) != len(value):
        errors.append(FieldError(key, "names must be unique"))
    return tuple(value)


def parse_rules(body: dict[str, Any], events: tuple[str, ...], errors: list[FieldError]) -> dict[str, Any]:
    """`optional`, `failure` and `deadlines` of a lifecycle body, each problem named (field paths like
    `deadlines[0].after`); `events` are the body's valid steps (empty when they were invalid)."""
    optional, failure = _names(body, "optional", errors), _names(body, "failure", errors)
    known = set(events)
    for name in optional:
        if events and name not in known:
            errors.append(FieldError("optional", f"{name!r} is not one of events (an optional step is a lifecycle step)"))
    for name in failure:
        if name in known:
            errors.append(FieldError("failure", f"{name!r} is also in events (a failure step ends a message; it is not a step)"))
    raw = body.get("deadlines", [])
    deadlines: list[Deadline] = []
    if not isinstance(raw, list) or len(raw) > MAX_STEPS:
        errors.append(FieldError("deadlines", f"must be a list of at most {MAX_STEPS} objects"))
        raw = []
    position = {name: i for i, name in enumerate(events)}
    for i, d in enumerate(raw):
        where = f"deadlines[{i}]"
        if not isinstance(d, dict):
            errors.append(FieldError(where, 'must be {"step", "after", "within_seconds"}'))
            continue
        for k in sorted(set(d) - {"step", "after", "within_seconds"}):
            errors.append(FieldError(f"{where}.{k}", "is not a known field (allowed: step, after, within_seconds)"))
        step, after, within = d.get("step"), d.get("after"), d.get("within_seconds")
        if isinstance(within, float) and within.is_integer():
            within = int(within)
        ok = True
        for name, value in (("step", step), ("after", after)):
            if not isinstance(value, str) or value not in position:
                errors.append(FieldError(f"{where}.{name}", f"must name one of events, got {value!r}"))
                ok = False
        if ok and step == after:
            errors.append(FieldError(f"{where}.after", "must differ from step"))
            ok = False
        elif ok and position[str(after)] > position[str(step)]:
            errors.append(FieldError(f"{where}.after", f"{after!r} comes after {step!r} in events; a deadline looks forward"))
            ok = False
        if isinstance(within, bool) or not isinstance(within, int) or not 1 <= within <= MAX_DEADLINE_SECONDS:
            errors.append(FieldError(f"{where}.within_seconds", f"must be an integer from 1 to {MAX_DEADLINE_SECONDS}"))
            ok = False
        if ok:
            deadline = Deadline(str(step), str(after), int(within))  # type: ignore[arg-type]
            if any((x.step, x.after) == (deadline.step, deadline.after) for x in deadlines):
                errors.append(FieldError(where, f"repeats the deadline of {step!r} after {after!r}"))
            deadlines.append(deadline)
    return {"optional": optional, "failure": failure, "deadlines": tuple(deadlines)}


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def step_stats(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per step name: the first created_at (`t`) and the number of events (`n`). A long timeline's
    summary keeps this map (bounded by its distinct steps) instead of its events."""
    out: dict[str, dict[str, Any]] = {}
    for e in events:
        s = out.setdefault(e["event"], {"t": e["created_at"], "n": 0})
        s["t"] = min(s["t"], e["created_at"])
        s["n"] += 1
    return out


def _latest_predecessor(lifecycle: Lifecycle, first: dict[str, str]) -> dict[str, str]:
    """Per lifecycle step: the latest first time among the steps before it that were seen."""
    out: dict[str, str] = {}
    latest: str | None = None
    for name in lifecycle.events:
        if latest is not None:
            out[name] = latest
        if name in first:
            latest = max(latest or first[name], first[name])
    return out


def event_flags(events: list[dict[str, Any]], lifecycle: Lifecycle | None) -> list[list[str]]:
    """Per event: `unexpected` (neither a lifecycle nor a failure step) and `out_of_order` (created before
    an earlier lifecycle step's first event: it arrived before its predecessor)."""
    if lifecycle is None or not lifecycle.events:
        return [[] for _ in events]
    known = set(lifecycle.events) | set(lifecycle.failure)
    before = _latest_predecessor(lifecycle, {k: v["t"] for k, v in step_stats(events).items()})
    return [["unexpected"] if e["event"] not in known
            else ["out_of_order"] if e["event"] in before and e["created_at"] < before[e["event"]] else []
            for e in events]


def summarize(events: list[dict[str, Any]], lifecycle: Lifecycle | None, updated_at: str | None,
              now: datetime) -> dict[str, Any]:
    """missing, status, out_of_order, unexpected_count, first/last seen (by created_at) of sorted events."""
    received = [e["received_at"] for e in events if e.get("received_at")]
    return summarize_steps(step_stats(events), lifecycle, updated_at, now,
                           first_seen=events[0]["created_at"] if events else None,
                           last_seen=events[-1]["created_at"] if events else None,
                           last_received=max(received) if received else None)


def summarize_steps(stats: dict[str, dict[str, Any]] | None, lifecycle: Lifecycle | None, updated_at: str | None,
                    now: datetime, *, first_seen: str | None, last_seen: str | None, last_received: str | None,
                    steps: set[str] | None = None) -> dict[str, Any]:
    """summarize() from per-step stats (a long timeline's summary). Without stats (a summary written before
    they were kept), `steps` stands in: out_of_order is then empty and unexpected_count None (not known)."""
    seen = set(stats) if stats is not None else set(steps or ())
    out: dict[str, Any] = {"missing": [], "status": UNKNOWN, "first_seen": first_seen, "last_seen": last_seen,
                           "out_of_order": [], "unexpected_count": 0}
    if lifecycle is None or not lifecycle.events:
        return out
    optional = set(lifecycle.optional)
    out["missing"] = [name for name in lifecycle.events if name not in seen and name not in optional]
    known = set(lifecycle.events) | set(lifecycle.failure)
    if stats is None:
        out["unexpected_count"] = None
    else:
        out["unexpected_count"] = sum(int(s["n"]) for name, s in stats.items() if name not in known)
        before = _latest_predecessor(lifecycle, {k: v["t"] for k, v in stats.items()})
        out["out_of_order"] = [name for name in lifecycle.events if name in stats and name in before
                               and stats[name]["t"] < before[name]]
    if seen & set(lifecycle.failure):
        out["status"] = FAILED
    elif not out["missing"]:
        out["status"] = COMPLETE
    else:
        # "No event for longer than the SLA": when the newest event reached Mars, by our clock
        # (received_at is kept from the first delivery, so a redelivered duplicate does not reset it).
        last = _parse(last_received) or _parse(updated_at) or _parse(last_seen)
        idle = (now - last).total_seconds() if last else 0.0
        out["status"] = STUCK if lifecycle.sla_seconds > 0 and idle > lifecycle.sla_seconds else IN_PROGRESS
    return out
