"""`mars send` and `mars stats` against the running local stack (DESIGN §6)."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from .conftest import MARS, ROOT, RunningStack, wait_timeline


def mars_cli(stack: RunningStack, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MARS, *args, "--stack-name", stack.stack_name, "--state-dir", str(stack.state_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=60, input=stdin)


@pytest.mark.parametrize("transport", ["http", "grpc", "sns", "sqs"])
def test_send_over_every_transport_prints_the_event_id_that_is_stored(mars: RunningStack, transport: str) -> None:
    mid = f"cli-{transport}-{uuid.uuid4().hex[:8]}"
    got = mars_cli(mars, "send", "--app", "cli", "--message", mid, "--event", "CREATED", "--meta", "via=cli",
                   "--created-at", "2026-11-26T10:00:00Z", "--transport", transport)
    assert got.returncode == 0, got.stderr
    (event_id,) = got.stdout.split()
    (stored,) = wait_timeline(mars, mid, app_id="cli")["timelines"][0]["events"]
    assert (stored["event_id"], stored["meta"]) == (event_id, {"via": "cli"})


def test_send_a_file_of_events_and_refuse_an_invalid_one(mars: RunningStack, tmp_path: Path) -> None:
    mid = f"cli-file-{uuid.uuid4().hex[:8]}"
    events = tmp_path / "events.json"
    events.write_text(json.dumps({"events": [{"app_id": "cli", "message_id": mid, "event": e} for e in ("A", "B")]}))
    got = mars_cli(mars, "send", "--file", str(events))
    assert got.returncode == 0 and len(got.stdout.split()) == 2
    wait_timeline(mars, mid, app_id="cli", events=2)
    bad = mars_cli(mars, "send", "--file", "-", stdin=json.dumps({"app_id": "no spaces allowed", "message_id": "m",
                                                                   "event": "E"}))
    assert bad.returncode == 1 and "app_id" in bad.stderr
    assert mars_cli(mars, "send", "--app", "cli").returncode == 2


def test_stats_prints_every_queue_as_a_table_or_json(mars: RunningStack) -> None:
    table = mars_cli(mars, "stats")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "VISIBLE", "IN", "FLIGHT", "OLDEST"]
    assert len(lines) == 1 + 10 + 5  # ten event queues, two dead-letter queues, three failure queues
    assert [line.split()[0].split("-", 2)[-1] for line in lines[11:]] == [
        "DeadLetterQueue.fifo", "IngestDeadLetterQueue", "AlertsFailureQueue", "BroadcastFailureQueue",
        "AlertDeliveryDeadLetterQueue"]
    as_json = json.loads(mars_cli(mars, "stats", "--json").stdout)
    assert len(as_json["queues"]) == 10 and len(as_json["dead_letter"]) == 5 and "event_collector_q" in as_json


def test_stats_without_a_stack_says_what_to_do(tmp_path: Path) -> None:
    got = subprocess.run([*MARS, "stats", "--stack-name", "nope", "--state-dir", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert got.returncode == 2 and "make up" in got.stderr


def test_stats_metrics_sums_the_emf_lines_the_functions_and_the_shim_wrote_to_the_stacks_log(mars: RunningStack) -> None:
    """Every function's stdout (and the shim's) is in the stack's log; `mars stats --metrics` sums its EMF lines."""
    import time

    mid = f"cli-metrics-{uuid.uuid4().hex[:8]}"
    for transport in ("http", "grpc"):
        sent = mars_cli(mars, "send", "--app", "cli", "--message", mid, "--event", transport.upper(),
                        "--transport", transport)
        assert sent.returncode == 0, sent.stderr
    wait_timeline(mars, mid, app_id="cli", events=2)
    assert Path(mars.state["log"]).parent == mars.state_dir
    deadline = time.monotonic() + 40  # the shim writes its sums every 10 s locally
    while True:
        got = mars_cli(mars, "stats", "--metrics", "--json")
        assert got.returncode == 0, got.stderr
        sums = {(r["metric"], r["dimensions"].get("service")): r["sum"] for r in json.loads(got.stdout)
                if len(r["dimensions"]) == 1}
        wanted = [("EventsAccepted", "mars-api"), ("EventsAccepted", "mars-grpc"), ("EventsStored", "mars-store"),
                  ("BatchSize", "mars-aggregator"), ("BatchSize", "mars-broadcast")]
        if all(sums.get(k, 0) >= 1 for k in wanted) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(sums.get(k, 0) >= 1 for k in wanted), sums
    table = mars_cli(mars, "stats", "--metrics")
    assert table.returncode == 0 and table.stdout.splitlines()[0].split()[:3] == ["NAMESPACE", "METRIC", "DIMENSIONS"]
