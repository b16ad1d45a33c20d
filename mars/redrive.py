"""`mars redrive`: dead-lettered messages back into the pipeline, each message group in order.

    mars redrive [--queue events|ingest|delivery|traces|all] [--dry-run] [--json] [--limit N] [--include-invalid]
                 [--stack-name NAME --state-dir DIR | --stack-outputs FILE]

The dead-letter queues, and what happens to each message in them
----------------------------------------------------------------
**Events DLQ** (`DeadLetterQueueUrl`, FIFO, fed by the 10 event queues' redrive policy). Each body
is one event as it was enqueued (`Event.to_json`).
  * A body that `Event.from_json` reads is sent back to the FIFO queue the one sharding function
    picks (`shard(app_id, message_id, len(EventsQueueUrls))`), with its `MessageGroupId`
    (`message_key`) and a *new* `MessageDeduplicationId` (see `redrive_dedup_id`).
  * A body that is not a valid event cannot be routed (no app_id/message_id to shard on) and would
    be poison again: it is **kept** in the DLQ ("invalid") with the reason, never deleted.

**Ingest DLQ** (`IngestDeadLetterQueueUrl`, standard). Three writers put messages there; the
message attributes tell them apart, checked in this order:
  1. Lambda's asynchronous-invocation DLQ of RouterFunction (an SNS delivery that failed its 3
     attempts): attributes `RequestID` **and** `ErrorCode` (Lambda always sets both; with
     `ErrorMessage`). The body is the invocation *event* `{"Records": [{"Sns": {"Message": …}}]}`:
     each record's `Sns.Message` is sent to `IngestQueueUrl` (the router reads SNS and SQS alike).
     A body of another shape is **kept** ("unrecognised": look at it).
  2. RouterFunction itself, for a message that is not a valid event (functions/router/app.py
     `_dead_letter`): attributes `ErrorMessage` and `Source` (`sns` or `sqs`), no `RequestID`.
     Retrying cannot fix it, so it is **kept** ("invalid", with the router's reason) — unless
     `--include-invalid` (e.g. after a validation rule was relaxed): then it is sent back to
     `IngestQueueUrl` without those two attributes (it must not look refused if it fails again).
  3. Anything else was moved there by IngestQueue's redrive policy (`maxReceiveCount`): the router
     failed on it for a transient reason (it could not enqueue, it crashed or timed out). It is
     sent back to `IngestQueueUrl` with its body and message attributes.
  When a producer omitted `created_at`, the router uses the send time instead (the SNS `Timestamp`,
  the SQS `SentTimestamp`), so that a retried message derives the same event ids. A redriven
  message has a new send time, so for (1) and (3) a missing `created_at` is filled in with the
  original send time (the SNS record's `Timestamp`; the DLQ message's `SentTimestamp`, which SQS
  keeps when it dead-letters a message): events enqueued before the failure are not duplicated.
  That is the only change made to a body.

**Trace export failures** (`TraceExportFailureQueueUrl`, standard; only on a stack with
`OtlpExportEndpoint`, docs/OBSERVABILITY.md). Nothing is resent as it was: the *current* traces of the
messages a record names are exported again by invoking `TraceExportFunction` (output
`TraceExportFunctionName`) with `{"mars_trace_export": [{"app_id", "message_id"}, …]}`.
  * The exporter's record of a batch the collector refused: `{"reason": "refused", "messages": […]}`.
  * Lambda's on-failure record of a stream batch (`DDBStreamBatchInfo`: shard, first and last sequence
    numbers): the batch's records are read back from the stream; once the stream no longer holds them
    (24 h) the record is **kept** ("expired").
  A failed invocation, or a collector that refuses again, keeps the record ("send_failed").

**Delivery DLQ** (`AlertDeliveryDeadLetterQueueUrl`, standard; a stack without it is skipped by
`--queue all`). DeliveryFunction puts there an alert delivery whose retry window ended (attributes
`ErrorMessage`, `DestinationId`, `Attempts`), and AlertDeliveryQueue's redrive policy one whose handling
crashed 100 times. Each body is one delivery (`mars_common.delivery.fan_out`'s message): it is sent back
to `AlertDeliveryQueueUrl` with `first_attempt_at` set to now — a fresh retry window — and without those
attributes; its `webhook_id` is kept, so a receiver that got it after all can dedupe. A body that is not
a delivery is **kept** ("invalid").

Order and safety
----------------
Messages are received 10 at a time, handled in receive order, sent one by one, and deleted from the
DLQ only after their send succeeded (at least once: a crash between the two duplicates a message,
never loses one; the store is idempotent). A FIFO DLQ returns a group's messages in order and none
of a group while one of its messages is in flight, so re-sending in receive order keeps each group's
order. When a send fails, the later messages of that group are not sent either ("blocked"). Messages
that stay ("kept") are held until the end of the run, then made visible again. Consequently the
messages of a FIFO group that follow a kept message are reached only if they came in the same
receive: the rest stay in the DLQ, and the summary's `remaining` says how many messages are left.

Every redriven message carries the attribute `MarsRedriveRun` (this run's id): one that comes back to
the DLQ during the same run (still failing) is kept ("returned") instead of being sent round again.

`--dry-run` receives with a short visibility timeout, sends and deletes nothing, reports what would
move where, and makes every message it received visible again. On the FIFO events DLQ it sees only
what one receive returns of each message group (SQS hides a group's later messages while earlier ones
are held, and a dry run holds everything it has seen): the rest is reported as not inspected.

Exit codes: 0 done (also when there was nothing to do, or only invalid messages were kept); 1 some
messages could not be moved (kept for another reason than "invalid", or a delete or receive failed);
2 no running stack, unusable `--stack-outputs`, or bad usage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from mars import stacks
from mars.stacks import UsageError, read_outputs_file

RECEIVE_BATCH = 10  # SQS's maximum
RECEIVE_WAIT_SECONDS = 1  # long polling asks every SQS server: an empty answer means empty (for what is visible)
VISIBILITY_SECONDS = 120  # a received message stays hidden while it is handled (kept ones: until the end)
DRY_RUN_VISIBILITY_SECONDS = 30
PROGRESS_EVERY = 100
RUN_ATTRIBUTE = "MarsRedriveRun"
MAX_ATTRIBUTES = 10  # SQS's limit of message attributes per message

DLQS = ("events", "ingest")  # every Mars stack has these two; `all` adds the optional ones the stack has
DELIVERY = "delivery"  # AlertDeliveryDeadLetterQueue (a stack made before alert destinations has none)
# DeliveryFunction's markers on a dead-lettered delivery (functions/delivery/app.py `_dead_letter`).
DELIVERY_ATTRIBUTES = ("ErrorMessage", "DestinationId", "Attempts")
TRACES = "traces"  # TraceExportFailureQueue: only on a stack that exports traces (OtlpExportEndpoint)
EXPIRED = "expired"
INVALID = "invalid"
SEND_FAILED = "send_failed"
BLOCKED = "blocked"
RETURNED = "returned"
UNRECOGNISED = "unrecognised"
# The router's markers on a message it refused (functions/router/app.py `_dead_letter`).
ROUTER_ATTRIBUTES = ("ErrorMessage", "Source")


# --- the stack ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Queues:
    events_dlq: str
    events: tuple[str, ...]
    ingest_dlq: str
    ingest: str
    traces_dlq: str = ""
    trace_function: str = ""
    delivery_dlq: str = ""
    delivery: str = ""

    def dlq(self, which: str) -> str:
        return {"events": self.events_dlq, "ingest": self.ingest_dlq, TRACES: self.traces_dlq,
                DELIVERY: self.delivery_dlq}[which]


def queues_from_outputs(outputs: dict[str, Any], which: Iterable[str]) -> Queues:
    which = tuple(which)
    if TRACES in which and not outputs.get("TraceExportFailureQueueUrl"):
        raise UsageError("the stack exports no traces (its OtlpExportEndpoint is empty): there is no trace failure queue")
    needed = {"events": ("DeadLetterQueueUrl", "EventsQueueUrls"), "ingest": ("IngestDeadLetterQueueUrl", "IngestQueueUrl"),
              TRACES: ("TraceExportFailureQueueUrl", "TraceExportFunctionName"),
              DELIVERY: ("AlertDeliveryDeadLetterQueueUrl", "AlertDeliveryQueueUrl")}
    missing = [name for dlq in which for name in needed[dlq] if not outputs.get(name)]
    if missing:
        raise UsageError(f"the stack's outputs have no {', '.join(missing)}: is this a Mars stack?")
    events = tuple(u.strip() for u in str(outputs.get("EventsQueueUrls", "")).split(",") if u.strip())
    return Queues(str(outputs.get("DeadLetterQueueUrl", "")), events, str(outputs.get("IngestDeadLetterQueueUrl", "")),
                  str(outputs.get("IngestQueueUrl", "")), str(outputs.get("TraceExportFailureQueueUrl", "")),
                  str(outputs.get("TraceExportFunctionName", "")),
                  delivery_dlq=str(outputs.get("AlertDeliveryDeadLetterQueueUrl", "")),
                  delivery=str(outputs.get("AlertDeliveryQueueUrl", "")))


def _region_of(url: str) -> str | None:
    m = re.match(r"https://sqs[.-]([a-z0-9-]+)\.amazonaws\.com", url)
    return m.group(1) if m else None


def connect(args: argparse.Namespace, which: Iterable[str]) -> tuple[Any, Queues]:
    clients, queues = connect_clients(args, which)
    return clients("sqs"), queues


def connect_clients(args: argparse.Namespace, which: Iterable[str]) -> tuple[Callable[[str], Any], Queues]:
    """(a client for a service, queues): a deployed stack's (--stack-outputs; credentials, region and endpoint from
    the AWS environment) or the running local stack's (its emulator endpoint, dummy credentials)."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=30)
    if args.stack_outputs:
        queues = queues_from_outputs(read_outputs_file(Path(args.stack_outputs)), which)
        session = boto3.session.Session()
        region = session.region_name or _region_of(queues.events_dlq or queues.ingest_dlq)
        if not region:
            raise UsageError("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION / a profile's region)")
        return partial(session.client, region_name=region, config=config), queues
    import io

    from samlocal.template import REGION

    said = io.StringIO()
    state = stacks.find(args, "--stack-outputs FILE for a deployed stack", err=said)
    if state is None:
        raise UsageError(said.getvalue().strip().removeprefix("mars: "))
    queues = queues_from_outputs(state["outputs"], which)
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                                    region_name=state.get("region") or REGION)

    def client(service: str) -> Any:  # the runtime serves Lambda's API itself, every other service its emulator
        url = state.get("lambda_endpoint") if service == "lambda" else stacks.endpoint(state, service)
        return session.client(service, endpoint_url=url, config=config)  # type: ignore[call-overload]  # any service
    return client, queues


# --- deciding what happens to one dead letter --------------------------------------------------------
@dataclass
class Plan:
    """What to do with one DLQ message: sends (in order), or keep it for a reason."""

    sends: list[dict[str, Any]] = field(default_factory=list)
    exports: list[tuple[str, str]] = field(default_factory=list)  # (app_id, message_id): re-export their traces
    kept: str | None = None
    why: str = ""


def keep(reason: str, why: str) -> Plan:
    return Plan(kept=reason, why=why)


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def redrive_dedup_id(dlq_message_id: str) -> str:
    """The MessageDeduplicationId of a redriven event: NOT the original one. SQS drops a FIFO send whose
    deduplication id it saw in the last 5 minutes — while reporting success — so an event dead-lettered
    soon after it was first sent would be "redriven" into nothing and then deleted from the DLQ: lost.
    Derived from the DLQ message's id, so a rerun after a crash between send and delete is deduplicated
    by SQS within the window; each new dead-lettering (a new message id) gets a new one. A duplicate
    that does get through is harmless: the store is idempotent (event ids)."""
    return hashlib.sha256(f"mars-redrive\x1f{dlq_message_id}".encode()).hexdigest()


def _attr(message: dict[str, Any], name: str) -> str | None:
    value = (message.get("MessageAttributes") or {}).get(name)
    return value.get("StringValue") if isinstance(value, dict) else None


def copy_attributes(message: dict[str, Any], run_id: str, drop: Iterable[str] = ()) -> dict[str, Any]:
    """The message's attributes as SendMessage takes them, plus this run's mark (when there is room)."""
    out: dict[str, Any] = {}
    for name, value in (message.get("MessageAttributes") or {}).items():
        if name in drop or name == RUN_ATTRIBUTE:
            continue
        entry = {"DataType": value["DataType"]}
        for key in ("StringValue", "BinaryValue"):
            if key in value:
                entry[key] = value[key]
        out[name] = entry
    if len(out) < MAX_ATTRIBUTES:
        out[RUN_ATTRIBUTE] = {"DataType": "String", "StringValue": run_id}
    return out


def plan_event(message: dict[str, Any], queue_urls: tuple[str, ...], run_id: str) -> Plan:
    from mars_common.events import Event
    from mars_common.sharding import message_key, shard

    body = message.get("Body", "")
    try:
        ev = Event.from_json(body)
    except Exception as exc:  # whatever the reason, it cannot be routed
        return keep(INVALID, f"not a valid event: {exc}")
    return Plan(sends=[{
        "QueueUrl": queue_urls[shard(ev.app_id, ev.message_id, len(queue_urls))],
        "MessageBody": body,
        "MessageGroupId": message_key(ev.app_id, ev.message_id),
        "MessageDeduplicationId": redrive_dedup_id(message["MessageId"]),
        "MessageAttributes": copy_attributes(message, run_id),
    }])


def with_created_at(text: str, sent_at: str | None) -> str:
    """The producer's body with a missing `created_at` set to the original send time (the router would
    have used that time): unchanged if nothing is missing or it is not JSON."""
    if not sent_at:
        return text
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if not isinstance(data, dict):
        return text
    items = data["events"] if isinstance(data.get("events"), list) else [data]
    changed = False
    for item in items:
        if isinstance(item, dict) and item.get("created_at") in (None, ""):
            item["created_at"] = sent_at
            changed = True
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")) if changed else text


def _sqs_sent_at(message: dict[str, Any]) -> str | None:
    from mars_common.events import format_ts

    millis = (message.get("Attributes") or {}).get("SentTimestamp")
    try:
        return format_ts(datetime.fromtimestamp(int(millis) / 1000, UTC)) if millis else None
    except (ValueError, OverflowError, OSError):
        return None


def _sns_sent_at(timestamp: Any) -> str | None:
    from mars_common.events import parse_timestamp

    try:
        return parse_timestamp(str(timestamp or ""))
    except (ValueError, OverflowError):
        return None


def plan_ingest(message: dict[str, Any], ingest_url: str, run_id: str, include_invalid: bool) -> Plan:
    attributes = message.get("MessageAttributes") or {}
    body = message.get("Body", "")
    mark = {RUN_ATTRIBUTE: {"DataType": "String", "StringValue": run_id}}
    if "RequestID" in attributes and "ErrorCode" in attributes:  # 1. Lambda's async DLQ: a failed SNS delivery
        try:
            records = json.loads(body)["Records"]
            notes = [(r["Sns"]["Message"], r["Sns"].get("Timestamp")) for r in records]
            if not notes or not all(isinstance(text, str) for text, _ in notes):
                raise ValueError("no SNS message")
        except (ValueError, KeyError, TypeError) as exc:
            return keep(UNRECOGNISED, f"a Lambda async-invocation record that is not an SNS event ({exc}): "
                                      f"{_attr(message, 'ErrorMessage') or ''}")
        return Plan(sends=[{"QueueUrl": ingest_url, "MessageBody": with_created_at(text, _sns_sent_at(ts)),
                            "MessageAttributes": mark} for text, ts in notes])
    if "ErrorMessage" in attributes and _attr(message, "Source") in ("sns", "sqs"):  # 2. refused by the router
        if not include_invalid:
            return keep(INVALID, f"refused by the router: {_attr(message, 'ErrorMessage')}")
        return Plan(sends=[{"QueueUrl": ingest_url, "MessageBody": body,
                            "MessageAttributes": copy_attributes(message, run_id, drop=ROUTER_ATTRIBUTES)}])
    # 3. IngestQueue's redrive policy: the router failed on it maxReceiveCount times
    return Plan(sends=[{"QueueUrl": ingest_url, "MessageBody": with_created_at(body, _sqs_sent_at(message)),
                        "MessageAttributes": copy_attributes(message, run_id)}])


def plan_delivery(message: dict[str, Any], delivery_url: str, run_id: str, now: float | None = None) -> Plan:
    """A dead-lettered alert delivery back on AlertDeliveryQueue with a fresh retry window."""
    import time

    body = message.get("Body", "")
    try:
        data = json.loads(body)
        if not isinstance(data, dict) or not isinstance(data.get("alert"), dict) \
                or not all(isinstance(data.get(k), str) and data[k] for k in ("app_id", "destination_id", "webhook_id")):
            raise ValueError("not an alert delivery (alert, app_id, destination_id, webhook_id)")
    except ValueError as exc:
        return keep(INVALID, f"not an alert delivery: {exc}")
    data["first_attempt_at"] = time.time() if now is None else now
    return Plan(sends=[{"QueueUrl": delivery_url,
                        "MessageBody": json.dumps(data, ensure_ascii=False, separators=(",", ":")),
                        "MessageAttributes": copy_attributes(message, run_id, drop=DELIVERY_ATTRIBUTES)}])


# --- the run -----------------------------------------------------------------------------------------
@dataclass
class Kept:
    count: int = 0
    sample: str = ""


@dataclass
class Report:
    dry_run: bool
    moved: dict[str, int] = field(default_factory=dict)  # target queue name → messages
    kept: dict[str, dict[str, Kept]] = field(default_factory=dict)  # "events"/"ingest" → reason → Kept
    received: dict[str, int] = field(default_factory=dict)
    remaining: dict[str, int | None] = field(default_factory=dict)  # in the DLQ after the run (approximate)
    unreceived: dict[str, int] = field(default_factory=dict)  # of those, how many this run never received
    deleted: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # make the exit code 1
    notes: list[str] = field(default_factory=list)  # worth saying, change nothing

    @property
    def moved_total(self) -> int:
        return sum(self.moved.values())

    def keep(self, dlq: str, reason: str, why: str) -> None:
        entry = self.kept.setdefault(dlq, {}).setdefault(reason, Kept())
        entry.count += 1
        if not entry.sample:
            entry.sample = why[:500]

    def exit_code(self) -> int:
        trouble = any(reason != INVALID for by_reason in self.kept.values() for reason in by_reason)
        return 1 if trouble or self.errors else 0

    def as_json(self) -> dict[str, Any]:
        return {"moved": dict(self.moved), "dry_run": self.dry_run,
                "kept": {dlq: {r: {"count": k.count, "sample": k.sample} for r, k in by_reason.items()}
                         for dlq, by_reason in self.kept.items()},
                "received": dict(self.received), "remaining": dict(self.remaining), "unreceived": dict(self.unreceived),
                "errors": list(self.errors)}


def _error_text(exc: Exception) -> str:
    err = getattr(exc, "response", {}).get("Error", {})
    return f"{err.get('Code')}: {err.get('Message')}" if err.get("Code") else f"{type(exc).__name__}: {exc}"


def stream_keys(streams: Any, info: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The (app_id, message_id) of the records of a stream batch Lambda discarded (its on-failure record names
    the shard and the first and last sequence numbers, not the records); None once the stream dropped them (24 h)."""
    try:
        iterator = streams.get_shard_iterator(StreamArn=info["streamArn"], ShardId=info["shardId"],
                                              ShardIteratorType="AT_SEQUENCE_NUMBER",
                                              SequenceNumber=info["startSequenceNumber"])["ShardIterator"]
    except Exception as exc:
        if "TrimmedDataAccess" in _error_text(exc) or "ResourceNotFound" in _error_text(exc):
            return None
        raise
    start, end = int(info["startSequenceNumber"]), int(info["endSequenceNumber"])
    keys: dict[tuple[str, str], None] = {}
    while iterator:
        got = streams.get_records(ShardIterator=iterator, Limit=1000)
        for record in got.get("Records", []):
            seq = int(record["dynamodb"]["SequenceNumber"])
            if seq < start:  # only the batch's records, whatever the iterator's first one
                continue
            if seq > end:
                return list(keys)
            k = record["dynamodb"].get("Keys", {})
            keys[(k["app_id"]["S"], k["message_id"]["S"])] = None
        if not got.get("Records"):
            break  # at the shard's end (an open shard answers empty)
        iterator = got.get("NextShardIterator")
    return list(keys)


def plan_trace(message: dict[str, Any], streams: Callable[[], Any]) -> Plan:
    """A trace export failure: the exporter's own record of a refused batch (its messages), or Lambda's
    on-failure record of a stream batch (its records are read back from the stream). Either way the
    messages' current traces are exported again (TraceExportFunction), never the old payload."""
    try:
        body = json.loads(message.get("Body", ""))
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("messages"), list):
        return Plan(exports=[(str(m["app_id"]), str(m["message_id"])) for m in body["messages"]])
    info = body.get("DDBStreamBatchInfo") if isinstance(body, dict) else None
    if not isinstance(info, dict):
        return keep(UNRECOGNISED, "neither the exporter's record nor Lambda's stream on-failure record")
    try:
        keys = stream_keys(streams(), info)
    except Exception as exc:
        return keep(SEND_FAILED, f"reading the stream batch back failed: {_error_text(exc)}")
    if keys is None:
        return keep(EXPIRED, f"the stream no longer holds shard {info.get('shardId')}'s records (kept 24 h): "
                             "export those messages with GET /api/messages/{id}/trace")
    return Plan(exports=keys)


def invoke_export(lambda_client: Any, function: str, keys: list[tuple[str, str]]) -> str | None:
    """Runs TraceExportFunction on these messages; None when exported, else why not."""
    payload = json.dumps({"mars_trace_export": [{"app_id": a, "message_id": m} for a, m in keys]}).encode()
    try:
        got = lambda_client.invoke(FunctionName=function, Payload=payload)
        answer = json.loads(got["Payload"].read() or b"null")
    except Exception as exc:
        return f"invoking {function} failed: {_error_text(exc)}"
    if got.get("FunctionError"):
        return f"{function}: {(answer or {}).get('errorMessage', got['FunctionError'])}"
    if isinstance(answer, dict) and answer.get("refused"):
        return f"the collector refused them again (HTTP {answer.get('status')})"
    return None


class Redrive:
    def __init__(self, sqs: Any, queues: Queues, *, dry_run: bool = False, limit: int | None = None,
                 include_invalid: bool = False, progress: Callable[[str], None] | None = None,
                 clients: Callable[[str], Any] | None = None) -> None:
        self.sqs, self.queues = sqs, queues
        self.clients = clients  # lambda and dynamodbstreams, for the trace failure queue
        self.dry_run, self.limit, self.include_invalid = dry_run, limit, include_invalid
        self.progress = progress or (lambda line: None)
        self.run_id = uuid.uuid4().hex
        self.report = Report(dry_run=dry_run)

    def run(self, which: Iterable[str] = DLQS) -> Report:
        for dlq in which:
            if self._limit_reached():
                break
            if dlq == "events":
                self._drain(dlq, self.queues.events_dlq, partial(plan_event, queue_urls=self.queues.events, run_id=self.run_id))
            elif dlq == DELIVERY:
                self._drain(dlq, self.queues.delivery_dlq, partial(plan_delivery, delivery_url=self.queues.delivery,
                                                                   run_id=self.run_id))
            elif dlq == TRACES:
                self._drain(dlq, self.queues.traces_dlq, partial(plan_trace, streams=partial(self._client, "dynamodbstreams")))
            else:
                self._drain(dlq, self.queues.ingest_dlq, partial(plan_ingest, ingest_url=self.queues.ingest, run_id=self.run_id,
                                                                 include_invalid=self.include_invalid))
        report = self.report
        for dlq in which:
            depth = report.remaining[dlq] = self._depth(self.queues.dlq(dlq))
            still_there = report.received.get(dlq, 0) - report.deleted.get(dlq, 0)
            if depth is not None:
                report.unreceived[dlq] = max(0, depth - still_there)
        return report

    def _client(self, service: str) -> Any:
        if self.clients is None:
            raise UsageError(f"no {service} client: Redrive(clients=...) is needed for the trace failure queue")
        return self.clients(service)

    def _limit_reached(self) -> bool:
        return self.limit is not None and self.report.moved_total >= self.limit

    def _drain(self, dlq: str, url: str, planner: Callable[[dict[str, Any]], Plan]) -> None:
        report = self.report
        report.received.setdefault(dlq, 0)
        held: dict[str, str] = {}  # message id → receipt handle: left in the DLQ, made visible at the end
        sent: set[str] = set()  # sent, but the delete failed: deleted when seen again
        broken: set[str] = set()  # FIFO groups with a message not moved (its later messages wait)
        try:
            while not self._limit_reached():
                want = RECEIVE_BATCH if self.limit is None else min(RECEIVE_BATCH, self.limit - report.moved_total)
                try:
                    got = self.sqs.receive_message(
                        QueueUrl=url, MaxNumberOfMessages=want, WaitTimeSeconds=RECEIVE_WAIT_SECONDS,
                        VisibilityTimeout=DRY_RUN_VISIBILITY_SECONDS if self.dry_run else VISIBILITY_SECONDS,
                        MessageAttributeNames=["All"], MessageSystemAttributeNames=["All"]).get("Messages", [])
                except Exception as exc:
                    if not report.received[dlq] and not report.moved:
                        raise UsageError(f"cannot read the {dlq} dead-letter queue {url}: {_error_text(exc)}") from exc
                    report.errors.append(f"receive from the {dlq} dead-letter queue failed: {_error_text(exc)}")
                    return
                if not got:
                    return
                done: list[dict[str, Any]] = []  # sent: delete from the DLQ
                for message in got:
                    mid, handle = message["MessageId"], message["ReceiptHandle"]
                    if mid in held:  # visible again while this run holds it: hold the new receipt
                        held[mid] = handle
                        continue
                    if mid in sent:
                        done.append(message)
                        continue
                    report.received[dlq] += 1
                    self._handle(dlq, message, planner, held, sent, broken, done)
                    if report.received[dlq] % PROGRESS_EVERY == 0:
                        kept = sum(k.count for k in report.kept.get(dlq, {}).values())
                        self.progress(f"redrive {dlq}: {report.received[dlq]} received, {report.moved_total} "
                                      f"{'would move' if self.dry_run else 'moved'}, {kept} kept")
                self._delete(dlq, url, done, sent)
        finally:
            self._release(dlq, url, held)

    def _handle(self, dlq: str, message: dict[str, Any], planner: Callable[[dict[str, Any]], Plan],
                held: dict[str, str], sent: set[str], broken: set[str], done: list[dict[str, Any]]) -> None:
        report = self.report
        group = (message.get("Attributes") or {}).get("MessageGroupId")
        if _attr(message, RUN_ATTRIBUTE) == self.run_id:
            plan = keep(RETURNED, "dead-lettered again after it was redriven in this run: it still fails")
        else:
            plan = planner(message)
        if plan.kept is None and group is not None and group in broken:
            plan = keep(BLOCKED, f"message group {group} has an earlier message that was not moved")
        if plan.kept is not None:
            report.keep(dlq, plan.kept, plan.why)
            held[message["MessageId"]] = message["ReceiptHandle"]
            if plan.kept != INVALID and group is not None:
                broken.add(group)  # an invalid message never will be processed: order behind it is moot
            return
        if self.dry_run:
            held[message["MessageId"]] = message["ReceiptHandle"]
        elif plan.exports:  # a trace failure: the messages' current traces go out again, through the exporter
            why = invoke_export(self._client("lambda"), self.queues.trace_function, plan.exports)
            if why is not None:
                report.keep(dlq, SEND_FAILED, why)
                held[message["MessageId"]] = message["ReceiptHandle"]
                return
            done.append(message)
            sent.add(message["MessageId"])
        else:
            for send in plan.sends:
                try:
                    self.sqs.send_message(**send)
                except Exception as exc:  # kept, reported, exit code 1
                    report.keep(dlq, SEND_FAILED, f"to {queue_name(send['QueueUrl'])}: {_error_text(exc)}")
                    held[message["MessageId"]] = message["ReceiptHandle"]
                    if group is not None:
                        broken.add(group)
                    return
            done.append(message)
            sent.add(message["MessageId"])
        for send in plan.sends:
            name = queue_name(send["QueueUrl"])
            report.moved[name] = report.moved.get(name, 0) + 1
        if plan.exports:
            name = self.queues.trace_function or "TraceExportFunction"
            report.moved[name] = report.moved.get(name, 0) + 1

    def _delete(self, dlq: str, url: str, done: list[dict[str, Any]], sent: set[str]) -> None:
        if not done:
            return
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)]
        try:
            failed = self.sqs.delete_message_batch(QueueUrl=url, Entries=entries).get("Failed", [])
        except Exception as exc:
            failed = [{"Id": e["Id"], "Message": _error_text(exc)} for e in entries]
        for bad in failed:
            message = done[int(bad["Id"])]
            self.report.errors.append(f"{dlq}: message {message['MessageId']} was sent but not deleted from the DLQ "
                                      f"({bad.get('Message') or bad.get('Code')}); a rerun sends it again (harmless)")
        failed_ids = {int(b["Id"]) for b in failed}
        for i, message in enumerate(done):
            if i not in failed_ids:
                sent.discard(message["MessageId"])
                self.report.deleted[dlq] = self.report.deleted.get(dlq, 0) + 1

    def _release(self, dlq: str, url: str, held: dict[str, str]) -> None:
        """Kept (and, in a dry run, every received) message: visible again now, as it was before."""
        handles = list(held.values())
        for k in range(0, len(handles), 10):
            entries = [{"Id": str(i), "ReceiptHandle": h, "VisibilityTimeout": 0} for i, h in enumerate(handles[k:k + 10])]
            try:
                failed = self.sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries).get("Failed", [])
            except Exception as exc:
                failed = entries
                why = _error_text(exc)
            else:
                why = failed[0].get("Message", "") if failed else ""
            if failed:
                seconds = DRY_RUN_VISIBILITY_SECONDS if self.dry_run else VISIBILITY_SECONDS
                self.report.notes.append(f"{len(failed)} {dlq} dead letters could not be made visible again ({why}); "
                                         f"they will be within {seconds} s")

    def _depth(self, url: str) -> int | None:
        try:
            got = self.sqs.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
        except Exception:  # only for the summary
            return None
        attrs = got.get("Attributes", {})
        return int(attrs.get("ApproximateNumberOfMessages", 0)) + int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))


# --- output --------------------------------------------------------------------------------------------
def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(headers), *(line(r) for r in rows)]


def render(report: Report) -> str:
    out: list[str] = []
    received = sum(report.received.values())
    if report.dry_run:
        out.append(f"Dry run: {report.moved_total} of {received} dead letters received would be redriven; nothing was changed.")
    else:
        out.append(f"Redrove {report.moved_total} of {received} dead letters received.")
    if report.moved:
        out.append("")
        out += _table(["TARGET QUEUE", "WOULD MOVE" if report.dry_run else "MOVED"],
                      [[name, str(n)] for name, n in sorted(report.moved.items())], {1})
    rows = [[dlq, reason, str(k.count), (k.sample[:100] + "…") if len(k.sample) > 100 else k.sample]
            for dlq, by_reason in report.kept.items() for reason, k in by_reason.items()]
    if rows:
        out.append("")
        out += _table(["KEPT IN", "REASON", "MESSAGES", "SAMPLE"], rows, {2})
    unseen = "not inspected" if report.dry_run else "not received by this run"
    remaining = ", ".join(f"{dlq} {'?' if n is None else n}"
                          + (f" ({report.unreceived[dlq]} {unseen})" if report.unreceived.get(dlq) else "")
                          for dlq, n in report.remaining.items())
    if remaining:
        out += ["", f"In the dead-letter queues now: {remaining}"]
    return "\n".join(out)


def advice(report: Report) -> list[str]:
    """What to do next, for each kind of trouble."""
    kept = {reason for by_reason in report.kept.values() for reason in by_reason}
    out = []
    if SEND_FAILED in kept:
        out.append("Some sends failed: check that the target queues exist and that these credentials may send "
                   "to them, then run `mars redrive` again (nothing was deleted that was not sent).")
    if BLOCKED in kept:
        out.append("Messages behind a failed send of their group were kept to keep the order: they go with the next run.")
    if RETURNED in kept:
        out.append("Some redriven messages were dead-lettered again during the run: they still fail — see the "
                   "function logs before redriving them again.")
    if UNRECOGNISED in kept:
        out.append("Some ingest dead letters have no shape redrive knows: inspect them "
                   "(aws sqs receive-message --attribute-names All --message-attribute-names All).")
    if INVALID in kept and not report.dry_run:
        out.append("Invalid messages stay in the dead-letter queues (redrive never deletes them): inspect them, fix and "
                   "resend them at the producer, then delete them; or, for the ingest queue after a validation change, "
                   "rerun with --include-invalid.")
    for dlq, n in report.unreceived.items():
        if not n:
            continue
        if report.dry_run:
            behind = (": a dry run holds what it has seen, and SQS hides the later messages of a FIFO group while "
                      "earlier ones are held" if dlq == "events" else " (past --limit, or arrived during the run)")
            out.append(f"About {n} messages in the {dlq} dead-letter queue were not inspected{behind}.")
        else:
            behind = " behind a message of their FIFO group that stays there," if dlq == "events" else ""
            out.append(f"About {n} messages in the {dlq} dead-letter queue were not received by this run:{behind} "
                       "arrived during the run, or past --limit. Run `mars redrive` again to move what can be moved.")
    return out


# --- the command ---------------------------------------------------------------------------------------
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def cmd_redrive(args: argparse.Namespace) -> int:
    which: tuple[str, ...] = DLQS if args.queue == "all" else (args.queue,)
    try:
        clients, queues = connect_clients(args, which)
        if args.queue == "all":  # and the optional queues this stack has
            which = (*DLQS, *((DELIVERY,) if queues.delivery_dlq and queues.delivery else ()),
                     *((TRACES,) if queues.traces_dlq else ()))
        run = Redrive(clients("sqs"), queues, dry_run=args.dry_run, limit=args.limit, include_invalid=args.include_invalid,
                      progress=lambda line: print(line, file=sys.stderr, flush=True), clients=clients)
        report = run.run(which)
    except UsageError as exc:
        print(f"mars redrive: {exc}", file=sys.stderr)
        return 2
    emit(report, args.json, sys.stdout, sys.stderr)
    return report.exit_code()


def emit(report: Report, as_json: bool, out: TextIO, err: TextIO) -> None:
    if as_json:
        print(json.dumps(report.as_json()), file=out)
    else:
        print(render(report), file=out)
    for line in [*report.errors, *report.notes]:
        print(f"mars redrive: {line}", file=err)
    for line in advice(report):
        print(line, file=err)


def register(subparsers: Any, stack_args: Callable[[argparse.ArgumentParser], None]) -> None:
    """Adds `redrive` to `mars`'s subcommands (mars/cli.py: `redrive.register(sub, stack_args)`)."""
    p = subparsers.add_parser(
        "redrive", help="send dead-lettered messages back to be processed again, in order",
        description="Moves the messages of the dead-letter queues back to the queues they came from: events to the "
                    "FIFO queue of their shard (each message group in order), failed producer messages to the ingest "
                    "queue, failed alert deliveries to the delivery queue (with a fresh retry window), failed trace "
                    "exports again. Messages that are not valid stay where they are and are reported. Exit codes: 0 done, "
                    "1 some messages could not be moved, 2 no stack or bad usage.")
    p.add_argument("--queue", choices=[*DLQS, DELIVERY, TRACES, "all"], default="all",
                   help="which dead-letter queue: the events queues' (FIFO), the producers' (ingest), the alert "
                        "deliveries' (delivery, with a fresh retry window), the trace exporter's (traces: re-exports "
                        "those messages' current traces), or every one the stack has (default)")
    p.add_argument("--dry-run", action="store_true",
                   help="report what would move where; change nothing (received messages are made visible again)")
    p.add_argument("--limit", type=_positive, metavar="N", help="move at most N messages")
    p.add_argument("--include-invalid", action="store_true",
                   help="also resend the ingest dead letters the router refused as invalid (after a validation fix)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object: {"moved": {queue: n}, "kept": {dlq: {reason: {count, sample}}}, "dry_run": …}')
    p.add_argument("--stack-outputs", metavar="FILE",
                   help="a deployed stack: its Outputs as JSON (`mars outputs`, or `aws cloudformation describe-stacks`); "
                        "credentials, region and endpoint come from the AWS environment")
    stack_args(p)
    p.set_defaults(func=cmd_redrive)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mars")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"), stacks.stack_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    """`mars redrive` on its own: `main(["--dry-run"])`, or `python -m mars.redrive --dry-run`."""
    args = build_parser().parse_args(["redrive", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
