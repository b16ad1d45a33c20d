"""DeliveryFunction: sends alert deliveries from AlertDeliveryQueue (one SQS message = one alert for one
destination), with exponential backoff, and moves what the retry window could not deliver to
AlertDeliveryDeadLetterQueue (with the last error), where `mars redrive --queue delivery` finds it.

A failed attempt changes the message's visibility to the next backoff (mars_common.delivery.next_visibility,
from ApproximateReceiveCount and the message's first_attempt_at) and is reported as a batch item failure;
each such attempt is a WARNING line, a dead-lettered delivery an ERROR line. The records of a batch are
sent concurrently, so one slow receiver holds up no other destination's delivery for long.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import aws, delivery, destinations
from mars_common import metrics as m
from mars_common.config import settings

logger = Logger(service="mars-delivery")
metrics, tracer = m.for_service("mars-delivery")
# outcomes of this invocation's deliveries (records run on threads): the AlertDeliveries metric
_outcomes: Counter[str] = Counter()
_outcomes_lock = threading.Lock()


def _tally(outcome: str, done: bool) -> bool:
    with _outcomes_lock:
        _outcomes[outcome] += 1
    return done
MAX_REQUEST_SECONDS = 10.0  # one receiver's answer; the function's timeout bounds it further
MARGIN_SECONDS = 1.5  # left to report the outcome (visibility change, DLQ send) before the timeout


def _dead_letter(record: dict[str, Any], reason: str, attempts: int, destination_id: str) -> bool:
    """The message, unchanged, on the DLQ with why it is there; True when it was sent."""
    try:
        aws.client("sqs").send_message(
            QueueUrl=settings().alert_delivery_dead_letter_queue_url, MessageBody=record["body"],
            MessageAttributes={"ErrorMessage": {"DataType": "String", "StringValue": reason[:1000] or "-"},
                               "DestinationId": {"DataType": "String", "StringValue": destination_id or "-"},
                               "Attempts": {"DataType": "Number", "StringValue": str(attempts)}})
        return True
    except Exception as exc:
        logger.error("delivery DLQ send failed; the delivery stays on the queue", extra={
            "destination_id": destination_id, "error": f"{type(exc).__name__}: {exc}"[:300]})
        return False


def handle(record: dict[str, Any], deadline: float) -> bool:
    """One delivery; True when the message is done with (delivered, dead-lettered or its destination gone)."""
    cfg = settings()
    attempt = int(record.get("attributes", {}).get("ApproximateReceiveCount", "1"))
    try:
        msg = json.loads(record["body"])
        alert, app_id, destination_id = msg["alert"], str(msg["app_id"]), str(msg["destination_id"])
        msg_id, first_attempt_at = str(msg["webhook_id"]), float(msg["first_attempt_at"])
        if not isinstance(alert, dict):
            raise TypeError("alert is not an object")
    except (ValueError, KeyError, TypeError) as exc:  # cannot ever be delivered: no retries
        logger.error("malformed delivery message; dead-lettered", extra={"error": str(exc)[:300],
                                                                         "sqs_message_id": record.get("messageId")})
        sent = _dead_letter(record, f"malformed delivery message: {exc}", attempt, "")
        return _tally("dead_lettered" if sent else "dlq_send_failed", sent)
    where = {"destination_id": destination_id, "app_id": app_id, "alert_id": alert.get("alert_id"),
             "webhook_id": msg_id, "attempt": attempt}
    dest = destinations.get(cfg.destinations_table, app_id, destination_id)
    if dest is None:
        logger.warning("destination deleted; delivery dropped", extra=where)
        return _tally("dropped", True)
    if dest["type"] == "sns":
        outcome = delivery.deliver_sns(alert, msg_id, str(dest["topic_arn"]))
    else:
        secret = destinations.secret_of(cfg.destination_secrets_table, destination_id)
        if secret is None:  # created with its secret first: only a half-done delete leaves this
            logger.warning("destination has no secret (being deleted); delivery dropped", extra=where)
            return _tally("dropped", True)
        timeout = max(1.0, min(MAX_REQUEST_SECONDS, deadline - time.monotonic() - MARGIN_SECONDS))
        outcome = delivery.deliver_webhook(alert, msg_id, str(secret["url"]), str(secret["secret"]),
                                           str(dest.get("format", "standard")), timeout=timeout,
                                           allow_loopback=cfg.allow_loopback_destinations)
    where.update(type=dest["type"], url_host=outcome.host, status=outcome.status)
    if outcome.ok:
        logger.info("alert delivered", extra=where)
        return _tally("delivered", True)
    delay = delivery.next_visibility(attempt, first_attempt_at, time.time(), cfg.delivery_backoff_seconds,
                                     cfg.delivery_retry_seconds)
    if delay is None:
        logger.error("alert delivery failed for the whole retry window; dead-lettered", extra={
            **where, "error": outcome.error, "retry_window_seconds": cfg.delivery_retry_seconds})
        sent = _dead_letter(record, outcome.error, attempt, destination_id)
        return _tally("dead_lettered" if sent else "dlq_send_failed", sent)
    try:
        aws.client("sqs").change_message_visibility(QueueUrl=cfg.alert_delivery_queue_url,
                                                    ReceiptHandle=record["receiptHandle"], VisibilityTimeout=delay)
    except Exception as exc:  # it still comes back, after the queue's visibility timeout
        where["visibility_error"] = f"{type(exc).__name__}: {exc}"[:300]
    logger.warning("alert delivery failed; will retry", extra={**where, "error": outcome.error,
                                                                 "retry_in_seconds": delay})
    return _tally("retried", False)


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    records = event.get("Records", [])
    with _outcomes_lock:
        _outcomes.clear()
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
    if not records:
        return {"batchItemFailures": []}

    def run(record: dict[str, Any]) -> bool:
        try:
            return handle(record, deadline)
        except Exception:
            logger.exception("delivery crashed; retried after the visibility timeout",
                             extra={"sqs_message_id": record.get("messageId")})
            return _tally("crashed", False)

    with ThreadPoolExecutor(max_workers=min(10, len(records))) as pool:
        done = list(pool.map(run, records))
    m.count(metrics, m.BATCH_SIZE, len(records))
    with _outcomes_lock:
        for outcome, n in sorted(_outcomes.items()):
            m.count_by(metrics, m.ALERT_DELIVERIES, "outcome", outcome, n)
    return {"batchItemFailures": [{"itemIdentifier": r["messageId"]} for r, ok in zip(records, done) if not ok]}
