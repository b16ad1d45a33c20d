"""TraceExportFunction: every changed timeline (MessagesTable stream) pushed to an OpenTelemetry
collector as a trace, over OTLP/HTTP (protobuf, gzip) to `<OtlpExportEndpoint>/v1/traces`.

- Batched: one ExportTraceServiceRequest per invocation, one trace per changed message, read as it is
  stored now (mars_common.traces.read_trace, the API's GET /api/messages/{id}/trace), so a retry or a
  later change always sends the current trace; trace and span ids are deterministic, so a backend
  that receives a message again keeps one trace.
- Retried: connection failures and the statuses OTLP/HTTP calls retryable (429, 502, 503, 504,
  honouring Retry-After) are retried with backoff for OTLP_EXPORT_RETRY_SECONDS, well under the
  function timeout; then the invocation fails, and the event source mapping retries the batch
  (bisecting it) until MaximumRecordAgeInSeconds, then hands it to its OnFailure destination,
  TraceExportFailureQueue.
- Refused: any other answer (400, 401, 413, 500 ...: OTLP says not to retry) is logged as an ERROR
  and the batch's messages go to TraceExportFailureQueue from here, without the mapping's retries.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBStreamEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from google.protobuf import json_format
from mars_common import aws
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.store import get_lifecycle, timeline_changed
from mars_common.timeline import Lifecycle
from mars_common.traces import read_trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

logger = Logger(service="mars-trace-export")
metrics, tracer = m.for_service("mars-trace-export")

TRACES_PATH = "/v1/traces"
RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})  # OTLP/HTTP: these, and no answer at all; nothing else
FIRST_DELAY_SECONDS = 0.5  # backoff between attempts: doubling, with jitter, up to …
MAX_DELAY_SECONDS = 5.0
MIN_REQUEST_TIMEOUT_SECONDS = 1.0
SAFETY_MARGIN_MS = 5_000  # left of the invocation when giving up: room to log and fail cleanly
RESPONSE_SAMPLE_BYTES = 1024
RETRY, REFUSED, GIVE_UP = "retry", "refused", "give_up"
NO_RESPONSE = "no_response"  # the logged status of an attempt without an HTTP answer (refused, reset, timed out)
RETRY_MESSAGES_KEY = "mars_trace_export"  # an invocation event of its own: {"mars_trace_export": [{app_id, message_id}]}


class ExportFailedError(Exception):
    """The collector stayed unreachable (or busy) for the whole retry budget: the mapping retries the batch."""


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class ExportConfig:
    endpoint: str  # the collector's base URL; requests go to endpoint + /v1/traces
    headers: dict[str, str]
    retry_seconds: float
    request_timeout: float
    failure_queue_url: str

    @property
    def url(self) -> str:
        return self.endpoint.rstrip("/") + TRACES_PATH

    @property
    def shown_endpoint(self) -> str:
        """The URL for logs: without credentials or query (a token may hide there)."""
        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.hostname or "", parts.path, "", "")) if parts.port is None \
            else urlunsplit((parts.scheme, f"{parts.hostname}:{parts.port}", parts.path, "", ""))


def parse_headers(text: str) -> dict[str, str]:
    """`key=value,key=value` as OTEL_EXPORTER_OTLP_HEADERS (values percent-decoded)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"OtlpExportHeaders: {item.split('=')[0].strip()!r} is not key=value")
        out[unquote(key.strip())] = unquote(value.strip())
    return out


def load_config(env: dict[str, str] | None = None) -> ExportConfig | None:
    """None when no endpoint is set (the push is off)."""
    env = dict(os.environ) if env is None else env
    endpoint = env.get("OTLP_EXPORT_ENDPOINT", "").strip()
    if not endpoint:
        return None
    if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).hostname:
        raise ConfigError(f"OtlpExportEndpoint must be an http(s) URL, not {urlsplit(endpoint).scheme or endpoint[:20]!r}")
    return ExportConfig(endpoint=endpoint, headers=parse_headers(env.get("OTLP_EXPORT_HEADERS", "")),
                        retry_seconds=float(env.get("OTLP_EXPORT_RETRY_SECONDS", "20")),
                        request_timeout=float(env.get("OTLP_EXPORT_TIMEOUT_SECONDS", "10")),
                        failure_queue_url=env.get("TRACE_EXPORT_FAILURE_QUEUE_URL", ""))


# --- what changed ---------------------------------------------------------------------------------
def changed_messages(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(app_id, message_id) of each timeline the batch changed, once each, in stream order."""
    if RETRY_MESSAGES_KEY in event:  # `mars redrive` re-exports these messages
        return list(dict.fromkeys((str(m["app_id"]), str(m["message_id"])) for m in event[RETRY_MESSAGES_KEY]))
    out: dict[tuple[str, str], None] = {}
    for record in DynamoDBStreamEvent(event).records:
        ddb = record.dynamodb
        if ddb is None or record.event_name is None or record.event_name.name == "REMOVE":
            continue  # an expired timeline: the backend keeps what it was sent
        new = ddb.new_image or {}
        if timeline_changed(new, ddb.old_image or {}):
            out[(str(new["app_id"]), str(new["message_id"]))] = None
    return list(out)


# --- the request ----------------------------------------------------------------------------------
def _hex_ids_to_base64(span: dict[str, Any]) -> None:
    for key in ("traceId", "spanId", "parentSpanId"):
        if span.get(key):
            span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()


def export_request(traces: Iterable[dict[str, Any]]) -> ExportTraceServiceRequest:
    """One ExportTraceServiceRequest of OTLP/JSON TracesData (traces.py's): their resourceSpans side by
    side. OTLP/JSON writes ids in hex where protobuf's JSON mapping of bytes is base64."""
    resource_spans = []
    for trace in traces:
        for rs in json.loads(json.dumps(trace))["resourceSpans"]:  # a copy: the ids are rewritten
            for scope in rs.get("scopeSpans", []):
                for span in scope.get("spans", []):
                    _hex_ids_to_base64(span)
            resource_spans.append(rs)
    return json_format.ParseDict({"resourceSpans": resource_spans}, ExportTraceServiceRequest())


# --- sending --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    status: int | None  # None: no HTTP answer (connection refused, reset, timed out)
    body: bytes = b""
    retry_after: str | None = None
    error: str = ""


@dataclass(frozen=True)
class Decision:
    action: str  # RETRY, REFUSED or GIVE_UP
    delay: float = 0.0


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After as seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def decide(answer: Answer, attempt: int, remaining: float, rng: Callable[[], float] = random.random,
           now: float | None = None) -> Decision:
    """After a failed attempt (1-based): retry after a delay, give up for now (the mapping retries), or
    refuse (not retryable: the dead-letter queue)."""
    if answer.status is not None and answer.status not in RETRYABLE_STATUSES:
        return Decision(REFUSED)
    asked = retry_after_seconds(answer.retry_after, time.time() if now is None else now)
    if asked is not None:
        delay = asked
    else:
        backoff = min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (attempt - 1))
        delay = backoff * (0.5 + rng() / 2)  # jitter: many functions retrying at once spread out
    if delay >= remaining:  # the collector asks for more than this invocation has left
        return Decision(GIVE_UP, delay)
    return Decision(RETRY, delay)


def post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Answer:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        **headers, "Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - http(s) checked in load_config
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, exc.read() or b"", exc.headers.get("Retry-After"), str(exc.reason))
    except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timed out
        reason = getattr(exc, "reason", exc)
        return Answer(None, error=f"{type(reason).__name__}: {reason}")


@dataclass
class Outcome:
    delivered: bool
    attempts: int
    answer: Answer
    rejected_spans: int = 0
    refused: bool = False  # an answer OTLP says not to retry


sleep: Callable[[float], None] = time.sleep  # module names, so a test can script the clock
clock: Callable[[], float] = time.monotonic


def send(cfg: ExportConfig, request: ExportTraceServiceRequest, messages: list[tuple[str, str]],
         budget: float) -> Outcome:
    """Posts the request until it is delivered, refused, or `budget` seconds are spent."""
    body = gzip.compress(request.SerializeToString())
    deadline = clock() + budget
    attempt = 0
    while True:
        attempt += 1
        timeout = max(MIN_REQUEST_TIMEOUT_SECONDS, min(cfg.request_timeout, deadline - clock()))
        answer = post(cfg.url, body, cfg.headers, timeout)
        if answer.status is not None and 200 <= answer.status < 300:
            return Outcome(True, attempt, answer, _rejected_spans(answer.body, cfg, messages))
        decision = decide(answer, attempt, deadline - clock())
        if decision.action != RETRY:
            return Outcome(False, attempt, answer, refused=decision.action == REFUSED)
        logger.warning("trace export attempt failed; retrying", extra={
            **_failure(cfg, answer, messages, attempt), "retry_in_seconds": round(decision.delay, 3)})
        sleep(decision.delay)


def _rejected_spans(body: bytes, cfg: ExportConfig, messages: list[tuple[str, str]]) -> int:
    """OTLP's partial success: the collector took the request but refused some spans (never retried)."""
    response = ExportTraceServiceResponse()
    try:
        response.ParseFromString(body)
    except Exception:  # an answer that is not OTLP's (some proxies): the request was accepted
        return 0
    rejected = int(response.partial_success.rejected_spans)
    if rejected:
        logger.error("collector rejected spans", extra={"endpoint": cfg.shown_endpoint, "rejected_spans": rejected,
                                                         "collector_message": response.partial_success.error_message,
                                                         "messages": _keys(messages)})
    return rejected


def _keys(messages: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"app_id": a, "message_id": m} for a, m in messages]


def _failure(cfg: ExportConfig, answer: Answer, messages: list[tuple[str, str]], attempt: int) -> dict[str, Any]:
    # Powertools drops None fields: an attempt that got no HTTP answer says so
    return {"endpoint": cfg.shown_endpoint, "status": NO_RESPONSE if answer.status is None else answer.status,
            "attempt": attempt,
            "error": answer.error or answer.body[:RESPONSE_SAMPLE_BYTES].decode("utf-8", "replace"),
            "message_count": len(messages), "messages": _keys(messages[:20])}  # a sample: the DLQ has them all


def dead_letter(cfg: ExportConfig, outcome: Outcome, messages: list[tuple[str, str]]) -> None:
    """A refused batch's messages, for `mars redrive` (which re-exports their current traces)."""
    if not cfg.failure_queue_url:
        raise ConfigError("TRACE_EXPORT_FAILURE_QUEUE_URL is not set: a refused batch has nowhere to go")
    body = {"reason": "refused", "endpoint": cfg.shown_endpoint, "status": outcome.answer.status,
            "response": outcome.answer.body[:RESPONSE_SAMPLE_BYTES].decode("utf-8", "replace"),
            "attempts": outcome.attempts, "at": datetime.now(UTC).isoformat(), "messages": _keys(messages)}
    aws.client("sqs").send_message(QueueUrl=cfg.failure_queue_url, MessageBody=json.dumps(body))


# --- the handler ----------------------------------------------------------------------------------
def read_traces(messages: list[tuple[str, str]]) -> list[dict[str, Any]]:
    cfg = settings()
    lifecycles: dict[str, Lifecycle | None] = {}
    out = []
    for app_id, message_id in messages:
        if app_id not in lifecycles:
            lifecycles[app_id] = get_lifecycle(cfg.apps_table, app_id)
        trace = read_trace(cfg.messages_table, cfg.events_table, app_id, message_id, lifecycles[app_id])
        if trace is not None:  # expired since the change: nothing to send
            out.append(trace)
    return out


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        cfg = load_config()
    except (ConfigError, ValueError) as exc:  # the stream retries the batch until someone fixes the parameter
        logger.error("trace export misconfigured", extra={"error": str(exc)})
        raise
    if cfg is None:
        logger.warning("OTLP_EXPORT_ENDPOINT is empty: nothing exported")
        return {"exported": 0}
    messages = changed_messages(event)
    if not messages:
        return {"exported": 0}
    traces = read_traces(messages)
    if not traces:
        return {"exported": 0}
    request = export_request(traces)
    budget = min(cfg.retry_seconds, max(0.0, (context.get_remaining_time_in_millis() - SAFETY_MARGIN_MS) / 1000))
    outcome = send(cfg, request, messages, budget)
    spans = sum(len(s.spans) for rs in request.resource_spans for s in rs.scope_spans)
    if outcome.delivered:
        logger.info("traces exported", extra={"endpoint": cfg.shown_endpoint, "traces": len(traces), "spans": spans,
                                               "attempts": outcome.attempts, "rejected_spans": outcome.rejected_spans})
        m.count(metrics, m.TRACES_EXPORTED, len(traces))
        return {"exported": len(traces)}
    failure = _failure(cfg, outcome.answer, messages, outcome.attempts)
    m.count_by(metrics, m.TRACE_EXPORTS_FAILED, "outcome", "refused" if outcome.refused else "retrying")
    if outcome.refused and RETRY_MESSAGES_KEY in event:  # `mars redrive`: its dead letter stays where it is
        logger.error("trace export refused by the collector (redrive)", extra=failure)
        return {"exported": 0, "refused": len(traces), "status": outcome.answer.status}
    if outcome.refused:
        logger.error("trace export refused by the collector; batch sent to the failure queue", extra=failure)
        dead_letter(cfg, outcome, messages)
        return {"exported": 0, "refused": len(traces), "status": outcome.answer.status}
    logger.error("trace export failed after retries; the stream retries the batch", extra=failure)
    raise ExportFailedError(f"{cfg.shown_endpoint}: {outcome.answer.status or outcome.answer.error} after "
                            f"{outcome.attempts} attempt(s) for {len(messages)} message(s)")
