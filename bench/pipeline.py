"""The spine's figures (issue 2, `make bench`):

(a) the emulator's ceiling for this pipeline: a tight loop making, straight to the emulator, exactly
    the calls the pipeline needs per event (SendMessageBatch, ReceiveMessage, DeleteMessageBatch,
    one UpdateItem per message group) — and the plain SendMessage/s ceiling;
(b) end-to-end HTTP bulk ingest: events/s from the first request until every event is stored;
(c) single-event HTTP req/s with many concurrent connections (16, 32 and 64: the peak is compared
    with the SendMessage ceiling, itself the peak over 16, 32 and 64 client threads);
(d) (b) again with 5,000 messages already waiting in the queues.
Goals: (b)/(a) ≥ 0.8, (c)/(single-send ceiling) ≥ 0.8, (d)/(b) ≥ 0.8.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mars_common import aws as mars_aws  # the layer (pyproject.toml maps its package), as Lambda mounts it
from mars_common.events import parse_event
from mars_common.queues import enqueue, send_batch
from mars_common.sharding import dedup_id, message_key, shard  # noqa: E402
from mars_common.store import upsert_message  # noqa: E402

from mars import stacks

from .common import ROOT, Stack, client, progress, start_emulator, start_stack, wait_drained


@dataclass
class Sizes:
    events: int = 5000
    events_per_message: int = 10
    backlog: int = 5000
    clients: int = 4
    connections: int = 32
    sweep: tuple[int, ...] = (16, 32, 64)  # concurrencies at which the two ceilings of (c) are sought
    seconds: float = 8.0
    grpc_calls: int = 3000
    drain_seconds: float = 30.0  # (e): single events with the triggers running


@dataclass
class Results:
    figures: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


def make_events(n: int, per_message: int, run: str) -> list[dict[str, Any]]:
    apps = [f"bench-{run}-{i}" for i in range(3)]
    out = []
    for i in range(n):
        m = i // per_message
        out.append({"app_id": apps[m % 3], "message_id": f"msg-{run}-{m}", "event": f"STEP_{i % per_message}",
                    "created_at": f"2026-11-26T12:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000000:06d}Z"})
    return out


# --- (a) ceilings ------------------------------------------------------------------------------------
def ceilings(sizes: Sizes) -> Results:
    """Against a fresh emulator of the same kind the stack runs, holding the template's resources."""
    from samlocal.resources import provision
    from samlocal.template import Stack as TemplateStack
    from samlocal.template import load

    res = Results()
    emu = start_emulator(patched=True)
    try:
        os.environ.update(emu.env())
        mars_aws.client.cache_clear()
        mars_aws.table.cache_clear()
        stack = TemplateStack(load(ROOT / "template.yaml"), root=ROOT, name="ceiling")
        provision(stack, lambda s: client(s, emu.endpoint_for(s)))
        urls = [stack.ref(f"EventsQueue{i}") for i in range(10)]
        table = stack.ref("MessagesTable")
        sqs = client("sqs", emu.endpoint)
        events = [parse_event(e) for e in make_events(sizes.events, sizes.events_per_message, uuid.uuid4().hex[:6])]
        by_queue: dict[int, list[Any]] = defaultdict(list)
        for ev in events:
            by_queue[shard(ev.app_id, ev.message_id, 10)].append(ev)
        progress(f"(a) pipeline calls straight to the emulator, {len(events)} events, {sizes.clients} threads")

        def run_queue(q: int) -> None:
            items = by_queue[q]
            for start in range(0, len(items), 10):
                chunk = items[start:start + 10]
                sqs.send_message_batch(QueueUrl=urls[q], Entries=[
                    {"Id": str(i), "MessageBody": ev.to_json(), "MessageGroupId": message_key(ev.app_id, ev.message_id),
                     "MessageDeduplicationId": dedup_id(ev.app_id, ev.message_id, ev.event_id)}
                    for i, ev in enumerate(chunk)])
                got = sqs.receive_message(QueueUrl=urls[q], MaxNumberOfMessages=10).get("Messages", [])
                if got:
                    sqs.delete_message_batch(QueueUrl=urls[q], Entries=[
                        {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)])
                groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
                for ev in chunk:
                    groups[(ev.app_id, ev.message_id)].append(ev)
                for (app_id, message_id), evs in groups.items():
                    upsert_message(table, app_id, message_id, evs, 30)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(sizes.clients) as pool:
            list(pool.map(run_queue, sorted(by_queue)))
        res.figures["pipeline_ceiling_eps"] = len(events) / (time.perf_counter() - t0)

        progress(f"(a) single-event pipeline calls straight to the emulator, 4 processes × 4 and 8 threads, "
                 f"{sizes.seconds:.0f} s each")
        res.figures["single_pipeline_ceiling_eps"] = _single_event_ceiling(
            emu.endpoint, urls, table, stack.ref("ConnectionsTable"), sizes)

        by_clients: dict[int, float] = {}
        for n in sizes.sweep:
            progress(f"(a) plain SendMessage, {n} concurrent clients, {sizes.seconds:.0f} s")
            by_clients[n], _ = _closed_loop(n, sizes.seconds, _sqs_sender(sqs, urls))
        res.figures["send_ceiling_rps"] = max(by_clients.values())
        res.notes["a_send_sweep"] = by_clients
    finally:
        emu.stop()
        for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB"):
            os.environ.pop(key, None)
    return res


def _single_event_ceiling(sqs_endpoint: str, urls: list[str], table: str, connections: str, sizes: Sizes) -> float:
    """Events/s when each event is its own message, sent alone (as `POST /api/event` sends it) and
    stored by the pipeline's calls at their best packing: SendMessage; its tenth of a ReceiveMessage of
    10 and of a DeleteMessageBatch (the poller's best case); the store's upsert; the broadcaster's
    lookup of the message's subscribers, and its tenth of the app's (read once per batch) — the
    emulator's ceiling for what one event of (e) costs. The calls come from 4 processes (threads of one
    Python process would measure its GIL, not the emulator); the peak over 4 and 8 threads each."""
    import multiprocessing

    best = 0.0
    for threads in (4, 8):
        with multiprocessing.get_context("fork").Pool(4) as pool:
            args = [(sqs_endpoint, urls, table, connections, threads, sizes.seconds, f"{uuid.uuid4().hex[:6]}-{k}", k)
                    for k in range(4)]
            # each process runs for `seconds` (its last round may end a little later)
            best = max(best, sum(pool.starmap(_single_event_worker, args)) / sizes.seconds)
    return best


def _ids_for_queue(app_id: str, queue: int, queues: int, prefix: str) -> Iterator[str]:
    """Message ids of `app_id` whose shard is `queue`: a client that sends and receives on one queue
    keeps that queue's depth at one round's worth (receiving from a queue other clients fill would make
    every receive scan a growing backlog, which no stack does)."""
    n = 0
    while True:
        n += 1
        message_id = f"{prefix}-{n}"
        if shard(app_id, message_id, queues) == queue:
            yield message_id


def _single_event_worker(sqs_endpoint: str, urls: list[str], table: str, connections: str, threads: int,
                         seconds: float, run: str, process: int) -> int:
    """One process of _single_event_ceiling: `threads` clients for `seconds`; the events stored."""
    from mars_common import live

    mars_aws.client.cache_clear()  # clients of the parent process hold its sockets: make new ones
    mars_aws.table.cache_clear()
    sqs = client("sqs", sqs_endpoint)
    # warm, as the stack's execution environments are: a boto3 session parses its service models on
    # its first client (~0.1 s of CPU each), and 4 × 8 threads racing to make them ate the window
    for name in (table, connections):
        mars_aws.table(name).load()
    mars_aws.client("sqs").list_queues(MaxResults=1)
    stored = [0]
    lock = threading.Lock()
    app_id = f"single-{run}"
    thread_no = iter(range(threads))

    def make() -> Any:
        with lock:
            t = next(thread_no)
        queue = (process * threads + t) % len(urls)
        ids = _ids_for_queue(app_id, queue, len(urls), f"e{t}")
        pending: list[Any] = []

        def call(i: int) -> bool:
            ev = parse_event({"app_id": app_id, "message_id": next(ids), "event": "CREATED"})
            if send_batch(urls[queue], [(0, ev)]):  # the API's own send: a lone event goes as SendMessage
                return False
            pending.append(ev)
            if len(pending) < 10:
                return True
            # one receive of up to 10 and one delete per 10 sends, whichever client's messages it gets
            # (clients share the 10 queues): the queue's depth stays about one round's worth
            got = sqs.receive_message(QueueUrl=urls[queue], MaxNumberOfMessages=10).get("Messages", [])
            if got:
                sqs.delete_message_batch(QueueUrl=urls[queue], Entries=[
                    {"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(got)])
            for ev_ in pending:
                upsert_message(table, ev_.app_id, ev_.message_id, [ev_], 30)
                live.message_subscribers(connections, ev_.app_id, ev_.message_id)
            live.app_subscribers(connections, app_id)  # once per batch, as the broadcaster reads it
            with lock:
                stored[0] += len(pending)
            pending.clear()
            return True
        return call

    _closed_loop(threads, seconds, make)
    return stored[0]  # events whose round (sent, received, deleted, stored, looked up) finished


def _sqs_sender(sqs: Any, urls: list[str]) -> Any:
    def send(i: int) -> bool:
        key = uuid.uuid4().hex
        sqs.send_message(QueueUrl=urls[i % len(urls)], MessageBody=json.dumps({"i": i}), MessageGroupId=key,
                         MessageDeduplicationId=key)
        return True
    return lambda: send


def _closed_loop(workers: int, seconds: float, make: Any) -> tuple[float, list[float]]:
    """`workers` clients each sending back to back for `seconds`; returns (req/s, latencies ms)."""
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(w: int) -> None:
        call = make()
        local: list[float] = []
        bad = 0
        i = w * 1_000_000
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            try:
                ok = call(i)
            except Exception:
                ok = False
            if ok:
                local.append((time.perf_counter() - start) * 1000)
            else:
                bad += 1
            i += 1
        with lock:
            latencies.extend(local)
            errors[0] += bad

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors[0]:
        progress(f"{errors[0]} requests failed")
    return len(latencies) / elapsed, latencies


# --- (b) and (d) end to end ------------------------------------------------------------------------
def bulk_ingest(stack: Stack, sizes: Sizes, backlog: int = 0) -> tuple[float, dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    events = make_events(sizes.events, sizes.events_per_message, run)
    sqs = client("sqs", stacks.endpoint(stack.state, "sqs"))
    if backlog:
        progress(f"(d) pausing triggers, filling the queues with {backlog} waiting messages")
        stack.set_triggers(False)
        time.sleep(1.5)
        _fill(stack, backlog, run)
    calls_before = stack.aws_calls()
    bodies = [json.dumps({"events": events[i:i + 500]}).encode() for i in range(0, len(events), 500)]
    host = urlsplit(stack.api)
    progress(f"({'d' if backlog else 'b'}) {len(events)} events as {len(bodies)} bulk requests, {sizes.clients} clients")

    def post(body: bytes) -> int:
        conn = http.client.HTTPConnection(host.hostname or "127.0.0.1", host.port, timeout=120)
        conn.request("POST", "/api/event/bulk", body=body, headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
        conn.close()
        return status

    t0 = time.monotonic()
    if backlog:
        stack.set_triggers(True)
    with ThreadPoolExecutor(sizes.clients) as pool:
        statuses = list(pool.map(post, bodies))
    accepted_at = time.monotonic()
    done = wait_drained(sqs, stack.queue_urls, timeout=600)
    elapsed = done - t0
    calls = {k: v - calls_before.get(k, 0) for k, v in stack.aws_calls().items() if v - calls_before.get(k, 0)}
    total = len(events) + backlog
    info = {"statuses": sorted(set(statuses)), "events": len(events), "backlog": backlog,
            "accept_seconds": round(accepted_at - t0, 2), "seconds": round(elapsed, 2), "calls": calls}
    return total / elapsed, info


def _fill(stack: Stack, count: int, run: str) -> None:
    """`count` real events, enqueued exactly as the API enqueues them (same shards, groups, dedup ids)."""
    os.environ.update({"AWS_ENDPOINT_URL": stack.state["endpoint"], "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    mars_aws.client.cache_clear()
    events = [parse_event(e) for e in make_events(count, 5, "backlog-" + run)]
    failures = enqueue(events, tuple(stack.queue_urls))
    if failures:
        raise RuntimeError(f"{len(failures)} backlog events not enqueued")


def calls_per_event(info: dict[str, Any], per_message: int) -> tuple[float, float, float, float]:
    """(AWS calls per event, minimum possible, Lambda invokes per event, minimum)."""
    n = info["events"] + info["backlog"]
    calls = info["calls"]
    aws_calls = sum(v for k, v in calls.items() if not k.startswith("lambda."))
    # per 10 events: one SendMessageBatch, one ReceiveMessage, one DeleteMessageBatch; one UpdateItem per message
    minimum = 3 / 10 + 1 / per_message
    invokes = sum(v for k, v in calls.items() if k.startswith("lambda."))
    return aws_calls / n, minimum, invokes / n, 1 / 10


# --- (c) single events -------------------------------------------------------------------------------
WRK_SCRIPT = Path(__file__).resolve().parent / "single.lua"


def single_events(stack: Stack, sizes: Sizes) -> tuple[float, dict[str, Any]]:
    """(req/s, latency) of POST /api/event on `sizes.connections` keep-alive connections. wrk (Mars's
    README's tool) drives it when installed: its C event loop costs ~0.03 ms of CPU a request, where
    a Python client costs ~0.17 ms on the same 2 cores as the stack. Without wrk, the Python client."""
    run = uuid.uuid4().hex[:6]
    if shutil.which("wrk"):
        return _wrk(stack, sizes, run)
    progress(f"single POST /api/event, {sizes.connections} keep-alive connections, {sizes.seconds:.0f} s "
             "(Python client: apt-get install wrk for a cheaper load generator)")
    host = urlsplit(stack.api)

    def make() -> Any:
        conn = http.client.HTTPConnection(host.hostname or "127.0.0.1", host.port, timeout=60)

        def call(i: int) -> bool:
            body = json.dumps({"app_id": f"single-{run}", "message_id": f"s-{i}", "event": "CREATED"})
            conn.request("POST", "/api/event", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status == 202
        return call

    rps, lat = _closed_loop(sizes.connections, sizes.seconds, make)
    return rps, {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99), "count": len(lat),
                 "errors": 0, "load": "python http.client"}


def single_events_stored(stack: Stack, sizes: Sizes) -> tuple[float, dict[str, Any]]:
    """(e): single events (a new message each) for `sizes.seconds` with the triggers running; events
    per second from the first request until every accepted event is stored (the queues drained) and
    the live path has read its subscribers (the broadcaster's last subscriber Query: it reads the
    stream after the store, and a figure taken at the drain alone would leave its lag out), with the
    AWS calls they cost."""
    if not shutil.which("wrk"):
        raise RuntimeError("(e) needs wrk (apt-get install wrk; `make bench` installs it)")
    calls_before = stack.aws_calls()
    live_before = _live_lookups(stack)
    t0 = time.monotonic()
    rps, lat = _wrk(stack, sizes, uuid.uuid4().hex[:6])
    accepted = lat["count"] - lat["errors"]
    drained = wait_drained(client("sqs", stacks.endpoint(stack.state, "sqs")), stack.queue_urls, timeout=900)
    # each event is a new message: the broadcaster reads its subscribers once (and the app's once a
    # batch), so its Queries reach `accepted` only once it has seen every stored event
    total, last_change = _wait_live_quiet(stack, at_least=live_before + accepted)
    lookups, done = total - live_before, max(drained, last_change)
    calls = {k: v - calls_before.get(k, 0) for k, v in stack.aws_calls().items() if v - calls_before.get(k, 0)}
    info = {**lat, "accepted": accepted, "front_door_rps": rps, "seconds": round(done - t0, 2),
            "drained_seconds": round(drained - t0, 2), "live_lookups": lookups, "calls": calls}
    return accepted / (done - t0), info


# Mars's README's own load command, unchanged but for the host: the route enqueues one random event.
SEED_WRK = ["wrk", "-t4", "-c100", "-d10s", "--latency"]


def seed_wrk(stack: Stack) -> tuple[float, dict[str, Any]]:
    if not shutil.which("wrk"):
        raise RuntimeError("the seed's wrk command needs wrk (apt-get install wrk)")
    cmd = [*SEED_WRK, f"{stack.api}/api/create_event"]
    progress(" ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=90).stdout
    rps, lat = parse_wrk(out)
    settle(stack)
    return rps, lat


def wrk_command(api: str, connections: int, seconds: float, run: str = "bench") -> list[str]:
    return ["wrk", "-t2", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(WRK_SCRIPT), api, "--", run]


def _wrk(stack: Stack, sizes: Sizes, run: str) -> tuple[float, dict[str, Any]]:
    cmd = wrk_command(stack.api, sizes.connections, sizes.seconds, run)
    progress(" ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=sizes.seconds + 60).stdout
    return parse_wrk(out)


_WRK_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_wrk(out: str) -> tuple[float, dict[str, Any]]:
    """Requests/s and latency (ms) from `wrk --latency`'s report; non-2xx answers and socket errors
    count as errors (a 202 is the only success)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rps or not count:
        raise RuntimeError(f"unexpected wrk output:\n{out}")

    def percentile(p: int) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        return float(m.group(1)) * _WRK_UNITS[m.group(2)] if m else float("nan")

    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    # Which kind, not only how many: a timeout (wrk gave up after 2 s) is not an error status.
    kinds = dict(zip(("connect", "read", "write", "timeout"), map(int, socket.groups()))) if socket else {}
    kinds["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    kinds = {kind: n for kind, n in kinds.items() if n}
    errors = sum(kinds.values())
    if errors:
        progress(f"{errors} requests failed: " + ", ".join(f"{kind} {n}" for kind, n in kinds.items()))
    return float(rps.group(1)), {"p50": percentile(50), "p90": percentile(90), "p99": percentile(99),
                                 "count": int(count.group(1)), "errors": errors, "error_kinds": kinds, "load": "wrk"}


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


@contextmanager
def warm_stack(sizes: Sizes) -> Iterator[Stack]:
    """`mars up` as a user starts it, then a warm-up that is not measured: execution environments
    start as load arrives (cold starts), as in Lambda."""
    stack = start_stack(Path(tempfile.mkdtemp(prefix="mars-bench-")), "--warm", "4")
    try:
        progress("warm-up: 1,000 events and 2 s of single events")
        bulk_ingest(stack, Sizes(events=1000, clients=sizes.clients))
        single_events(stack, Sizes(connections=sizes.connections, seconds=2))
        settle(stack)
        yield stack
    finally:
        stack.stop()


def settle(stack: Stack, quiet_seconds: float = 2.0, timeout: float = 900) -> None:
    """Every queue empty and the live path idle. The broadcaster reads the MessagesTable stream after
    the store has written: after (c)'s sweep (~10,000 events) it is still catching up for a minute
    once the queues are empty, and a figure measured meanwhile pays for it — run 2026-11-30-2226's (e)
    counted 15,531 subscriber lookups for 4,133 events."""
    wait_drained(client("sqs", stacks.endpoint(stack.state, "sqs")), stack.queue_urls, timeout=timeout)
    _wait_live_quiet(stack, quiet_seconds=quiet_seconds, timeout=timeout)


def _live_lookups(stack: Stack) -> int:
    """The broadcaster's subscriber lookups so far (its only Query): one per changed message it has read."""
    return stack.function_aws_calls("BroadcastFunction").get("dynamodb.Query", 0)


def _wait_live_quiet(stack: Stack, *, at_least: int = 0, quiet_seconds: float = 2.0,
                     timeout: float = 900) -> tuple[int, float]:
    """Polls the broadcaster's lookups until there are at least `at_least` and none came for
    `quiet_seconds`; (their count, the monotonic time the last change was seen)."""
    last, changed = -1, time.monotonic()
    deadline = changed + timeout
    while time.monotonic() < deadline:
        lookups = _live_lookups(stack)
        if lookups != last:
            last, changed = lookups, time.monotonic()
        elif lookups >= at_least and time.monotonic() - changed > quiet_seconds:
            return lookups, changed
        time.sleep(0.1)
    raise TimeoutError(f"the live path: {last} subscriber lookups (wanted ≥ {at_least}), still changing or short "
                       f"after {timeout}s")


def _paused(stack: Stack, measure: Any) -> Any:
    """`measure()` with every trigger paused (no drain shares the emulator), then drained."""
    stack.set_triggers(False)
    time.sleep(1.5)
    try:
        return measure()
    finally:
        stack.set_triggers(True)
        settle(stack)


def run(sizes: Sizes) -> Results:
    """Every figure on a stack in the state of its baseline's emulator: freshly started (and warmed
    up). A stack that has just carried a few thousand events answers 5-16 % slower (its emulator
    spends more per call; docs/BENCHMARKS.md), so (c) and (b) each get their own stack; (c'')
    shows (c) on the stack that has carried (b)."""
    res = ceilings(sizes)
    with warm_stack(sizes) as stack:
        # (c) is the front door: HTTP → function → SendMessage, the same work per event as the
        # plain-send baseline; both are peaks over the same concurrency sweep. (c') is the same with
        # the triggers on, at (c)'s best concurrency (the emulator then also drains).
        sweep = _paused(stack, lambda: {n: single_events(stack, replace(sizes, connections=n)) for n in sizes.sweep})
        best = max(sweep, key=lambda n: sweep[n][0])
        res.figures["single_rps"], res.notes["c_latency_ms"] = sweep[best]
        res.notes["c_sweep"] = {n: rps for n, (rps, _) in sweep.items()}
        res.notes["c_connections"] = best
        res.figures["single_rps_draining"], res.notes["c_draining_latency_ms"] = single_events(
            stack, replace(sizes, connections=best))
        settle(stack)
        res.figures["single_stored_eps"], res.notes["e"] = single_events_stored(stack, replace(
            sizes, connections=best, seconds=sizes.drain_seconds))
        res.figures["seed_wrk_rps"], res.notes["seed_wrk"] = seed_wrk(stack)
    with warm_stack(sizes) as stack:
        res.figures["bulk_eps"], res.notes["b"] = bulk_ingest(stack, sizes)
        # (c'') is measured as (c) is — the peak of the same sweep — so the two compare like for like
        # (one run at (c)'s best concurrency against the peak of three was biased low)
        sweep_b = _paused(stack, lambda: {n: single_events(stack, replace(sizes, connections=n)) for n in sizes.sweep})
        best_b = max(sweep_b, key=lambda n: sweep_b[n][0])
        res.figures["single_rps_after_b"], res.notes["c_after_b_latency_ms"] = sweep_b[best_b]
        res.notes["c_after_b_sweep"] = {n: rps for n, (rps, _) in sweep_b.items()}
        res.figures["backlog_eps"], res.notes["d"] = bulk_ingest(stack, sizes, backlog=sizes.backlog)
        settle(stack)

        from mars import bench_grpc

        progress(f"gRPC: {sizes.grpc_calls} collectEvent calls, concurrency 50, beside a no-op server")
        res.notes["grpc"] = bench_grpc.report(stack.state["outputs"]["GrpcEndpoint"], sizes.grpc_calls, 50,
                                              res.figures["send_ceiling_rps"])
    return res
