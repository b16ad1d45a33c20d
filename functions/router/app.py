"""RouterFunction: events from producers on SNS or the SQS ingest queue → validated → the FIFO queues.

The same validation and sharding as the HTTP API (the layer). A message that is not valid goes to
the ingest dead-letter queue with the reason, at once: retrying cannot fix it, and it must never fail
its neighbours. A message whose events could not be enqueued is retried (SQS: a batch item failure;
SNS: the invocation fails and Lambda retries it, then its DeadLetterQueue).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import aws
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import ValidationError, format_ts, parse_events, parse_timestamp, utc_now
from mars_common.queues import enqueue

logger = Logger(service="mars-router")
metrics, tracer = m.for_service("mars-router")


class EnqueueFailedError(Exception):
    """Some events of an SNS notification were not enqueued: fail so that Lambda retries."""


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any] | None:
    records = event.get("Records", [])
    failures: list[dict[str, str]] = []
    counts = {"events": 0, "invalid": 0, "retry": 0}
    for record in records:
        body, received_at, source = _unwrap(record)
        try:
            events = parse_events(json.loads(body), received_at=received_at)
        except (ValueError, ValidationError) as exc:  # JSONDecodeError is a ValueError
            counts["invalid"] += 1
            m.count_by(metrics, m.INGEST_REJECTED, "reason",
                       "VALIDATION_ERROR" if isinstance(exc, ValidationError) else "INVALID_JSON")
            _dead_letter(body, exc, source)
            continue
        failed = enqueue(events, settings().events_queue_urls)
        if failed:
            counts["retry"] += 1
            m.count(metrics, m.ENQUEUE_FAILED, len(failed))
            if source == "sns":
                raise EnqueueFailedError("events of an SNS notification were not enqueued")
            failures.append({"itemIdentifier": record["messageId"]})
            continue
        counts["events"] += len(events)
    m.count(metrics, m.BATCH_SIZE, len(records))
    m.count(metrics, m.EVENTS_ACCEPTED, counts["events"])
    logger.info("routed", extra={"records": len(records), **counts})
    return {"batchItemFailures": failures} if records and "Sns" not in records[0] else None


def _unwrap(record: dict[str, Any]) -> tuple[str, str, str]:
    """(body, when the producer sent it, source). The send time stands in for a missing created_at,
    so a redelivered or retried message derives the same event ids: it is stored once."""
    if "Sns" in record:
        sns = record["Sns"]
        try:
            sent = parse_timestamp(str(sns.get("Timestamp") or ""))
        except ValueError:
            sent = utc_now()
        return str(sns.get("Message") or ""), sent, "sns"
    millis = int(record.get("attributes", {}).get("SentTimestamp") or 0)
    sent = format_ts(datetime.fromtimestamp(millis / 1000, UTC)) if millis else utc_now()
    return str(record.get("body") or ""), sent, "sqs"


def _dead_letter(body: str, exc: Exception, source: str) -> None:
    if isinstance(exc, ValidationError):
        reason = json.dumps([e.as_dict() for e in exc.errors])[:900]
    else:
        reason = f"not JSON: {exc}"[:900]
    logger.warning("invalid producer message", extra={"source": source, "reason": reason})
    aws.client("sqs").send_message(
        QueueUrl=settings().ingest_dead_letter_queue_url, MessageBody=body or "(empty)",
        MessageAttributes={"ErrorMessage": {"DataType": "String", "StringValue": reason or "invalid"},
                           "Source": {"DataType": "String", "StringValue": source}})
