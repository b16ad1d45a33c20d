"""AggregatorFunction: an SQS FIFO batch → one store call per batch, grouped by message.

The store is invoked synchronously, so its failures come back here as batch item failures and
SQS redelivers them (docs/ARCHITECTURE.md, "the handoff").
"""

from __future__ import annotations

import json
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import aws
from mars_common import metrics as m
from mars_common.aggregate import batch_item_failures, group_records
from mars_common.config import settings

logger = Logger(service="mars-aggregator")
metrics, tracer = m.for_service("mars-aggregator")


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    batch = group_records(event.get("Records", []))
    for rid, why in batch.poison.items():
        logger.error("poison record", extra={"record_id": rid, "error": why})
    failed: set[int] = set()
    if batch.groups:
        failed = _store(batch)
    failures = batch_item_failures(batch, failed)
    m.count(metrics, m.BATCH_SIZE, len(event.get("Records", [])))
    m.count(metrics, m.POISON_RECORDS, len(batch.poison))
    m.count(metrics, m.STORE_FAILED, len(failed))
    logger.info("batch aggregated", extra={"records": len(event.get("Records", [])),
                                           "messages": len(batch.groups), "failed_records": len(failures)})
    return {"batchItemFailures": failures}


def _store(batch: Any) -> set[int]:
    """Indexes of the message groups the store did not persist (all of them if the call failed)."""
    everything = set(range(len(batch.groups)))
    try:
        resp = aws.client("lambda").invoke(
            FunctionName=settings().store_function,
            InvocationType="RequestResponse",
            Payload=json.dumps({"messages": [g.payload() for g in batch.groups]}).encode(),
        )
        body = json.loads(resp["Payload"].read() or b"null")
    except Exception as exc:  # the store is unreachable: every group comes back
        logger.exception("store invoke failed", extra={"error": str(exc)})
        return everything
    if resp.get("FunctionError") or not isinstance(body, dict) or len(body.get("results", [])) != len(batch.groups):
        logger.error("store failed", extra={"function_error": resp.get("FunctionError"), "payload": str(body)[:500]})
        return everything
    return {i for i, r in enumerate(body["results"]) if not r.get("ok")}
