"""OpenTelemetry in, on the local stack (issue 15): the OpenTelemetry Python SDK and its OTLP exporters,
configured as an instrumented service would be, report a producer's and a consumer's messaging spans;
every message's timeline shows the right events once each — over OTLP/HTTP, over OTLP gRPC against the
shim, and when the exporter retries a request Mars had already enqueued."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind

from .conftest import RunningStack, start_stack, wait_timeline

MESSAGES = 100
PRODUCER, CONSUMER = "orders-api", "orders-worker"
EVENTS = [f"send:{PRODUCER}", f"process:{CONSUMER}"]  # the default mapping's names (docs/OBSERVABILITY.md)


@pytest.fixture(scope="module")
def otel_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """A stack of its own with the template's timeouts: 200 events at once on the shared stack's 5 s
    ones time aggregator calls out on a busy machine and dead-letter events (not what this tests)."""
    stack = start_stack(tmp_path_factory.mktemp("mars-otel"), "mars-otel", parameters=(
        "QueueVisibilityTimeout=60", "QueueFunctionTimeout=30", "MaxReceiveCount=4"))
    yield stack
    stack.stop()


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def provider(service: str, app_id: str, exporter: SpanExporter) -> TracerProvider:
    """What a service's OpenTelemetry setup does: a resource naming it (and its Mars app), a batch processor."""
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": service, "mars.app_id": app_id}))
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter, max_export_batch_size=512, schedule_delay_millis=200))
    return tracer_provider


def run_services(app_id: str, make_exporter: Any, message_ids: list[str]) -> None:
    """The producer sends each message (a PRODUCER span), the consumer processes it (a CONSUMER span),
    with the messaging semantic conventions' attributes; both flush their spans at the end."""
    producer, consumer = provider(PRODUCER, app_id, make_exporter()), provider(CONSUMER, app_id, make_exporter())
    send, process = producer.get_tracer("orders.producer"), consumer.get_tracer("orders.consumer")
    for mid in message_ids:
        with send.start_as_current_span("send orders", kind=SpanKind.PRODUCER, attributes={
                "messaging.system": "aws_sqs", "messaging.destination.name": "orders",
                "messaging.operation.type": "send", "messaging.message.id": mid}):
            pass
        with send.start_as_current_span("GET /health"):  # a span without a message id: skipped
            pass
    time.sleep(0.002)  # the consumer's spans start after the producer's
    for mid in message_ids:
        with process.start_as_current_span("process orders", kind=SpanKind.CONSUMER, attributes={
                "messaging.system": "aws_sqs", "messaging.destination.name": "orders",
                "messaging.operation.type": "process", "messaging.message.id": mid, "retry.count": 0}):
            pass
    for tracer_provider in (producer, consumer):
        assert tracer_provider.force_flush(30_000)
        tracer_provider.shutdown()


def assert_timelines(stack: RunningStack, app_id: str, message_ids: list[str]) -> None:
    """Every message's timeline: the producer's then the consumer's event, each once, status complete."""
    for mid in message_ids:
        wait_timeline(stack, mid, app_id=app_id, events=2, timeout=120)
    stack.wait_drained(120)  # a duplicate would have been stored by now
    stats = requests.get(stack.url("/api/q/stats"), timeout=10).json()
    assert all(q["visible"] == 0 for q in stats["dead_letter"]), stats  # nothing lost on the way
    for mid in message_ids:
        (timeline,) = wait_timeline(stack, mid, app_id=app_id, events=2)["timelines"]
        assert [e["event"] for e in timeline["events"]] == EVENTS, timeline
        assert timeline["status"] == "complete" and timeline["missing"] == []
        producer_event = timeline["events"][0]
        assert producer_event["event_id"].startswith("otlp-") and producer_event["meta"]["messaging.system"] == "aws_sqs"


def declare(stack: RunningStack, app_id: str) -> None:
    resp = requests.put(stack.url(f"/api/apps/{app_id}/lifecycle"), json={"events": EVENTS, "sla_seconds": 600},
                        timeout=10)
    assert resp.status_code == 200, resp.text


def test_the_sdks_otlp_http_exporter_reports_100_messages(otel_stack: RunningStack) -> None:
    app_id, message_ids = uid("otel-http"), [uid("order") for _ in range(MESSAGES)]
    declare(otel_stack, app_id)
    run_services(app_id, lambda: HttpExporter(endpoint=otel_stack.url("/v1/traces"), timeout=30), message_ids)
    assert_timelines(otel_stack, app_id, message_ids)
    skipped = [line for line in otel_stack.log_lines() if line.get("message") == "otlp spans skipped or rejected"
               and app_id in line.get("apps", [])]
    assert sum(line["skipped_spans_without_message_id"] for line in skipped) == MESSAGES  # each GET /health span


def test_the_sdks_otlp_grpc_exporter_reports_100_messages_to_the_shim(otel_stack: RunningStack) -> None:
    app_id, message_ids = uid("otel-grpc"), [uid("order") for _ in range(MESSAGES)]
    declare(otel_stack, app_id)
    run_services(app_id, lambda: GrpcExporter(endpoint=otel_stack.outputs["GrpcEndpoint"], insecure=True, timeout=30),
                 message_ids)
    assert_timelines(otel_stack, app_id, message_ids)


class FailFirst(BaseHTTPRequestHandler):
    """A loopback proxy to Mars's /v1/traces that forwards every request, and answers the first one 503
    after Mars accepted it: the exporter must resend what Mars already enqueued."""

    upstream = ""
    bodies: list[bytes] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        forwarded = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "content-encoding",
                                                                             "x-api-key")}
        upstream = requests.post(self.upstream, data=body, headers=forwarded, timeout=30)
        with self.lock:
            first = not self.bodies
            self.bodies.append(body)
            self.statuses.append(upstream.status_code)
        status, content = (503, b"") if first else (upstream.status_code, upstream.content)
        self.send_response(status)
        self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/x-protobuf"))
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def proxy(otel_stack: RunningStack) -> Iterator[tuple[str, type[FailFirst]]]:
    handler = type("FailFirstToMars", (FailFirst,), {"upstream": otel_stack.url("/v1/traces"), "bodies": [], "statuses": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_exporters_retry_of_an_accepted_request_is_stored_once(otel_stack: RunningStack,
                                                                  proxy: tuple[str, type[FailFirst]]) -> None:
    url, handler = proxy
    app_id, message_ids = uid("otel-retry"), [uid("order") for _ in range(MESSAGES)]
    declare(otel_stack, app_id)
    run_services(app_id, lambda: HttpExporter(endpoint=url, timeout=30), message_ids)
    assert handler.statuses[0] == 200, "Mars accepted the first request (the proxy answered it 503)"
    assert handler.bodies[0] in handler.bodies[1:], "the exporter resent the request answered 503"
    assert_timelines(otel_stack, app_id, message_ids)


@pytest.mark.parametrize("body,content_type,expected", [
    (b"\x0a\xff\xff\xff", "application/x-protobuf", 400),  # a truncated protobuf
    (b'{"resourceSpans": [', "application/json", 400),
    (b'{"resourceSpans": 3}', "application/json", 400),
    (b'{"resourceSpans": [{"resource": {"attributes": [{"key": "mars.app_id", "value": {"stringValue": "shop"}}]}, '
     b'"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "0102030405060708", "startTimeUnixNano": "1", '
     b'"attributes": [{"key": "messaging.message.id", "value": {"stringValue": "m-1"}}]}]}]}]}',
     "application/json", 200),  # a wrong trace id: partial_success
])
def test_malformed_payloads_get_a_400_or_partial_success_never_a_5xx(otel_stack: RunningStack, body: bytes, content_type: str,
                                                                     expected: int) -> None:
    resp = requests.post(otel_stack.url("/v1/traces"), data=body, headers={"Content-Type": content_type}, timeout=10)
    assert resp.status_code == expected, resp.text
    if expected == 200:
        assert resp.json()["partialSuccess"]["rejectedSpans"] == "1" and "trace_id" in resp.text
