"""functions/trace_export: changed timelines from the MessagesTable stream, as one OTLP/HTTP protobuf
request per batch, retried when the collector is unreachable or busy, dead-lettered when it refuses.

The stream records are the table's own (moto's stream, as Lambda delivers them); the collector is a
fake `post` that answers what each test scripts, and records what it was sent."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from google.protobuf import json_format
from mars_common import aws
from mars_common.config import settings
from mars_common.events import parse_event
from mars_common.store import put_lifecycle, upsert_message
from mars_common.timeline import Lifecycle
from mars_common.traces import read_trace, span_id, trace_id
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import load_function, table_stream

LIFECYCLE = Lifecycle(("CREATED", "SENT", "ACKED"), 300)


class Collector:
    """A scripted collector: answers in order (the last one repeats), keeps every request it got."""

    def __init__(self, exporter: Any, *answers: Any) -> None:
        self.exporter = exporter
        self.answers = list(answers) or [exporter.Answer(200)]
        self.requests: list[ExportTraceServiceRequest] = []
        self.calls: list[tuple[str, dict[str, str], float]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> Any:
        request = ExportTraceServiceRequest()
        request.ParseFromString(gzip.decompress(body))
        self.requests.append(request)
        self.calls.append((url, headers, timeout))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.fixture
def exporter(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    queue = aws.client("sqs").create_queue(QueueName="unit-trace-export-failures")["QueueUrl"]
    monkeypatch.setenv("OTLP_EXPORT_ENDPOINT", "http://user:secret@127.0.0.1:4318/")
    monkeypatch.setenv("OTLP_EXPORT_HEADERS", "authorization=Bearer%20t0k,x-scope=mars")
    monkeypatch.setenv("OTLP_EXPORT_RETRY_SECONDS", "3")
    monkeypatch.setenv("TRACE_EXPORT_FAILURE_QUEUE_URL", queue)
    module = load_function("trace_export")
    monkeypatch.setattr(module, "sleep", lambda s: None)  # the backoff's waits, not its decisions
    return module


def store(app_id: str, message_id: str, *names: str, first: int = 0) -> None:
    events = [parse_event({"app_id": app_id, "message_id": message_id, "event": n,
                           "created_at": f"2026-11-26T10:00:{first + i:02d}Z"}) for i, n in enumerate(names)]
    upsert_message(settings().messages_table, app_id, message_id, events, 30)


def stream_event() -> dict[str, Any]:
    """Every record of the table's stream so far, as Lambda delivers a batch."""
    return {"Records": table_stream(settings().messages_table)}


def log_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The function's log records with their structured fields (Powertools' `extra`), as its JSON lines have them."""
    return [{**vars(r), "level": r.levelname, "message": r.getMessage()} for r in caplog.records
            if r.name == "mars-trace-export"]


def dead_letters() -> list[dict[str, Any]]:
    url = aws.client("sqs").get_queue_url(QueueName="unit-trace-export-failures")["QueueUrl"]
    got = aws.client("sqs").receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return [json.loads(m["Body"]) for m in got]


# --- conversion --------------------------------------------------------------------------------------
def test_a_batch_is_one_request_holding_each_changed_timeline_as_the_api_reads_it(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any) -> None:
    put_lifecycle(settings().apps_table, "shop", LIFECYCLE)
    store("shop", "order-1", "CREATED")
    store("shop", "order-1", "SENT", first=5)  # two changes of one message: one trace
    store("bank", "tx-9", "OPENED", "CLOSED")
    collector = Collector(exporter)
    monkeypatch.setattr(exporter, "post", collector)

    assert exporter.lambda_handler(stream_event(), lambda_context) == {"exported": 2}

    (request,) = collector.requests
    url, headers, _timeout = collector.calls[0]
    assert url == "http://user:secret@127.0.0.1:4318/v1/traces"
    assert headers == {"authorization": "Bearer t0k", "x-scope": "mars"}
    by_trace = {rs.scope_spans[0].spans[0].trace_id.hex(): rs for rs in request.resource_spans}
    assert set(by_trace) == {trace_id("shop", "order-1"), trace_id("bank", "tx-9")}
    shop = by_trace[trace_id("shop", "order-1")]
    spans = shop.scope_spans[0].spans
    assert [s.name for s in spans] == ["message order-1", "CREATED", "SENT"]
    assert spans[0].span_id.hex() == span_id(trace_id("shop", "order-1"), "root")
    assert all(s.parent_span_id == spans[0].span_id for s in spans[1:])
    # the same trace as GET /api/messages/{id}/trace, field for field
    cfg = settings()
    api = read_trace(cfg.messages_table, cfg.events_table, "shop", "order-1", LIFECYCLE)
    assert api is not None
    assert json_format.MessageToDict(shop) == json_format.MessageToDict(exporter.export_request([api]).resource_spans[0])
    root_attrs = {a.key: a.value for a in spans[0].attributes}
    assert root_attrs["mars.status"].string_value == "in_progress"
    assert [v.string_value for v in root_attrs["mars.missing"].array_value.values] == ["ACKED"]


def test_a_duplicate_delivery_exports_nothing(exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any) -> None:
    store("shop", "order-2", "CREATED")
    first = stream_event()
    store("shop", "order-2", "CREATED")  # the same event again: the item's updated_at only
    records = stream_event()["Records"][len(first["Records"]):]
    assert records, "the duplicate wrote a stream record"
    collector = Collector(exporter)
    monkeypatch.setattr(exporter, "post", collector)
    assert exporter.lambda_handler({"Records": records}, lambda_context) == {"exported": 0}
    assert collector.requests == []


# --- retries -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [None, 429, 502, 503, 504])
def test_unreachable_or_busy_is_retried_with_doubling_backoff(exporter: Any, status: int | None) -> None:
    answer = exporter.Answer(status)
    delays = [exporter.decide(answer, attempt, remaining=60, rng=lambda: 1.0).delay for attempt in range(1, 7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert {exporter.decide(answer, a, 60).action for a in range(1, 7)} == {exporter.RETRY}
    # jitter: between half the backoff and the backoff
    assert exporter.decide(answer, 3, remaining=60, rng=lambda: 0.0).delay == 1.0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 500, 501])
def test_other_answers_are_refused_not_retried(exporter: Any, status: int) -> None:
    assert exporter.decide(exporter.Answer(status), 1, remaining=60).action == exporter.REFUSED


def test_retry_after_is_honoured_in_seconds_or_as_a_date(exporter: Any) -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert exporter.decide(exporter.Answer(429, retry_after="3"), 1, remaining=10).delay == 3.0
    date = format_datetime(now + timedelta(seconds=7), usegmt=True)
    decision = exporter.decide(exporter.Answer(503, retry_after=date), 1, remaining=10, now=now.timestamp())
    assert (decision.action, decision.delay) == (exporter.RETRY, 7.0)
    unreadable = exporter.decide(exporter.Answer(503, retry_after="soon"), 1, remaining=10, rng=lambda: 1.0)
    assert unreadable.delay == 0.5  # the backoff instead


def test_a_wait_longer_than_the_budget_gives_the_batch_back_to_the_stream(exporter: Any) -> None:
    assert exporter.decide(exporter.Answer(429, retry_after="30"), 1, remaining=10).action == exporter.GIVE_UP
    assert exporter.decide(exporter.Answer(None), 5, remaining=1.0, rng=lambda: 1.0).action == exporter.GIVE_UP


def test_a_collector_that_comes_back_within_the_budget_gets_the_batch(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any, caplog: pytest.LogCaptureFixture) -> None:
    store("shop", "order-3", "CREATED")
    answer = exporter.Answer
    collector = Collector(exporter, answer(None, error="ConnectionRefusedError"), answer(503, b"busy"), answer(200))
    monkeypatch.setattr(exporter, "post", collector)
    assert exporter.lambda_handler(stream_event(), lambda_context) == {"exported": 1}
    assert len(collector.requests) == 3
    assert collector.requests[0] == collector.requests[2]  # the same request each time
    lines = log_lines(caplog)
    retried = [line for line in lines if line["message"] == "trace export attempt failed; retrying"]
    assert [(r["status"], r["attempt"]) for r in retried] == [("no_response", 1), (503, 2)]
    assert retried[0]["endpoint"] == "http://127.0.0.1:4318/v1/traces"  # never the URL's credentials
    assert not [line for line in lines if line["level"] == "ERROR"]
    assert "t0k" not in json.dumps(lines, default=str)


def test_a_collector_down_for_the_whole_budget_fails_the_invocation(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any, caplog: pytest.LogCaptureFixture) -> None:
    store("shop", "order-4", "CREATED")
    clock = [0.0]
    monkeypatch.setattr(exporter, "clock", lambda: clock[0])
    monkeypatch.setattr(exporter, "sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    collector = Collector(exporter, exporter.Answer(None, error="ConnectionRefusedError: [Errno 111]"))
    monkeypatch.setattr(exporter, "post", collector)
    with pytest.raises(exporter.ExportFailedError, match="ConnectionRefusedError"):
        exporter.lambda_handler(stream_event(), lambda_context)
    assert 2 <= len(collector.requests) <= 4  # 3 s of budget: 0.25-0.5 + 0.5-1 + 1-2 s of backoff
    (error,) = [line for line in log_lines(caplog) if line["level"] == "ERROR"]
    assert error["message"] == "trace export failed after retries; the stream retries the batch"
    assert (error["status"], error["attempt"], error["message_count"]) == ("no_response", len(collector.requests), 1)
    assert error["messages"] == [{"app_id": "shop", "message_id": "order-4"}]
    assert dead_letters() == []  # the stream retries it, then its OnFailure destination has it


def test_the_budget_stays_under_the_function_timeout(exporter: Any, monkeypatch: pytest.MonkeyPatch,
                                                     lambda_context: Any) -> None:
    store("shop", "order-5", "CREATED")
    seen: list[float] = []
    monkeypatch.setattr(exporter, "send", lambda cfg, request, messages, budget: seen.append(budget) or
                        exporter.Outcome(True, 1, exporter.Answer(200)))
    monkeypatch.setattr(lambda_context, "get_remaining_time_in_millis", lambda: 6_500)
    monkeypatch.setenv("OTLP_EXPORT_RETRY_SECONDS", "20")
    exporter.lambda_handler(stream_event(), lambda_context)
    assert seen == [1.5]  # 6.5 s left - the 5 s margin, not the 20 s asked for


# --- refused -----------------------------------------------------------------------------------------
def test_a_refused_batch_is_an_error_line_and_a_dead_letter_without_retries(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any, caplog: pytest.LogCaptureFixture) -> None:
    store("shop", "order-6", "CREATED")
    store("bank", "tx-6", "OPENED")
    collector = Collector(exporter, exporter.Answer(400, b"proto: cannot parse invalid wire-format data"))
    monkeypatch.setattr(exporter, "post", collector)
    assert exporter.lambda_handler(stream_event(), lambda_context) == {"exported": 0, "refused": 2, "status": 400}
    assert len(collector.requests) == 1
    (error,) = [line for line in log_lines(caplog) if line["level"] == "ERROR"]
    assert error["message"] == "trace export refused by the collector; batch sent to the failure queue"
    assert (error["status"], error["attempt"], error["endpoint"]) == (400, 1, "http://127.0.0.1:4318/v1/traces")
    assert "cannot parse" in error["error"]
    (letter,) = dead_letters()
    assert (letter["reason"], letter["status"]) == ("refused", 400)
    assert letter["messages"] == [{"app_id": "shop", "message_id": "order-6"}, {"app_id": "bank", "message_id": "tx-6"}]


def test_a_refused_batch_with_nowhere_to_go_fails_the_invocation(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any) -> None:
    store("shop", "order-7", "CREATED")
    monkeypatch.setenv("TRACE_EXPORT_FAILURE_QUEUE_URL", "")
    monkeypatch.setattr(exporter, "post", Collector(exporter, exporter.Answer(400)))
    with pytest.raises(exporter.ConfigError, match="TRACE_EXPORT_FAILURE_QUEUE_URL"):
        exporter.lambda_handler(stream_event(), lambda_context)


def test_a_partial_success_is_an_error_line(exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any,
                                            caplog: pytest.LogCaptureFixture) -> None:
    store("shop", "order-8", "CREATED")
    response = ExportTraceServiceResponse()
    response.partial_success.rejected_spans = 1
    response.partial_success.error_message = "span too old"
    monkeypatch.setattr(exporter, "post", Collector(exporter, exporter.Answer(200, response.SerializeToString())))
    assert exporter.lambda_handler(stream_event(), lambda_context) == {"exported": 1}
    (error,) = [line for line in log_lines(caplog) if line["level"] == "ERROR"]
    assert (error["message"], error["rejected_spans"], error["collector_message"]) == (
        "collector rejected spans", 1, "span too old")


# --- configuration -----------------------------------------------------------------------------------
def test_headers_and_endpoint_are_read_like_the_otel_variables(exporter: Any) -> None:
    assert exporter.parse_headers("a=1, b = x%3Dy ,,") == {"a": "1", "b": "x=y"}
    with pytest.raises(exporter.ConfigError, match="'token' is not key=value"):
        exporter.parse_headers("token")
    assert exporter.load_config({"OTLP_EXPORT_ENDPOINT": ""}) is None
    with pytest.raises(exporter.ConfigError, match="http"):
        exporter.load_config({"OTLP_EXPORT_ENDPOINT": "127.0.0.1:4318"})


def test_a_bad_header_parameter_is_an_error_line_and_a_failed_invocation(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTLP_EXPORT_HEADERS", "oops")
    with pytest.raises(exporter.ConfigError):
        exporter.lambda_handler({"Records": []}, lambda_context)
    assert [line["message"] for line in log_lines(caplog) if line["level"] == "ERROR"] == ["trace export misconfigured"]


def test_post_reads_a_real_http_answer_and_a_refused_connection(exporter: Any) -> None:
    import http.server
    import socket
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(429)
            self.send_header("Retry-After", "2")
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"slow")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        answer = exporter.post(f"http://127.0.0.1:{server.server_port}/v1/traces", b"x", {}, 5)
    finally:
        server.shutdown()
        server.server_close()
    assert (answer.status, answer.retry_after, answer.body) == (429, "2", b"slow")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: refused
        refused = exporter.post(f"http://127.0.0.1:{closed}/v1/traces", b"x", {}, 5)
    assert refused.status is None and "Refused" in refused.error


# --- mars redrive --queue traces ----------------------------------------------------------------------
def test_redrive_reads_lambdas_on_failure_record_back_from_the_stream(exporter: Any) -> None:
    from mars import redrive

    store("shop", "r-1", "CREATED")
    store("shop", "r-2", "CREATED")
    store("shop", "r-3", "CREATED")
    records = stream_event()["Records"]
    batch = [r for r in records if r["dynamodb"]["Keys"]["message_id"]["S"] in ("r-2", "r-3")]
    info = {"shardId": aws.client("dynamodbstreams").describe_stream(StreamArn=records[0]["eventSourceARN"])
            ["StreamDescription"]["Shards"][0]["ShardId"], "streamArn": records[0]["eventSourceARN"],
            "startSequenceNumber": batch[0]["dynamodb"]["SequenceNumber"],
            "endSequenceNumber": batch[-1]["dynamodb"]["SequenceNumber"], "batchSize": len(batch)}
    lambda_record = {"Body": json.dumps({"requestContext": {"condition": "RetryAttemptsExhausted"}, "version": "1.0",
                                         "DDBStreamBatchInfo": info})}
    plan = redrive.plan_trace(lambda_record, streams=lambda: aws.client("dynamodbstreams"))
    assert (plan.kept, plan.exports) == (None, [("shop", "r-2"), ("shop", "r-3")])  # that batch only
    own = {"Body": json.dumps({"reason": "refused", "messages": [{"app_id": "bank", "message_id": "t"}]})}
    assert redrive.plan_trace(own, streams=lambda: None).exports == [("bank", "t")]
    assert redrive.plan_trace({"Body": "{}"}, streams=lambda: None).kept == redrive.UNRECOGNISED


def test_redrive_invokes_the_exporter_and_keeps_what_still_fails(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any) -> None:
    import io

    from mars import redrive

    store("shop", "r-4", "CREATED")

    class Lambda:
        """Invoke as the runtime's Lambda API does: the handler's answer, or its error."""

        def invoke(self, FunctionName: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803 - boto3's names
            try:
                answer = exporter.lambda_handler(json.loads(Payload), lambda_context)
            except Exception as exc:
                return {"FunctionError": "Unhandled", "Payload": io.BytesIO(json.dumps({"errorMessage": str(exc)}).encode())}
            return {"Payload": io.BytesIO(json.dumps(answer).encode())}

    collector = Collector(exporter, exporter.Answer(200))
    monkeypatch.setattr(exporter, "post", collector)
    assert redrive.invoke_export(Lambda(), "fn", [("shop", "r-4")]) is None
    assert [rs.scope_spans[0].spans[0].name for rs in collector.requests[0].resource_spans] == ["message r-4"]

    monkeypatch.setattr(exporter, "post", Collector(exporter, exporter.Answer(400)))
    assert redrive.invoke_export(Lambda(), "fn", [("shop", "r-4")]) == "the collector refused them again (HTTP 400)"
    assert dead_letters() == []  # a redriven refusal stays in the queue it came from, not a second copy

    monkeypatch.setattr(exporter, "post", Collector(exporter, exporter.Answer(503)))
    assert "503 after" in (redrive.invoke_export(Lambda(), "fn", [("shop", "r-4")]) or "")


def test_exported_traces_and_refused_batches_are_counted_in_emf(
        exporter: Any, monkeypatch: pytest.MonkeyPatch, lambda_context: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from mars_common import metrics as m

    from tests.unit.test_emf_metrics import metrics_of, services, total

    store("shop", "order-8", "CREATED")
    store("bank", "tx-8", "OPENED")
    monkeypatch.setattr(exporter, "post", Collector(exporter))
    capsys.readouterr()
    assert exporter.lambda_handler(stream_event(), lambda_context) == {"exported": 2}
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-trace-export"} and total(lines, m.TRACES_EXPORTED) == 2
    monkeypatch.setattr(exporter, "post", Collector(exporter, exporter.Answer(400, b"no")))
    exporter.lambda_handler(stream_event(), lambda_context)
    lines = metrics_of(capsys)
    assert total(lines, m.TRACE_EXPORTS_FAILED, outcome="refused") == 1 and total(lines, m.TRACES_EXPORTED) == 0
