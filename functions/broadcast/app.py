"""BroadcastFunction: every stored change of a timeline (MessagesTable stream) goes to the
connections subscribed to that message or its app. A record whose push failed is reported back
(ReportBatchItemFailures) so the stream retries it; a gone connection is removed, not retried.

A long timeline's item is a summary: its frame carries the events the change added (read from the
pages the commit names) and the summary, never the whole history (`truncated` says how many exist)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import live
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.store import (
    EVENT_PREFIX,
    STUCK_AT,
    event_count,
    get_lifecycle,
    is_paged,
    last_commit_events,
    timeline_changed,
    to_timeline,
)
from mars_common.timeline import Lifecycle

logger = Logger(service="mars-broadcast")
metrics, tracer = m.for_service("mars-broadcast")
processor = BatchProcessor(event_type=EventType.DynamoDBStreams)
_lifecycles: dict[str, Lifecycle | None] = {}
# Subscribers read once per stream batch: a batch often holds many changes of one message (or app).
_app_subscribers: dict[str, set[str]] = {}
_message_subscribers: dict[tuple[str, str], set[str]] = {}
# this invocation's push outcomes, summed: one value per metric per batch, not one per record
_pushes: Counter[str] = Counter()
# A batch's subscriber lookups run side by side (the same Queries, not one after another)
_LOOKUPS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="subscribers")
# _prefetch's reading of each record (by sequence number), so record_handler does not deserialise an
# image twice (an inline timeline's item is up to hundreds of KB)
_changes: dict[str, tuple[dict[str, Any], dict[str, Any]] | None] = {}


class PushFailedError(Exception):
    pass


def _lifecycle(app_id: str) -> Lifecycle | None:
    if app_id not in _lifecycles:
        _lifecycles[app_id] = get_lifecycle(settings().apps_table, app_id)
    return _lifecycles[app_id]


def _subscribers(app_id: str, message_id: str) -> set[str]:
    table = settings().connections_table
    if app_id not in _app_subscribers:
        _app_subscribers[app_id] = live.app_subscribers(table, app_id)
    if (app_id, message_id) not in _message_subscribers:
        _message_subscribers[(app_id, message_id)] = live.message_subscribers(table, app_id, message_id)
    return _app_subscribers[app_id] | _message_subscribers[(app_id, message_id)]


def _change(record: DynamoDBRecord) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The new and old images of a record that changed a timeline, else None (nothing to push)."""
    ddb = record.dynamodb
    if ddb is None or record.event_name is None or record.event_name.name == "REMOVE":
        return None
    new = ddb.new_image or {}
    old = ddb.old_image or {}
    if not timeline_changed(new, old):
        return None  # a duplicate delivery touched updated_at only: nothing a subscriber has not seen
    return new, old


def _prefetch(records: list[dict[str, Any]]) -> None:
    """Reads the subscribers of every changed message of the batch at once, 8 Queries at a time — the
    same Queries record_handler would make one after another (a batch of 100 single-event messages
    waited on 100 round trips). A lookup that fails here is left out: the record's own lookup repeats it
    and fails that record, reported to the stream, as before."""
    pairs: set[tuple[str, str]] = set()
    for raw in records:
        try:
            record = DynamoDBRecord(raw)
            if record.dynamodb is None:
                continue
            change = _changes[str(record.dynamodb.sequence_number)] = _change(record)
            if change is not None:
                pairs.add((change[0]["app_id"], change[0]["message_id"]))
        except Exception:  # noqa: BLE001 (a record that cannot be read fails in record_handler, reported there)
            continue
    table = settings().connections_table

    def app_lookup(app_id: str) -> None:
        _app_subscribers[app_id] = live.app_subscribers(table, app_id)

    def message_lookup(pair: tuple[str, str]) -> None:
        _message_subscribers[pair] = live.message_subscribers(table, *pair)

    futures = [_LOOKUPS.submit(app_lookup, a) for a in {a for a, _ in pairs}]
    futures += [_LOOKUPS.submit(message_lookup, pair) for pair in pairs]
    for future in futures:
        future.exception()  # waits; the error, if any, comes again from the record's own lookup


def record_handler(record: DynamoDBRecord) -> None:
    seq = str(record.dynamodb.sequence_number) if record.dynamodb else ""
    change = _changes.pop(seq) if seq in _changes else _change(record)
    if change is None:
        return
    new, old = change
    went_stuck = STUCK_AT in new and STUCK_AT not in old
    committed = is_paged(new) and new.get("seq") != old.get("seq")
    new_ids = {k[len(EVENT_PREFIX):] for k in new if k.startswith(EVENT_PREFIX) and k not in old}
    cfg = settings()
    app_id, message_id = new["app_id"], new["message_id"]
    targets = _subscribers(app_id, message_id)
    if not targets:
        return
    timeline = to_timeline(new, _lifecycle(app_id))
    if is_paged(new):
        added = last_commit_events(cfg.events_table, new) if committed else []
        timeline["events"] = added
        new_ids = {e["event_id"] for e in added}
    frame = live.timeline_frame(timeline, new_ids)
    if is_paged(new):
        total = event_count(new)
        frame["event_count"] = total
        frame["truncated"] = {"events_total": total, "events_sent": len(frame["events"])}
    if went_stuck:
        frame["alert"] = {"type": "stuck", "since": new[STUCK_AT]}
    result = live.push(cfg.websocket_management_url, cfg.connections_table, targets, frame)
    _pushes.update({m.WEBSOCKET_PUSHES: result.delivered, m.GONE_CONNECTIONS: result.stale, m.PUSH_FAILED: result.failed})
    logger.info("pushed", extra={"app_id": app_id, "message_id": message_id, "new_events": len(new_ids),
                                 "delivered": result.delivered, "stale_removed": result.stale,
                                 "failed": result.failed, "truncated": "truncated" in frame})
    if result.failed:
        raise PushFailedError(f"{result.failed} of {len(targets)} push(es) failed")


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    # a lifecycle or a subscription may change between invocations; within one batch each is read once
    # (a client that subscribes during a batch gets the next change: the batch takes milliseconds)
    _lifecycles.clear()
    _app_subscribers.clear()
    _message_subscribers.clear()
    _changes.clear()
    _pushes.clear()
    try:
        _prefetch(list(event.get("Records") or []))
        return dict(process_partial_response(event=event, record_handler=record_handler, processor=processor,
                                             context=context))
    finally:
        m.count(metrics, m.BATCH_SIZE, len(event.get("Records") or []))
        for name in (m.WEBSOCKET_PUSHES, m.GONE_CONNECTIONS, m.PUSH_FAILED):
            m.count(metrics, name, _pushes[name])
