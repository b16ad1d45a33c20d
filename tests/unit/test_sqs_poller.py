"""Lambda's SQS event source (local.triggers.sqs) against queues under moto's mock_aws.

Most tests use a fake pool that records each event (after a JSON round trip, as Lambda's runtime
API carries it) and answers per a script; the binary-attribute and undeliverable-batch tests run a
real execution environment, because what they check is what reaches a handler.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from moto import mock_aws

from samlocal.invoker import FunctionPool, InvokeResult
from samlocal.lambdas import FunctionSpec
from samlocal.stack import LocalRuntime
from samlocal.triggers import sqs as sqs_poller
from samlocal.triggers import supervise
from samlocal.triggers.dynamodb import StreamWait
from samlocal.triggers.sqs import SqsPoller, SqsSource, lambda_record
from tests.conftest import wait_until as shared_wait_until

REGION = "us-east-1"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:123456789012:function:unit-Fn"


def wait_until(predicate: Callable[[], Any], timeout: float = 8.0, what: str = "condition") -> Any:
    return shared_wait_until(predicate, timeout, what, poll=0.02)


class FakePool:
    """Stands in for FunctionPool: records events (as JSON carries them) and answers per `respond`."""

    def __init__(self, respond: Callable[[dict[str, Any]], InvokeResult] | None = None) -> None:
        self.spec = SimpleNamespace(name="unit-Fn", arn=FUNCTION_ARN)
        self.respond = respond or (lambda event: InvokeResult(True))
        self.events: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.checkout_errors: list[Exception] = []
        self._lock = threading.Lock()

    def checkout(self, timeout: float | None = None) -> object:
        with self._lock:
            if self.checkout_errors:
                raise self.checkout_errors.pop(0)
        return object()

    def checkin(self, worker: object) -> None:
        pass

    def invoke(self, event: Any, *, trigger: str, source: str = "", invoked_arn: str = "",
               worker: Any = None) -> InvokeResult:
        assert trigger == "sqs"
        try:
            event = json.loads(json.dumps(event))
        except TypeError as exc:
            with self._lock:
                self.failures.append(str(exc))
            return InvokeResult(False, error={"errorMessage": str(exc), "errorType": "InvalidRequestContentException"})
        with self._lock:
            self.events.append(event)
        return self.respond(event)

    def undeliverable(self, exc: BaseException, *, trigger: str, source: str = "", batch_size: int = 1,
                      worker: Any = None) -> InvokeResult:
        with self._lock:
            self.failures.append(str(exc))
        return InvokeResult(False, error={"errorMessage": str(exc), "errorType": "InvalidRequestContentException"})

    def bodies(self) -> list[list[str]]:
        with self._lock:
            return [[r["body"] for r in e["Records"]] for e in self.events]


@pytest.fixture
def sqs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for key in ("AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setattr(supervise, "RESTART_DELAY_SECONDS", 0.05)
    with mock_aws():
        yield boto3.client("sqs", region_name=REGION)


def queue(sqs: Any, name: str, **attributes: str) -> tuple[str, str]:
    if name.endswith(".fifo"):
        attributes = {"FifoQueue": "true", "ContentBasedDeduplication": "true", **attributes}
    url = sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def depth(sqs: Any, url: str) -> tuple[int, int]:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


@pytest.fixture
def pollers() -> Iterator[list[SqsPoller]]:
    started: list[SqsPoller] = []
    yield started
    for p in started:
        p.stop(5)


def start(pollers: list[SqsPoller], sqs: Any, pool: Any, source: SqsSource) -> SqsPoller:
    p = SqsPoller(sqs, pool, source, REGION)
    p.start()
    pollers.append(p)
    return p


def real_pool(tmp: Path, code: str) -> FunctionPool:
    (tmp / "fn.py").write_text(code)
    return FunctionPool(FunctionSpec(
        logical_id="Fn", name="unit-Fn", arn=FUNCTION_ARN, handler="fn.handler", code_dir=tmp, layer_dirs=[],
        runtime="python3.11", timeout=2.0, memory_mb=128, environment={}, reserved_concurrency=None))


# --- the record ------------------------------------------------------------------------------------

def test_message_attributes_take_lambdas_shape_binary_as_base64() -> None:
    message = {"MessageId": "m1", "ReceiptHandle": "r1", "Body": "b", "Attributes": {"SentTimestamp": "1"},
               "MessageAttributes": {
                   "s": {"DataType": "String", "StringValue": "v"},
                   "b": {"DataType": "Binary", "BinaryValue": b"\x00\xffhi"},
                   "lists": {"DataType": "Binary.list", "BinaryListValues": [b"\x01", b"\x02"],
                             "StringListValues": ["x"]}}}
    record = lambda_record(message, SqsSource("http://q/q", "arn:aws:sqs:us-east-1:1:q"), REGION)
    attrs = record["messageAttributes"]
    assert attrs["s"] == {"stringValue": "v", "stringListValues": [], "binaryListValues": [], "dataType": "String"}
    assert attrs["b"] == {"binaryValue": base64.b64encode(b"\x00\xffhi").decode(), "stringListValues": [],
                          "binaryListValues": [], "dataType": "Binary"}
    assert attrs["lists"]["binaryListValues"] == ["AQ==", "Ag=="] and attrs["lists"]["stringListValues"] == ["x"]
    json.dumps(record)  # Lambda's event is JSON


def test_a_binary_attribute_reaches_the_handler_base64_instead_of_failing_forever(
        sqs: Any, pollers: list[SqsPoller], tmp_path: Path) -> None:
    url, arn = queue(sqs, "binary", VisibilityTimeout="1")
    sqs.send_message(QueueUrl=url, MessageBody="hi", MessageAttributes={
        "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01\x02"}})
    seen: list[str] = []
    pool = real_pool(tmp_path, "def handler(event, context):\n"
                               "    return event['Records'][0]['messageAttributes']['blob']['binaryValue']\n")
    original = pool.invoke

    def invoke(event: Any, **kwargs: Any) -> InvokeResult:
        result = original(event, **kwargs)
        seen.append(result.payload if result.ok else f"error: {result.error}")
        return result

    pool.invoke = invoke  # type: ignore[method-assign]
    try:
        start(pollers, sqs, pool, SqsSource(url, arn))
        wait_until(lambda: seen, what="an invocation")
        assert seen[0] == base64.b64encode(b"\x00\x01\x02").decode()
        wait_until(lambda: depth(sqs, url) == (0, 0), what="the message deleted")
    finally:
        pollers.pop().stop(5)
        pool.close()


def test_fifo_records_carry_group_dedup_id_and_sequence_number(sqs: Any, pollers: list[SqsPoller]) -> None:
    url, arn = queue(sqs, "ordered.fifo")
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}", MessageGroupId="g", MessageDeduplicationId=f"d{i}")
    pool = FakePool()
    start(pollers, sqs, pool, SqsSource(url, arn))
    wait_until(lambda: sum(map(len, pool.bodies())) == 3, what="3 records")
    for record in [r for e in pool.events for r in e["Records"]]:
        attrs = record["attributes"]
        assert attrs["MessageGroupId"] == "g" and attrs["MessageDeduplicationId"].startswith("d")
        assert attrs["SequenceNumber"] and {"ApproximateReceiveCount", "SentTimestamp", "SenderId",
                                            "ApproximateFirstReceiveTimestamp"} <= set(attrs)


# --- batching --------------------------------------------------------------------------------------

def test_the_batching_window_gathers_records_until_it_ends(sqs: Any, pollers: list[SqsPoller]) -> None:
    url, arn = queue(sqs, "windowed")
    pool = FakePool()
    start(pollers, sqs, pool, SqsSource(url, arn, batch_size=50, window_seconds=2.5))
    sqs.send_message(QueueUrl=url, MessageBody="first")
    time.sleep(1.0)
    for i in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"later{i}")
    wait_until(lambda: pool.events, what="a batch")
    assert sorted(pool.bodies()[0]) == ["first", "later0", "later1", "later2"], "one batch for the window"


def test_a_full_batch_does_not_wait_for_the_window(sqs: Any, pollers: list[SqsPoller]) -> None:
    url, arn = queue(sqs, "full")
    pool = FakePool()
    for i in range(4):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    began = time.monotonic()
    start(pollers, sqs, pool, SqsSource(url, arn, batch_size=4, window_seconds=30))
    wait_until(lambda: pool.events, what="a batch")
    assert len(pool.bodies()[0]) == 4 and time.monotonic() - began < 10


def test_a_batch_never_exceeds_lambdas_6_mb_payload(sqs: Any, pollers: list[SqsPoller]) -> None:
    url, arn = queue(sqs, "big")
    big = "x" * 1_000_000
    for i in range(8):
        sqs.send_message(QueueUrl=url, MessageBody=f"{i}{big}")
    pool = FakePool()
    start(pollers, sqs, pool, SqsSource(url, arn, batch_size=10, max_concurrency=1))
    wait_until(lambda: sum(map(len, pool.bodies())) >= 8, timeout=15, what="all 8 records")
    sizes = [len(json.dumps(e).encode()) for e in pool.events]
    assert all(s <= sqs_poller.PAYLOAD_LIMIT_BYTES for s in sizes), sizes
    assert [len(b) for b in pool.bodies()] == [6, 2]
    wait_until(lambda: depth(sqs, url) == (0, 0), what="every message deleted")


# --- FilterCriteria ----------------------------------------------------------------------------------

def test_filter_criteria_deliver_matches_and_delete_the_rest(sqs: Any, pollers: list[SqsPoller]) -> None:
    url, arn = queue(sqs, "filtered")
    bodies = [json.dumps({"kind": "keep", "n": 1}), json.dumps({"kind": "drop"}), "plain keep-me", "plain other"]
    for body in bodies:
        sqs.send_message(QueueUrl=url, MessageBody=body)
    filters = [{"body": {"kind": ["keep"]}}, {"body": [{"prefix": "plain keep"}]}]
    pool = FakePool()
    poller = start(pollers, sqs, pool, SqsSource(url, arn, filters=filters))
    wait_until(lambda: poller.filtered_out == 2 and sum(map(len, pool.bodies())) == 2, what="filtering")
    assert sorted(b for batch in pool.bodies() for b in batch) == sorted([bodies[0], bodies[2]])
    wait_until(lambda: depth(sqs, url) == (0, 0), what="non-matching messages deleted, not redelivered")
    assert json.loads(poller.mapping()["FilterCriteria"]["Filters"][0]["Pattern"]) == filters[0]


def test_filtered_out_fifo_messages_do_not_block_their_group(sqs: Any, pollers: list[SqsPoller]) -> None:
    url, arn = queue(sqs, "filtered.fifo")
    pool = FakePool()
    poller = start(pollers, sqs, pool, SqsSource(url, arn, filters=[{"body": {"keep": [True]}}]))
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"keep": False}), MessageGroupId="g")
    wait_until(lambda: poller.filtered_out == 1, what="the first message filtered out")
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"keep": True}), MessageGroupId="g")
    wait_until(lambda: pool.events, what="the group's next message delivered")


def test_a_bad_filter_pattern_fails_the_start() -> None:
    stack = SimpleNamespace(physical={"Q": {"Arn": "arn:q", "QueueUrl": "http://q/q"}}, resolve=lambda v: v)
    events = {"E": {"Type": "SQS", "Properties": {"Queue": "arn:q", "FilterCriteria": {
        "Filters": [{"Pattern": json.dumps({"body": {"n": [{"between": [1, 2]}]}})}]}}}}
    with pytest.raises(ValueError, match="supported operators"):
        SqsPoller.sources_for(stack, "F", events)
    events["E"]["Properties"]["FilterCriteria"]["Filters"][0]["Pattern"] = '{"body": {"n": [1]}}'
    assert SqsPoller.sources_for(stack, "F", events)[0].filters == [{"body": {"n": [1]}}]


# --- never silent ------------------------------------------------------------------------------------

def test_a_batch_that_cannot_be_delivered_fails_loudly_then_reaches_the_dlq(
        sqs: Any, pollers: list[SqsPoller], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    dlq_url, dlq_arn = queue(sqs, "dead")
    url, arn = queue(sqs, "poisoned", VisibilityTimeout="1",
                     RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}))
    real = sqs_poller.lambda_record

    def broken(message: dict[str, Any], source: SqsSource, region: str) -> dict[str, Any]:
        if message["Body"] == "poison":
            raise ValueError("cannot build this record")
        return real(message, source, region)

    monkeypatch.setattr(sqs_poller, "lambda_record", broken)
    caplog.set_level(logging.INFO, logger="samlocal.lambda")
    sqs.send_message(QueueUrl=url, MessageBody="poison")
    pool = real_pool(tmp_path, "def handler(event, context):\n    return None\n")
    try:
        start(pollers, sqs, pool, SqsSource(url, arn, batch_size=1))
        wait_until(lambda: depth(sqs, dlq_url)[0] == 1, timeout=15, what="the message in the DLQ")
        sqs.send_message(QueueUrl=url, MessageBody="fine")
        wait_until(lambda: depth(sqs, url) == (0, 0), what="the next message delivered: nothing stalled")
    finally:
        pollers.pop().stop(5)
        pool.close()
    errors = [r for r in caplog.records if r.name == "samlocal.lambda" and r.levelno == logging.ERROR]
    assert len(errors) >= 2, "one ERROR line per failed delivery"
    assert all(vars(r)["error_type"] == "InvalidRequestContentException" and vars(r)["trigger"] == "sqs"
               and "cannot build this record" in vars(r)["error_message"] for r in errors)


def test_a_poller_thread_that_dies_is_restarted_and_says_so(sqs: Any, pollers: list[SqsPoller],
                                                            caplog: pytest.LogCaptureFixture) -> None:
    url, arn = queue(sqs, "restarted")
    pool = FakePool()
    pool.checkout_errors.append(ValueError("unexpected"))
    caplog.set_level(logging.INFO, logger="samlocal.sqs")
    start(pollers, sqs, pool, SqsSource(url, arn))
    sqs.send_message(QueueUrl=url, MessageBody="after the crash")
    wait_until(lambda: pool.events, what="delivery after the restart")
    died = [r for r in caplog.records if r.getMessage() == "trigger thread died; restarting"]
    assert died and died[0].levelno == logging.ERROR and vars(died[0])["queue"] == "restarted"
    assert "ValueError: unexpected" in (caplog.text or "")


# --- the mapping, at start ----------------------------------------------------------------------------

def test_a_queue_whose_visibility_timeout_is_shorter_than_the_function_timeout_is_refused(sqs: Any) -> None:
    short_url, short_arn = queue(sqs, "short", VisibilityTimeout="2")
    long_url, long_arn = queue(sqs, "long", VisibilityTimeout="30")
    pool = FakePool()
    pool.spec = SimpleNamespace(name="unit-Fn", arn=FUNCTION_ARN, timeout=30.0, events={
        "Short": {"Type": "SQS", "Properties": {"Queue": short_arn}}})
    pool.ensure_concurrency = lambda needed: None  # type: ignore[attr-defined]
    stack = SimpleNamespace(physical={"Short": {"Arn": short_arn, "QueueUrl": short_url},
                                      "Long": {"Arn": long_arn, "QueueUrl": long_url}},
                            resolve=lambda value: value, region=REGION)
    local = SimpleNamespace(client=lambda service: sqs, invoker=SimpleNamespace(pools={"Fn": pool}), stack=stack,
                            _trigger_slots=Counter(), triggers=[], mappings=[])
    local._reserve = lambda lid, pool, slots: LocalRuntime._reserve(local, lid, pool, slots)  # type: ignore[arg-type]
    local._check_visibility, local._describe_source = LocalRuntime._check_visibility, LocalRuntime._describe_source
    local._long_poll = lambda: sqs_poller.LongPoll()  # mock_aws in this process: nothing can end a wait early
    local._stream_wait = lambda: StreamWait()
    with pytest.raises(ValueError) as refused:
        LocalRuntime._start_triggers(local)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "short" in message and "Fn" in message and "unit-Fn" in message
    assert "visibility timeout of 2 s" in message and "function timeout of 30 s" in message
    assert local.triggers == [], "nothing starts"
    pool.spec.events = {"Long": {"Type": "SQS", "Properties": {"Queue": long_arn}}}
    LocalRuntime._start_triggers(local)  # type: ignore[arg-type]
    try:
        assert [p.source.name for p in local.triggers] == ["long"] and local.mappings == local.triggers
    finally:
        for p in local.triggers:
            p.stop(5)


@pytest.mark.parametrize(("queue_url", "properties", "error"), [
    ("http://q/q", {"BatchSize": 11}, "needs MaximumBatchingWindowInSeconds"),
    ("http://q/q", {"BatchSize": 10_001, "MaximumBatchingWindowInSeconds": 1}, "BatchSize 10001"),
    ("http://q/q", {"MaximumBatchingWindowInSeconds": 301}, "0-300"),
    ("http://q/q.fifo", {"BatchSize": 11, "MaximumBatchingWindowInSeconds": 1}, "not 1-10"),
])
def test_mappings_lambda_refuses_fail_the_start(queue_url: str, properties: dict[str, Any], error: str) -> None:
    stack = SimpleNamespace(physical={"Q": {"Arn": "arn:q", "QueueUrl": queue_url}}, resolve=lambda v: v)
    with pytest.raises(ValueError, match=error):
        SqsPoller.sources_for(stack, "F", {"E": {"Type": "SQS", "Properties": {"Queue": "arn:q", **properties}}})
    ok = {"BatchSize": 100, "MaximumBatchingWindowInSeconds": 1} if not queue_url.endswith(".fifo") else {}
    assert SqsPoller.sources_for(stack, "F", {"E": {"Type": "SQS", "Properties": {"Queue": "arn:q", **ok}}})
