"""Lambda's SQS event source mapping: poll, batch, invoke, delete, with Lambda's semantics.

- BatchSize (FIFO: at most 10) and MaximumBatchingWindowInSeconds;
- a failed invocation deletes nothing: SQS redelivers after the visibility timeout, and after
  maxReceiveCount the queue's redrive policy moves the message to its dead-letter queue;
- with FunctionResponseTypes ReportBatchItemFailures only the reported items stay; a malformed
  report fails the whole batch, as Lambda does;
- up to ScalingConfig.MaximumConcurrency batches in flight; for FIFO queues never two batches of one
  message group (SQS withholds a group while any of its messages is in flight, and the poller checks).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from .invoker import FunctionPool
from .lambda_api import describe_mapping, mapping_uuid

log = logging.getLogger("local.sqs")
DEFAULT_CONCURRENCY = 2
POLL_WAIT_SECONDS = 1


@dataclass
class SqsSource:
    queue_url: str
    queue_arn: str
    batch_size: int = 10
    window_seconds: float = 0.0
    report_failures: bool = False
    max_concurrency: int = DEFAULT_CONCURRENCY
    enabled: bool = True

    @property
    def fifo(self) -> bool:
        return self.queue_url.endswith(".fifo")

    @property
    def name(self) -> str:
        return self.queue_url.rsplit("/", 1)[-1]


def lambda_record(message: dict[str, Any], source: SqsSource, region: str) -> dict[str, Any]:
    """An SQS message as Lambda hands it to a function."""
    attributes = {k: v for k, v in message.get("Attributes", {}).items()}
    body = message["Body"]
    return {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": body,
        "attributes": attributes,
        "messageAttributes": {
            name: {"stringValue": v.get("StringValue"), "binaryValue": v.get("BinaryValue"),
                   "stringListValues": v.get("StringListValues", []), "binaryListValues": v.get("BinaryListValues", []),
                   "dataType": v.get("DataType")}
            for name, v in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody") or hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": source.queue_arn,
        "awsRegion": region,
    }


class SqsPoller:
    def __init__(self, sqs: Any, pool: FunctionPool, source: SqsSource, region: str) -> None:
        self.sqs = sqs
        self.pool = pool
        self.source = source
        self.region = region
        self._stop = threading.Event()
        self._slots = threading.Semaphore(max(1, source.max_concurrency))
        self._groups_lock = threading.Lock()
        self._groups_in_flight: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._batches: list[threading.Thread] = []

    @property
    def uuid(self) -> str:
        return mapping_uuid(self.pool.spec.arn, self.source.queue_arn)

    def mapping(self) -> dict[str, Any]:
        """This poller as Lambda's EventSourceMapping resource describes it."""
        src = self.source
        return describe_mapping(self.pool.spec.arn, src.queue_arn, enabled=src.enabled, batch_size=src.batch_size,
                                window_seconds=src.window_seconds, report_failures=src.report_failures,
                                ScalingConfig={"MaximumConcurrency": src.max_concurrency})

    def set_enabled(self, enabled: bool) -> None:
        """UpdateEventSourceMapping Enabled: a disabled mapping stops polling; batches in flight finish."""
        self.source.enabled = enabled

    def start(self) -> None:
        t = threading.Thread(target=self._run, name=f"sqs:{self.source.name}", daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for t in self._threads + self._batches:
            t.join(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.source.enabled:
                self._stop.wait(0.1)
                continue
            if not self._slots.acquire(timeout=0.5):
                continue
            # Reserve an execution environment first: received messages never wait for one.
            try:
                worker = self.pool.checkout(timeout=0.5)
            except RuntimeError:  # the pool closed: the stack is stopping
                self._slots.release()
                return
            if worker is None:
                self._slots.release()
                continue
            try:
                messages = self._receive()
            except Exception as exc:
                self.pool.checkin(worker)
                self._slots.release()
                if self._stop.is_set():
                    return
                log.warning("receive failed", extra={"queue": self.source.name, "error": str(exc)})
                self._stop.wait(1)
                continue
            if not messages:
                self.pool.checkin(worker)
                self._slots.release()
                continue
            t = threading.Thread(target=self._process, args=(messages, worker), daemon=True,
                                 name=f"sqs-batch:{self.source.name}")
            self._batches = [b for b in self._batches if b.is_alive()] + [t]
            t.start()

    def _receive(self) -> list[dict[str, Any]]:
        src = self.source
        want = min(src.batch_size, 10) if src.fifo else src.batch_size
        messages: list[dict[str, Any]] = []
        deadline = time.monotonic() + src.window_seconds
        while len(messages) < want and not self._stop.is_set():
            got = self.sqs.receive_message(
                QueueUrl=src.queue_url, MaxNumberOfMessages=min(10, want - len(messages)),
                WaitTimeSeconds=POLL_WAIT_SECONDS if not messages else 0,
                AttributeNames=["All"], MessageSystemAttributeNames=["All"], MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages.extend(got)
            if src.fifo or not got or time.monotonic() >= deadline:
                break
        return self._fifo_guard(messages) if src.fifo else messages

    def _fifo_guard(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """SQS never hands out a group with messages in flight; if an emulator ever does, the
        messages are put back (visible again shortly) rather than processed beside their group."""
        with self._groups_lock:
            keep, back = [], []
            for m in messages:
                group = m.get("Attributes", {}).get("MessageGroupId")
                (back if group in self._groups_in_flight else keep).append(m)
            self._groups_in_flight.update(m.get("Attributes", {}).get("MessageGroupId") for m in keep)
        if back:
            log.warning("group already in flight; returning messages", extra={"queue": self.source.name,
                                                                            "count": len(back)})
            self._change_visibility(back, 1)
        return keep

    def _process(self, messages: list[dict[str, Any]], worker: Any) -> None:
        released = False
        try:
            try:
                event = {"Records": [lambda_record(m, self.source, self.region) for m in messages]}
            except Exception:
                self.pool.checkin(worker)
                raise
            result = self.pool.invoke(event, trigger="sqs", source=self.source.name, worker=worker)
            done = self._succeeded(messages, result)
            # Forget the groups before deleting: once deleted, SQS may hand the group's next messages
            # to our other slot, which must not mistake them for a group still in flight.
            self._release_groups(messages)
            released = True
            if done:
                self._delete(done)
        except Exception:
            log.exception("batch processing failed", extra={"queue": self.source.name})
        finally:
            if not released:
                self._release_groups(messages)
            self._slots.release()

    def _release_groups(self, messages: list[dict[str, Any]]) -> None:
        if self.source.fifo:
            with self._groups_lock:
                for m in messages:
                    self._groups_in_flight.discard(m.get("Attributes", {}).get("MessageGroupId"))

    def _succeeded(self, messages: list[dict[str, Any]], result: Any) -> list[dict[str, Any]]:
        if not result.ok:
            return []
        if not self.source.report_failures:
            return messages
        payload = result.payload
        if payload is None or (isinstance(payload, dict) and not payload.get("batchItemFailures")):
            return messages
        ids = {m["MessageId"] for m in messages}
        try:
            failed = {f["itemIdentifier"] for f in payload["batchItemFailures"]}
        except (TypeError, KeyError):
            failed = set()
        if not failed or not failed <= ids:
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
        except Exception as exc:
            log.warning("change visibility failed", extra={"queue": self.source.name, "error": str(exc)})


def sources_for(stack: Any, events: dict[str, dict[str, Any]]) -> list[SqsSource]:
    """The SQS event sources of one function, resolved against the running stack."""
    arn_to_url = {attrs.get("Arn"): attrs.get("QueueUrl") for attrs in stack.physical.values() if "QueueUrl" in attrs}
    out = []
    for _name, spec in events.items():
        if spec.get("Type") != "SQS":
            continue
        props = stack.resolve(spec.get("Properties", {}))
        arn = props["Queue"]
        url = arn_to_url.get(arn)
        if url is None:
            raise ValueError(f"SQS event source {arn} is not a queue of this template")
        out.append(SqsSource(
            queue_url=url, queue_arn=arn, batch_size=int(props.get("BatchSize", 10)),
            window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            report_failures="ReportBatchItemFailures" in props.get("FunctionResponseTypes", []),
            max_concurrency=int(props.get("ScalingConfig", {}).get("MaximumConcurrency", DEFAULT_CONCURRENCY)),
            enabled=str(props.get("Enabled", True)).lower() != "false",
        ))
    return out
