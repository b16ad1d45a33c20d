"""Embedded AWS emulator: moto server plus the SQS -> CloudWatch metrics AWS publishes.

    python -m local.emulator --host 127.0.0.1 --port 4566 [--no-patches]
        [--metrics-interval 5]

Serves every moto service on one port (threaded werkzeug server, per-request
access log off), with ``local.moto_patches`` applied unless ``--no-patches``.
Logs one JSON line per event on stderr and exits 0 on SIGINT/SIGTERM.

In-process use::

    emulator = serve("127.0.0.1", 0)      # port 0: pick a free port
    ...  # boto3 clients with endpoint_url=emulator.endpoint_url
    emulator.stop()

A background thread samples every SQS queue (every account and region) each
``metrics_interval`` seconds and publishes what AWS publishes automatically:
namespace ``AWS/SQS``, dimension ``QueueName``, metrics
``ApproximateNumberOfMessagesVisible``, ``ApproximateNumberOfMessagesNotVisible``,
``ApproximateNumberOfMessagesDelayed`` and ``ApproximateAgeOfOldestMessage``.  The
samples are exposed to moto's CloudWatch backend the way moto exposes its own
AWS-generated metrics (a ``CloudWatchMetricProvider``), so GetMetricData,
GetMetricStatistics and ListMetrics return them, while the samples live in a
time-bounded store here instead of growing ``metric_data`` forever.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from moto.cloudwatch.models import Dimension, MetricDatum
from moto.core.common_models import CloudWatchMetricProvider
from moto.core.utils import unix_time_millis, utcnow
from moto.moto_server import werkzeug_app
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.sqs.models import sqs_backends
from werkzeug.serving import make_server

from local import moto_patches

# Explicit name: under ``python -m`` this module is ``__main__``.
logger = logging.getLogger("local.emulator")

SQS_NAMESPACE = "AWS/SQS"
DEFAULT_METRICS_INTERVAL = 5.0
# How often expired DynamoDB items are deleted (patched emulator only): DynamoDB takes up to a few
# days, tests cannot; a sweep walks every item of the TTL-enabled tables under the backend's lock,
# so not much more often than this.
DEFAULT_TTL_INTERVAL = 2.0
TTL_MAX_SHARE_INVERSE = 20  # pause at least 20× the last sweep's duration
DEFAULT_METRICS_RETENTION = 3600.0


# --------------------------------------------------------------------------
# JSON logging
# --------------------------------------------------------------------------

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: level, msg, then any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"level": record.levelname, "msg": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


def configure_json_logging(level: int = logging.INFO) -> None:
    """Send the ``local`` package's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("local")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


# --------------------------------------------------------------------------
# SQS -> CloudWatch metrics
# --------------------------------------------------------------------------


class _SqsMetricStore:
    """Recent AWS/SQS samples per (account, region, queue), bounded by age."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], deque[MetricDatum]] = {}
        self.retention_seconds = DEFAULT_METRICS_RETENTION

    def add(self, account_id: str, region: str, queue: str, data: list[MetricDatum]) -> None:
        with self._lock:
            self._series.setdefault((account_id, region, queue), deque()).extend(data)

    def expire(self, now: datetime.datetime) -> None:
        cutoff = now - datetime.timedelta(seconds=self.retention_seconds)
        with self._lock:
            for key in list(self._series):
                series = self._series[key]
                while series and series[0].timestamp < cutoff:
                    series.popleft()
                if not series:
                    del self._series[key]

    def get(self, account_id: str, region: str) -> list[MetricDatum]:
        with self._lock:
            out: list[MetricDatum] = []
            for (acct, reg, _), series in self._series.items():
                if acct == account_id and reg == region:
                    out.extend(series)
            return out

    def clear(self) -> None:
        with self._lock:
            self._series.clear()


SQS_METRICS = _SqsMetricStore()


class SqsCloudWatchMetrics(CloudWatchMetricProvider):
    """Moto's hook for AWS-generated metrics: CloudWatchBackend.get_all_metrics()
    adds whatever every CloudWatchMetricProvider subclass returns."""

    @staticmethod
    def get_cloudwatch_metrics(account_id: str, region: str) -> list[MetricDatum]:
        return SQS_METRICS.get(account_id, region)


def _datum(name: str, value: float, unit: str, dimensions: list[Dimension], ts: Any) -> MetricDatum:
    # object.__new__ skips moto's BaseModel.__new__, which would keep every datum
    # alive forever in MetricDatum.instances_tracked.
    datum: MetricDatum = object.__new__(MetricDatum)
    MetricDatum.__init__(datum, SQS_NAMESPACE, name, value, [], ts, unit)
    datum.dimensions = dimensions  # shared per queue and sample
    return datum


def _iter_queues() -> Iterator[tuple[str, str, Any]]:
    # Snapshots (list(...)) so accounts, regions and queues created or deleted by
    # request threads meanwhile cannot break the iteration.
    for account_id, per_region in list(sqs_backends.items()):
        for region, backend in list(per_region.items()):
            for queue in list(backend.queues.values()):
                yield account_id, region, queue


def sample_queue(queue: Any, now_ms: float) -> tuple[int, int, int, float]:
    """(visible, not visible, delayed, age of oldest message in s) for one queue.

    One pass over a snapshot of the queue's messages; works with or without
    ``local.moto_patches``.
    """
    visible, not_visible, delayed, oldest = moto_patches.count_messages(list(queue._messages), now_ms)
    age = max(0.0, (now_ms - oldest) / 1000.0) if oldest is not None else 0.0
    return visible, not_visible, delayed, age


def publish_sqs_metrics_once() -> int:
    """Sample every queue of every account/region once; returns the queue count."""
    now = utcnow()
    now_ms = unix_time_millis()
    published = 0
    for account_id, region, queue in _iter_queues():
        try:
            visible, not_visible, delayed, age = sample_queue(queue, now_ms)
        except (RuntimeError, AttributeError):  # queue mutated/half-built: next tick
            continue
        dims = [Dimension("QueueName", queue.name)]
        SQS_METRICS.add(
            account_id,
            region,
            queue.name,
            [
                _datum("ApproximateNumberOfMessagesVisible", visible, "Count", dims, now),
                _datum("ApproximateNumberOfMessagesNotVisible", not_visible, "Count", dims, now),
                _datum("ApproximateNumberOfMessagesDelayed", delayed, "Count", dims, now),
                _datum("ApproximateAgeOfOldestMessage", age, "Seconds", dims, now),
            ],
        )
        published += 1
    SQS_METRICS.expire(now)
    return published


class SqsMetricsPublisher(threading.Thread):
    """Daemon thread: ``publish_sqs_metrics_once()`` every ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_METRICS_INTERVAL) -> None:
        super().__init__(name="sqs-cloudwatch-metrics", daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                publish_sqs_metrics_once()
            except Exception:  # never let one bad tick kill the thread
                logger.exception("sqs metrics tick failed")
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


class TtlSweeper(threading.Thread):
    """Daemon thread: ``moto_patches.sweep_expired_items()`` every ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_TTL_INTERVAL) -> None:
        super().__init__(name="dynamodb-ttl-sweeper", daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        pause = self.interval
        while not self._stopped.wait(pause):
            started = time.monotonic()
            try:
                moto_patches.sweep_expired_items()
            except Exception:  # never let one bad sweep kill the thread
                logger.exception("dynamodb ttl sweep failed")
            # A sweep walks every item (~1.7 µs each): big tables are swept less often, so the
            # sweeper never takes more than ~5% of the emulator's time (100k items: every 3.5 s).
            pause = max(self.interval, TTL_MAX_SHARE_INVERSE * (time.monotonic() - started))

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------


class QuietRequestHandler(MotoRequestHandler):
    """Moto's request handler without werkzeug's per-request access log line."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return None


class Emulator:
    """A running moto server (plus metrics thread); see ``serve``."""

    def __init__(
        self,
        server: Any,
        publisher: SqsMetricsPublisher | None,
        patched: bool,
        sweeper: TtlSweeper | None = None,
    ) -> None:
        self._server = server
        self._publisher = publisher
        self._sweeper = sweeper
        self.patched = patched
        self.host, self.port = str(server.server_address[0]), int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name=f"emulator-{self.port}", daemon=True)
        self._stop_lock = threading.Lock()
        self._stopped = False

    @property
    def endpoint_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> Emulator:
        self._thread.start()
        if self._publisher is not None:
            self._publisher.start()
        if self._sweeper is not None:
            self._sweeper.start()
        return self

    def stop(self) -> None:
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        if self._publisher is not None:
            self._publisher.stop()
        if self._sweeper is not None:
            self._sweeper.stop()
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _WaitressServer:
    """waitress behind the interface `Emulator` drives (werkzeug's serve_forever/shutdown).

    werkzeug's dev server closes every connection (`Connection: close`) and starts a thread per
    connection, so every AWS call paid a TCP handshake and a thread start on both sides; waitress
    keeps HTTP/1.1 connections alive and serves them from a fixed pool of threads."""

    def __init__(self, app: Any, sock: socket.socket, threads: int) -> None:
        from waitress.server import create_server

        self._sock = sock
        self._server = create_server(app, sockets=[sock], threads=threads, channel_timeout=300,
                                     connection_limit=2000, backlog=1024, clear_untrusted_proxy_headers=True)
        self.server_address = sock.getsockname()[:2]

    def serve_forever(self) -> None:
        self._server.run()

    def shutdown(self) -> None:
        # The serving loop runs while it has sockets: close the listener and every kept-alive connection.
        for channel in list(self._server._map.values()):
            try:
                channel.close()
            except OSError:
                pass
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)

    def server_close(self) -> None:
        self._sock.close()


SWITCH_INTERVAL = 0.0005
DISPATCH_CACHE_SIZE = 4096


def cached_dispatch(app: DomainDispatcherApplication) -> DomainDispatcherApplication:
    """Memoises moto's per-request choice of backend for signed requests.

    moto picks the backend for every request under one global lock, inferring the service from the
    signature's credential scope (and, for some services, the target header, path or host) and
    walking its module list on the file system; that serialised every request of every thread. The
    choice is a pure function of those four request fields, so it is cached on them."""
    original = app.get_application
    cache: dict[tuple[str, ...], Any] = {}

    def get_application(environ: dict[str, Any]) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        path = environ.get("PATH_INFO", "")
        if "Credential=" not in auth or path.startswith(("/moto-api", "/latest/")):
            return original(environ)
        try:
            scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/", 1)[1]
        except IndexError:
            return original(environ)
        key = (scope, environ.get("HTTP_X_AMZ_TARGET", ""), path, environ.get("HTTP_HOST", ""))
        found = cache.get(key)
        if found is None:
            found = original(environ)
            if len(cache) < DISPATCH_CACHE_SIZE:
                cache[key] = found
        return found

    app.get_application = get_application  # type: ignore[method-assign]
    return app

class ErrorInjection:
    """Fails a fraction of one API's calls with an AWS error, as a throttled or failing service does
    (`Target=rate:ErrorCode`, e.g. `DynamoDB_20120810.UpdateItem=0.05:ProvisionedThroughputExceededException`:
    the `X-Amz-Target` of JSON-protocol calls). `GET /_local/faults` counts calls and injected errors."""

    def __init__(self, app: Any, specs: list[str], seed: int | None = None) -> None:
        self.app = app
        self.rules: dict[str, tuple[float, str]] = {}
        for spec in specs:
            target, _, rest = spec.partition("=")
            rate, _, code = rest.partition(":")
            if not target or not code or not 0 <= float(rate) <= 1:
                raise ValueError(f"bad emulator fault {spec!r}: use Target=rate:ErrorCode")
            self.rules[target] = (float(rate), code)
        self.random = random.Random(seed)
        self.counts: dict[str, dict[str, int]] = {t: {"calls": 0, "injected": 0} for t in self.rules}
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/_local/faults":
            with self._lock:
                body = json.dumps(self.counts).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        rule = self.rules.get(environ.get("HTTP_X_AMZ_TARGET", ""))
        if rule is not None:
            target = environ["HTTP_X_AMZ_TARGET"]
            with self._lock:
                self.counts[target]["calls"] += 1
                inject = self.random.random() < rule[0]
                if inject:
                    self.counts[target]["injected"] += 1
            if inject:
                code = rule[1]
                status = "503 Service Unavailable" if "Unavailable" in code else (
                    "500 Internal Server Error" if "Internal" in code else "400 Bad Request")
                body = json.dumps({"__type": code, "message": f"injected by the emulator ({target})"}).encode()
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))  # keep the connection usable
                start_response(status, [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", code),
                                        ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


class LocalOnly:
    """Serves only callers on this machine that are not a web page (the emulator takes any credentials).

    A page of any site could otherwise Scan KeysTable or PutItem an admin key: through CORS (moto's
    global CORS is switched off in ``serve``), through a no-preflight ``fetch``, or through DNS
    rebinding (a name of the attacker's resolving to 127.0.0.1). So a request with an ``Origin``
    header that is not the emulator's own, or whose ``Host`` is not a loopback name or address
    with the emulator's port, is refused with 403. boto3 sends Host = its endpoint and no Origin."""

    def __init__(self, app: Any, bound_host: str, port: int) -> None:
        self.app = app
        self.port = port
        # The address given to --host is the user's own choice (the runtime's endpoint names it, even a
        # wildcard such as 0.0.0.0): it is allowed too.
        self.extra = {bound_host.strip("[]").lower()} - {""}
        self.refused = 0

    def host_allowed(self, value: str) -> bool:
        try:
            parsed = urlsplit("//" + value.strip())
            name, port = (parsed.hostname or "").lower(), parsed.port
        except ValueError:  # a malformed port or bracket
            return False
        if (port or 80) != self.port or not name:
            return False
        if name == "localhost" or name.endswith(".localhost") or name in self.extra:
            return True  # *.localhost never leaves the machine (RFC 6761): no rebinding through it
        try:
            return ipaddress.ip_address(name).is_loopback
        except ValueError:
            return False  # any other name may be an attacker's, rebound to 127.0.0.1

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        host, origin = environ.get("HTTP_HOST", ""), environ.get("HTTP_ORIGIN")
        reason = None
        if not self.host_allowed(host):
            reason = "the Host header is not a loopback name or address with the emulator's port"
        elif origin is not None and not (urlsplit(origin).scheme == "http" and self.host_allowed(urlsplit(origin).netloc)):
            reason = "requests from web pages (an Origin header) are refused"
        if reason is None:
            return self.app(environ, start_response)
        self.refused += 1
        logger.warning("emulator request refused", extra={"reason": reason, "host": host[:100],
                                                          "origin": (origin or "")[:100]})
        body = json.dumps({"__type": "AccessDeniedException", "message": reason}).encode()
        environ["wsgi.input"].read(min(int(environ.get("CONTENT_LENGTH") or 0), 1 << 20))  # keep the connection usable
        start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


# Long polls hold a thread each (up to 1 s per poll in the local runtime): room for every poller.
WAITRESS_THREADS = 64


def serve(
    host: str = "127.0.0.1",
    port: int = 4566,
    patched: bool = True,
    metrics_interval: float | None = DEFAULT_METRICS_INTERVAL,
    server: str = "waitress",
    faults: list[str] | None = None,
    fault_seed: int | None = None,
    ttl_interval: float | None = DEFAULT_TTL_INTERVAL,
) -> Emulator:
    """Start moto server in this process (background threads) and return it.

    ``port=0`` binds a free port (see ``Emulator.port``); a busy port raises
    OSError.  ``patched`` applies ``local.moto_patches`` (process-wide; stock moto
    again only via ``moto_patches.revert()``).  ``metrics_interval`` None or <= 0
    disables the SQS metrics thread; ``ttl_interval`` None or <= 0 (or ``patched=False``) the
    DynamoDB TTL sweeper.
    """
    # Bind here so a busy port raises OSError (werkzeug would print and sys.exit).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    if patched:
        moto_patches.apply()
    # moto answers every origin with CORS (flask_cors) unless told not to; the flag is read when a
    # service's app is first built, so it is set before any request.
    werkzeug_app.DISABLE_GLOBAL_CORS = True
    app: Any = cached_dispatch(DomainDispatcherApplication(create_backend_app))
    if faults:
        app = ErrorInjection(app, faults, fault_seed)
    app = LocalOnly(app, host, sock.getsockname()[1])
    http: Any
    if server == "waitress":
        http = _WaitressServer(app, sock, WAITRESS_THREADS)
    else:
        try:
            http = make_server(host, port, app, threaded=True, request_handler=QuietRequestHandler, fd=sock.fileno())
        finally:
            sock.close()  # werkzeug serves on its own dup of the descriptor
    publisher = SqsMetricsPublisher(metrics_interval) if metrics_interval is not None and metrics_interval > 0 else None
    sweeper = TtlSweeper(ttl_interval) if patched and ttl_interval is not None and ttl_interval > 0 else None
    emulator = Emulator(http, publisher, patched, sweeper).start()
    logger.info(
        "emulator listening",
        extra={"host": emulator.host, "port": emulator.port, "patched": patched},
    )
    return emulator


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m local.emulator", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4566)
    parser.add_argument("--no-patches", action="store_true", help="run stock moto SQS")
    parser.add_argument("--parent-pid", type=int, help="exit when this process is gone (the runtime that started it)")
    parser.add_argument("--server", choices=["waitress", "werkzeug"], default="waitress",
                        help="HTTP server: waitress keeps connections alive; werkzeug is moto's own")
    parser.add_argument(
        "--metrics-interval",
        type=float,
        default=DEFAULT_METRICS_INTERVAL,
        help="seconds between AWS/SQS CloudWatch samples (0 disables)",
    )
    parser.add_argument("--fault", action="append", default=[], metavar="Target=rate:ErrorCode",
                        help="fail a fraction of one API's calls (X-Amz-Target) with that AWS error")
    parser.add_argument("--fault-seed", type=int)
    args = parser.parse_args(argv)
    configure_json_logging()
    # Many short requests on many threads: hand the GIL over sooner than the default 5 ms, so a
    # thread whose response is ready is not held behind busy ones (lower latency, same CPU).
    sys.setswitchinterval(SWITCH_INTERVAL)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    try:
        emulator = serve(
            args.host,
            args.port,
            patched=not args.no_patches,
            metrics_interval=args.metrics_interval,
            server=args.server,
            faults=args.fault,
            fault_seed=args.fault_seed,
        )
    except OSError as exc:
        logger.error(
            "emulator failed to start",
            extra={"host": args.host, "port": args.port, "error": str(exc)},
        )
        return 1
    os.environ.setdefault("MOTO_PORT", str(emulator.port))  # as moto's own server does
    while not stop.wait(0.5):
        if args.parent_pid and not _alive(args.parent_pid):
            break  # the runtime died without stopping us (SIGKILL): do not outlive it
    emulator.stop()
    logger.info("emulator stopped", extra={"host": emulator.host, "port": emulator.port})
    return 0


if __name__ == "__main__":
    sys.exit(main())
