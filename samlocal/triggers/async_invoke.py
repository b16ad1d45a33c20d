"""Lambda's asynchronous invocation, shared by every asynchronous caller: the Lambda API's `Event`
invokes, SNS and schedules.

As in Lambda: a function error is retried `MaximumRetryAttempts` times (2 unless the function's
`EventInvokeConfig` says otherwise; a minute, then two, apart in AWS — a second, then two, here); a
throttle (the function's reserved concurrency is used up) is retried with backoff, not counted, until
the event is `MaximumEventAgeInSeconds` old (6 h by default). Then the event goes to the function's
`DeadLetterQueue` (SQS or SNS: the event, the error in message attributes) and its
`EventInvokeConfig` `DestinationConfig.OnFailure` (SQS or SNS: Lambda's invocation record); with
neither, it is dropped with an ERROR line, as AWS drops it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import boto3

from ..lambdas import AsyncConfig

log = logging.getLogger("samlocal.async")
# Seconds before the first and second retry of a function error (AWS: about 1 and 2 minutes).
RETRY_DELAYS: tuple[float, ...] = (1.0, 2.0)
# Backoff between attempts of a throttled event: doubling from the first to the second.
THROTTLE_BACKOFF = (0.2, 5.0)


_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


def _client(environment: dict[str, str], service: str) -> Any:
    """A client of the endpoint the function's environment points at: where its DLQ lives."""
    endpoint = environment.get(f"AWS_ENDPOINT_URL_{service.upper()}") or environment.get("AWS_ENDPOINT_URL")
    key = (str(endpoint), service)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = boto3.session.Session(
                aws_access_key_id=environment.get("AWS_ACCESS_KEY_ID", "testing"),
                aws_secret_access_key=environment.get("AWS_SECRET_ACCESS_KEY", "testing"),
                aws_session_token=environment.get("AWS_SESSION_TOKEN"),
                region_name=environment.get("AWS_REGION", "us-east-1"),
            ).client(service, endpoint_url=endpoint)  # type: ignore[call-overload]  # any service, by name
        return _clients[key]


def invoke_async(pool: Any, event: Any, *, trigger: str, source: str = "",
                 stop: threading.Event | None = None) -> Any:
    """Runs one asynchronous event to its end (success, or the failure destinations); returns the
    last InvokeResult. Blocks: callers run it on their own thread."""
    config: AsyncConfig = getattr(pool.spec, "async_config", None) or AsyncConfig()
    stop = stop or threading.Event()
    born = time.monotonic()
    attempts = throttles = 0
    backoff = THROTTLE_BACKOFF[0]
    while True:
        result = pool.invoke(event, trigger=trigger, source=source, throttle=True)
        if result.ok:
            return result
        age = time.monotonic() - born
        if result.error_type == "TooManyRequestsException":
            throttles += 1
            if age + backoff > config.max_age or stop.is_set():
                condition = "EventAgeExceeded"
                break
            stop.wait(backoff)
            backoff = min(backoff * 2, THROTTLE_BACKOFF[1])
            continue
        attempts += 1
        if attempts > config.max_retries or stop.is_set():
            condition = "RetriesExhausted"
            break
        delay = RETRY_DELAYS[min(attempts - 1, len(RETRY_DELAYS) - 1)]
        if age + delay > config.max_age:
            condition = "EventAgeExceeded"
            break
        stop.wait(delay)
    _failed(pool, config, event, result, condition, attempts + throttles)
    return result


def _failed(pool: Any, config: AsyncConfig, event: Any, result: Any, condition: str, invokes: int) -> None:
    error = result.error or {}
    extra = {"function": pool.spec.name, "condition": condition, "attempts": invokes,
             "error_type": error.get("errorType", ""), "error": str(error.get("errorMessage", ""))[:300]}
    if config.dead_letter is None and config.on_failure is None:
        log.error("async invocation failed; no DeadLetterQueue or OnFailure destination, event dropped", extra=extra)
        return
    environment = getattr(pool.spec, "environment", {}) or {}
    if config.dead_letter is not None:
        attributes = {"RequestID": {"DataType": "String", "StringValue": result.request_id or "local"},
                      "ErrorCode": {"DataType": "Number", "StringValue": "200"},
                      "ErrorMessage": {"DataType": "String",
                                       "StringValue": str(error.get("errorMessage", ""))[:1000] or "error"}}
        _send(environment, *config.dead_letter, json.dumps(event), attributes, extra)
    if config.on_failure is not None:
        record = {
            "version": "1.0", "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "requestContext": {"requestId": result.request_id, "functionArn": f"{pool.spec.arn}:$LATEST",
                               "condition": condition, "approximateInvokeCount": invokes},
            "requestPayload": event,
            "responseContext": {"statusCode": 429 if condition == "EventAgeExceeded" else 200,
                                "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "responsePayload": error,
        }
        _send(environment, *config.on_failure, json.dumps(record), {}, extra)


def _send(environment: dict[str, str], kind: str, arn: str, body: str, attributes: dict[str, Any],
          extra: dict[str, Any]) -> None:
    try:
        if kind == "SQS" or arn.startswith("arn:aws:sqs:"):
            sqs = _client(environment, "sqs")
            _, _, _, _, account, name = arn.split(":", 5)
            url = sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
            sqs.send_message(QueueUrl=url, MessageBody=body, MessageAttributes=attributes)
        elif kind == "SNS" or arn.startswith("arn:aws:sns:"):
            _client(environment, "sns").publish(TopicArn=arn, Message=body, MessageAttributes=attributes)
        else:
            log.error("async failure destination not emulated; event dropped", extra={**extra, "destination": arn})
            return
    except Exception as exc:
        log.error("async failure destination refused the event", extra={**extra, "destination": arn, "reason": str(exc)})
        return
    log.warning("async invocation failed; event sent to its failure destination", extra={**extra, "destination": arn})
