"""Lambda's invoke semantics over pools of worker processes: concurrency, timeouts, cold starts.

Also where faults are injected (`--fault Function=rate[:before|after|kill]`): "after" runs the handler
and then reports a failure, the nastiest case for idempotency (the side effects happened, the caller
retries); "kill" also kills the environment, as a crashed sandbox (a cold start follows).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import random
import threading
import time
import traceback
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from . import worker
from .lambdas import FunctionSpec

log = logging.getLogger("samlocal.lambda")
# Environments fork from a server process that has already imported the AWS SDK, as the Lambda
# runtime ships it: a cold start then costs the function's own imports, not boto3's (~1 s of CPU).
_ctx = multiprocessing.get_context("forkserver")
_ctx.set_forkserver_preload(["boto3", "botocore.session", "samlocal.worker"])
# Environments per function without triggers of its own, when the template reserves none: on 2 cores
# more processes cost more in switching than they add.
DEFAULT_CONCURRENCY = 8
# What Lambda answers an invoke past the function's reserved concurrency (HTTP 429).
THROTTLED = {"errorType": "TooManyRequestsException", "errorMessage": "Rate Exceeded.",
             "Reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}


# How often a running invocation's memory is checked (its peak is checked again when it answers).
MEMORY_CHECK_SECONDS = 0.05


def peak_rss_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM), what Lambda's "Max Memory Used" reports; 0 where
    /proc is not there (no enforcement then)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _out_of_memory(request_id: str) -> dict[str, Any]:
    """What Lambda reports when an environment exceeds its MemorySize: the runtime is killed."""
    return {"errorType": "Runtime.OutOfMemory",
            "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: signal: killed"}


@dataclass
class InvokeResult:
    ok: bool
    payload: Any = None  # the handler's return value (decoded JSON) when ok
    error: dict[str, Any] | None = None  # Lambda's errorMessage/errorType/stackTrace
    duration_ms: float = 0.0
    request_id: str = ""

    @property
    def error_type(self) -> str:
        return (self.error or {}).get("errorType", "")


@dataclass(frozen=True)
class Fault:
    rate: float
    # "before": fail without running; "after": run, then report failure; "kill": run, then the
    # environment dies before it can answer (the result is lost, as when Lambda's sandbox crashes)
    when: str = "after"

    @classmethod
    def parse(cls, text: str) -> tuple[str, "Fault"]:
        """`StoreFunction=0.1:after` → ("StoreFunction", Fault(0.1, "after"))."""
        name, _, rest = text.partition("=")
        rate, _, when = rest.partition(":")
        fault = cls(float(rate), when or "after")
        if not name or not 0 <= fault.rate <= 1 or fault.when not in ("before", "after", "kill"):
            raise ValueError(f"bad fault {text!r}: use Function=rate[:before|after|kill], rate in [0, 1]")
        return name, fault


class _Worker:
    def __init__(self, spec: FunctionSpec) -> None:
        self.conn, child = _ctx.Pipe()
        self.process = _ctx.Process(target=worker.main, args=(child, spec.worker_spec()),
                                    name=f"lambda:{spec.name}", daemon=True)
        self.process.start()
        child.close()
        self.ready = False

    def wait_ready(self, timeout: float) -> dict[str, Any] | None:
        if not self.conn.poll(timeout):
            raise TimeoutError("init timed out")
        _kind, init_error = json.loads(self.conn.recv_bytes())
        self.ready = True
        return init_error

    def kill(self) -> None:
        try:
            self.process.kill()
            self.process.join(2)
        finally:
            self.conn.close()


class _Waiter:
    """One caller waiting for an environment. Each has its own condition (on the pool's lock), so a
    release wakes exactly the caller it serves, not every waiting thread (a thundering herd that cost
    the gateway ~0.1 ms of CPU per request with 32 callers queued on 8 environments)."""

    __slots__ = ("cond", "got")

    def __init__(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.got: _Worker | bool | None = None  # an environment, or True: the right to start one


class FunctionPool:
    """Up to `concurrency` execution environments of one function, each one invocation at a time."""

    def __init__(self, spec: FunctionSpec, fault: Fault | None = None, seed: int | None = None) -> None:
        self.spec = spec
        # ReservedConcurrentExecutions: 0 is a function that may not run at all (every invoke throttled).
        self.concurrency = DEFAULT_CONCURRENCY if spec.reserved_concurrency is None else spec.reserved_concurrency
        self.fault = fault
        self._random = random.Random(seed)
        self._idle: list[_Worker] = []
        self._waiters: deque[_Waiter] = deque()
        self._count = 0
        self._lock = threading.Lock()
        self._closed = False
        self.aws_calls: Counter[str] = Counter()  # AWS API calls made by this function's handlers

    def ensure_concurrency(self, needed: int) -> None:
        """Room for every trigger slot (an SQS mapping's pollers each hold an environment while they
        receive), unless the template reserves a concurrency: then, as in Lambda, callers wait."""
        if self.spec.reserved_concurrency is None and needed > self.concurrency:
            with self._lock:
                self.concurrency = needed
                self._wake_all()

    def warm(self, count: int = 1) -> None:
        """Starts environments ahead of traffic, like provisioned concurrency."""
        workers = []
        with self._lock:
            count = min(count, self.concurrency - self._count)
            self._count += count
        for _ in range(count):
            w = _Worker(self.spec)
            workers.append(w)
        for w in workers:
            try:
                w.wait_ready(60)
            except Exception:
                w.kill()
                self._free_place()
                continue
            self._release(w)

    def _acquire(self, timeout: float | None = None) -> tuple[_Worker | None, bool] | None:
        """An idle environment, or the right to start one (True); None if none frees up in time.
        Waiters are served first come, first served, so no caller starves."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._closed:
                raise RuntimeError("function pool is closed")
            if self._idle and not self._waiters:
                return self._idle.pop(), False
            if self._count < self.concurrency:
                self._count += 1
                return None, True
            slot = _Waiter(self._lock)
            self._waiters.append(slot)
            while slot.got is None:
                if self._closed:
                    raise RuntimeError("function pool is closed")
                if self._count < self.concurrency:  # the concurrency was raised meanwhile
                    self._waiters.remove(slot)
                    self._count += 1
                    return None, True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._waiters.remove(slot)
                    return None
                slot.cond.wait(remaining)
            got = slot.got
            if got is True:  # a discarded environment's place was handed over: start a new one
                return None, True
            return got, False  # type: ignore[return-value]

    def checkout(self, timeout: float | None = None) -> "_Worker | None":
        """Reserves a ready execution environment (starting one if the concurrency allows).

        A poller reserves before it receives, as Lambda scales pollers to the concurrency it has:
        messages are never held in flight waiting for a free environment or a cold start."""
        got = self._acquire(timeout)
        if got is None:
            return None
        w, _cold = got
        return w if w is not None else self._start()

    def _start(self) -> "_Worker | None":
        """A new environment in a place already counted; None (the place freed) if it fails to start."""
        w = None
        try:
            w = _Worker(self.spec)
            w.wait_ready(max(self.spec.timeout, 30))
        except Exception as exc:
            log.error("execution environment failed to start", extra={"function": self.spec.name, "error": str(exc)})
            if w is not None:
                w.kill()
            self._free_place()
            return None
        return w

    def checkin(self, w: "_Worker") -> None:
        """Returns an environment reserved with `checkout` and not used."""
        self._release(w)

    def _release(self, w: _Worker) -> None:
        with self._lock:
            if self._closed:
                w.kill()
                return
            if self._waiters:
                self._hand_over(w)
            else:
                self._idle.append(w)

    def _discard(self, w: _Worker) -> None:
        w.kill()
        self._free_place()

    def _free_place(self) -> None:
        """An environment is gone: its place goes to the oldest waiter, or back to the pool."""
        with self._lock:
            if self._waiters:
                self._hand_over(True)
            else:
                self._count -= 1

    def aws_call_counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self.aws_calls)

    def _hand_over(self, got: "_Worker | bool") -> None:
        """Gives an environment (or a place for one) to the oldest waiter; the pool's lock is held."""
        slot = self._waiters.popleft()
        slot.got = got
        slot.cond.notify()

    def _wake_all(self) -> None:
        """Every waiter re-checks the pool (it closed, or its concurrency rose); the lock is held."""
        for slot in self._waiters:
            slot.cond.notify()

    def invoke(self, event: Any, *, trigger: str, source: str = "", invoked_arn: str = "",
               worker: "_Worker | None" = None, throttle: bool = False) -> InvokeResult:
        """Runs one invocation; `worker` is an environment reserved with `checkout` (released here).

        `throttle`: when the template reserves a concurrency and every environment it allows is busy
        (or it is 0), fail at once with Lambda's `TooManyRequestsException` instead of waiting, as
        Lambda answers a synchronous caller (and the async path, which then retries). Without a
        reservation callers wait: the cap of environments is this runtime's, not a Lambda limit."""
        request_id = str(uuid.uuid4())
        start = time.perf_counter()
        result: InvokeResult | None = None
        if throttle and worker is None and self.spec.reserved_concurrency is not None:
            got = self._acquire(0)
            if got is None:
                result = InvokeResult(False, error=dict(THROTTLED))
            else:
                worker = got[0] or self._start()
                if worker is None:
                    result = InvokeResult(False, error={"errorMessage": "execution environment failed to start",
                                                        "errorType": "Runtime.InitError"})
        if result is None:
            result = self._invoke(event, request_id, invoked_arn, worker)
        result.duration_ms = round((time.perf_counter() - start) * 1000, 2)
        result.request_id = request_id
        if result.error is not None:  # Lambda's error shape names the request (an init error's is "")
            result.error.setdefault("requestId", request_id)
        self._log(result, event, trigger, source)
        return result

    def _invoke(self, event: Any, request_id: str, invoked_arn: str, w: "_Worker | None") -> InvokeResult:
        fault = self.fault
        injected = fault is not None and self._random.random() < fault.rate
        if injected and fault and fault.when == "before":
            if w is not None:
                self._release(w)
            return InvokeResult(False, error={"errorMessage": "injected fault (before handler)",
                                              "errorType": "InjectedFault"})
        if w is None:
            w = self.checkout()
            if w is None:
                return InvokeResult(False, error={"errorMessage": "execution environment failed to start",
                                                  "errorType": "Runtime.InitError"})
        deadline_ms = int(time.time() * 1000 + self.spec.timeout * 1000)
        try:
            # JSON both ways, as Lambda's runtime API: the handler sees exactly what a deployed one would.
            request = json.dumps([request_id, event, deadline_ms, invoked_arn or self.spec.arn]).encode()
        except (TypeError, ValueError) as exc:
            self._release(w)
            return InvokeResult(False, error={"errorMessage": f"the event is not JSON: {exc}",
                                              "errorType": "InvalidRequestContentException"})
        try:
            w.conn.send_bytes(request)
            answered = self._wait(w)
            if answered is None:
                self._discard(w)
                return InvokeResult(False, error=_out_of_memory(request_id))
            if not answered:
                self._discard(w)
                return InvokeResult(False, error={"errorMessage": f"Task timed out after {self.spec.timeout:.2f} seconds",
                                                  "errorType": "Sandbox.Timedout"})
            kind, body, calls, *peak = json.loads(w.conn.recv_bytes())
        except (EOFError, OSError, BrokenPipeError) as exc:
            self._discard(w)
            return InvokeResult(False, error={"errorMessage": f"execution environment exited: {exc}",
                                              "errorType": "Runtime.ExitError"})
        if self._over_memory(w, peak[0] if peak else 0):  # it peaked past MemorySize before answering: Lambda would have killed it
            self._discard(w)
            return InvokeResult(False, error=_out_of_memory(request_id))
        with self._lock:
            self.aws_calls.update(calls)
        if injected and fault and fault.when == "kill":
            self._discard(w)  # the handler's side effects happened; its answer never arrives
            return InvokeResult(False, error={"errorMessage": "injected fault: the execution environment was killed "
                                              "after the handler ran", "errorType": "Runtime.ExitError"})
        self._release(w)
        if kind != "ok":
            return InvokeResult(False, error=body)
        if injected:
            return InvokeResult(False, error={"errorMessage": "injected fault (after handler)",
                                              "errorType": "InjectedFault"})
        return InvokeResult(True, payload=body)

    def _wait(self, w: _Worker) -> bool | None:
        """Waits for the answer up to the function's timeout, checking the environment's memory as it
        runs: True when it answered, False at the timeout, None when it went past MemorySize."""
        deadline = time.monotonic() + self.spec.timeout
        while True:
            remaining = deadline - time.monotonic()
            if w.conn.poll(max(0.0, min(MEMORY_CHECK_SECONDS, remaining))):
                return True
            if remaining <= MEMORY_CHECK_SECONDS:
                return False
            if self._over_memory(w):
                return None

    def _over_memory(self, w: _Worker, peak: int | None = None) -> bool:
        """Whether the environment's peak resident memory (reported with its answer, else read from
        /proc while it runs) passed the function's MemorySize."""
        if peak is None:
            if w.process.pid is None:
                return False  # not started: nothing to measure
            peak = peak_rss_bytes(w.process.pid)
        if peak > self.spec.memory_mb * 1024 * 1024:
            log.warning("execution environment over its MemorySize: killed", extra={
                "function": self.spec.name, "memory_mb": self.spec.memory_mb, "peak_rss_mb": round(peak / 2**20, 1)})
            return True
        return False

    def undeliverable(self, exc: BaseException, *, trigger: str, source: str = "", batch_size: int = 1,
                      worker: "_Worker | None" = None) -> InvokeResult:
        """A batch whose event cannot even be built for the function: a failed invocation, logged as
        one, so the trigger applies its failure semantics (redelivery, DLQ) instead of stalling."""
        if worker is not None:
            self._release(worker)
        request_id = str(uuid.uuid4())
        result = InvokeResult(False, error={"errorMessage": f"the event could not be built: {exc}",
                                            "errorType": "InvalidRequestContentException", "requestId": request_id,
                                            "stackTrace": traceback.format_tb(exc.__traceback__)},
                              request_id=request_id)
        self._log(result, None, trigger, source, batch_size)
        return result

    def _log(self, result: InvokeResult, event: Any, trigger: str, source: str, batch_size: int | None = None) -> None:
        """One line per invocation: INFO when it succeeded, ERROR (with the handler's error and stack
        trace) when it failed, whatever the trigger: a failure is never silent."""
        records = event.get("Records") if isinstance(event, dict) else None
        if batch_size is None:
            batch_size = len(records) if isinstance(records, list) else 1
        outcome = "ok" if result.ok else {"Sandbox.Timedout": "timeout", "TooManyRequestsException": "throttled"}.get(
            result.error_type, "error")
        extra: dict[str, Any] = {"function": self.spec.name, "trigger": trigger, "source": source,
                                 "batch_size": batch_size, "duration_ms": result.duration_ms, "outcome": outcome,
                                 "request_id": result.request_id}
        if result.ok:
            if isinstance(result.payload, dict) and result.payload.get("batchItemFailures"):
                extra["outcome"] = "partial"
                extra["failed_items"] = len(result.payload["batchItemFailures"])
            log.info("invoke", extra=extra)
            return
        error = result.error or {}
        message = str(error.get("errorMessage", ""))
        trace = error.get("stackTrace") or []
        extra.update(error=message[:300], error_type=str(error.get("errorType", "")), error_message=message,
                     stack_trace="".join(trace) if isinstance(trace, list) else str(trace))
        log.error("invoke", extra=extra)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            self._wake_all()
        for w in idle:
            try:
                w.conn.send_bytes(b"null")
            except OSError:
                pass
            w.kill()


class Invoker:
    """Every function of the stack by logical id, physical name and ARN."""

    def __init__(self) -> None:
        self.pools: dict[str, FunctionPool] = {}
        self._aliases: dict[str, str] = {}

    def add(self, pool: FunctionPool) -> None:
        spec = pool.spec
        self.pools[spec.logical_id] = pool
        for alias in (spec.logical_id, spec.name, spec.arn):
            self._aliases[alias] = spec.logical_id

    def find(self, name_or_arn: str) -> FunctionPool | None:
        key = self._aliases.get(name_or_arn)
        if key is None and name_or_arn.startswith("arn:"):
            # arn:aws:lambda:region:acct:function:name[:qualifier]
            parts = name_or_arn.split(":")
            key = self._aliases.get(parts[6]) if len(parts) > 6 else None
        return self.pools.get(key) if key else None

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
