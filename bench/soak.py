"""`make soak`'s overload part (`python -m bench.soak`): a burst at `--factor` × the local drain rate for
`--seconds`; the stack degrades (backlog, lag, latency; 429/503 with Retry-After where it refuses) and
recovers, and nothing accepted is lost or duplicated. docs/RELIABILITY.md (Overload) has a run's figures.

1. calibrate: keep ~`--keep` events waiting in the queues (bulk POSTs topping them up) and measure how
   fast they leave: drained = accepted − (waiting + in flight). The aggregator deletes a record only
   after the store succeeded, so on a private stack that is the rate events are stored end to end,
   while ingest runs beside it (as during the burst);
2. burst: a fixed schedule of `POST /api/event/bulk` (`--batch` events each, explicit event ids) at
   factor × that rate, open loop: requests are sent when scheduled, whatever the earlier ones answered;
   latency is counted from the scheduled time, so time spent queued in the client counts too;
3. recover: stop offering; time until the queues are empty and every probe is stored; then read the
   soak's app straight from MessagesTable (one Query: app_id is its hash key) and check that every
   accepted event is on its timeline exactly once and nothing else is.

Exit status 0 when everything accepted was stored exactly once and the stack recovered, else 1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mars import stacks

from .common import ROOT, client, machine, progress

STEPS = ("CREATED", "QUEUED", "SENT", "DELIVERED", "ACKED")
WINDOW = 10.0  # seconds per row of the table
SAMPLE = 0.5  # seconds between backlog samples and probe reads


@dataclass(frozen=True)
class Target:
    """What the soak needs of a running stack (from its state file: `.mars-local/<stack>.json`)."""

    api: str
    sqs_endpoint: str
    dynamodb_endpoint: str
    queue_urls: tuple[str, ...]
    dead_letter_url: str
    table: str

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Target:
        out = state["outputs"]
        return cls(api=str(out["ApiUrl"]).rstrip("/"), sqs_endpoint=stacks.endpoint(state, "sqs"),
                   dynamodb_endpoint=stacks.endpoint(state, "dynamodb"),
                   queue_urls=tuple(str(out["EventsQueueUrls"]).split(",")),
                   dead_letter_url=str(out["DeadLetterQueueUrl"]), table=str(out["MessagesTableName"]))


@dataclass
class Request:
    """One bulk POST: when it was due, when it went out, what came back."""

    scheduled: float  # monotonic
    body: bytes
    ids: dict[str, str]  # event_id -> message_id
    probe: tuple[str, str] | None = None  # (message_id, event_id) of the probe it carries
    started: float = 0.0
    finished: float = 0.0
    status: int | None = None  # None: no answer (timeout, connection error) or never sent
    retry_after: bool = False
    accepted: list[str] = field(default_factory=list)
    outcome: str = ""  # accepted | partial | rejected | unknown | not_sent
    resent: int = 0


class Workload:
    """Unique, valid events: messages of five lifecycle steps, explicit event ids, one probe per request
    when asked (a message of its own with a single event: its item appearing means it was stored)."""

    def __init__(self, app_id: str, batch: int) -> None:
        self.app_id, self.batch = app_id, max(len(STEPS), batch - batch % len(STEPS))
        self.sent: dict[str, dict[str, str]] = defaultdict(dict)  # message_id -> {event_id: event}
        self._n = 0
        self._lock = threading.Lock()

    def request(self, scheduled: float, probe: bool = False) -> Request:
        with self._lock:
            n = self._n
            self._n += 1
        now = datetime.now(UTC)
        events, ids = [], {}
        for m in range(self.batch // len(STEPS)):
            mid = f"r{n:06d}-m{m:02d}"
            for s, step in enumerate(STEPS):
                eid = f"{mid}-{step}"
                created = now.replace(microsecond=s * 1000).isoformat().replace("+00:00", "Z")
                events.append({"app_id": self.app_id, "message_id": mid, "event": step, "created_at": created,
                               "event_id": eid})
                ids[eid] = mid
        pr = None
        if probe:
            pr = (f"probe-{n:06d}", f"probe-{n:06d}-CREATED")
            events.append({"app_id": self.app_id, "message_id": pr[0], "event": "CREATED", "event_id": pr[1]})
            ids[pr[1]] = pr[0]
        with self._lock:
            for e in events:
                self.sent[e["message_id"]][e["event_id"]] = e["event"]
        return Request(scheduled, json.dumps({"events": events}).encode(), ids, pr)


class Sender:
    """Keep-alive HTTP/1.1 connections, one per thread (http.client: no pool limits, no retries of its own)."""

    def __init__(self, api: str, timeout: float) -> None:
        split = urlsplit(api)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80
        self.path = split.path.rstrip("/") + "/api/event/bulk"
        self.timeout = timeout
        self._local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return conn

    def send(self, req: Request) -> Request:
        req.started = time.monotonic()
        for attempt in range(2):
            conn = self._conn()
            try:
                conn.request("POST", self.path, body=req.body, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # A kept-alive connection the server had closed: resend on a new one. Safe either way —
                # the event ids are explicit, so a resend of something already enqueued is stored once.
                conn.close()
                self._local.conn = None
                if attempt == 0:
                    req.resent += 1
                    continue
                req.outcome = "unknown"
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                req.outcome = "unknown"  # no answer: it may or may not have been enqueued
                break
            req.status = resp.status
            req.retry_after = resp.getheader("Retry-After") is not None
            self._classify(req, data)
            break
        req.finished = time.monotonic()
        return req

    @staticmethod
    def _classify(req: Request, data: bytes) -> None:
        try:
            body = json.loads(data)
        except ValueError:
            body = {}
        ids = body.get("event_ids") if isinstance(body, dict) else None
        if req.status == 202:
            req.accepted, req.outcome = list(req.ids), "accepted"
        elif req.status in (207, 503) and isinstance(ids, list):  # Mars's own answer: it says what it took
            req.accepted = [i for i in ids if i in req.ids]
            req.outcome = "partial" if req.accepted else "rejected"
        elif req.status is not None and (req.status < 500 or req.status == 503):
            req.outcome = "rejected"  # 429 (throttled), 503 without a body of ours, a 4xx
        else:
            req.outcome = "unknown"  # 502/504 from the gateway: the function may have enqueued


class Backlog:
    """Waiting + in flight over the event queues, as /api/q/stats reports it, read straight from SQS
    (cheaper than the API route, which also asks CloudWatch, and it does not queue behind the burst)."""

    def __init__(self, target: Target) -> None:
        self.sqs = client("sqs", target.sqs_endpoint, pool=16)
        self.urls = target.queue_urls
        self.dlq = target.dead_letter_url

    def read(self) -> int:
        total = 0
        for url in self.urls:
            a = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
                "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
            total += int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])
        return total

    def dead_letters(self) -> int:
        a = self.sqs.get_queue_attributes(QueueUrl=self.dlq, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


class Probes:
    """End-to-end lag: each probe's (accepted) send time until its item exists in MessagesTable."""

    def __init__(self, target: Target, app_id: str) -> None:
        self.ddb = client("dynamodb", target.dynamodb_endpoint, pool=4)
        self.table, self.app_id = target.table, app_id
        self.pending: dict[str, float] = {}  # message_id -> scheduled time
        self.done: list[tuple[float, float]] = []  # (scheduled, lag seconds)
        self._lock = threading.Lock()

    def add(self, message_id: str, scheduled: float) -> None:
        with self._lock:
            self.pending[message_id] = scheduled

    def poll(self) -> None:
        with self._lock:
            wanted = sorted(self.pending, key=self.pending.__getitem__)[:100]
        if not wanted:
            return
        got = self.ddb.batch_get_item(RequestItems={self.table: {
            "Keys": [{"app_id": {"S": self.app_id}, "message_id": {"S": m}} for m in wanted],
            "ProjectionExpression": "message_id"}})
        now = time.monotonic()
        with self._lock:
            for item in got.get("Responses", {}).get(self.table, []):
                sched = self.pending.pop(item["message_id"]["S"], None)
                if sched is not None:
                    self.done.append((sched, now - sched))


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def _ms(x: float | None) -> float | None:
    return None if x is None else round(x * 1000, 1)


class Soak:
    def __init__(self, target: Target, *, batch: int = 50, timeout: float = 60.0, workers: int = 128,
                 say: Callable[[str], None] = progress) -> None:
        self.target = target
        self.app_id = f"soak-{uuid.uuid4().hex[:8]}"
        self.work = Workload(self.app_id, batch)
        self.sender = Sender(target.api, timeout)
        self.backlog = Backlog(target)
        self.probes = Probes(target, self.app_id)
        self.timeout, self.workers, self.say = timeout, workers, say
        self.requests: list[Request] = []
        self.samples: list[tuple[float, int]] = []  # (monotonic, backlog)
        self.calibration: dict[str, Any] = {}
        self._stop_sampling = threading.Event()

    # --- 1. calibrate -------------------------------------------------------------------------------
    def calibrate(self, seconds: float, keep: int = 2000, warmup: float = 5.0, longest: float = 60.0) -> float:
        """Events stored per second with ~`keep` waiting, measured between two quiet points (no request
        outstanding, so accepted − backlog is exact) after `warmup` seconds of cold starts. A window in which
        nothing was stored is no measurement (on a busy machine one store batch can outlast a short window):
        it is extended, a quiet point a second, until something is stored or `longest` seconds have passed
        (then the rate is 0, and the caller sees it)."""
        accepted = 0
        lock = threading.Lock()
        pending: list[Future[Request]] = []

        def count(f: Future[Request]) -> None:
            nonlocal accepted
            with lock:
                accepted += len(f.result().accepted)

        def quiet_point() -> tuple[float, int]:
            for f in list(pending):
                f.result()
            pending.clear()
            with lock:
                acc = accepted
            return time.monotonic(), acc - self.backlog.read()

        self.say(f"calibrating {seconds:.0f} s: keeping ~{keep} events waiting, measuring how fast they are stored")
        start = last_try = time.monotonic()
        points: list[tuple[float, int]] = []
        with ThreadPoolExecutor(4) as pool:
            while True:
                now = time.monotonic()
                if not points and now - start >= min(warmup, seconds / 3):
                    points.append(quiet_point())
                if now - start >= seconds and (len(points) < 2 or now - last_try >= 1.0):
                    points[1:] = [quiet_point()]
                    last_try = time.monotonic()
                    if points[1][1] > points[0][1] or now - start >= max(seconds, longest):
                        break
                pending[:] = [f for f in pending if not f.done()]
                need = keep - self.backlog.read() - len(pending) * self.work.batch
                for _ in range(min(8 - len(pending), math.ceil(max(0, need) / self.work.batch))):
                    req = self.work.request(time.monotonic())
                    self.requests.append(req)
                    fut = pool.submit(self.sender.send, req)
                    fut.add_done_callback(count)
                    pending.append(fut)
                time.sleep(0.2)
        (t0, d0), (t1, d1) = points
        rate = (d1 - d0) / (t1 - t0)
        self.calibration = {"seconds": seconds, "keep": keep, "measured_seconds": round(t1 - t0, 1), "stored": d1 - d0}
        self.say(f"drain rate {rate:.0f} events/s ({d1 - d0} stored in {t1 - t0:.1f} s); waiting for the queues to empty")
        self._wait_empty(120 + keep / max(rate, 1))
        return rate

    def _wait_empty(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.backlog.read() == 0:
                return time.monotonic()
            time.sleep(SAMPLE)
        raise TimeoutError(f"the queues did not empty within {timeout:.0f} s")

    # --- 2. burst, 3. recover -----------------------------------------------------------------------
    def _sampler(self) -> None:
        while not self._stop_sampling.is_set():
            t = time.monotonic()
            try:
                self.samples.append((t, self.backlog.read()))
                self.probes.poll()
            except Exception as exc:  # a slow emulator must not end the soak; the gap shows in the samples
                self.say(f"sample failed: {exc}")
            self._stop_sampling.wait(max(0.0, SAMPLE - (time.monotonic() - t)))

    def burst(self, rate: float, seconds: float, probes_per_second: float = 2.0,
              recover_timeout: float | None = None) -> dict[str, Any]:
        per_request = self.work.batch
        req_rate = rate / per_request
        count = max(1, round(req_rate * seconds))
        probe_every = max(1, round(req_rate / probes_per_second))
        self.say(f"burst: {rate:.0f} events/s for {seconds:.0f} s = {count} bulk requests of {per_request} "
                 f"({req_rate:.1f}/s), open loop, {self.workers} client threads")
        sampler = threading.Thread(target=self._sampler, daemon=True)
        sampler.start()
        start = time.monotonic()
        burst: list[Request] = []
        next_report = start + WINDOW

        def run(req: Request) -> Request:
            if time.monotonic() - req.scheduled > self.timeout:
                req.outcome = "not_sent"  # the client gave up before it could send (its queue, not the server)
                return req
            self.sender.send(req)
            if req.probe and req.probe[1] in req.accepted:
                self.probes.add(req.probe[0], req.scheduled)
            return req

        with ThreadPoolExecutor(self.workers) as pool:
            for i in range(count):
                due = start + i / req_rate
                while (now := time.monotonic()) < due:
                    time.sleep(min(due - now, 0.05))
                if now >= next_report:
                    self._report_progress(start, burst)
                    next_report += WINDOW
                req = self.work.request(due, probe=i % probe_every == 0)
                burst.append(req)
                pool.submit(run, req)
            offered_until = start + count / req_rate
            self.say("burst offered; waiting for the last answers")
        self.requests += burst
        answered = time.monotonic()

        self.say("recovering: waiting for the queues to empty and every probe to be stored")
        deadline = time.monotonic() + (recover_timeout or 300 + 10 * seconds)
        recovered_at = None
        while time.monotonic() < deadline:
            if self.samples and self.samples[-1][0] > answered and self.samples[-1][1] == 0 and not self.probes.pending:
                recovered_at = self.samples[-1][0]
                break
            time.sleep(SAMPLE / 2)
        time.sleep(SAMPLE)  # one more sample after the end, for the table
        self._stop_sampling.set()
        sampler.join()
        return {"start": start, "offered_until": offered_until, "answered": answered, "recovered_at": recovered_at,
                "requests": burst, "rate": rate, "seconds": seconds}

    def _report_progress(self, start: float, burst: list[Request]) -> None:
        done = [r for r in burst if r.outcome]
        lat = [r.finished - r.scheduled for r in done if r.finished and r.scheduled > time.monotonic() - WINDOW - 5]
        backlog = self.samples[-1][1] if self.samples else 0
        self.say(f"t={time.monotonic() - start:4.0f} s: {len(burst)} requests due, {len(done)} answered, "
                 f"backlog {backlog}, p99 (last ~10 s) {_ms(pct(lat, 99))} ms")

    # --- the check ----------------------------------------------------------------------------------
    def stored(self) -> dict[str, dict[str, str]]:
        """message_id -> {event_id: event} of the soak's app, straight from MessagesTable."""
        ddb = client("dynamodb", self.target.dynamodb_endpoint, pool=4)
        out: dict[str, dict[str, str]] = {}
        kwargs: dict[str, Any] = {"TableName": self.target.table, "KeyConditionExpression": "app_id = :a",
                                  "ExpressionAttributeValues": {":a": {"S": self.app_id}}}
        while True:
            page = ddb.query(**kwargs)
            for item in page["Items"]:
                out[item["message_id"]["S"]] = {k[2:]: v["M"]["event"]["S"] for k, v in item.items()
                                                if k.startswith("e:")}
            if "LastEvaluatedKey" not in page:
                return out
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def check(self) -> dict[str, Any]:
        """Every accepted event stored exactly once; nothing stored that was not sent; events whose request
        got no answer (unknown) may be stored or not, but once at most."""
        accepted: dict[str, set[str]] = defaultdict(set)
        for req in self.requests:
            for eid in req.accepted:
                accepted[req.ids[eid]].add(eid)
        stored = self.stored()
        lost = sum(len(ids - set(stored.get(mid, {}))) for mid, ids in accepted.items())
        unexpected = sum(len(set(evs) - set(self.work.sent.get(mid, {}))) for mid, evs in stored.items())
        # the same step of a message under two ids would be a duplicate (each step is sent once per message)
        duplicates = sum(n - 1 for evs in stored.values() for n in Counter(evs.values()).values() if n > 1)
        n_accepted = sum(len(v) for v in accepted.values())
        n_stored = sum(len(v) for v in stored.values())
        return {"accepted_events": n_accepted, "stored_events": n_stored, "lost": lost, "duplicates": duplicates,
                "unexpected": unexpected, "stored_without_answer": n_stored - (n_accepted - lost),
                "messages": len(stored)}


def summarise(soak: Soak, drain_rate: float | None, factor: float | None, burst: dict[str, Any],
              check: dict[str, Any], dead_letters: int) -> dict[str, Any]:
    start, reqs = burst["start"], burst["requests"]
    end = burst["recovered_at"] or (soak.samples[-1][0] if soak.samples else burst["answered"])
    rows = []
    accepted_at: list[tuple[float, int]] = sorted((r.finished, len(r.accepted)) for r in soak.requests if r.finished)
    # everything accepted before the burst (calibration) counts toward "drained" too
    n_windows = max(1, math.ceil((end - start) / WINDOW))

    def drained_at(t: float) -> int | None:
        before = [b for s, b in soak.samples if s <= t]
        if not before:
            return None
        return sum(n for f, n in accepted_at if f <= t) - before[-1]

    for w in range(n_windows):
        lo, hi = start + w * WINDOW, start + (w + 1) * WINDOW
        in_w = [r for r in reqs if lo <= r.scheduled < hi]
        lat = [r.finished - r.scheduled for r in in_w if r.status is not None]
        service = [r.finished - r.started for r in in_w if r.status is not None]
        rejected = Counter(str(r.status) for r in in_w if r.outcome in ("rejected", "partial"))
        backlog = [b for s, b in soak.samples if lo <= s < hi]
        lags = [lag for s, lag in soak.probes.done if lo <= s < hi]
        d0, d1 = drained_at(lo), drained_at(min(hi, end))
        span = min(hi, end) - lo
        rows.append({
            "t": round(w * WINDOW), "offered_eps": round(sum(len(r.ids) for r in in_w) / WINDOW, 1),
            "accepted_eps": round(sum(len(r.accepted) for r in in_w) / WINDOW, 1),
            "stored_eps": round((d1 - d0) / span, 1) if d0 is not None and d1 is not None and span > 0 else None,
            "rejected": dict(rejected), "retry_after": sum(r.retry_after for r in in_w),
            "unknown": sum(r.outcome in ("unknown", "not_sent") for r in in_w),
            "p50_ms": _ms(pct(lat, 50)), "p99_ms": _ms(pct(lat, 99)), "service_p99_ms": _ms(pct(service, 99)),
            "backlog_max": max(backlog) if backlog else None, "lag_max_s": round(max(lags), 1) if lags else None})

    def lat_of(rs: list[Request]) -> dict[str, Any]:
        lat = [r.finished - r.scheduled for r in rs if r.status is not None]
        return {"p50_ms": _ms(pct(lat, 50)), "p99_ms": _ms(pct(lat, 99)), "max_ms": _ms(max(lat) if lat else None),
                "count": len(lat)}

    span = min(WINDOW, burst["seconds"] / 3)
    early = lat_of([r for r in reqs if r.scheduled < start + span])
    late = lat_of([r for r in reqs if r.scheduled >= burst["offered_until"] - span])
    outcomes = Counter(r.outcome for r in reqs)
    rejected = Counter(str(r.status) for r in reqs if r.outcome in ("rejected", "partial"))
    lags = [lag for _, lag in soak.probes.done]
    recovered = burst["recovered_at"] is not None
    return {
        "machine": machine(), "app_id": soak.app_id, "api": soak.target.api,
        "config": {"seconds": burst["seconds"], "factor": factor, "batch": soak.work.batch, "timeout_s": soak.timeout,
                   "client_threads": soak.workers},
        "drain_rate_eps": None if drain_rate is None else round(drain_rate, 1), "calibration": soak.calibration,
        "offered_rate_eps": round(burst["rate"], 1),
        "offered": sum(len(r.ids) for r in reqs), "requests": len(reqs),
        "accepted": sum(len(r.accepted) for r in reqs),
        "rejected_events": sum(len(r.ids) - len(r.accepted) for r in reqs if r.outcome in ("rejected", "partial")),
        "rejected_requests_by_status": dict(rejected),
        "rejected_with_retry_after": sum(r.retry_after for r in reqs if r.outcome in ("rejected", "partial")),
        "no_answer_requests": outcomes.get("unknown", 0), "not_sent_requests": outcomes.get("not_sent", 0),
        "resent_on_closed_connection": sum(r.resent for r in reqs),
        "max_backlog": max((b for s, b in soak.samples if s >= start), default=0),
        "max_lag_s": round(max(lags), 2) if lags else None, "probes": len(soak.probes.done),
        "probes_not_stored": len(soak.probes.pending),
        "latency_early": early, "latency_late": late,
        "p99_late_over_early": round(late["p99_ms"] / early["p99_ms"], 2)
        if late["p99_ms"] and early["p99_ms"] else None,
        "offer_seconds": round(burst["offered_until"] - start, 1),
        "last_answer_after_s": round(burst["answered"] - start, 1),
        "recovered": recovered,
        "recovery_seconds": round(burst["recovered_at"] - burst["offered_until"], 1) if recovered else None,
        "dead_lettered": dead_letters,
        **check,
        "windows": rows,
    }


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, moto {m['moto']}, "
             f"load {m['loadavg']}", ""]
    head = (f"{'t (s)':>6} {'offered/s':>9} {'accepted/s':>10} {'stored/s':>8} {'rejected':>10} {'no answer':>9} "
            f"{'p50 ms':>8} {'p99 ms':>8} {'backlog':>8} {'lag s':>6}")
    lines += [head, "-" * len(head)]
    for w in report["windows"]:
        rej = ",".join(f"{k}:{v}" for k, v in w["rejected"].items()) or "0"

        def f(x: Any, spec: str = ".0f") -> str:
            return "-" if x is None else format(x, spec)
        lines.append(f"{w['t']:>6} {w['offered_eps']:>9.0f} {w['accepted_eps']:>10.0f} {f(w['stored_eps']):>8} "
                     f"{rej:>10} {w['unknown']:>9} {f(w['p50_ms']):>8} {f(w['p99_ms']):>8} "
                     f"{f(w['backlog_max'], 'd'):>8} {f(w['lag_max_s'], '.1f'):>6}")
    r = report
    rej = ", ".join(f"{v} × {k}" for k, v in r["rejected_requests_by_status"].items()) or "none"
    ratio = r["p99_late_over_early"]
    lines += [
        "",
        f"drain rate (calibrated)     {r['drain_rate_eps'] if r['drain_rate_eps'] is not None else '-'} events/s",
        f"offered                     {r['offered']} events in {r['requests']} bulk requests over {r['offer_seconds']} s "
        f"({r['offered_rate_eps']} events/s"
        + (f", {r['config']['factor']} × the drain rate)" if r["config"]["factor"] else ")"),
        f"accepted                    {r['accepted']} events",
        f"rejected                    {r['rejected_events']} events; requests: {rej}; "
        f"with Retry-After: {r['rejected_with_retry_after']}",
        f"no answer / not sent        {r['no_answer_requests']} / {r['not_sent_requests']} requests "
        f"(resent on a closed keep-alive connection: {r['resent_on_closed_connection']})",
        f"max backlog                 {r['max_backlog']} events waiting or in flight",
        f"max end-to-end lag          {r['max_lag_s']} s ({r['probes']} probes)",
        f"HTTP latency p50/p99, early {r['latency_early']['p50_ms']} / {r['latency_early']['p99_ms']} ms",
        f"HTTP latency p50/p99, late  {r['latency_late']['p50_ms']} / {r['latency_late']['p99_ms']} ms "
        f"(p99 late/early = {ratio if ratio is not None else '-'})",
        f"last answer                 {r['last_answer_after_s']} s after the burst began",
        f"recovery                    {r['recovery_seconds']} s after the last request was due"
        if r["recovered"] else "recovery                    NOT RECOVERED",
        f"stored                      {r['stored_events']} events of {r['messages']} messages "
        f"(of which without an answer to their request: {r['stored_without_answer']})",
        f"lost                        {r['lost']}",
        f"duplicates                  {r['duplicates']}   (stored but never sent: {r['unexpected']}; "
        f"dead-lettered: {r['dead_lettered']})",
    ]
    return "\n".join(lines)


def ok(report: dict[str, Any]) -> bool:
    return bool(report["recovered"]) and report["lost"] == 0 and report["duplicates"] == 0 and report["unexpected"] == 0


def run(target: Target, *, seconds: float, factor: float | None = 2.0, rate: float | None = None,
        calibrate_seconds: float = 20.0, keep: int = 2000, batch: int = 50, timeout: float = 60.0,
        workers: int = 128, recover_timeout: float | None = None,
        say: Callable[[str], None] = progress) -> dict[str, Any]:
    """The three phases against a running stack; `rate` (events/s) skips the burst's sizing by the
    calibration (still run when `calibrate_seconds` > 0: the smoke test exercises it)."""
    soak = Soak(target, batch=batch, timeout=timeout, workers=workers, say=say)
    drain = soak.calibrate(calibrate_seconds, keep=keep) if calibrate_seconds > 0 else None
    sized_by_factor = rate is None
    if rate is None:
        if drain is None or factor is None:
            raise ValueError("give a rate, or calibrate and a factor")
        rate = factor * drain
    burst = soak.burst(rate, seconds, recover_timeout=recover_timeout)
    say("checking: reading the soak's items from MessagesTable")
    check = soak.check()
    return summarise(soak, drain, factor if sized_by_factor else None, burst, check, soak.backlog.dead_letters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the burst (default %(default)s)")
    parser.add_argument("--factor", type=float, default=2.0, help="burst rate / calibrated drain rate (default %(default)s)")
    parser.add_argument("--rate", type=float, help="burst at this many events/s instead (calibration still runs)")
    parser.add_argument("--calibrate", type=float, default=20.0, help="seconds of calibration (default %(default)s)")
    parser.add_argument("--keep", type=int, default=2000, help="events kept waiting while calibrating")
    parser.add_argument("--batch", type=int, default=50, help="events per bulk request (a multiple of 5)")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, seconds")
    parser.add_argument("--report", default=str(ROOT / "build" / "soak-report.json"))
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of the table")
    args = parser.parse_args(argv)

    from .common import start_stack

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, Python {info['python']}, "
          f"load {info['loadavg']}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="mars-soak-"))
    progress(f"starting a private local stack (logs: {workdir / 'stack.log'})")
    stack = start_stack(workdir, "--warm", "4")
    try:
        report = run(Target.from_state(stack.state), seconds=args.seconds, factor=args.factor, rate=args.rate,
                     calibrate_seconds=args.calibrate, keep=args.keep, batch=args.batch, timeout=args.timeout)
    finally:
        stack.stop()
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else render(report))
    print(f"\nreport: {path}")
    if not ok(report):
        print("FAILED: something accepted was lost or duplicated, or the stack did not recover", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
