"""Enqueueing into the sharded FIFO queues, and their statistics."""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aws_lambda_powertools import Logger

from . import aws
from .events import Event
from .sharding import dedup_id, message_key, shard

logger = Logger(child=True)
SQS_BATCH = 10
SEND_ATTEMPTS = 3


@dataclass(frozen=True)
class EnqueueFailure:
    index: int
    event_id: str
    code: str
    message: str


def enqueue(events: list[Event], queue_urls: tuple[str, ...]) -> list[EnqueueFailure]:
    """Sends every event to its shard; returns the ones SQS refused after retries (never drops)."""
    by_queue: dict[int, list[tuple[int, Event]]] = defaultdict(list)
    for i, ev in enumerate(events):
        by_queue[shard(ev.app_id, ev.message_id, len(queue_urls))].append((i, ev))
    # One worker per queue sends that queue's chunks in order, so a message's events stay in order.
    jobs = [(queue_urls[q], items) for q, items in by_queue.items()]
    if len(jobs) == 1:
        return _send_queue(*jobs[0])
    failures: list[EnqueueFailure] = []
    with ThreadPoolExecutor(max_workers=min(10, len(jobs))) as pool:
        for result in pool.map(lambda job: _send_queue(*job), jobs):
            failures.extend(result)
    return failures


def _send_queue(url: str, items: list[tuple[int, Event]]) -> list[EnqueueFailure]:
    failures: list[EnqueueFailure] = []
    for k in range(0, len(items), SQS_BATCH):
        failures.extend(send_batch(url, items[k:k + SQS_BATCH]))
    return failures


def _entry(n: int, ev: Event) -> dict[str, Any]:
    return {
        "Id": str(n),
        "MessageBody": ev.to_json(),
        "MessageGroupId": message_key(ev.app_id, ev.message_id),
        "MessageDeduplicationId": dedup_id(ev.app_id, ev.message_id, ev.event_id),
    }


def _send(url: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """SendMessageBatch's answer for any number of entries. A lone entry (POST /api/event, a gRPC
    collectEvent) goes as SendMessage: the same guarantee for less work on SQS's side; if it raises,
    the caller retries it like a batch call that failed as a whole."""
    sqs = aws.client("sqs")
    if len(entries) != 1:
        return sqs.send_message_batch(QueueUrl=url, Entries=entries)
    entry = entries[0]
    resp = sqs.send_message(QueueUrl=url, **{k: v for k, v in entry.items() if k != "Id"})
    return {"Successful": [{"Id": entry["Id"], "MessageId": resp["MessageId"]}], "Failed": []}


def send_batch(url: str, items: list[tuple[int, Event]]) -> list[EnqueueFailure]:
    """One SendMessageBatch (SendMessage for one); entries SQS fails are retried, then reported
    (never silently lost)."""
    pending = {str(n): item for n, item in enumerate(items)}
    last_error: dict[str, tuple[str, str]] = {}
    given_up: set[str] = set()  # sender faults: retrying cannot help
    for _attempt in range(SEND_ATTEMPTS):
        retry = sorted((key for key in pending if key not in given_up), key=int)
        if not retry:
            break
        # Keep order within a message group: FIFO order follows the order of entries.
        entries = [_entry(int(key), pending[key][1]) for key in retry]
        try:
            resp = _send(url, entries)
        except Exception as exc:  # a whole-call failure: every entry is still pending
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
            last_error.update({key: (code, str(exc)) for key in retry})
            logger.warning("send to SQS failed", extra={"queue_url": url, "error": str(exc)})
            continue
        for ok in resp.get("Successful", []):
            pending.pop(ok["Id"], None)
        for bad in resp.get("Failed", []):
            last_error[bad["Id"]] = (bad.get("Code", "Failed"), bad.get("Message", ""))
            if bad.get("SenderFault"):
                given_up.add(bad["Id"])
    return [EnqueueFailure(i, ev.event_id, *last_error.get(key, ("Unknown", "not enqueued")))
            for key, (i, ev) in sorted(pending.items(), key=lambda kv: int(kv[0]))]


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def stats(queue_urls: tuple[str, ...], dlq_urls: tuple[str, ...]) -> dict[str, Any]:
    """Depth and in-flight from SQS; oldest age from CloudWatch's AWS/SQS metric, as AWS publishes it."""
    urls = list(queue_urls) + list(dlq_urls)
    sqs = aws.client("sqs")

    def attrs(url: str) -> dict[str, Any]:
        got = sqs.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return {"name": queue_name(url), "visible": int(got.get("ApproximateNumberOfMessages", 0)),
                "in_flight": int(got.get("ApproximateNumberOfMessagesNotVisible", 0))}

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(urls)))) as pool:
        rows = list(pool.map(attrs, urls))
    ages = _oldest_ages([r["name"] for r in rows])
    for row in rows:
        row["oldest_age_seconds"] = ages.get(row["name"])
    queues, dead = rows[: len(queue_urls)], rows[len(queue_urls):]
    return {"queues": queues, "dead_letter": dead, "event_collector_q": sum(r["visible"] for r in queues)}


def _oldest_ages(names: list[str]) -> dict[str, float | None]:
    """Latest ApproximateAgeOfOldestMessage per queue; None when CloudWatch has no datapoint yet."""
    now = datetime.now(UTC)
    queries = [{
        "Id": f"q{i}",
        "MetricStat": {"Metric": {"Namespace": "AWS/SQS", "MetricName": "ApproximateAgeOfOldestMessage",
                                  "Dimensions": [{"Name": "QueueName", "Value": name}]},
                       "Period": 60, "Stat": "Maximum"},
        "ReturnData": True,
    } for i, name in enumerate(names)]
    try:
        resp = aws.client("cloudwatch").get_metric_data(
            MetricDataQueries=queries, StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1),
            ScanBy="TimestampDescending")
    except Exception as exc:  # stats must still answer when metrics are unavailable
        logger.warning("get_metric_data failed", extra={"error": str(exc)})
        return {}
    out: dict[str, float | None] = {}
    for result in resp.get("MetricDataResults", []):
        values = result.get("Values") or []
        out[names[int(result["Id"][1:])]] = float(values[0]) if values else None
    return out
