"""StuckFunction (every minute): the sweep behind the time-based alert rules (docs/ALERTS.md).

- `sla`: a message whose app declares an SLA and that saw no event for longer than it, still
  incomplete, gets a firing sla alert record, then is marked (`stuck_at`, which the MessagesTable
  stream turns into a live push); a new event clears the mark and resolves the alert (the store).
  The record is written before the mark: a crash between them leaves an unmarked message that the next
  run picks again (the record's conditional write is then a no-op); a mark refused because the message
  was written since it was read resolves the alert at once (the spell ended).
- `deadline`: the pending deadline records of each app with deadlines that are due (the ByDue index:
  one Query per app, at most alerts.MAX_DUE_PER_RUN records per run, oldest first); each reads its
  message once: the step there → met, the message failed → met (its failure alert says it), else firing.

Alerts reach people from the AlertsTable stream (AlertsFunction → mars_common.alerts.notify), not from here.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import alerts, aws
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import format_ts
from mars_common.store import lifecycles, mark_stuck, stuck_candidates, to_timeline
from mars_common.timeline import FAILED, Lifecycle

logger = Logger(service="mars-stuck")
metrics, tracer = m.for_service("mars-stuck")
# How far behind the SLA cut-off a sweep looks: runs are a minute apart, so an hour leaves room for
# missed runs without re-reading an app's whole history each minute.
LOOKBACK_SECONDS = 3600


def _expires(lifecycle: Lifecycle) -> int:
    return int(time.time()) + lifecycle.retention(settings().retention_days) * 86400


def sweep_sla(app_id: str, lifecycle: Lifecycle, now: datetime) -> tuple[int, int]:
    cfg = settings()
    marked = candidates = 0
    for item in stuck_candidates(cfg.messages_table, app_id, lifecycle, now, LOOKBACK_SECONDS):
        candidates += 1
        stuck_at = format_ts(now)
        alerts.fire_sla(cfg.alerts_table, app_id, item["message_id"], stuck_at, _expires(lifecycle))
        if mark_stuck(cfg.messages_table, item, stuck_at):  # one mark per stuck spell, even if runs overlap
            marked += 1
        else:  # written since it was read: not stuck any more (or marked by an overlapping run: then a no-op)
            fresh = aws.table(cfg.messages_table).get_item(
                Key={"app_id": app_id, "message_id": item["message_id"]}, ConsistentRead=True).get("Item") or {}
            if "stuck_at" not in fresh:
                alerts.resolve_sla(cfg.alerts_table, app_id, item["message_id"], format_ts(datetime.now(UTC)))
    return candidates, marked


def sweep_deadlines(app_id: str, lifecycle: Lifecycle, now: datetime) -> tuple[int, int]:
    cfg = settings()
    due = alerts.due_deadlines(cfg.alerts_table, app_id, now)
    fired = 0
    for record in due:
        rule = record["rule"]
        item = aws.table(cfg.messages_table).get_item(
            Key={"app_id": app_id, "message_id": record["message_id"]}, ConsistentRead=True).get("Item")
        timeline = to_timeline(item, lifecycle, with_events=False, now=now) if item else None
        seen = set(item.get("steps") or ()) | {v["event"] for k, v in item.items() if k.startswith("e:")} if item else set()
        if timeline is None or rule["step"] in seen or timeline["status"] == FAILED:
            alerts.meet_deadline(cfg.alerts_table, app_id, record["message_id"], rule["step"], rule["after"])
        elif alerts.fire_deadline(cfg.alerts_table, app_id, record["message_id"], rule["step"], rule["after"],
                                  format_ts(now)):
            fired += 1
    if len(due) == alerts.MAX_DUE_PER_RUN:
        logger.warning("more deadlines due than one run handles; the rest wait for the next run",
                       extra={"app_id": app_id, "handled": len(due)})
    return len(due), fired


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    if not settings().alerts_table:
        raise RuntimeError("ALERTS_TABLE is not set: the sweep cannot record alerts")
    now = datetime.now(UTC)
    totals = {"candidates": 0, "marked": 0, "deadlines_due": 0, "deadlines_fired": 0}
    fired: Counter[str] = Counter()  # sla and deadline alerts this sweep fired, per app
    for app_id, lifecycle in lifecycles(settings().apps_table).items():
        candidates, marked = sweep_sla(app_id, lifecycle, now)
        totals["candidates"] += candidates
        totals["marked"] += marked
        fired[app_id] += marked
        if lifecycle.deadlines:
            due, deadlines_fired = sweep_deadlines(app_id, lifecycle, now)
            totals["deadlines_due"] += due
            totals["deadlines_fired"] += deadlines_fired
            fired[app_id] += deadlines_fired
    for app_id, n in sorted(fired.items()):  # app_id is bounded here: only apps that declared rules alert
        if n:
            m.count_by(metrics, m.ALERTS_FIRED, "app_id", app_id, n)
    m.count(metrics, m.ALERTS_FIRED, sum(fired.values()))
    logger.info("swept", extra=totals)
    return totals
