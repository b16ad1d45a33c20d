"""Lambda's asynchronous invocation (local.triggers.async_invoke) and reserved concurrency: retries, failure
destinations, throttles, and the Lambda API's answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from moto import mock_aws

from samlocal import lambda_api
from samlocal.invoker import FunctionPool, Invoker, InvokeResult
from samlocal.triggers import async_invoke
from samlocal.triggers.async_invoke import AsyncConfig

from .test_invoker import spec

REGION = "us-east-1"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimpleNamespace]:
    """moto in this process, two queues (a DLQ and an OnFailure destination), fast retries."""
    monkeypatch.setattr(async_invoke, "RETRY_DELAYS", (0.01, 0.02))
    monkeypatch.setattr(async_invoke, "THROTTLE_BACKOFF", (0.01, 0.05))
    monkeypatch.setattr(async_invoke, "_clients", {})
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SQS", "AWS_ENDPOINT_URL_SNS"):
        monkeypatch.delenv(key, raising=False)
    with mock_aws():
        sqs = boto3.client("sqs", region_name=REGION)
        urls = {name: sqs.create_queue(QueueName=name)["QueueUrl"] for name in ("dlq", "onfailure")}
        arns = {name: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                for name, url in urls.items()}
        yield SimpleNamespace(sqs=sqs, urls=urls, arns=arns)


def received(aws: SimpleNamespace, name: str) -> list[dict[str, Any]]:
    return aws.sqs.receive_message(QueueUrl=aws.urls[name], MaxNumberOfMessages=10,
                                   MessageAttributeNames=["All"]).get("Messages", [])


class FailingPool:
    """Answers each invoke with the next scripted error type ("" = success)."""

    def __init__(self, config: AsyncConfig, outcomes: list[str]) -> None:
        self.spec = SimpleNamespace(name="unit-Fn", arn="arn:aws:lambda:us-east-1:123456789012:function:unit-Fn",
                                    environment={"AWS_REGION": REGION}, async_config=config)
        self.outcomes, self.calls = outcomes, 0

    def invoke(self, event: Any, *, trigger: str, source: str = "", throttle: bool = False) -> InvokeResult:
        assert throttle, "the async path asks to be throttled, then retries"
        self.calls += 1
        kind = self.outcomes.pop(0) if self.outcomes else "ValueError"
        if not kind:
            return InvokeResult(True, request_id=f"r{self.calls}")
        return InvokeResult(False, error={"errorType": kind, "errorMessage": f"failed {self.calls}"},
                            request_id=f"r{self.calls}")


def test_an_async_event_is_retried_twice_then_goes_to_the_dlq_and_the_on_failure_destination(aws: SimpleNamespace) -> None:
    config = AsyncConfig(dead_letter=("SQS", aws.arns["dlq"]), on_failure=("SQS", aws.arns["onfailure"]))
    pool = FailingPool(config, [])
    result = async_invoke.invoke_async(pool, {"n": 1}, trigger="lambda:event")
    assert not result.ok and pool.calls == 3
    (dead,) = received(aws, "dlq")
    assert json.loads(dead["Body"]) == {"n": 1}
    assert dead["MessageAttributes"]["ErrorMessage"]["StringValue"] == "failed 3"
    assert dead["MessageAttributes"]["RequestID"]["StringValue"] == "r3"
    (failure,) = received(aws, "onfailure")
    record = json.loads(failure["Body"])
    assert record["requestContext"] == {"requestId": "r3", "functionArn": pool.spec.arn + ":$LATEST",
                                        "condition": "RetriesExhausted", "approximateInvokeCount": 3}
    assert record["requestPayload"] == {"n": 1} and record["responsePayload"]["errorMessage"] == "failed 3"
    assert record["responseContext"]["functionError"] == "Unhandled"


def test_a_success_on_a_retry_sends_nothing_and_maximum_retry_attempts_is_honoured(aws: SimpleNamespace) -> None:
    config = AsyncConfig(dead_letter=("SQS", aws.arns["dlq"]))
    pool = FailingPool(config, ["ValueError", ""])
    assert async_invoke.invoke_async(pool, {}, trigger="sns").ok and pool.calls == 2
    none = FailingPool(AsyncConfig(max_retries=0, dead_letter=("SQS", aws.arns["dlq"])), [])
    assert not async_invoke.invoke_async(none, {}, trigger="sns").ok and none.calls == 1
    assert len(received(aws, "dlq")) == 1


def test_throttles_are_retried_uncounted_until_the_event_is_too_old(aws: SimpleNamespace) -> None:
    pool = FailingPool(AsyncConfig(on_failure=("SQS", aws.arns["onfailure"])), ["TooManyRequestsException"] * 5 + [""])
    assert async_invoke.invoke_async(pool, {}, trigger="schedule").ok and pool.calls == 6
    old = FailingPool(AsyncConfig(max_age=0.2, on_failure=("SQS", aws.arns["onfailure"])),
                      ["TooManyRequestsException"] * 1000)
    assert not async_invoke.invoke_async(old, {}, trigger="schedule").ok
    (failure,) = received(aws, "onfailure")
    assert json.loads(failure["Body"])["requestContext"]["condition"] == "EventAgeExceeded"


def test_the_template_declares_the_async_config() -> None:
    config = AsyncConfig.from_properties({
        "DeadLetterQueue": {"Type": "SNS", "TargetArn": "arn:aws:sns:us-east-1:1:t"},
        "EventInvokeConfig": {"MaximumRetryAttempts": 1, "MaximumEventAgeInSeconds": 60,
                              "DestinationConfig": {"OnFailure": {"Type": "SQS", "Destination": "arn:aws:sqs:us-east-1:1:q"}}}})
    assert config == AsyncConfig(1, 60.0, ("SNS", "arn:aws:sns:us-east-1:1:t"), ("SQS", "arn:aws:sqs:us-east-1:1:q"))
    assert AsyncConfig.from_properties({}) == AsyncConfig(2, 21600.0, None, None)


def test_reserved_concurrency_zero_throttles_every_invoke_and_one_throttles_the_second(tmp_path: Path) -> None:
    zero = FunctionPool(spec(tmp_path, reserved=0))
    try:
        result = zero.invoke({"n": 1}, trigger="lambda", throttle=True)
        assert not result.ok and result.error_type == "TooManyRequestsException"
        assert result.error["errorMessage"] == "Rate Exceeded." and zero.concurrency == 0
    finally:
        zero.close()
    one = FunctionPool(spec(tmp_path, reserved=1))
    try:
        held = one.checkout()
        assert held is not None
        assert one.invoke({"n": 1}, trigger="lambda", throttle=True).error_type == "TooManyRequestsException"
        one.checkin(held)
        assert one.invoke({"n": 2}, trigger="lambda", throttle=True).ok
    finally:
        one.close()


def test_the_lambda_api_answers_429_past_the_reserved_concurrency_and_queues_event_invokes(
        tmp_path: Path, aws: SimpleNamespace) -> None:
    fn = spec(tmp_path, reserved=0)
    fn.async_config = AsyncConfig(max_age=0.3, dead_letter=("SQS", aws.arns["dlq"]))
    invoker = Invoker()
    pool = FunctionPool(fn)
    invoker.add(pool)
    server = lambda_api.serve(lambda_api.LambdaControl(invoker), "127.0.0.1", 0)
    try:
        client = boto3.client("lambda", region_name=REGION, endpoint_url=f"http://127.0.0.1:{server.port}",
                              aws_access_key_id="t", aws_secret_access_key="t",
                              config=Config(retries={"total_max_attempts": 1}))
        with pytest.raises(ClientError) as throttled:
            client.invoke(FunctionName=fn.name, Payload=b"{}")
        assert throttled.value.response["Error"]["Code"] == "TooManyRequestsException"
        assert throttled.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert client.invoke(FunctionName=fn.name, InvocationType="Event", Payload=b'{"n": 7}')["StatusCode"] == 202
        deadline = time.monotonic() + 20  # the event is throttled until 0.3 s old, then dead-lettered: seconds on a loaded machine
        dead: list[dict[str, Any]] = []
        while not dead and time.monotonic() < deadline:
            dead = received(aws, "dlq")
            time.sleep(0.05)  # a tight receive loop starves the sender thread of moto's lock
        assert [json.loads(m["Body"]) for m in dead] == [{"n": 7}]
    finally:
        server.stop()
        pool.close()
