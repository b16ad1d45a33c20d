"""What a user reads on a timeline: missing steps and status, from the app's declared lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

COMPLETE, IN_PROGRESS, STUCK, UNKNOWN = "complete", "in_progress", "stuck", "unknown"
STATUSES = (COMPLETE, IN_PROGRESS, STUCK, UNKNOWN)


MAX_RETENTION_DAYS = 3650  # template.yaml's RetentionDays MaxValue


@dataclass(frozen=True)
class Lifecycle:
    events: tuple[str, ...]
    sla_seconds: int
    updated_at: str | None = field(default=None, compare=False)
    retention_days: int | None = None  # the app's own, under the stack's RetentionDays (None: the stack's)

    def retention(self, stack_days: int) -> int:
        """Days this app's events are kept: its own retention, never beyond the stack's."""
        return min(self.retention_days, stack_days) if self.retention_days else stack_days


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def summarize(events: list[dict[str, Any]], lifecycle: Lifecycle | None, updated_at: str | None,
              now: datetime) -> dict[str, Any]:
    """missing (lifecycle order), status, first/last seen (by created_at) of sorted events."""
    seen = {e["event"] for e in events}
    first_seen = events[0]["created_at"] if events else None
    last_seen = events[-1]["created_at"] if events else None
    if lifecycle is None or not lifecycle.events:
        return {"missing": [], "status": UNKNOWN, "first_seen": first_seen, "last_seen": last_seen}
    missing = [name for name in lifecycle.events if name not in seen]
    if not missing:
        status = COMPLETE
    else:
        # "No event for longer than the SLA": when the newest event reached Mars, by our clock
        # (received_at is kept from the first delivery, so a redelivered duplicate does not reset it).
        received = [e["received_at"] for e in events if e.get("received_at")]
        last = _parse(max(received)) if received else (_parse(updated_at) or _parse(last_seen))
        idle = (now - last).total_seconds() if last else 0.0
        status = STUCK if lifecycle.sla_seconds > 0 and idle > lifecycle.sla_seconds else IN_PROGRESS
    return {"missing": missing, "status": status, "first_seen": first_seen, "last_seen": last_seen}
