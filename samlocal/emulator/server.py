"""The embedded AWS emulator's server: moto server with the patches, metrics, TTL sweeper and faults.

    python -m samlocal.emulator --host 127.0.0.1 --port 4566 [--no-patches]
        [--metrics-interval 5]

Serves every moto service on one port (waitress, or moto's threaded werkzeug server
with the per-request access log off), with ``samlocal.emulator.patches`` applied unless
``--no-patches``: a moto that is not the one the patches were written for makes it
refuse to start (exit 2, an error naming the patches). Logs one JSON line per event on
stderr and exits 0 on SIGINT/SIGTERM.

In-process use::

    emulator = serve("127.0.0.1", 0)      # port 0: pick a free port
    ...  # boto3 clients with endpoint_url=emulator.endpoint_url
    emulator.stop()
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from moto.moto_server import werkzeug_app
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from samlocal.emulator import patches
from samlocal.emulator.faults import ErrorInjection
from samlocal.emulator.metrics import DEFAULT_METRICS_INTERVAL, SqsMetricsPublisher
from samlocal.emulator.patches.dynamodb import release_stream_waits
from samlocal.emulator.ttl import DEFAULT_TTL_INTERVAL, TtlSweeper
from samlocal.emulator.wake import LocalWaits, wait_until_answered

# Explicit name: under ``python -m`` this module is ``__main__``.
logger = logging.getLogger("samlocal.emulator")


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
    """Send the ``samlocal`` package's logs to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("samlocal")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


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
        if self.patched:
            release_stream_waits()  # else waitress waits on their threads and warns "thread(s) still running"
            wait_until_answered(2.0)  # and their answers are written before the server closes
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
        # The serving loop runs while it has sockets. Every socket is closed in the loop's own thread (a
        # thunk on waitress's trigger): closed from this thread, a socket the loop was about to select()
        # on failed it with EBADF, a traceback in the stack log. The listener first, then the requests in
        # progress finish (2 s at most: a worker finishing after its trigger was closed logs "Exception
        # when servicing"), then the kept-alive connections and the trigger go, and the loop ends.
        self._in_loop(self._close_listener)
        self._server.task_dispatcher.shutdown(cancel_pending=True, timeout=2)
        self._in_loop(lambda: self._close(set(self._server._map.values())))

    def _in_loop(self, action: Callable[[], None]) -> None:
        done = threading.Event()

        def thunk() -> None:
            try:
                action()
            finally:
                done.set()

        try:
            self._server.trigger.pull_trigger(thunk)
        except OSError:  # the trigger is closed: the loop has ended, and its sockets with it
            return
        if not done.wait(timeout=10):
            # Never closed from here: a socket closed under the running loop fails its select() or, its
            # number reused, has the loop read from another socket. The loop is a daemon thread.
            logger.warning("emulator stop: the serving loop did not answer in 10 s; its sockets stay open",
                           extra={"port": self.server_address[1]})

    def _close_listener(self) -> None:
        from waitress import wasyncore

        wasyncore.dispatcher.close(self._server)  # the server's own close() would close the trigger too

    @staticmethod
    def _close(channels: set[Any]) -> None:
        for channel in channels:
            try:
                channel.close()
            except OSError:
                pass

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


# Long polls hold a thread each (the local runtime keeps one open per SQS source, 20 s at a time): room for
# every poller of a stack and its clients.
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
    OSError.  ``patched`` applies ``samlocal.emulator.patches`` (process-wide; stock moto
    again only via ``patches.revert()``; ``patches.PatchMismatchError`` if moto is not the one they fit).  ``metrics_interval`` None or <= 0
    disables the SQS metrics thread; ``ttl_interval`` None or <= 0 (or ``patched=False``) the
    DynamoDB TTL sweeper.
    """
    if patched:
        patches.apply()  # first: a moto the patches do not fit leaves no socket bound
    # Bind here so a busy port raises OSError (werkzeug would print and sys.exit).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=1024)
    # moto answers every origin with CORS (flask_cors) unless told not to; the flag is read when a
    # service's app is first built, so it is set before any request.
    werkzeug_app.DISABLE_GLOBAL_CORS = True
    app: Any = cached_dispatch(DomainDispatcherApplication(create_backend_app))
    if faults:
        app = ErrorInjection(app, faults, fault_seed)
    app = LocalOnly(LocalWaits(app), host, sock.getsockname()[1])
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
    parser = argparse.ArgumentParser(prog="python -m samlocal.emulator", description=__doc__.split("\n")[0])
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
    except patches.PatchMismatchError as exc:
        # Refuse rather than run moto with patches that replace what is no longer there.
        logger.error("emulator refused to start: moto patches do not fit the installed moto",
                     extra={"patches": sorted({name for name, _ in exc.problems}), "error": str(exc)})
        return 2
    os.environ.setdefault("MOTO_PORT", str(emulator.port))  # as moto's own server does
    while not stop.wait(0.5):
        if args.parent_pid and not _alive(args.parent_pid):
            break  # the runtime died without stopping us (SIGKILL): do not outlive it
    emulator.stop()
    logger.info("emulator stopped", extra={"host": emulator.host, "port": emulator.port})
    return 0


if __name__ == "__main__":
    sys.exit(main())
