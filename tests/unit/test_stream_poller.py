"""Lambda's DynamoDB Streams event source (local.triggers.dynamodb) against a real table stream under moto.

The function is a fake pool that records each event and answers per a script, so every test sees
exactly which batches were delivered, in which order, and what reached the on-failure destination.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from samlocal.invoker import InvokeResult
from samlocal.template import Stack
from samlocal.triggers import dynamodb as stream_poller
from samlocal.triggers import supervise
from samlocal.triggers.dynamodb import StreamPoller, StreamSource
from samlocal.triggers.filtering import check_pattern, matches
from tests.conftest import wait_until as shared_wait_until

REGION = "us-east-1"
TABLE = "stream-table"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:unit-Fn"

Respond = Callable[[list[str], int], InvokeResult]


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lambda's pacing, compressed: polls, retry delays and read-error pauses in tens of milliseconds."""
    monkeypatch.setattr(stream_poller, "POLL_INTERVAL_SECONDS", 0.02)
    monkeypatch.setattr(stream_poller, "RETRY_DELAY_SECONDS", 0.01)
    monkeypatch.setattr(stream_poller, "MAX_RETRY_DELAY_SECONDS", 0.05)
    monkeypatch.setattr(stream_poller, "READ_ERROR_DELAY_SECONDS", 0.02)


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    return shared_wait_until(predicate, timeout, what, poll=0.01)


class FakePool:
    """Stands in for FunctionPool: records events (as JSON would carry them) and answers per `respond`."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.spec = SimpleNamespace(name="unit-Fn", arn=FUNCTION_ARN)
        self.respond = respond or (lambda keys, n: InvokeResult(True))
        self.events: list[dict[str, Any]] = []
        self.results: list[InvokeResult] = []
        self.sources: set[str] = set()
        self._lock = threading.Lock()

    def invoke(self, event: Any, *, trigger: str, source: str = "", invoked_arn: str = "",
               worker: Any = None) -> InvokeResult:
        assert trigger == "dynamodb"
        event = json.loads(json.dumps(event))  # what a function gets: JSON
        with self._lock:
            n = len(self.events)
            result = self.respond(keys(event), n)
            result.request_id = f"req-{n}"
            self.events.append(event)
            self.results.append(result)
            self.sources.add(source)
        return result

    def batches(self) -> list[list[str]]:
        with self._lock:
            return [keys(e) for e in self.events]

    def delivered(self) -> list[str]:
        """Keys of the records in successful invocations, in order."""
        with self._lock:
            return [k for e, r in zip(self.events, self.results) if r.ok for k in keys(e)]


def keys(event: dict[str, Any]) -> list[str]:
    return [r["dynamodb"]["Keys"]["pk"]["S"] for r in event["Records"]]


def fail(message: str = "boom") -> InvokeResult:
    return InvokeResult(False, error={"errorMessage": message, "errorType": "RuntimeError"})


@pytest.fixture
def aws(aws_credentials: None) -> Iterator[SimpleNamespace]:
    with mock_aws():
        ddb = boto3.client("dynamodb", region_name=REGION)
        stream_arn = ddb.create_table(
            TableName=TABLE, BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        )["TableDescription"]["LatestStreamArn"]
        sqs = boto3.client("sqs", region_name=REGION)
        queue_url = sqs.create_queue(QueueName="stream-failures")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        yield SimpleNamespace(ddb=ddb, streams=boto3.client("dynamodbstreams", region_name=REGION), sqs=sqs,
                              stream_arn=stream_arn, queue_url=queue_url, queue_arn=queue_arn)


@pytest.fixture
def start(aws: SimpleNamespace) -> Iterator[Callable[..., StreamPoller]]:
    """start(pool, **StreamSource fields) → a started poller on the table's stream, stopped afterwards."""
    pollers: list[StreamPoller] = []

    def _start(pool: FakePool, streams: Any = None, **fields: Any) -> StreamPoller:
        source = StreamSource(stream_arn=aws.stream_arn, **fields)
        poller = StreamPoller(streams or aws.streams, pool, source, REGION,  # type: ignore[arg-type]
                              lambda service: boto3.client(service, region_name=REGION))
        poller.start()
        pollers.append(poller)
        return poller

    yield _start
    for poller in pollers:
        poller.stop()


def put(aws: SimpleNamespace, *pks: str, **attributes: dict[str, Any]) -> None:
    for pk in pks:
        aws.ddb.put_item(TableName=TABLE, Item={"pk": {"S": pk}, **attributes})


def stream_sequence_numbers(aws: SimpleNamespace) -> list[str]:
    (shard,) = aws.streams.describe_stream(StreamArn=aws.stream_arn)["StreamDescription"]["Shards"]
    it = aws.streams.get_shard_iterator(StreamArn=aws.stream_arn, ShardId=shard["ShardId"],
                                        ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    return [r["dynamodb"]["SequenceNumber"] for r in aws.streams.get_records(ShardIterator=it)["Records"]]


def failure_messages(aws: SimpleNamespace, count: int = 1) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []

    def receive() -> bool:
        for m in aws.sqs.receive_message(QueueUrl=aws.queue_url, MaxNumberOfMessages=10).get("Messages", []):
            got.append(json.loads(m["Body"]))
            aws.sqs.delete_message(QueueUrl=aws.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return len(got) >= count

    wait_until(receive, what=f"{count} on-failure record(s)")
    return got


# --- the event --------------------------------------------------------------------------------------


def test_event_has_lambdas_shape(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    pool = FakePool()
    start(pool, starting_position="TRIM_HORIZON")
    put(aws, "a", n={"N": "1"}, blob={"B": b"\x00\x01"})
    put(aws, "a", n={"N": "2"})
    aws.ddb.delete_item(TableName=TABLE, Key={"pk": {"S": "a"}})
    wait_until(lambda: sum(len(e["Records"]) for e in pool.events) == 3, what="3 records")
    insert, modify, remove = [r for e in pool.events for r in e["Records"]]

    assert list(insert) == ["eventID", "eventName", "eventVersion", "eventSource", "awsRegion", "dynamodb",
                            "eventSourceARN"]
    assert [r["eventName"] for r in (insert, modify, remove)] == ["INSERT", "MODIFY", "REMOVE"]
    for record in (insert, modify, remove):
        assert record["eventVersion"] == "1.1" and record["eventSource"] == "aws:dynamodb"
        assert record["awsRegion"] == REGION and record["eventSourceARN"] == aws.stream_arn
        image = record["dynamodb"]
        assert isinstance(image["ApproximateCreationDateTime"], int)
        assert abs(image["ApproximateCreationDateTime"] - time.time()) < 60
        assert image["Keys"] == {"pk": {"S": "a"}} and image["StreamViewType"] == "NEW_AND_OLD_IMAGES"
        assert isinstance(image["SizeBytes"], int) and image["SizeBytes"] > 0
    assert set(insert["dynamodb"]) == {"ApproximateCreationDateTime", "Keys", "NewImage", "SequenceNumber",
                                       "SizeBytes", "StreamViewType"}
    assert insert["dynamodb"]["NewImage"] == {"pk": {"S": "a"}, "n": {"N": "1"},
                                              "blob": {"B": base64.b64encode(b"\x00\x01").decode()}}
    assert modify["dynamodb"]["OldImage"] == insert["dynamodb"]["NewImage"]
    assert modify["dynamodb"]["NewImage"] == {"pk": {"S": "a"}, "n": {"N": "2"}}
    assert remove["dynamodb"]["OldImage"] == modify["dynamodb"]["NewImage"] and "NewImage" not in remove["dynamodb"]
    seqs = [int(r["dynamodb"]["SequenceNumber"]) for r in (insert, modify, remove)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert pool.sources == {TABLE}


def test_a_ttl_deletions_user_identity_takes_lambdas_spelling() -> None:
    # GetRecords says {"Type", "PrincipalId"}; the Lambda event {"type", "principalId"} (it was passed as is).
    record = {"eventID": "e", "eventName": "REMOVE", "userIdentity": {"Type": "Service", "PrincipalId": "dynamodb.amazonaws.com"},
              "dynamodb": {"Keys": {"pk": {"S": "a"}}, "SequenceNumber": "1", "SizeBytes": 5,
                           "StreamViewType": "OLD_IMAGE", "ApproximateCreationDateTime": time.time()}}
    out = stream_poller.lambda_record(record, "arn:stream", REGION)
    assert out["userIdentity"] == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
    del record["userIdentity"]
    assert "userIdentity" not in stream_poller.lambda_record(record, "arn:stream", REGION)


def test_batch_size_and_order(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, *(f"k{i:02d}" for i in range(10)))
    pool = FakePool()
    start(pool, starting_position="TRIM_HORIZON", batch_size=3)
    wait_until(lambda: len(pool.delivered()) == 10, what="10 records")
    assert pool.batches() == [["k00", "k01", "k02"], ["k03", "k04", "k05"], ["k06", "k07", "k08"], ["k09"]]


def test_latest_skips_records_written_before_start_trim_horizon_does_not(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "old1", "old2")
    latest, horizon = FakePool(), FakePool()
    start(latest, starting_position="LATEST")
    start(horizon, starting_position="TRIM_HORIZON")
    put(aws, "new")
    wait_until(lambda: latest.delivered() == ["new"], what="the new record at LATEST")
    wait_until(lambda: horizon.delivered() == ["old1", "old2", "new"], what="every record at TRIM_HORIZON")


def test_batching_window_gathers_records(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    pool = FakePool()
    start(pool, batch_size=10, window_seconds=1.0)
    put(aws, "a", "b", "c")
    wait_until(lambda: pool.events, what="a batch")
    assert pool.batches() == [["a", "b", "c"]]


def test_payload_limit_splits_a_batch(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    big = {"S": "x" * 380_000}
    names = [f"big{i:02d}" for i in range(20)]  # ~7.6 MB of records
    put(aws, *names, blob=big)
    pool = FakePool()
    start(pool, starting_position="TRIM_HORIZON", batch_size=100)
    wait_until(lambda: len(pool.delivered()) == 20, what="20 large records")
    assert len(pool.events) == 2 and pool.delivered() == names
    assert all(len(json.dumps(e, separators=(",", ":"))) <= stream_poller.PAYLOAD_LIMIT_BYTES for e in pool.events)


# --- failures ---------------------------------------------------------------------------------------


def test_failed_invocation_is_retried_without_loss_or_reordering(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "a", "b", "c", "d", "e")
    pool = FakePool(lambda keys, n: fail() if n < 2 else InvokeResult(True))
    start(pool, starting_position="TRIM_HORIZON", batch_size=2)
    wait_until(lambda: len(pool.delivered()) == 5, what="every record")
    assert pool.batches() == [["a", "b"], ["a", "b"], ["a", "b"], ["c", "d"], ["e"]]
    assert pool.delivered() == ["a", "b", "c", "d", "e"]


def test_report_batch_item_failures_checkpoints_at_the_lowest_reported_record(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "a", "b", "c", "d", "e")
    seqs = stream_sequence_numbers(aws)

    def respond(keys: list[str], n: int) -> InvokeResult:
        if n == 0:  # e and c failed: c is the lowest
            return InvokeResult(True, payload={"batchItemFailures": [{"itemIdentifier": seqs[4]},
                                                                     {"itemIdentifier": seqs[2]}]})
        return InvokeResult(True, payload={"batchItemFailures": []})

    pool = FakePool(respond)
    poller = start(pool, starting_position="TRIM_HORIZON", batch_size=5, report_failures=True)
    wait_until(lambda: len(pool.events) == 2, what="the retry")
    assert pool.batches() == [["a", "b", "c", "d", "e"], ["c", "d", "e"]]
    wait_until(lambda: list(poller.checkpoints().values()) == [seqs[4]], what="the checkpoint past e")


@pytest.mark.parametrize("payload", [
    {"batchItemFailures": [{"itemIdentifier": "12345678901234567890123"}]},  # not in the batch
    {"batchItemFailures": [{"itemIdentifier": ""}]},
    {"batchItemFailures": [{"itemIdentifier": None}]},
    {"batchItemFailures": [{"id": "x"}]},
    {"batchItemFailures": "all of them"},
    "done",
])
def test_malformed_report_fails_the_whole_batch(aws: SimpleNamespace, start: Callable[..., StreamPoller],
                                                payload: Any) -> None:
    put(aws, "a", "b", "c")
    pool = FakePool(lambda keys, n: InvokeResult(True, payload=payload if n == 0 else None))
    start(pool, starting_position="TRIM_HORIZON", report_failures=True)
    wait_until(lambda: len(pool.events) == 2, what="the retry")
    assert pool.batches() == [["a", "b", "c"], ["a", "b", "c"]]


@pytest.mark.parametrize("payload", [None, {}, {"batchItemFailures": []}, {"batchItemFailures": None}])
def test_empty_report_is_success(aws: SimpleNamespace, start: Callable[..., StreamPoller], payload: Any) -> None:
    put(aws, "a", "b")
    pool = FakePool(lambda keys, n: InvokeResult(True, payload=payload))
    poller = start(pool, starting_position="TRIM_HORIZON", report_failures=True)
    last = stream_sequence_numbers(aws)[-1]
    wait_until(lambda: list(poller.checkpoints().values()) == [last], what="the checkpoint past b")
    assert pool.batches() == [["a", "b"]]


def test_bisect_isolates_a_poison_record(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "a", "b", "poison", "d", "e")
    poison_seq = stream_sequence_numbers(aws)[2]
    pool = FakePool(lambda keys, n: fail() if "poison" in keys else InvokeResult(True))
    start(pool, starting_position="TRIM_HORIZON", bisect_on_error=True, max_retry_attempts=1,
          on_failure_arn=aws.queue_arn)
    (message,) = failure_messages(aws)
    wait_until(lambda: len(pool.delivered()) == 4, what="the good records")
    # Splits cost no retry; the poison record alone gets its one retry, then goes to the destination.
    assert pool.batches() == [["a", "b", "poison", "d", "e"], ["a", "b", "poison"], ["a", "b"],
                              ["poison"], ["poison"], ["d", "e"]]
    assert pool.delivered() == ["a", "b", "d", "e"]
    info = message["DDBStreamBatchInfo"]
    assert (info["batchSize"], info["startSequenceNumber"], info["endSequenceNumber"]) == (1, poison_seq, poison_seq)
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["approximateInvokeCount"] == 2


def test_on_failure_destination_gets_lambdas_invocation_record(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "bad1", "bad2")
    seqs = stream_sequence_numbers(aws)
    pool = FakePool(lambda keys, n: fail() if keys[0].startswith("bad") else InvokeResult(True))
    poller = start(pool, starting_position="TRIM_HORIZON", max_retry_attempts=0, on_failure_arn=aws.queue_arn)
    (message,) = failure_messages(aws)
    (shard_id,) = poller.checkpoints()

    assert list(message) == ["requestContext", "responseContext", "version", "timestamp", "DDBStreamBatchInfo"]
    assert message["requestContext"] == {"requestId": pool.results[0].request_id, "functionArn": FUNCTION_ARN,
                                         "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 1}
    assert message["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"}
    assert message["version"] == "1.0"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["timestamp"])
    info = message["DDBStreamBatchInfo"]
    assert list(info) == ["shardId", "startSequenceNumber", "endSequenceNumber", "approximateArrivalOfFirstRecord",
                          "approximateArrivalOfLastRecord", "batchSize", "streamArn"]
    assert info["shardId"] == shard_id and info["streamArn"] == aws.stream_arn
    assert (info["startSequenceNumber"], info["endSequenceNumber"], info["batchSize"]) == (seqs[0], seqs[1], 2)
    for key in ("approximateArrivalOfFirstRecord", "approximateArrivalOfLastRecord"):
        arrived = dt.datetime.strptime(info[key], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
        assert abs(arrived.timestamp() - time.time()) < 60
    # The shard moves on past the discarded records.
    put(aws, "good")
    wait_until(lambda: pool.delivered() == ["good"], what="the next record")
    assert pool.batches() == [["bad1", "bad2"], ["good"]]


def test_sns_on_failure_destination(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    sns = boto3.client("sns", region_name=REGION)
    topic = sns.create_topic(Name="stream-failures")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=aws.queue_arn)
    put(aws, "bad")
    pool = FakePool(lambda keys, n: fail())
    start(pool, starting_position="TRIM_HORIZON", max_retry_attempts=2, on_failure_arn=topic)
    (notification,) = failure_messages(aws)
    message = json.loads(notification["Message"])
    assert message["requestContext"]["condition"] == "RetryAttemptsExhausted"
    assert message["requestContext"]["approximateInvokeCount"] == 3 and len(pool.events) == 3


def test_records_older_than_the_maximum_age_are_discarded(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "stale")
    pool = FakePool(lambda keys, n: fail())
    start(pool, starting_position="TRIM_HORIZON", max_record_age_seconds=1, on_failure_arn=aws.queue_arn)
    (message,) = failure_messages(aws)
    assert message["requestContext"]["condition"] == "RecordAgeExceeded"
    assert message["requestContext"]["approximateInvokeCount"] == len(pool.events) >= 1


# --- FilterCriteria ---------------------------------------------------------------------------------


def test_filtered_out_records_are_never_sent_and_the_checkpoint_moves_past_them(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    pool = FakePool()
    poller = start(pool, starting_position="TRIM_HORIZON", filters=[
        {"eventName": ["MODIFY"]},
        {"dynamodb": {"NewImage": {"status": {"S": ["urgent"]}}}},
    ])
    put(aws, "a", status={"S": "normal"})  # INSERT, not urgent: dropped
    put(aws, "b", status={"S": "urgent"})  # delivered
    put(aws, "a", status={"S": "done"})  # MODIFY: delivered
    aws.ddb.delete_item(TableName=TABLE, Key={"pk": {"S": "b"}})  # REMOVE: dropped
    last = stream_sequence_numbers(aws)[-1]
    wait_until(lambda: list(poller.checkpoints().values()) == [last], what="the checkpoint past the REMOVE")
    records = [r for e in pool.events for r in e["Records"]]
    assert [(r["eventName"], r["dynamodb"]["Keys"]["pk"]["S"]) for r in records] == [("INSERT", "b"), ("MODIFY", "a")]


def test_filter_pattern_matching() -> None:
    record = {"eventName": "INSERT", "dynamodb": {
        "Keys": {"pk": {"S": "user#1"}},
        "NewImage": {"status": {"S": "urgent"}, "count": {"N": "5"}, "tags": {"SS": ["a", "b"]}},
        "SizeBytes": 120,
    }}

    def match(*patterns: dict[str, Any]) -> bool:
        for p in patterns:
            check_pattern(p)
        return matches(list(patterns), record)

    assert matches([], record), "no filters: everything"
    assert match({"eventName": ["INSERT", "MODIFY"]})
    assert not match({"eventName": ["REMOVE"]})
    assert match({"eventName": ["REMOVE"]}, {"eventName": ["INSERT"]}), "filters are OR-ed"
    assert not match({"eventName": ["INSERT"], "dynamodb": {"NewImage": {"status": {"S": ["calm"]}}}}), "keys are AND-ed"
    assert match({"dynamodb": {"NewImage": {"status": {"S": ["urgent"]}}}})
    assert match({"dynamodb": {"NewImage": {"tags": {"SS": ["b"]}}}}), "an array matches if an element does"
    assert match({"dynamodb": {"Keys": {"pk": {"S": [{"prefix": "user#"}]}}}})
    assert not match({"dynamodb": {"Keys": {"pk": {"S": [{"prefix": "order#"}]}}}})
    assert match({"dynamodb": {"Keys": {"pk": {"S": [{"suffix": "#1"}]}}}})
    assert match({"dynamodb": {"NewImage": {"status": {"S": [{"equals-ignore-case": "URGENT"}]}}}})
    assert match({"dynamodb": {"NewImage": {"status": {"S": [{"exists": True}]}}}})
    assert not match({"dynamodb": {"NewImage": {"missing": {"S": [{"exists": True}]}}}})
    assert match({"dynamodb": {"NewImage": {"missing": {"S": [{"exists": False}]}}}})
    assert match({"dynamodb": {"OldImage": {"status": {"S": [{"exists": False}]}}}}), "a missing parent too"
    assert not match({"dynamodb": {"NewImage": [{"exists": True}]}}), "exists applies to leaves only"
    assert match({"dynamodb": {"NewImage": {"status": {"S": [{"anything-but": ["calm", "done"]}]}}}})
    assert not match({"dynamodb": {"NewImage": {"status": {"S": [{"anything-but": "urgent"}]}}}})
    assert not match({"dynamodb": {"NewImage": {"missing": {"S": [{"anything-but": ["x"]}]}}}})
    assert match({"dynamodb": {"NewImage": {"status": {"S": [{"anything-but": {"prefix": "calm"}}]}}}})
    assert match({"dynamodb": {"SizeBytes": [{"numeric": [">", 100, "<=", 120]}]}})
    assert not match({"dynamodb": {"SizeBytes": [{"numeric": ["<", 100]}]}})
    assert not match({"dynamodb": {"NewImage": {"count": {"N": [{"numeric": [">", 1]}]}}}}), "N is a string"
    assert match({"dynamodb": {"SizeBytes": [120]}}) and not match({"dynamodb": {"SizeBytes": ["120"]}})
    for bad in ({"eventName": "INSERT"}, {"eventName": [{"cidr": "10.0.0.0/8"}]}, {"x": [{"numeric": ["~", 1]}]}, []):
        with pytest.raises(ValueError):
            check_pattern(bad)


# --- robustness -------------------------------------------------------------------------------------


class FlakyStreams:
    """The streams client, with failures injected into GetRecords on demand."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.failures: list[Exception] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def get_records(self, **kwargs: Any) -> Any:
        if self.failures:
            raise self.failures.pop(0)
        return self.real.get_records(**kwargs)


def test_read_errors_lose_and_repeat_nothing(aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    flaky = FlakyStreams(aws.streams)
    pool = FakePool()
    start(pool, streams=flaky, starting_position="TRIM_HORIZON")
    put(aws, "a", "b")
    wait_until(lambda: pool.delivered() == ["a", "b"], what="the first records")
    expired = ClientError({"Error": {"Code": "ExpiredIteratorException", "Message": "expired"}}, "GetRecords")
    flaky.failures = [expired, ConnectionError("connection refused"), ConnectionError("connection refused")]
    put(aws, "c", "d")
    wait_until(lambda: not flaky.failures, what="the failures to be used up")
    put(aws, "e")
    wait_until(lambda: len(pool.delivered()) == 5, what="every record")
    assert pool.delivered() == ["a", "b", "c", "d", "e"]


def test_stop_returns_promptly_even_while_backing_off(
        aws: SimpleNamespace, start: Callable[..., StreamPoller], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_poller, "RETRY_DELAY_SECONDS", 30.0)
    monkeypatch.setattr(stream_poller, "MAX_RETRY_DELAY_SECONDS", 30.0)
    pool = FakePool(lambda keys, n: fail())
    poller = start(pool, starting_position="TRIM_HORIZON")
    put(aws, "a")
    wait_until(lambda: pool.events, what="the first attempt")
    started = time.monotonic()
    poller.stop(timeout=5)
    assert time.monotonic() - started < 1.0
    assert not any(t.is_alive() for t in poller._threads)
    assert len(pool.events) == 1


def test_an_invoke_that_raises_is_a_failed_invocation_and_a_closed_pool_ends_the_reader(
        aws: SimpleNamespace, start: Callable[..., StreamPoller]) -> None:
    put(aws, "a")
    calls: list[int] = []

    class RaisingPool(FakePool):
        _closed = False

        def invoke(self, event: Any, **kwargs: Any) -> InvokeResult:
            calls.append(len(calls))
            if len(calls) == 1:
                raise ValueError("unexpected")
            if self._closed:
                raise RuntimeError("function pool is closed")
            return super().invoke(event, **kwargs)

    pool = RaisingPool()
    poller = start(pool, starting_position="TRIM_HORIZON")
    wait_until(lambda: pool.delivered() == ["a"], what="the retried record")
    pool._closed = True
    put(aws, "b")
    readers = [t for t in poller._threads if t.name.startswith("ddb-shard:")]
    wait_until(lambda: not any(t.is_alive() for t in readers), what="the shard reader to end")
    assert pool.delivered() == ["a"] and len(calls) == 3


class FakeStreams:
    """A stream with a closed parent shard and its open child (moto has one shard, forever)."""

    def __init__(self) -> None:
        self.shards: dict[str, dict[str, Any]] = {
            "shard-parent": {"parent": None, "closed": True, "records": [self._record("p1", 1), self._record("p2", 2)]},
            "shard-child": {"parent": "shard-parent", "closed": False,
                            "records": [self._record("c1", 3), self._record("c2", 4)]},
        }
        self.reads: list[str] = []

    @staticmethod
    def _record(pk: str, seq: int) -> dict[str, Any]:
        return {"eventID": f"e{seq}", "eventName": "INSERT", "eventVersion": "1.1", "eventSource": "aws:dynamodb",
                "awsRegion": REGION, "dynamodb": {"ApproximateCreationDateTime": dt.datetime.now(dt.UTC),
                                                  "Keys": {"pk": {"S": pk}}, "SequenceNumber": f"{seq:021d}",
                                                  "SizeBytes": 20, "StreamViewType": "KEYS_ONLY"}}

    def describe_stream(self, StreamArn: str, ExclusiveStartShardId: str | None = None) -> Any:  # noqa: N803
        shards = []
        for sid, shard in reversed(self.shards.items()):  # the child first: order is not lineage
            numbers = {"StartingSequenceNumber": shard["records"][0]["dynamodb"]["SequenceNumber"]}
            if shard["closed"]:
                numbers["EndingSequenceNumber"] = shard["records"][-1]["dynamodb"]["SequenceNumber"]
            shards.append({"ShardId": sid, "SequenceNumberRange": numbers,
                           **({"ParentShardId": shard["parent"]} if shard["parent"] else {})})
        return {"StreamDescription": {"StreamArn": StreamArn, "Shards": shards}}

    def get_shard_iterator(self, StreamArn: str, ShardId: str, ShardIteratorType: str,  # noqa: N803
                           SequenceNumber: str | None = None) -> Any:  # noqa: N803
        records = self.shards[ShardId]["records"]
        position = {"TRIM_HORIZON": 0, "LATEST": len(records)}.get(ShardIteratorType)
        if position is None:
            position = 1 + [r["dynamodb"]["SequenceNumber"] for r in records].index(SequenceNumber)
        return {"ShardIterator": f"{ShardId}|{position}"}

    def get_records(self, ShardIterator: str, Limit: int) -> Any:  # noqa: N803
        sid, position = ShardIterator.split("|")
        self.reads.append(sid)
        shard = self.shards[sid]
        got = shard["records"][int(position):int(position) + Limit]
        end = int(position) + len(got)
        out: dict[str, Any] = {"Records": got}
        if not (shard["closed"] and end >= len(shard["records"])):
            out["NextShardIterator"] = f"{sid}|{end}"
        return out


def test_parent_shard_is_read_before_its_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream_poller, "DISCOVERY_INTERVAL_SECONDS", 0.05)
    streams = FakeStreams()
    pool = FakePool()
    source = StreamSource(stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/fake/stream/2024",
                          starting_position="TRIM_HORIZON")
    poller = StreamPoller(streams, pool, source, REGION, lambda service: None)  # type: ignore[arg-type]
    poller.start()
    try:
        wait_until(lambda: len(pool.delivered()) == 4, what="both shards")
    finally:
        poller.stop()
    assert pool.delivered() == ["p1", "p2", "c1", "c2"]
    first_child_read = streams.reads.index("shard-child")
    assert "shard-parent" not in streams.reads[first_child_read:], "the child is read once the parent is done"


def test_latest_skips_a_closed_shard_and_reads_its_child_from_the_latest_record() -> None:
    streams = FakeStreams()
    pool = FakePool()
    source = StreamSource(stream_arn="arn:aws:dynamodb:us-east-1:123456789012:table/fake/stream/2024")
    poller = StreamPoller(streams, pool, source, REGION, lambda service: None)  # type: ignore[arg-type]
    poller.start()
    try:
        streams.shards["shard-child"]["records"].append(FakeStreams._record("c3", 5))
        wait_until(lambda: pool.delivered() == ["c3"], what="the new record")
    finally:
        poller.stop()
    assert "shard-parent" not in streams.reads


# --- the template -----------------------------------------------------------------------------------


def test_sources_for_reads_the_template_event(tmp_path: Path) -> None:
    stream_arn = f"arn:aws:dynamodb:{REGION}:123456789012:table/messages/stream/2024-01-01T00:00:00.000"
    queue_arn = f"arn:aws:sqs:{REGION}:123456789012:broadcast-failures"
    stack = Stack({"Resources": {}}, root=tmp_path)
    stack.physical = {"MessagesTable": {"Ref": "messages", "Arn": "arn:table", "StreamArn": stream_arn},
                      "BroadcastFailureQueue": {"Ref": "url", "Arn": queue_arn}}
    events = {
        "Api": {"Type": "Api", "Properties": {"Path": "/x", "Method": "get"}},
        "Stream": {"Type": "DynamoDB", "Properties": {
            "Stream": {"Fn::GetAtt": ["MessagesTable", "StreamArn"]}, "StartingPosition": "LATEST",
            "BatchSize": 100, "MaximumBatchingWindowInSeconds": 0, "BisectBatchOnFunctionError": True,
            "MaximumRetryAttempts": 3, "MaximumRecordAgeInSeconds": 300,
            "FunctionResponseTypes": ["ReportBatchItemFailures"],
            "DestinationConfig": {"OnFailure": {"Type": "SQS",
                                                "Destination": {"Fn::GetAtt": ["BroadcastFailureQueue", "Arn"]}}},
            "FilterCriteria": {"Filters": [{"Pattern": '{"eventName": ["INSERT", "MODIFY"]}'}]},
        }},
        "Plain": {"Type": "DynamoDB", "Properties": {"Stream": "arn:aws:dynamodb:us-east-1:1:table/t/stream/x",
                                                     "StartingPosition": "TRIM_HORIZON", "Enabled": False}},
    }
    full, plain = StreamPoller.sources_for(stack, "F", events)
    assert full == StreamSource(stream_arn=stream_arn, starting_position="LATEST", batch_size=100, window_seconds=0.0,
                                bisect_on_error=True, max_retry_attempts=3, max_record_age_seconds=300,
                                report_failures=True, on_failure_arn=queue_arn,
                                filters=[{"eventName": ["INSERT", "MODIFY"]}], enabled=True)
    assert plain == StreamSource(stream_arn="arn:aws:dynamodb:us-east-1:1:table/t/stream/x",
                                 starting_position="TRIM_HORIZON", enabled=False)
    assert full.table_name == "messages"

    def with_props(**props: Any) -> dict[str, dict[str, Any]]:
        base = {"Stream": stream_arn, "StartingPosition": "LATEST"}
        return {"S": {"Type": "DynamoDB", "Properties": {**base, **props}}}

    for bad in (with_props(StartingPosition="AT_TIMESTAMP"), with_props(StartingPosition=None),
                with_props(FilterCriteria={"Filters": [{"Pattern": '{"eventName": [{"wildcard": "*"}]}'}]}),
                with_props(DestinationConfig={"OnFailure": {"Destination": "arn:aws:s3:::bucket"}})):
        with pytest.raises(ValueError):
            StreamPoller.sources_for(stack, "F", bad)


def test_a_shard_reader_that_dies_is_restarted_and_says_so(aws: SimpleNamespace, start: Callable[..., StreamPoller],
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "RESTART_DELAY_SECONDS", 0.02)
    real = stream_poller._ShardReader._ready_batch
    crashes = [RuntimeError("unexpected")]

    def flaky(self: Any, more_waiting: bool) -> Any:
        if crashes:
            raise crashes.pop()
        return real(self, more_waiting)

    monkeypatch.setattr(stream_poller._ShardReader, "_ready_batch", flaky)
    caplog.set_level(logging.INFO, logger="samlocal.dynamodb")
    pool = FakePool()
    start(pool, starting_position="TRIM_HORIZON")
    put(aws, "a", "b")
    wait_until(lambda: pool.delivered() == ["a", "b"], what="delivery after the restart")
    died = [r for r in caplog.records if r.getMessage() == "trigger thread died; restarting"]
    assert died and died[0].levelno == logging.ERROR and vars(died[0])["shard"]


# --- idle readers wait on the emulator (StreamWait) ---------------------------------------------------


class CountingStreams:
    """The streams client, counting GetRecords."""

    def __init__(self, client: Any) -> None:
        self.client, self.reads = client, 0

    def get_records(self, **kwargs: Any) -> Any:
        self.reads += 1
        return self.client.get_records(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


def test_an_idle_reader_waits_on_the_emulator_and_delivers_what_comes_pauses_and_stops_at_once(
        caplog: pytest.LogCaptureFixture) -> None:
    """On the embedded patched emulator an idle shard costs a wait, not GetRecords 4 times a second;
    a record written meanwhile is delivered at once, a paused mapping takes nothing until resumed, and
    a stop ends the wait now."""
    from samlocal.emulator import server as emulator_mod
    from samlocal.triggers.dynamodb import StreamWait

    emu = emulator_mod.serve("127.0.0.1", 0, patched=True, metrics_interval=None)
    poller = None
    try:
        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=emu.endpoint_url,
                                aws_access_key_id="t", aws_secret_access_key="t")

        ddb = client("dynamodb")
        arn = ddb.create_table(
            TableName="idle-waits", BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "KEYS_ONLY"})["TableDescription"]["LatestStreamArn"]
        streams, pool = CountingStreams(client("dynamodbstreams")), FakePool()
        caplog.set_level("WARNING", logger="samlocal.dynamodb")
        poller = StreamPoller(streams, pool, StreamSource(stream_arn=arn, starting_position="TRIM_HORIZON"),  # type: ignore[arg-type]
                              REGION, client, StreamWait(emu.endpoint_url))
        poller.start()
        time.sleep(1.5)
        assert streams.reads <= 3, streams.reads  # polling every 0.02 s (this module's pace) would be ~75
        for pk in ("a", "b", "c"):
            ddb.put_item(TableName="idle-waits", Item={"pk": {"S": pk}})
        wait_until(lambda: pool.delivered() == ["a", "b", "c"], timeout=2, what="the records written while idle")
        poller.set_enabled(False)
        ddb.put_item(TableName="idle-waits", Item={"pk": {"S": "paused"}})
        time.sleep(0.5)
        assert pool.delivered() == ["a", "b", "c"]  # a paused mapping reads nothing
        poller.set_enabled(True)
        wait_until(lambda: pool.delivered()[-1:] == ["paused"], timeout=2, what="the record after the resume")
        time.sleep(0.3)  # idle again: waiting on the emulator (20 s)
        started = time.monotonic()
        poller.stop()
        assert time.monotonic() - started < 1.5 and not any(t.is_alive() for t in poller._threads)
        poller = None
        assert not caplog.records, [r.getMessage() for r in caplog.records]
    finally:
        if poller is not None:
            poller.stop()
        emu.stop()


def test_a_failing_wait_is_said_once_and_the_reader_polls_instead(
        aws: SimpleNamespace, start: Callable[..., StreamPoller], caplog: pytest.LogCaptureFixture) -> None:
    from samlocal.triggers.dynamodb import StreamWait

    caplog.set_level("WARNING", logger="samlocal.dynamodb")
    pool = FakePool()
    source = StreamSource(stream_arn=aws.stream_arn, starting_position="TRIM_HORIZON")
    poller = StreamPoller(aws.streams, pool, source, REGION, lambda service: boto3.client(service, region_name=REGION),
                          StreamWait("http://127.0.0.1:9"))  # type: ignore[arg-type]  # nothing listens there
    poller.start()
    try:
        time.sleep(0.3)
        put(aws, "x", "y")
        wait_until(lambda: pool.delivered() == ["x", "y"], what="records read by polling")
        failed = [r for r in caplog.records if "idle stream wait failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].__dict__["error"], [r.getMessage() for r in caplog.records]
    finally:
        poller.stop()
