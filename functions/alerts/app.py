"""AlertsFunction: the AlertsTable stream's consumer. Each record whose state changed to `firing` or
`resolved` is one transition: it goes out through mars_common.alerts.notify (AlertsTopic, then one
delivery per destination of the app: docs/DESTINATIONS.md) and, as an `alert` frame, to the websocket
subscribers of its app and message (DESIGN §2).

At least once, never lost: a record whose notify failed is reported back (ReportBatchItemFailures)
and retried; after the mapping's retries it goes to AlertsFailureQueue. The websocket push is best
effort and never retried (a retry would notify twice); a client that missed it reads GET /api/alerts."""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import alerts, live
from mars_common import metrics as m
from mars_common.config import settings

logger = Logger(service="mars-alerts")
metrics, tracer = m.for_service("mars-alerts")
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)


def transition(record: DynamoDBRecord) -> dict[str, Any] | None:
    """The alert a record moved to firing or resolved, or None (pending, met, a due time moved, a replay)."""
    ddb = record.dynamodb
    if ddb is None or record.event_name is None or record.event_name.name == "REMOVE":
        return None
    new, old = ddb.new_image or {}, ddb.old_image or {}
    if new.get("state") not in alerts.STATES or new.get("state") == old.get("state"):
        return None
    return alerts.public(new, settings().dashboard_url)


def record_handler(record: DynamoDBRecord) -> None:
    alert = transition(record)
    if alert is None:
        return
    alerts.notify(alert)  # raises: the record is retried
    m.count_by(metrics, m.ALERT_TRANSITIONS, "state", alert["state"])
    cfg = settings()
    pushed = live.PushResult()
    try:
        targets = live.subscribers(cfg.connections_table, alert["app_id"], alert["message_id"])
        pushed = live.push(cfg.websocket_management_url, cfg.connections_table, targets, alert)
    except Exception:  # best effort (see the module's doc): logged, not retried
        logger.exception("alert push failed", extra={"alert_id": alert["alert_id"]})
    m.count(metrics, m.WEBSOCKET_PUSHES, pushed.delivered)
    m.count(metrics, m.GONE_CONNECTIONS, pushed.stale)
    logger.info("alert", extra={"alert_id": alert["alert_id"], "app_id": alert["app_id"],
                                "message_id": alert["message_id"], "rule": alert["rule"], "state": alert["state"],
                                "delivered": pushed.delivered, "stale_removed": pushed.stale, "failed": pushed.failed})


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    m.count(metrics, m.BATCH_SIZE, len(event.get("Records") or []))
    return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                         context=context))
