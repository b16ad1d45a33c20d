"""A long message's batches through the local pipeline, phase by phase (issue 16).

    python -m bench.long_path [--events 2000] [--bulk 500] [--runs 1] [--json]

The shape of tests/integration/test_long_timeline.py, smaller: one message (one FIFO message group) of
``--events`` events with a 150-byte meta, posted through POST /api/event/bulk ``--bulk`` at a time while
the aggregator's mappings are paused, then resumed: its batches of 10 are stored strictly one after
another. The stack is `mars up` with the test's parameters (its own ports, INFO logs as the test's
stack). From the runtime's `invoke` lines, the store's StoreLatency metric (EMF) and
`GET /_local/aws-calls`, per batch:

- cycle: the drain's wall time (first aggregator invoke's start to the last one's end) ÷ batches;
- aggregator invoke: the runtime's duration of the aggregator's invocation (JSON both ways included);
- store invoke: the store's invocation as the runtime's Lambda API sees it (inside the aggregator's);
- store's DynamoDB: the store's upsert of the message (StoreLatency), inside the store's invocation;
- handoff: aggregator invoke − store invoke (the aggregator's own work, its HTTP call to the Lambda
  API, the JSON crossings); store other: store invoke − upsert (Event parsing, metrics, logging);
- between batches: cycle − aggregator invoke (the poller's delete, the next receive of the group,
  handing the batch to a thread): the median gap from an invocation's end to the next one's start;
- other invocations during the drain (the stream consumers Broadcast & co.), count and ms per batch.

Prints means (they add up: cycle = aggregator invoke + between batches) and medians, batches/s, AWS
calls per batch and the machine; never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.common import Stack, machine, progress, start_stack

PARAMETERS = ("QueueVisibilityTimeout=60", "QueueFunctionTimeout=30", "MaxReceiveCount=4")  # the test's long_stack
META = {"payload": "m" * 150}
AGGREGATOR = "AggregatorFunction"


def _ts(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _lines(path: Path, offset: int) -> list[dict[str, Any]]:
    out = []
    with path.open("rb") as f:
        f.seek(offset)
        for raw in f:
            if raw.startswith(b"{"):
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    pass
    return out


def _aggregator_mappings(stack: Stack, enabled: bool) -> None:
    lam = stack.lambda_client()
    for m in lam.list_event_source_mappings(FunctionName=AGGREGATOR)["EventSourceMappings"]:
        lam.update_event_source_mapping(UUID=m["UUID"], Enabled=enabled)


def _calls(stack: Stack) -> Counter[str]:
    return Counter(stack.aws_calls())


def one_run(stack: Stack, events: int, bulk: int) -> dict[str, Any]:
    """Posts one message of `events` events with the aggregator paused, resumes it, waits until every
    event is stored; returns the per-batch phases."""
    message_id = f"long-{uuid.uuid4().hex[:10]}"
    base = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    body = [{"app_id": "chatty", "message_id": message_id, "event": f"STEP_{i % 5}",
             "created_at": (base + timedelta(milliseconds=i)).isoformat().replace("+00:00", "Z"), "meta": META}
            for i in range(events)]
    _aggregator_mappings(stack, False)
    for start in range(0, events, bulk):
        resp = requests.post(stack.api + "/api/event/bulk", data=json.dumps({"events": body[start:start + bulk]}),
                             headers={"Content-Type": "application/json"}, timeout=60)
        resp.raise_for_status()
    time.sleep(1.5)  # a poll in flight when the mappings paused has come back
    offset = stack.log.stat().st_size
    calls_before = _calls(stack)
    _aggregator_mappings(stack, True)
    deadline = time.monotonic() + 60 + events * 0.1
    count = 0
    while time.monotonic() < deadline:
        resp = requests.get(f"{stack.api}/api/messages/{message_id}", params={"app_id": "chatty", "limit": "1"},
                            timeout=30)
        if resp.status_code == 200:
            count = resp.json()["timelines"][0]["event_count"]
            if count >= events:
                break
        time.sleep(1)  # as the test polls
    if count < events:
        raise TimeoutError(f"{count} of {events} stored in time")
    time.sleep(1.0)  # the last invoke lines and the stream consumers' work reach the log
    calls = _calls(stack) - calls_before
    lines = _lines(stack.log, offset)
    invokes = [line for line in lines if line.get("msg") == "invoke" and "duration_ms" in line]
    agg = sorted(((_ts(i["ts"]) - i["duration_ms"] / 1000, _ts(i["ts"]), i["duration_ms"]) for i in invokes
                  if i.get("function", "").startswith(AGGREGATOR) or AGGREGATOR in str(i.get("function"))),
                 key=lambda t: t[0])
    store = [i["duration_ms"] for i in invokes if "Store" in str(i.get("function"))]
    others = [i for i in invokes if "Store" not in str(i.get("function")) and AGGREGATOR not in str(i.get("function"))]
    upsert = [v for line in lines if line.get("service") == "mars-store" and "StoreLatency" in line
              for v in (line["StoreLatency"] if isinstance(line["StoreLatency"], list) else [line["StoreLatency"]])]
    batches = len(agg)
    window = agg[-1][1] - agg[0][0]
    gaps = [b[0] - a[1] for a, b in zip(agg, agg[1:])]
    mean = statistics.fmean
    agg_ms = mean(a[2] for a in agg)
    return {
        "events": events, "batches": batches, "seconds": round(window, 2),
        "batches_per_s": round(batches / window, 2),
        "ms": {"cycle": round(window / batches * 1000, 1),
               "aggregator_invoke": round(agg_ms, 1),
               "handoff": round(agg_ms - mean(store), 1),
               "store_invoke": round(mean(store), 1),
               "store_other": round(mean(store) - mean(upsert), 1) if upsert else None,
               "store_dynamodb": round(mean(upsert), 1) if upsert else None,
               "between_batches": round(mean(gaps) * 1000, 1) if gaps else None},
        "p50_ms": {"aggregator_invoke": round(statistics.median(a[2] for a in agg), 1),
                   "store_invoke": round(statistics.median(store), 1),
                   "store_dynamodb": round(statistics.median(upsert), 1) if upsert else None,
                   "between_batches": round(statistics.median(gaps) * 1000, 1) if gaps else None},
        "others": {"invokes": len(others), "ms_per_batch": round(sum(i["duration_ms"] for i in others) / batches, 1),
                   "by_function": dict(Counter(str(i.get("function")) for i in others))},
        "calls_per_batch": {k: round(v / batches, 2) for k, v in sorted(calls.items()) if v > 0},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--bulk", type=int, default=500)
    parser.add_argument("--runs", type=int, default=1, help="messages drained one after another on the one stack")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the stack running (prints its pid) for a profiler")
    args = parser.parse_args(argv)
    info = machine()
    workdir = Path(tempfile.mkdtemp(prefix="bench-long-"))
    progress(f"starting a stack in {workdir}")
    stack = start_stack(workdir, "--log-level", "INFO", "--parameter-overrides", *PARAMETERS)
    results = []
    try:
        for n in range(args.runs):
            progress(f"run {n + 1}: {args.events} events of one message")
            results.append(one_run(stack, args.events, args.bulk))
    finally:
        if args.keep:
            progress(f"stack left running: pid {stack.process.pid}, log {stack.log}")
        else:
            stack.stop()
    if args.json:
        print(json.dumps({"machine": info, "runs": results}, indent=1))
        return 0
    for r in results:
        ms = r["ms"]
        print(f"{r['events']} events of one message, {r['batches']} batches in {r['seconds']} s: "
              f"{r['batches_per_s']:.2f} batches/s")
        print("  per batch, ms: mean (p50)")
        for key in ("cycle", "aggregator_invoke", "handoff", "store_invoke", "store_other", "store_dynamodb",
                    "between_batches"):
            p50 = r["p50_ms"].get(key)
            print(f"    {key:22} {ms[key] if ms[key] is not None else '—':>8}" + (f" ({p50})" if p50 is not None else ""))
        o = r["others"]
        print(f"  other invocations: {o['invokes']} ({o['ms_per_batch']} ms per batch): {o['by_function']}")
        print("  AWS calls per batch: " + ", ".join(f"{k} {v}" for k, v in r["calls_per_batch"].items()))
    print(f"machine: {info['cores']} cores, {info['cpu']}, {info['platform']}, Python {info['python']}, "
          f"moto {info['moto']}, load {info['loadavg']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
