"""StoreFunction: idempotent upserts (a short timeline: one UpdateItem; a long one: its pages, then its
summary); reports which messages failed, so the aggregator has them redelivered."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import Event
from mars_common.store import get_lifecycle, upsert_message

logger = Logger(service="mars-store")
metrics, tracer = m.for_service("mars-store")
# An app's retention, kept by a warm environment for RETENTION_TTL_SECONDS: reading AppsTable once per
# invocation was one GetItem per stored message in a busy pipeline (bench (b)). A changed retention
# applies within this long (docs/ARCHITECTURE.md, "Retention").
RETENTION_TTL_SECONDS = 60.0
_retention: dict[str, tuple[float, int]] = {}


def retention_days(app_id: str) -> int:
    cfg = settings()
    now = time.monotonic()
    cached = _retention.get(app_id)
    if cached is None or now - cached[0] > RETENTION_TTL_SECONDS:
        lifecycle = get_lifecycle(cfg.apps_table, app_id)
        cached = (now, lifecycle.retention(cfg.retention_days) if lifecycle else cfg.retention_days)
        _retention[app_id] = cached
    return cached[1]


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    cfg = settings()
    results: list[dict[str, Any]] = []
    stored = duplicates = 0
    for message in event.get("messages", []):
        try:
            events = [Event.from_dict(raw) for raw in message["events"]]
            app_id = message["app_id"]
            with m.timed(metrics, m.STORE_LATENCY):
                res = upsert_message(cfg.messages_table, app_id, message["message_id"], events,
                                     retention_days(app_id), cfg.events_table)
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
                                 "failed": failed})
    return {"results": results}
