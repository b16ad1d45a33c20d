"""The OTLP push end to end (issue 15): a stack started with OtlpExportEndpoint pointing at a test OTLP
receiver (a loopback HTTP server decoding ExportTraceServiceRequest with opentelemetry-proto). Events
stored through the API arrive as traces; while the receiver is down (longer than one invocation's
retries) changes keep coming and none is lost once it is back; a receiver that answers 400 sends the
batch to TraceExportFailureQueue with an ERROR line, and `mars redrive --queue traces` exports it again."""

from __future__ import annotations

import gzip
import http.server
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from mars_common.traces import trace_id
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .conftest import MARS, ROOT, RunningStack, free_port, start_stack

APP = "traced"
RETRY_SECONDS = 1  # one invocation's own retries: short, so the receiver's outage outlasts several


class Receiver:
    """An OTLP/HTTP trace receiver on a fixed loopback port that can be stopped (connections refused)
    and started again, or told to refuse every request with 400."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refuse = False
        self.requests: list[ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.lock = threading.Lock()
        self.server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or receiver.refuse:
                    self._answer(400, b"refused by the test receiver", "text/plain")
                    return
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with receiver.lock:
                    receiver.requests.append(request)
                    receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                self._answer(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def spans(self, message_id: str) -> list[str]:
        """The child span names of the last trace received for the message (its events, in order)."""
        wanted = bytes.fromhex(trace_id(APP, message_id))
        with self.lock:
            for request in reversed(self.requests):
                for rs in request.resource_spans:
                    spans = rs.scope_spans[0].spans
                    if spans and spans[0].trace_id == wanted:
                        return [s.name for s in spans[1:]]
        return []


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[RunningStack]:
    s = start_stack(tmp_path_factory.mktemp("mars-otlp"), "mars-otlp", parameters=(
        f"OtlpExportEndpoint=http://127.0.0.1:{receiver.port}", "OtlpExportHeaders=x-tenant=mars-tests",
        f"OtlpExportRetrySeconds={RETRY_SECONDS}"))
    yield s
    s.stop()


def post(stack: RunningStack, message_id: str, event: str, second: int) -> None:
    resp = requests.post(stack.url("/api/event"), json={
        "app_id": APP, "message_id": message_id, "event": event, "created_at": f"2026-11-30T10:00:{second:02d}Z"},
        timeout=30)
    assert resp.status_code == 202, resp.text


def wait_for(what: str, predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def errors(stack: RunningStack, message: str) -> list[dict[str, Any]]:
    return [line for line in stack.log_lines() if line.get("level") == "ERROR" and line.get("message") == message]


@pytest.mark.timeout(120)
def test_every_change_arrives_even_across_an_outage_and_a_refusal_is_dead_lettered(
        stack: RunningStack, receiver: Receiver) -> None:
    assert stack.outputs["TraceExportFailureQueueUrl"]
    run = uuid.uuid4().hex[:8]
    first = f"{run}-first"
    post(stack, first, "CREATED", 0)
    wait_for("the first trace", lambda: receiver.spans(first) == ["CREATED"], 20)
    assert receiver.headers[-1].get("x-tenant") == "mars-tests"

    # down for longer than one invocation's retries, while more changes arrive
    receiver.stop()
    later = [f"{run}-later-{i}" for i in range(4)]
    post(stack, first, "SENT", 1)
    for i, message_id in enumerate(later):
        post(stack, message_id, "CREATED", i)
    wait_for("an invocation to give up on the unreachable receiver",
             lambda: errors(stack, "trace export failed after retries; the stream retries the batch"), 20)
    time.sleep(RETRY_SECONDS * 2)  # and the stream's retries fail too
    receiver.start()
    wait_for("every changed message's trace after the outage",
             lambda: receiver.spans(first) == ["CREATED", "SENT"] and all(receiver.spans(m) == ["CREATED"] for m in later),
             30)
    failure = errors(stack, "trace export failed after retries; the stream retries the batch")[0]
    assert failure["status"] == "no_response" and failure["endpoint"] == f"http://127.0.0.1:{receiver.port}/v1/traces"

    # a receiver that refuses the payload: no retries, an ERROR line, the failure queue
    receiver.refuse = True
    refused = f"{run}-refused"
    post(stack, refused, "CREATED", 0)
    sqs = stack.client("sqs")
    url = stack.outputs["TraceExportFailureQueueUrl"]

    def dead_letter() -> dict[str, Any] | None:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=0)
            body = json.loads(m["Body"])
            if {"app_id": APP, "message_id": refused} in body.get("messages", []):
                return dict(body)
        return None

    letter = wait_for("the refused batch in TraceExportFailureQueue", dead_letter, 20)
    assert (letter["reason"], letter["status"]) == ("refused", 400)
    (line,) = [e for e in errors(stack, "trace export refused by the collector; batch sent to the failure queue")
               if {"app_id": APP, "message_id": refused} in e["messages"]]
    assert (line["status"], line["attempt"]) == (400, 1)
    assert receiver.spans(refused) == []
    # the operator sees it where every failure is counted
    stats = requests.get(stack.url("/api/q/stats"), timeout=10).json()
    failed = {q["name"]: q["visible"] + q["in_flight"] for q in stats["dead_letter"]}
    assert failed[url.rsplit("/", 1)[-1]] >= 1, stats

    # the collector is fixed: `mars redrive` exports those messages' current traces again
    receiver.refuse = False
    got = subprocess.run([*MARS, "redrive", "--queue", "traces", "--json", "--stack-name", stack.stack_name,
                          "--state-dir", str(stack.state_dir)], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert got.returncode == 0, got.stderr
    report = json.loads(got.stdout)
    assert report["moved"] == {stack.outputs["TraceExportFunctionName"]: 1} and report["remaining"] == {"traces": 0}
    assert receiver.spans(refused) == ["CREATED"]
