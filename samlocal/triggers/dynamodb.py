"""Lambda's DynamoDB Streams event source mapping: read every shard, batch, invoke, checkpoint, retry.

Semantics, as the Lambda developer guide documents them for DynamoDB event sources:
- every shard is polled about 4 times a second while idle, never with a pause while records are
  waiting (on the embedded patched emulator, an idle reader instead waits there for the shard's next
  record, `StreamWait`, and reads it at the same cadence: the same batches, at no cost while idle);
  a child shard is read only after its parent (closed, read to its end); with LATEST, shards
  that are already closed when the mapping starts are skipped, shards that appear later are read
  from TRIM_HORIZON, so nothing written after the mapping starts is missed;
- one batch in flight per shard (ParallelizationFactor 1), each shard's records strictly in order;
- BatchSize (default 100), MaximumBatchingWindowInSeconds, and Lambda's 6 MB invocation payload
  limit (a batch is cut short rather than exceed it);
- FilterCriteria: a record that matches none of the patterns is never sent, and the checkpoint
  moves past it;
- after a successful invocation the checkpoint moves past the batch. With ReportBatchItemFailures,
  `{"batchItemFailures": [{"itemIdentifier": <SequenceNumber>}]}` moves it to just before the lowest
  reported record and the records from there are retried; an empty or null list is a success; an
  unusable report (unknown identifier, wrong shape) fails the whole batch, as Lambda does;
- a failed batch is retried from the checkpoint (0.5 s, doubling to 5 s, between attempts) until
  it succeeds, MaximumRetryAttempts retries have failed, or a record is older than
  MaximumRecordAgeInSeconds; -1 is infinite for both, i.e. "until the record expires", which is the
  stream's 24 h retention. Then the failing records are discarded: Lambda's invocation record goes
  to the OnFailure destination (SQS queue or SNS topic), an error line is logged, and the shard
  moves on.
- BisectBatchOnFunctionError. The guide ("Retain discarded records for a DynamoDB event source"):
  "BisectBatchOnFunctionError, which splits a failed batch into two smaller batches, isolating bad
  records and avoiding timeouts. Splitting batches doesn't consume the retry quota." And ("Configuring
  partial batch response"): "If the invocation fails and BisectBatchOnFunctionError is turned on, the
  batch is bisected regardless of your ReportBatchItemFailures setting. When a partial batch success
  response is received and both ... are turned on, the batch is bisected at the returned sequence
  number and Lambda retries only the remaining records." So here: a failed invocation (an error, or
  an unusable report) of more than one record splits the batch in two, the halves are tried in
  order, each as a new batch, and no retry is counted; a failing single record, or a batch that
  reported item failures, is retried, and those retries count against MaximumRetryAttempts.
  A retry count starts again whenever the checkpoint moves (the failing record is then the first
  of a new batch).

The checkpoint lives in memory: a restarted runtime starts again from the StartingPosition.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import logging
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from ..invoker import FunctionPool, InvokeResult
from .base import EVENT_OVERHEAD, PAYLOAD_LIMIT_BYTES, EventSourceMapping, flag, record_size, reported_failures
from .filtering import check_pattern, parse_filters

log = logging.getLogger("samlocal.dynamodb")

POLL_INTERVAL_SECONDS = 0.25  # Lambda polls each shard 4 times a second
DISCOVERY_INTERVAL_SECONDS = 10.0  # how often the stream is described for new shards
RETRY_DELAY_SECONDS = 0.5  # first delay between attempts of a failing batch, doubling …
MAX_RETRY_DELAY_SECONDS = 5.0  # … up to this
READ_ERROR_DELAY_SECONDS = 1.0
STREAM_RETENTION_SECONDS = 24 * 3600
GET_RECORDS_LIMIT = 1000  # the most GetRecords returns
STARTING_POSITIONS = ("TRIM_HORIZON", "LATEST")
IDLE_WAIT_SECONDS = 20.0  # one wait call per idle shard per 20 s, instead of 80 GetRecords
STREAM_WAIT_PATH = "/_local/dynamodbstreams/wait"


@dataclass(frozen=True)
class StreamWait:
    """Where an idle shard reader waits for the shard's next record: `endpoint` is the embedded patched
    emulator serving DynamoDB Streams (samlocal.emulator.wake); None for an endpoint with no such wait
    (LocalStack, AWS), where an idle reader polls 4 times a second."""

    endpoint: str | None = None
    seconds: float = IDLE_WAIT_SECONDS


class WaitInterruptedError(Exception):
    """A stop or a pause ended the wait (or the idle connection it would have used)."""


class _Waiter:
    """One shard reader's waits, on a kept-alive connection; `interrupt` (from another thread) ends a
    wait at once. http.client, not urllib: no proxy settings apply to a loopback call."""

    def __init__(self, endpoint: str, seconds: float) -> None:
        split = urlsplit(endpoint)
        self.host, self.port, self.seconds = split.hostname or "127.0.0.1", split.port or 80, seconds
        self._conn: http.client.HTTPConnection | None = None
        self._interrupted = False  # interrupt() since the last wait: the next one returns at once, on a new connection
        self._lock = threading.Lock()

    def wait(self, stream_arn: str, shard_id: str, known: int | None) -> int:
        """The shard's count of records ever added, once it is not `known` (at once for None) or after
        `seconds`; raises WaitInterruptedError when `interrupt` ended it, another exception when it failed."""
        body = json.dumps({"stream_arn": stream_arn, "shard_id": shard_id, "known": known, "seconds": self.seconds})
        with self._lock:
            if self._interrupted:  # since the last wait (a stop racing this call, or a pause): the loop looks
                self._interrupted = False
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()  # it was shut down
                raise WaitInterruptedError()
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.seconds + 10)
            conn = self._conn
        try:
            conn.request("POST", STREAM_WAIT_PATH, body.encode(), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"HTTP {resp.status}: {answer[:200]!r}")
            return int(json.loads(answer)["records"])
        except Exception as exc:
            with self._lock:
                interrupted, self._interrupted = self._interrupted, False
            self.close()
            if interrupted:
                raise WaitInterruptedError() from exc
            raise

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # the blocked read returns now; the wait raises
            except OSError:
                pass

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


@dataclass
class StreamSource:
    """One `Type: DynamoDB` event of a function in the template."""

    stream_arn: str
    starting_position: str = "LATEST"  # TRIM_HORIZON | LATEST
    batch_size: int = 100
    window_seconds: float = 0.0  # MaximumBatchingWindowInSeconds
    bisect_on_error: bool = False  # BisectBatchOnFunctionError
    max_retry_attempts: int = -1  # MaximumRetryAttempts (-1: until the record expires)
    max_record_age_seconds: int = -1  # MaximumRecordAgeInSeconds (-1: until the record expires)
    report_failures: bool = False  # FunctionResponseTypes: [ReportBatchItemFailures]
    on_failure_arn: str | None = None  # DestinationConfig.OnFailure.Destination: SQS queue or SNS topic
    filters: list[dict[str, Any]] = field(default_factory=list)  # FilterCriteria.Filters[].Pattern, parsed
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.starting_position not in STARTING_POSITIONS:
            raise ValueError(f"DynamoDB StartingPosition must be TRIM_HORIZON or LATEST, not {self.starting_position!r}")
        if self.batch_size < 1:
            raise ValueError(f"BatchSize must be at least 1, not {self.batch_size}")
        if self.on_failure_arn and _arn_service(self.on_failure_arn) not in ("sqs", "sns"):
            raise ValueError(f"on-failure destination {self.on_failure_arn}: only SQS queues and SNS topics are emulated")
        for pattern in self.filters:
            check_pattern(pattern)

    @property
    def table_name(self) -> str:
        """arn:aws:dynamodb:region:account:table/NAME/stream/LABEL → NAME."""
        return self.stream_arn.split(":", 5)[-1].split("/")[1]


def _arn_service(arn: str) -> str:
    parts = arn.split(":")
    return parts[2] if len(parts) > 5 else ""


# --- the event ------------------------------------------------------------------------------------


def _plain_json(value: Any) -> Any:
    """DynamoDB JSON as the low-level client parses it → as Lambda's event carries it (binary: base64)."""
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: _plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain_json(v) for v in value]
    return value


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.timestamp()
    return float(value) if value is not None else time.time()


def lambda_record(record: dict[str, Any], stream_arn: str, region: str) -> dict[str, Any]:
    """A GetRecords record as Lambda hands it to a function."""
    ddb = record.get("dynamodb", {})
    image: dict[str, Any] = {"ApproximateCreationDateTime": int(_epoch(ddb.get("ApproximateCreationDateTime")))}
    for key in ("Keys", "NewImage", "OldImage"):
        if key in ddb:
            image[key] = _plain_json(ddb[key])
    image.update({"SequenceNumber": ddb["SequenceNumber"], "SizeBytes": ddb.get("SizeBytes", 0),
                  "StreamViewType": ddb.get("StreamViewType")})
    out: dict[str, Any] = {
        "eventID": record.get("eventID"), "eventName": record.get("eventName"), "eventVersion": "1.1",
        "eventSource": "aws:dynamodb", "awsRegion": region, "dynamodb": image,
    }
    identity = record.get("userIdentity")
    if identity:  # TTL deletions: the Streams API's {"Type", "PrincipalId"} is {"type", "principalId"} in Lambda's event
        out["userIdentity"] = {key[:1].lower() + key[1:]: value for key, value in identity.items()}
    out["eventSourceARN"] = stream_arn
    return out


# --- the poller -----------------------------------------------------------------------------------


@dataclass
class _Record:
    seq: str
    created: float  # epoch seconds
    event: dict[str, Any]  # the record as the function gets it
    size: int  # its bytes in the invocation payload
    deliver: bool  # False: filtered out


class StreamPoller(EventSourceMapping):
    """Lambda's event source mapping for one DynamoDB stream and one function."""

    kind = "dynamodb"
    event_types = ("DynamoDB",)
    log = log

    def __init__(self, streams: Any, pool: FunctionPool, source: StreamSource, region: str,
                 clients: Callable[[str], Any], stream_wait: StreamWait = StreamWait()) -> None:
        super().__init__(pool, source)
        self.source: StreamSource = source
        self.streams = streams
        self.region = region
        self.clients = clients
        self.stream_wait = stream_wait
        self._wake = threading.Event()  # a shard ended: look for its children now
        self._lock = threading.Lock()
        self._shards: dict[str, _ShardReader] = {}
        self._finished: set[str] = set()
        self._started_shards = False  # the first discovery (which applies the StartingPosition) is done
        self._queue_urls: dict[str, str] = {}
        self._clients: dict[str, Any] = {}

    @classmethod
    def source_from(cls, stack: Any, function_lid: str, event_name: str, event_type: str,
                    props: dict[str, Any]) -> StreamSource:
        if "StartingPosition" not in props:
            raise ValueError(f"DynamoDB event {event_name}: StartingPosition is required")
        for unsupported in ("TumblingWindowInSeconds", "StartingPositionTimestamp"):
            if unsupported in props:
                log.warning("event source property not emulated", extra={"event": event_name, "property": unsupported})
        if int(props.get("ParallelizationFactor", 1)) != 1:
            log.warning("ParallelizationFactor > 1 not emulated: one batch per shard at a time",
                        extra={"event": event_name, "parallelization_factor": props["ParallelizationFactor"]})
        on_failure = ((props.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        return StreamSource(
            stream_arn=props["Stream"], starting_position=str(props["StartingPosition"]),
            batch_size=int(props.get("BatchSize", 100)),
            window_seconds=float(props.get("MaximumBatchingWindowInSeconds", 0)),
            bisect_on_error=flag(props.get("BisectBatchOnFunctionError")),
            max_retry_attempts=int(props.get("MaximumRetryAttempts", -1)),
            max_record_age_seconds=int(props.get("MaximumRecordAgeInSeconds", -1)),
            report_failures="ReportBatchItemFailures" in (props.get("FunctionResponseTypes") or []),
            on_failure_arn=on_failure, filters=parse_filters(props.get("FilterCriteria")),
            enabled=flag(props.get("Enabled"), True),
        )

    # --- what Lambda's API shows -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.source.table_name

    @property
    def source_arn(self) -> str:
        return self.source.stream_arn

    def mapping_fields(self) -> dict[str, Any]:
        src = self.source
        return dict(StartingPosition=src.starting_position, ParallelizationFactor=1,
                    BisectBatchOnFunctionError=src.bisect_on_error, MaximumRetryAttempts=src.max_retry_attempts,
                    MaximumRecordAgeInSeconds=src.max_record_age_seconds,
                    DestinationConfig={"OnFailure": {"Destination": src.on_failure_arn} if src.on_failure_arn else {}})

    def checkpoints(self) -> dict[str, str | None]:
        """Shard id → sequence number of the last record done with (None: none yet)."""
        with self._lock:
            return {sid: shard.checkpoint for sid, shard in self._shards.items()}

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Finds the shards and takes their iterators before returning: with LATEST, every record
        written after start() returns is delivered."""
        if self._threads:
            return
        try:
            self._discover()
        except Exception as exc:
            log.warning("describe stream failed; will retry", extra=self._extra(error=str(exc)))
        self.spawn(self.run, f"ddb-stream:{self.source.table_name}", self._extra)

    def stop(self, timeout: float = 5) -> None:
        self._wake.set()
        super().stop(timeout)

    def _waiters(self) -> list[_Waiter]:
        with self._lock:
            waiters = [reader.waiter for reader in self._shards.values()]  # read once: a failing reader drops its own
        return [w for w in waiters if w is not None]

    def interrupt(self) -> None:
        """A stop or a pause ends the idle readers' waits (a paused reader reads nothing anyway)."""
        for waiter in self._waiters():
            waiter.interrupt()

    def stopped(self) -> None:
        for waiter in self._waiters():
            waiter.close()

    def run(self) -> None:
        self._coordinate()

    def _coordinate(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(DISCOVERY_INTERVAL_SECONDS if self._started_shards else READ_ERROR_DELAY_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._discover()
            except Exception as exc:
                log.warning("describe stream failed", extra=self._extra(error=str(exc)))

    def _describe(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {"StreamArn": self.source.stream_arn}
        while True:
            desc = self.streams.describe_stream(**kwargs)["StreamDescription"]
            shards.extend(desc.get("Shards", []))
            last = desc.get("LastEvaluatedShardId")
            if not last:
                return shards
            kwargs["ExclusiveStartShardId"] = last

    def _discover(self) -> None:
        """Starts a reader for every shard whose parent is done (or gone)."""
        shards = self._describe()
        known = {s["ShardId"] for s in shards}
        first = not self._started_shards
        with self._lock:
            if first and self.source.starting_position == "LATEST":
                # A closed shard gets nothing new: LATEST has nothing to read there.
                self._finished.update(s["ShardId"] for s in shards
                                      if "EndingSequenceNumber" in s.get("SequenceNumberRange", {}))
            new = []
            for s in shards:
                sid, parent = s["ShardId"], s.get("ParentShardId")
                if sid in self._shards or sid in self._finished:
                    continue
                if parent and parent in known and parent not in self._finished:
                    continue  # the parent's records first
                start = self.source.starting_position if first else "TRIM_HORIZON"
                reader = _ShardReader(self, sid, start)
                self._shards[sid] = reader
                new.append(reader)
            self._started_shards = True
        for reader in new:
            try:
                reader.acquire()
            except Exception as exc:  # the reader tries again
                log.warning("get shard iterator failed", extra=self._extra(shard=reader.shard_id, error=str(exc)))
            self.spawn(reader.run, f"ddb-shard:{self.source.table_name}:{reader.shard_id[-8:]}",
                       partial(self._extra, shard=reader.shard_id))

    def _shard_ended(self, shard_id: str) -> None:
        with self._lock:
            self._finished.add(shard_id)
        self._wake.set()

    # --- helpers for the readers -----------------------------------------------------------------
    def log_fields(self, **fields: Any) -> dict[str, Any]:
        return super().log_fields(stream=self.source.stream_arn, **fields)

    _extra = log_fields

    def _client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = self.clients(service)
        return self._clients[service]

    def _send_failure(self, message: dict[str, Any]) -> None:
        arn = self.source.on_failure_arn
        if not arn:
            return
        body = json.dumps(message)
        if _arn_service(arn) == "sns":
            self._client("sns").publish(TopicArn=arn, Message=body)
            return
        url = self._queue_urls.get(arn)
        if url is None:
            _, _, _, _, account, name = arn.split(":", 5)
            url = self._client("sqs").get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
            self._queue_urls[arn] = url
        self._client("sqs").send_message(QueueUrl=url, MessageBody=body)


def _iso(epoch: float, millis: bool = False) -> str:
    moment = dt.datetime.fromtimestamp(epoch, dt.UTC)
    if millis:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _ShardReader:
    """One shard: its iterator, the records read and not yet done, the batch being retried."""

    def __init__(self, poller: StreamPoller, shard_id: str, start: str) -> None:
        self.poller = poller
        self.source = poller.source
        self.shard_id = shard_id
        self.start = start
        self.iterator: str | None = None
        self.read_seq: str | None = None  # the last record read from the stream
        self.checkpoint: str | None = None  # the last record done with (delivered, filtered out or discarded)
        self.buffer: deque[_Record] = deque()  # read, not yet done, in order
        self.ended = False  # the shard is closed and read to its end
        # Sizes of the next batches when they are fixed: the batch being retried, bisected halves.
        self.segments: list[int] = []
        self.attempts = 0  # failed invocations of the records at the front
        self.last_result: InvokeResult | None = None
        self.window_start: float | None = None
        self._trimmed = False
        self._read_errors = 0
        wait = poller.stream_wait
        self.waiter = _Waiter(wait.endpoint, wait.seconds) if wait.endpoint else None
        self._known: int | None = None  # the shard's record count the last wait answered

    # --- reading ---------------------------------------------------------------------------------
    def acquire(self) -> None:
        streams, arn = self.poller.streams, self.source.stream_arn
        if self._trimmed:
            kwargs: dict[str, Any] = {"ShardIteratorType": "TRIM_HORIZON"}
        elif self.read_seq is not None:
            kwargs = {"ShardIteratorType": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": self.read_seq}
        else:
            kwargs = {"ShardIteratorType": self.start}
        self.iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=self.shard_id, **kwargs)["ShardIterator"]
        self._trimmed = False

    def _read(self) -> tuple[int, bool]:
        """One GetRecords: (records read, whether the page was full, i.e. more are waiting)."""
        if self.iterator is None:
            self.acquire()
        got = self.poller.streams.get_records(ShardIterator=self.iterator, Limit=GET_RECORDS_LIMIT)
        self._read_errors = 0
        self.iterator = got.get("NextShardIterator")
        records = got.get("Records", [])
        for raw in records:
            event = lambda_record(raw, self.source.stream_arn, self.poller.region)
            size = record_size(event)
            created = _epoch(raw.get("dynamodb", {}).get("ApproximateCreationDateTime"))
            self.buffer.append(_Record(event["dynamodb"]["SequenceNumber"], created, event, size,
                                       self.poller.passes(event)))
            self.read_seq = event["dynamodb"]["SequenceNumber"]
        if self.iterator is None:
            self.ended = True
        return len(records), len(records) >= GET_RECORDS_LIMIT

    def _read_failed(self, exc: Exception) -> None:
        code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
        self._read_errors += 1
        if code == "TrimmedDataAccessException":
            # The records after our position have expired: carry on from the oldest still there.
            self._trimmed, self.iterator = True, None
        elif code == "ExpiredIteratorException" or self._read_errors > 1:
            self.iterator = None  # re-acquired AFTER_SEQUENCE_NUMBER the last record read
        log.warning("stream read failed", extra=self.poller._extra(shard=self.shard_id, error=str(exc), code=code,
                                                                   checkpoint=self.checkpoint))
        if code != "ExpiredIteratorException":
            self.poller._stop.wait(READ_ERROR_DELAY_SECONDS)

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> None:
        """Reads the shard to its end; an unexpected exception ends this call and the supervisor
        restarts it (the reader keeps its checkpoint and buffer): a shard never stops silently."""
        stop = self.poller._stop
        while not stop.is_set():
            if not self.source.enabled:
                stop.wait(0.1)
                continue
            if not self._step():
                return

    def _step(self) -> bool:
        """One turn: read if a batch wants records, deliver a batch if one is ready, else wait.
        False when the shard is done with (or the function's pool closed)."""
        self._complete(0)  # filtered-out records at the front are done with
        fetched, more_waiting, read_at = 0, False, None
        if self._wants_records():
            read_at = time.monotonic()
            try:
                fetched, more_waiting = self._read()
            except Exception as exc:
                if self.poller._stop.is_set():
                    return False
                self._read_failed(exc)
                return True
        if self.ended and not self.buffer:
            log.info("shard ended", extra=self.poller._extra(shard=self.shard_id, checkpoint=self.checkpoint))
            self.poller._shard_ended(self.shard_id)
            return False
        batch, wait = self._ready_batch(more_waiting)
        if batch and not self.source.enabled:
            return True  # paused while reading: the records wait in the buffer for the resume
        if batch:
            return self._deliver(batch)
        if not fetched:
            if read_at is not None and not self.buffer and self.waiter is not None:
                self._idle(read_at)
            else:
                self.poller._stop.wait(wait)
        return True

    def _idle(self, read_at: float) -> None:
        """After an empty read with nothing pending: wait for the shard's next record (or the wait's
        end), then keep Lambda's cadence (a read at most every POLL_INTERVAL_SECONDS), so records
        batch as they did under polling. A failed wait is said once and the reader polls from then on."""
        stop, waiter = self.poller._stop, self.waiter
        if stop.is_set() or waiter is None:
            return
        try:
            self._known = waiter.wait(self.source.stream_arn, self.shard_id, self._known)
        except WaitInterruptedError:
            return  # a stop or a pause: the loop looks at both
        except Exception as exc:
            if stop.is_set():
                return
            log.warning("idle stream wait failed; polling the shard 4 times a second instead",
                        extra=self.poller._extra(shard=self.shard_id, error=str(exc)))
            self.waiter = None
            waiter.close()
            stop.wait(POLL_INTERVAL_SECONDS)
            return
        left = read_at + POLL_INTERVAL_SECONDS - time.monotonic()
        if left > 0:
            stop.wait(left)

    def _wants_records(self) -> bool:
        if self.ended or self.segments:
            return False
        batch, payload_full = self._candidates(self.source.batch_size)
        return len(batch) < self.source.batch_size and not payload_full

    def _candidates(self, count: int) -> tuple[list[_Record], bool]:
        """The next `count` records to deliver, cut short at the payload limit (and whether it was)."""
        out: list[_Record] = []
        size = EVENT_OVERHEAD
        for r in self.buffer:
            if not r.deliver:
                continue
            if out and size + r.size > PAYLOAD_LIMIT_BYTES:
                return out, True
            out.append(r)
            size += r.size
            if len(out) >= count:
                break
        return out, False

    def _ready_batch(self, more_waiting: bool) -> tuple[list[_Record], float]:
        """The batch to invoke now (or none), and how long to wait before the next read otherwise."""
        if self.segments:
            return self._candidates(self.segments[0])[0], 0.0
        batch, payload_full = self._candidates(self.source.batch_size)
        if not batch:
            return [], POLL_INTERVAL_SECONDS
        if len(batch) >= self.source.batch_size or payload_full or self.ended:
            return batch, 0.0
        if more_waiting:
            return [], 0.0  # fill the batch from the records waiting first
        window = self.source.window_seconds
        if window <= 0:
            return batch, 0.0
        now = time.monotonic()
        if self.window_start is None:
            self.window_start = now
        remaining = self.window_start + window - now
        if remaining <= 0:
            return batch, 0.0
        return [], min(POLL_INTERVAL_SECONDS, remaining)

    # --- delivering ------------------------------------------------------------------------------
    def _max_age(self) -> float:
        age = self.source.max_record_age_seconds
        return STREAM_RETENTION_SECONDS if age < 0 else age

    def _deliver(self, batch: list[_Record]) -> bool:
        self.window_start = None
        now = time.time()
        expired = 0
        while expired < len(batch) and now - batch[expired].created > self._max_age():
            expired += 1
        if expired:
            self._discard(batch[:expired], "RecordAgeExceeded")
            return True
        event = {"Records": [r.event for r in batch]}
        try:
            result = self.poller.pool.invoke(event, trigger="dynamodb", source=self.source.table_name)
        except Exception as exc:
            if getattr(self.poller.pool, "_closed", False) or self.poller._stop.is_set():
                return False  # the function's pool closed: the stack is stopping
            log.exception("invoke failed", extra=self.poller._extra(shard=self.shard_id))
            result = InvokeResult(False, error={"errorMessage": str(exc), "errorType": type(exc).__name__})
        done, invocation_failed = self._outcome(batch, result)
        if done == len(batch):
            self._complete(done)
            self.attempts, self.last_result = 0, None
            return True
        if done:
            self._complete(done)
            self.attempts = 0
        failed = batch[done:]
        if not self.segments:
            self.segments = [len(failed)]
        self.last_result = result
        extra = self.poller._extra(shard=self.shard_id, batch_size=len(failed), attempt=self.attempts + 1,
                                   error=(result.error or {}).get("errorMessage", "")[:300])
        if invocation_failed and self.source.bisect_on_error and len(failed) > 1:
            half = (len(failed) + 1) // 2
            self.segments[0:1] = [half, len(failed) - half]
            self.attempts = 0  # splitting doesn't consume the retry quota
            log.warning("batch failed; bisecting", extra={**extra, "halves": [half, len(failed) - half]})
            return True
        self.attempts += 1
        limit = self.source.max_retry_attempts
        if 0 <= limit < self.attempts:
            self._discard(failed, "RetryAttemptsExhausted")
            return True
        delay = min(MAX_RETRY_DELAY_SECONDS, RETRY_DELAY_SECONDS * 2 ** (self.attempts - 1))
        log.warning("batch failed; retrying", extra={**extra, "retry_in_seconds": delay})
        self.poller._stop.wait(delay)
        return True

    def _outcome(self, batch: list[_Record], result: InvokeResult) -> tuple[int, bool]:
        """(records done at the front of the batch, whether the invocation counts as failed)."""
        if not result.ok:
            return 0, True
        if not self.source.report_failures:
            return len(batch), False
        reported = reported_failures(result.payload)
        if reported == []:
            return len(batch), False
        position = {r.seq: i for i, r in enumerate(batch)}
        if reported is None or not all(s in position for s in reported):
            log.warning("malformed batchItemFailures; whole batch fails",
                        extra=self.poller._extra(shard=self.shard_id, batch_size=len(batch)))
            return 0, True
        return min(position[s] for s in reported), False

    def _complete(self, count: int) -> None:
        """The first `count` records to deliver are done with: the checkpoint moves past them and
        the filtered-out records that follow them."""
        last = None
        done = 0
        while self.buffer and done < count:
            last = self.buffer.popleft()
            done += last.deliver
        while self.buffer and not self.buffer[0].deliver:
            last = self.buffer.popleft()
        if last is not None:
            self.checkpoint = last.seq
        while done and self.segments:
            take = min(done, self.segments[0])
            self.segments[0] -= take
            done -= take
            if not self.segments[0]:
                self.segments.pop(0)

    def _discard(self, records: list[_Record], condition: str) -> None:
        """Lambda gives up on these records: the on-failure record goes to the destination."""
        result = self.last_result
        response: dict[str, Any] = {"statusCode": 200, "executedVersion": "$LATEST"}
        if result is not None and not result.ok:
            response["functionError"] = "Unhandled"
        message = {
            "requestContext": {"requestId": result.request_id if result and result.request_id else str(uuid.uuid4()),
                               "functionArn": self.poller.pool.spec.arn, "condition": condition,
                               "approximateInvokeCount": self.attempts},
            "responseContext": response,
            "version": "1.0",
            "timestamp": _iso(time.time(), millis=True),
            "DDBStreamBatchInfo": {
                "shardId": self.shard_id, "startSequenceNumber": records[0].seq, "endSequenceNumber": records[-1].seq,
                "approximateArrivalOfFirstRecord": _iso(records[0].created),
                "approximateArrivalOfLastRecord": _iso(records[-1].created),
                "batchSize": len(records), "streamArn": self.source.stream_arn,
            },
        }
        extra = self.poller._extra(shard=self.shard_id, batch_size=len(records), attempt=self.attempts,
                                   condition=condition, start_sequence_number=records[0].seq,
                                   end_sequence_number=records[-1].seq, destination=self.source.on_failure_arn)
        try:
            self.poller._send_failure(message)
        except Exception as exc:
            extra["destination_error"] = str(exc)
        log.error("records discarded", extra=extra)
        self._complete(len(records))
        self.attempts, self.last_result = 0, None
