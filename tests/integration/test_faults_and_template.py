"""Failure and genericity: a store that fails some invocations, and a template the runtime has never seen."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import requests

from .conftest import ROOT, start_stack, wait_timeline


def test_store_failures_are_retried_and_still_stored_exactly_once(tmp_path: Path) -> None:
    """30 % of StoreFunction invocations report failure *after* writing: the aggregator fails those
    groups, SQS redelivers them, and idempotent writes keep each event exactly once."""
    # 0.3^3 would dead-letter ~3 % of batches at maxReceiveCount 3: allow 10 receives here.
    stack = start_stack(tmp_path, "mars-faults", "--fault", "StoreFunction=0.3:after", "--fault-seed", "11",
                        parameters=("MaxReceiveCount=10",))
    try:
        run = uuid.uuid4().hex[:6]
        events = [{"app_id": "faulty", "message_id": f"f-{run}-{n % 40}", "event": f"E{n:03d}",
                   "created_at": f"2026-11-26T11:00:{n % 60:02d}.{n:06d}Z"} for n in range(200)]
        for start in range(0, 200, 100):
            resp = requests.post(stack.url("/api/event/bulk"), json={"events": events[start:start + 100]}, timeout=30)
            assert resp.status_code == 202
        stack.wait_drained(timeout=120)
        for m in range(40):
            want = sorted((e for e in events if e["message_id"] == f"f-{run}-{m}"), key=lambda e: e["created_at"])
            timeline = wait_timeline(stack, f"f-{run}-{m}", app_id="faulty", events=len(want))["timelines"][0]
            assert [e["event"] for e in timeline["events"]] == [e["event"] for e in want]
        invokes = [line for line in stack.log_lines() if line.get("msg") == "invoke"]
        injected = [line for line in invokes if "injected fault" in line.get("error", "")]
        partial = [line for line in invokes if line.get("function", "").endswith("AggregatorFunction")
                   and line.get("outcome") == "partial"]
        assert injected, "faults were injected"
        assert partial, "the aggregator reported the failed groups back to SQS"
        stats = requests.get(stack.url("/api/q/stats"), timeout=10).json()
        assert stats["dead_letter"][0]["visible"] == 0, "nothing was dead-lettered"
    finally:
        stack.stop()


def test_a_queue_added_to_a_copy_of_the_template_is_created_and_polled(tmp_path: Path) -> None:
    """Nothing in the runtime names Mars's queues: add one to a copy of the template and it runs."""
    text = (ROOT / "template.yaml").read_text()
    extra_queue = """
  ExtraQueue:
    Type: AWS::SQS::Queue
    Properties:
      FifoQueue: true
      VisibilityTimeout: 5
"""
    extra_source = """
        Extra:
          Type: SQS
          Properties:
            Queue: !GetAtt ExtraQueue.Arn
            BatchSize: 10
            FunctionResponseTypes: [ReportBatchItemFailures]
"""
    text = text.replace("\n  DeadLetterQueue:\n", extra_queue + "\n  DeadLetterQueue:\n", 1)
    marker = "      Events:\n        Queue0:\n"
    assert marker in text
    text = text.replace(marker, "      Events:" + extra_source + "        Queue0:\n", 1)
    text += "  ExtraQueueUrl:\n    Value: !Ref ExtraQueue\n"
    for name in ("functions", "layers"):
        os.symlink(ROOT / name, tmp_path / name)
    copy = tmp_path / "template.yaml"
    copy.write_text(text)
    stack = start_stack(tmp_path, "mars-copy", template=copy)
    try:
        url = stack.outputs["ExtraQueueUrl"]
        assert url.endswith("/mars-copy-ExtraQueue.fifo")
        mid = "extra-" + uuid.uuid4().hex[:8]
        body = {"app_id": "copy", "message_id": mid, "event": "VIA_EXTRA_QUEUE", "created_at": "2026-11-26T12:00:00Z",
                "event_id": "x1", "received_at": "2026-11-26T12:00:01.000000Z"}
        stack.client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps(body), MessageGroupId=mid,
                                         MessageDeduplicationId="x1")
        timeline = wait_timeline(stack, mid)["timelines"][0]
        assert [e["event"] for e in timeline["events"]] == ["VIA_EXTRA_QUEUE"]
        polled = [line for line in stack.log_lines() if line.get("msg") == "invoke"
                  and line.get("source") == "mars-copy-ExtraQueue.fifo"]
        assert polled and polled[0]["function"] == "mars-copy-AggregatorFunction"
    finally:
        stack.stop()
