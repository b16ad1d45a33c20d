"""StoreFunction: idempotent upserts (a short timeline: one UpdateItem; a long one: its pages, then its
summary); reports which messages failed, so the aggregator has them redelivered. For an app with rules
(failure steps, deadlines) or a message whose stuck spell this write ended, the alert records follow
(mars_common.alerts.on_stored): after the events, so a failure there redelivers the batch and the
conditional writes make the second pass change nothing twice. Apps without rules pay nothing more.
For an app with a lifecycle, the funnel counts the batch's lifecycle steps its message had not counted
(mars_common.funnel.on_stored, docs/FUNNEL.md): also after the events, also safe to run twice."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import alerts, funnel
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import Event
from mars_common.store import get_lifecycle, upsert_message
from mars_common.timeline import Lifecycle

logger = Logger(service="mars-store")
metrics, tracer = m.for_service("mars-store")
# An app's lifecycle (its retention, its rules), kept by a warm environment for LIFECYCLE_TTL_SECONDS:
# reading AppsTable once per invocation was one GetItem per stored message in a busy pipeline (bench (b)).
# A changed retention or rule applies within this long (docs/ARCHITECTURE.md, "Retention").
LIFECYCLE_TTL_SECONDS = 60.0
RETENTION_TTL_SECONDS = LIFECYCLE_TTL_SECONDS  # its older name
_lifecycles: dict[str, tuple[float, Lifecycle | None]] = {}


def lifecycle_of(app_id: str) -> Lifecycle | None:
    now = time.monotonic()
    cached = _lifecycles.get(app_id)
    if cached is None or now - cached[0] > LIFECYCLE_TTL_SECONDS:
        cached = (now, get_lifecycle(settings().apps_table, app_id))
        _lifecycles[app_id] = cached
    return cached[1]


def retention_days(app_id: str) -> int:
    cfg = settings()
    lifecycle = lifecycle_of(app_id)
    return lifecycle.retention(cfg.retention_days) if lifecycle else cfg.retention_days


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    cfg = settings()
    results: list[dict[str, Any]] = []
    stored = duplicates = alert_writes = funnel_writes = 0
    for message in event.get("messages", []):
        try:
            events = [Event.from_dict(raw) for raw in message["events"]]
            app_id = message["app_id"]
            days = retention_days(app_id)
            with m.timed(metrics, m.STORE_LATENCY):
                res = upsert_message(cfg.messages_table, app_id, message["message_id"], events, days, cfg.events_table)
            lifecycle = lifecycle_of(app_id)
            if cfg.alerts_table and lifecycle is not None and (lifecycle.has_rules or res.unstuck):
                alert_writes += alerts.on_stored(cfg.alerts_table, app_id, message["message_id"],
                                                 [{"event": e.event, "created_at": e.created_at} for e in events],
                                                 lifecycle, int(time.time()) + days * 86400, unstuck=res.unstuck)
            if cfg.funnel_table and lifecycle is not None and lifecycle.events:
                funnel_writes += funnel.on_stored(cfg.funnel_table, app_id, message["message_id"],
                                                  [{"event": e.event, "created_at": e.created_at} for e in events],
                                                  lifecycle, int(time.time()) + days * 86400)
        except Exception as exc:  # one message's failure must not fail its neighbours
            logger.exception("upsert failed", extra={"app_id": message.get("app_id"),
                                                     "message_id": message.get("message_id")})
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        stored += res.stored
        duplicates += res.duplicates
        results.append({"ok": True, "stored": res.stored, "duplicates": res.duplicates})
    failed = sum(1 for r in results if not r["ok"])
    m.count(metrics, m.BATCH_SIZE, len(results))
    m.count(metrics, m.EVENTS_STORED, stored)
    m.count(metrics, m.DUPLICATES_DROPPED, duplicates)
    m.count(metrics, m.STORE_FAILED, failed)
    logger.info("stored", extra={"messages": len(results), "events_stored": stored, "duplicates_dropped": duplicates,
                                 "failed": failed, "alert_writes": alert_writes,
                                 "funnel_writes": funnel_writes})
    return {"results": results}
