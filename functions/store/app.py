"""StoreFunction: idempotent upserts (a short timeline: one UpdateItem; a long one: its pages, then its
summary); reports which messages failed, so the aggregator has them redelivered."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common.config import settings
from mars_common.events import Event
from mars_common.store import upsert_message

logger = Logger(service="mars-store")


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    cfg = settings()
    results: list[dict[str, Any]] = []
    stored = duplicates = 0
    for message in event.get("messages", []):
        try:
            events = [Event.from_dict(raw) for raw in message["events"]]
            res = upsert_message(cfg.messages_table, message["app_id"], message["message_id"], events,
                                 cfg.retention_days, cfg.events_table)
        except Exception as exc:  # one message's failure must not fail its neighbours
            logger.exception("upsert failed", extra={"app_id": message.get("app_id"),
                                                     "message_id": message.get("message_id")})
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]})
            continue
        stored += res.stored
        duplicates += res.duplicates
        results.append({"ok": True, "stored": res.stored, "duplicates": res.duplicates})
    logger.info("stored", extra={"messages": len(results), "events_stored": stored, "duplicates_dropped": duplicates,
                                 "failed": sum(1 for r in results if not r["ok"])})
    return {"results": results}
