"""Lambda's SQS event source mapping: poll, batch, invoke, delete, with Lambda's semantics.

- BatchSize (FIFO: at most 10); on standard queues MaximumBatchingWindowInSeconds gathers records
  until the batch is full or the window (counted from the first record) ends; a batch never exceeds
  Lambda's 6 MB invocation payload: the records that would overflow it go back to the queue
  (visible at once) for the next batch;
- Lambda's record shape: binary message attributes as base64 text, and every system attribute
  (FIFO: SequenceNumber, MessageGroupId, MessageDeduplicationId);
- FilterCriteria: a message that matches none of the patterns is deleted, never delivered, as
  Lambda does on SQS (`body` is matched as JSON when it parses as JSON, else as a string);
- a failed invocation deletes nothing: SQS redelivers after the visibility timeout, and after
  maxReceiveCount the queue's redrive policy moves the message to its dead-letter queue; a batch
  whose event cannot be built is such a failure (an ERROR line, then redelivery), never a stall;
- with FunctionResponseTypes ReportBatchItemFailures only the reported items stay; a malformed
  report fails the whole batch, as Lambda does;
- up to ScalingConfig.MaximumConcurrency batches in flight; for FIFO queues never two batches of one
  message group (SQS withholds a group while any of its messages is in flight, and the poller checks);
- the polling thread is restarted (with an ERROR line) if it dies of an unexpected exception;
- each receive waits up to 20 s, as Lambda's pollers do (an idle source costs one call per 20 s), on the
  embedded patched emulator, which ends the wait when the mapping is disabled or the stack stops
  (`LongPoll.wake`, the emulator's `/_local/sqs/wake`); on any other endpoint (LocalStack…), which cannot,
  1 s, so that a paused mapping takes nothing more than a second after the pause.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .base import EVENT_OVERHEAD, PAYLOAD_LIMIT_BYTES, EventSourceMapping, flag, record_size, reported_failures
from .filtering import parse_filters

if TYPE_CHECKING:
    from ..invoker import FunctionPool

log = logging.getLogger("samlocal.sqs")
DEFAULT_CONCURRENCY = 2
POLL_WAIT_SECONDS = 1  # an endpoint that cannot end a wait early (LocalStack, AWS)
WAKEABLE_POLL_WAIT_SECONDS = 20  # SQS's longest long poll, as Lambda's pollers use; the emulator can end it
WAKE_PATH = "/_local/sqs/wake"


@dataclass(frozen=True)
class LongPoll:
    """How long the runtime's receives on a queue wait, and who can end a wait early: `wake_endpoint` is the
    embedded patched emulator serving SQS (samlocal.emulator.wake), None for an endpoint that cannot."""

    seconds: int = POLL_WAIT_SECONDS
    wake_endpoint: str | None = None
    region: str = "us-east-1"

    @classmethod
    def wakeable(cls, endpoint: str, region: str) -> LongPoll:
        return cls(WAKEABLE_POLL_WAIT_SECONDS, endpoint, region)

    def wake(self, queue_url: str) -> None:
        """Ends the receives waiting on this queue now (they return empty); a failure is logged and the
        wait ends at its own timeout. http.client, not urllib: no proxy settings apply to a loopback call."""
        if self.wake_endpoint is None:
            return
        split = urlsplit(self.wake_endpoint)
        body = json.dumps({"queue_url": queue_url, "region": self.region}).encode()
        conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port or 80, timeout=2)
        try:
            conn.request("POST", WAKE_PATH, body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {answer[:200]!r}")
        except Exception as exc:
            log.warning("the emulator did not end the long poll; it ends at its own timeout",
                        extra={"queue_url": queue_url, "wait_seconds": self.seconds, "error": str(exc)})
        finally:
            conn.close()


@dataclass
class SqsSource:
    queue_url: str
    queue_arn: str
    batch_size: int = 10
    window_seconds: float = 0.0
    report_failures: bool = False
    max_concurrency: int = DEFAULT_CONCURRENCY
    enabled: bool = True
    filters: list[dict[str, Any]] = field(default_factory=list)  # FilterCriteria.Filters[].Pattern, parsed

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @property
    def name(self) -> str:
        return self.queue_url.rsplit("/", 1)[-1]


def _base64(value: Any) -> str:
    """boto3 hands binary attribute values over as bytes; Lambda's event carries base64 text."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    return str(value)


def _message_attribute(value: dict[str, Any]) -> dict[str, Any]:
    """A message attribute as Lambda's event carries it (only the value fields the attribute has)."""
    out: dict[str, Any] = {}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = _base64(value["BinaryValue"])
    out["stringListValues"] = list(value.get("StringListValues", []))
    out["binaryListValues"] = [_base64(v) for v in value.get("BinaryListValues", [])]
    out["dataType"] = value.get("DataType")
    return out


def lambda_record(message: dict[str, Any], source: SqsSource, region: str) -> dict[str, Any]:
    """An SQS message as Lambda hands it to a function."""
    body = message["Body"]
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {name: _message_attribute(v) for name, v in message.get("MessageAttributes", {}).items()},
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": source.queue_arn,
        "awsRegion": region,
    }


@dataclass
class _Item:
    """A received message and its record in the function's event (or why it could not be built)."""

    message: dict[str, Any]
    record: dict[str, Any] | None
    error: Exception | None
    size: int  # its bytes in the invocation payload


class SqsPoller(EventSourceMapping):
    """Lambda's SQS event source mapping for one queue and one function."""

    kind = "sqs"
    event_types = ("SQS",)
    log = log

    def __init__(self, sqs: Any, pool: FunctionPool, source: SqsSource, region: str,
                 long_poll: LongPoll = LongPoll()) -> None:
        super().__init__(pool, source)
        self.source: SqsSource = source
        self.sqs = sqs
        self.region = region
        self.long_poll = long_poll
        self._slots = threading.Semaphore(max(1, source.max_concurrency))
        self._groups_lock = threading.Lock()
        self._groups_in_flight: set[str] = set()
        self.filtered_out = 0  # messages deleted by FilterCriteria

    @property
    def name(self) -> str:
        return self.source.name

    @property
    def source_arn(self) -> str:
        return self.source.queue_arn

    def mapping_fields(self) -> dict[str, Any]:
        return {"ScalingConfig": {"MaximumConcurrency": self.source.max_concurrency}}

    def log_fields(self, **fields: Any) -> dict[str, Any]:
        return super().log_fields(queue=self.source.name, **fields)

    def filter_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record as Lambda's SQS filtering sees it: `body` as JSON when it parses, else the string."""
        try:
            body = json.loads(record["body"])
        except (TypeError, ValueError):
            return record
        return {**record, "body": body}

    @classmethod
    def source_from(cls, stack: Any, function_lid: str, event_name: str, event_type: str,
                    props: dict[str, Any]) -> SqsSource:
        arn = props["Queue"]
        url = next((a.get("QueueUrl") for a in stack.physical.values() if "QueueUrl" in a and a.get("Arn") == arn), None)
        if url is None:
            raise ValueError(f"SQS event source {arn} is not a queue of this template")
        source = SqsSource(
            queue_url=url, queue_arn=arn, batch_size=int(props.get("BatchSize", 10)),
            window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            report_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            max_concurrency=int(props.get("ScalingConfig", {}).get("MaximumConcurrency", DEFAULT_CONCURRENCY)),
            enabled=flag(props.get("Enabled"), True),
            filters=parse_filters(props.get("FilterCriteria")),
        )
        _check(source, event_name)
        return source

    def run(self) -> None:
        while not self._stop.is_set():
            if not self.source.enabled:
                self._stop.wait(0.1)
                continue
            if not self._slots.acquire(timeout=0.5):
                continue
            worker: Any = None
            items: list[_Item] = []
            handed_off = False
            try:
                # Reserve an execution environment first: received messages never wait for one.
                try:
                    worker = self.pool.checkout(timeout=0.5)
                except RuntimeError:  # the pool closed: the stack is stopping
                    return
                if worker is None:
                    continue
                try:
                    items = self._receive()
                except Exception as exc:
                    if self._stop.is_set():
                        return
                    log.warning("receive failed", extra={"queue": self.source.name, "error": str(exc)})
                    self._stop.wait(1)
                    continue
                if not items:
                    continue
                t = threading.Thread(target=self._process, args=(items, worker), daemon=True,
                                     name=f"sqs-batch:{self.source.name}")
                self._threads = [b for b in self._threads if b.is_alive()] + [t]  # stop() joins it
                t.start()
                handed_off = True
            finally:
                if not handed_off:
                    # Whatever went wrong, nothing stays reserved: the received messages come back
                    # after their visibility timeout, as from a failed invocation.
                    if worker is not None:
                        self.pool.checkin(worker)
                    self._release_groups([i.message for i in items])
                    self._slots.release()

    def interrupt(self) -> None:
        self.long_poll.wake(self.source.queue_url)

    def _item(self, message: dict[str, Any]) -> _Item:
        try:
            record = lambda_record(message, self.source, self.region)
            size = record_size(record)
        except Exception as exc:  # delivered as a failed invocation, with its error logged
            return _Item(message, None, exc, 0)
        return _Item(message, record, None, size)

    def _receive(self) -> list[_Item]:
        """One batch: up to BatchSize records, gathered for up to the batching window (standard
        queues), within the 6 MB payload; filtered-out messages are deleted on the way."""
        src = self.source
        want = min(src.batch_size, 10) if src.fifo else src.batch_size
        items: list[_Item] = []
        dropped: list[dict[str, Any]] = []
        size = EVENT_OVERHEAD
        deadline: float | None = None
        overflow: list[dict[str, Any]] = []
        guarded: list[dict[str, Any]] = []  # FIFO: messages whose groups the guard marked in flight
        try:
            # a mapping disabled meanwhile stops gathering (a batch already gathered is still delivered)
            while len(items) < want and not self._stop.is_set() and not overflow and src.enabled:
                if deadline is None:
                    wait = self.long_poll.seconds
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    wait = min(20, int(remaining))
                got = self.sqs.receive_message(
                    QueueUrl=src.queue_url, MaxNumberOfMessages=min(10, want - len(items)), WaitTimeSeconds=wait,
                    AttributeNames=["All"], MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
                ).get("Messages", [])
                if src.fifo:
                    got = self._fifo_guard(got)
                    guarded.extend(got)
                for n, message in enumerate(got):
                    item = self._item(message)
                    if item.record is not None and not self.passes(item.record):
                        dropped.append(message)
                        continue
                    if items and size + item.size > PAYLOAD_LIMIT_BYTES:
                        overflow = got[n:]  # the next batch's
                        break
                    items.append(item)
                    size += item.size
                if not items:
                    break  # nothing to deliver (yet): the caller reserves and polls again
                if deadline is None:
                    if src.fifo or src.window_seconds <= 0:
                        break
                    deadline = time.monotonic() + src.window_seconds  # the window counts from the first record
                if not got and wait == 0:  # under a second left: short polls, paced
                    self._stop.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        except BaseException:
            self._release_groups(guarded)  # they come back after their visibility timeout
            raise
        if overflow:
            self._change_visibility(overflow, 0)
        if dropped:
            self.filtered_out += len(dropped)
            self._delete(dropped)
        if src.fifo:
            # Only the delivered batch's groups stay in flight (dropped or handed back ones do not).
            kept = {i.message.get("Attributes", {}).get("MessageGroupId") for i in items}
            self._release_groups([m for m in overflow + dropped
                                  if m.get("Attributes", {}).get("MessageGroupId") not in kept])
        return items

    def _fifo_guard(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """SQS never hands out a group with messages in flight; if an emulator ever does, the
        messages are put back (visible again shortly) rather than processed beside their group."""
        with self._groups_lock:
            keep: list[dict[str, Any]] = []
            back: list[dict[str, Any]] = []
            for m in messages:
                group = m.get("Attributes", {}).get("MessageGroupId")
                (back if group in self._groups_in_flight else keep).append(m)
            self._groups_in_flight.update(m.get("Attributes", {}).get("MessageGroupId") for m in keep)
        if back:
            log.warning("group already in flight; returning messages", extra={"queue": self.source.name,
                                                                            "count": len(back)})
            self._change_visibility(back, 1)
        return keep

    def _process(self, items: list[_Item], worker: Any) -> None:
        messages = [i.message for i in items]
        released = False
        try:
            broken = next((i.error for i in items if i.error is not None), None)
            if broken is not None:
                result = self.pool.undeliverable(broken, trigger="sqs", source=self.source.name,
                                                 batch_size=len(items), worker=worker)
            else:
                event = {"Records": [i.record for i in items]}
                result = self.pool.invoke(event, trigger="sqs", source=self.source.name, worker=worker)
            done = self._succeeded(messages, result)
            # Forget the groups before deleting: once deleted, SQS may hand the group's next messages
            # to our other slot, which must not mistake them for a group still in flight.
            self._release_groups(messages)
            released = True
            if done:
                self._delete(done)
        except Exception:
            log.exception("batch processing failed", extra={"queue": self.source.name,
                                                            "function": self.pool.spec.name})
        finally:
            if not released:
                self._release_groups(messages)
            self._slots.release()

    def _release_groups(self, messages: list[dict[str, Any]]) -> None:
        if self.source.fifo and messages:
            with self._groups_lock:
                for m in messages:
                    self._groups_in_flight.discard(m.get("Attributes", {}).get("MessageGroupId"))

    def _succeeded(self, messages: list[dict[str, Any]], result: Any) -> list[dict[str, Any]]:
        if not result.ok:
            return []
        if not self.source.report_failures:
            return messages
        reported = reported_failures(result.payload)
        if reported == []:
            return messages
        failed = set(reported or ())
        if reported is None or not failed <= {m["MessageId"] for m in messages}:
            # Lambda treats an unusable report as a failure of the whole batch.
            log.warning("malformed batchItemFailures; whole batch fails", extra={"queue": self.source.name})
            return []
        return [m for m in messages if m["MessageId"] not in failed]

    def _delete(self, messages: list[dict[str, Any]]) -> None:
        for start in range(0, len(messages), 10):
            chunk = messages[start:start + 10]
            resp = self.sqs.delete_message_batch(
                QueueUrl=self.source.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
            if resp.get("Failed"):
                log.warning("delete failed", extra={"queue": self.source.name, "failed": resp["Failed"]})

    def _change_visibility(self, messages: list[dict[str, Any]], seconds: int) -> None:
        try:
            self.sqs.change_message_visibility_batch(
                QueueUrl=self.source.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": seconds}
                         for i, m in enumerate(messages[:10])])
            if len(messages) > 10:
                self._change_visibility(messages[10:], seconds)
        except Exception as exc:
            log.warning("change visibility failed", extra={"queue": self.source.name, "error": str(exc)})


def _check(source: SqsSource, event: str) -> None:
    """The limits Lambda's CreateEventSourceMapping enforces for SQS: a template that breaks them does
    not deploy, so it does not start here either."""
    limit = 10 if source.fifo else 10_000
    if not 1 <= source.batch_size <= limit:
        raise ValueError(f"SQS event {event}: BatchSize {source.batch_size} is not 1-{limit} for queue {source.name}")
    if not 0 <= source.window_seconds <= 300:
        raise ValueError(f"SQS event {event}: MaximumBatchingWindowInSeconds must be 0-300, not {source.window_seconds:g}")
    if source.batch_size > 10 and source.window_seconds < 1:
        raise ValueError(f"SQS event {event}: a BatchSize over 10 needs MaximumBatchingWindowInSeconds of at least 1")
