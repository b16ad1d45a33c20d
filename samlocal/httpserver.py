"""A threaded HTTP/1.1 server with keep-alive, loopback by default, that stops cleanly.

One thread per connection, because the REST gateway's invocations block: an asyncio or thread-pool
server (uvicorn, hypercorn, waitress) costs more CPU per request around the same blocking call
(measured in docs/BENCHMARKS.md). The bytes are parsed by `httptools`, the binding of llhttp (Node.js's
HTTP/1.1 parser, strict mode): request line, headers, Content-Length and chunked framing are its
business — a chunked body is decoded, never read as a second request, and Content-Length with
Transfer-Encoding, a negative or non-numeric length, obsolete line folding and bare CRs are refused.
Around it, the limits a server reachable by a browser or a script needs (docs/LOCAL.md, "Limits of the
local servers"): header and body caps, header, body and idle deadlines, and a connection cap.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from collections import deque
from email.utils import formatdate
from http import HTTPStatus
from http.client import HTTPMessage
from typing import Any

import httptools

log = logging.getLogger("samlocal.http")

# API Gateway (REST): 10,240 bytes of request line and header values; a 10 MB payload.
MAX_HEADER_BYTES = 10 * 1024
MAX_HEADERS = 100
MAX_BODY_BYTES = 10 * 1024 * 1024
HEADER_SECONDS = 10.0  # the whole header block, from the request's first byte: a trickling client is dropped
BODY_SECONDS = 30.0  # the whole body, from when the handler asks for it
IDLE_SECONDS = 60.0  # a keep-alive connection with no request started is closed after this
SEND_SECONDS = 30.0  # a client that does not read its answer
MAX_CONNECTIONS = 256  # per server; a connection beyond it is answered 503 and closed
RECV_BYTES = 64 * 1024

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a header name (RFC 9110 5.1)
_date: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header, formatted once a second rather than on every response."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, formatdate(now, usegmt=True).encode())
    return _date[1]


def _timeval(seconds: float) -> bytes:
    """SO_RCVTIMEO/SO_SNDTIMEO's struct timeval; never 0, which would mean no timeout."""
    micros = max(1000, int(seconds * 1_000_000))
    return struct.pack("ll", micros // 1_000_000, micros % 1_000_000)


def refusal(status: int, message: str) -> bytes:
    """A whole response that ends the connection: for bytes that are no request, a limit, the cap."""
    body = json.dumps({"message": message}).encode()
    return (b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, _REASONS.get(status, b""), http_date(), len(body), body))


class RequestAborted(BaseException):
    """The request could not be read to its end (a limit, a deadline, bad framing): it has been answered
    and the connection is closing. A BaseException, like SystemExit, so that a handler's
    `except Exception` (which would answer 500) lets it through: it is not the handler's error."""


class _Request:
    """One request as the parser's callbacks fill it in (several may be queued when pipelined)."""

    __slots__ = ("url", "headers", "size", "head_done", "method", "version", "keep_alive", "body",
                 "body_size", "done")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.size = 0  # request target + header names and values, as API Gateway counts
        self.head_done = False
        self.method = b""
        self.version = ""
        self.keep_alive = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.done = False


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, host: str, port: int, handler: type[Handler], app: Any,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        super().__init__((host, port), handler)
        self.app = app
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def name(self) -> str | None:
        return self._thread.name if self._thread else None

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread per connection, up to `max_connections`; past that, 503 at once: a flood of idle
        connections must not cost a thread each, nor keep a new client waiting in silence."""
        if not self._slots.acquire(blocking=False):
            log.warning("connection limit reached: 503", extra={"server": self.name, "client": str(client_address),
                                                                "max_connections": self.max_connections})
            try:
                request.settimeout(1)
                request.sendall(refusal(503, "Service Unavailable: too many connections"))
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler that raised: one structured ERROR line (socketserver prints a raw traceback). A
        client that hung up (reset, broken pipe) is not an error of the server."""
        exc = sys.exc_info()[1]
        extra = {"server": self.name, "client": str(client_address)}
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client connection ended", extra={**extra, "error_type": type(exc).__name__})
            return
        log.error("request handler failed", exc_info=True, extra={**extra, "error_type": type(exc).__name__})


class Handler(socketserver.BaseRequestHandler):
    """One connection: its requests in turn, each dispatched to `do_<METHOD>` (http.server's naming),
    which answers with `reply` and reads the body, if it needs it, with `read_body`."""

    server: Server
    request: socket.socket
    command: str
    path: str
    request_version: str
    headers: HTTPMessage
    close_connection: bool

    def setup(self) -> None:
        sock = self.request
        # Never hold a response back for the client's delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Deadlines as kernel timeouts on a blocking socket: a recv is then one system call and one
        # release of the GIL, where Python's own timeouts add a poll() and a second release to every
        # read and write (measured: +0.08 ms of the runtime's CPU per request on the real path).
        # TLS sockets keep Python's timeouts (ssl retries a read that timed out in the kernel).
        self._kernel_timeouts = not isinstance(sock, ssl.SSLSocket) and sock.gettimeout() is None
        self._rcvtimeo = 0.0
        if self._kernel_timeouts:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(SEND_SECONDS))
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[_Request] = deque()
        self._current = _Request()  # the request being answered
        self._parsing: _Request | None = None  # the request the parser is in (the same, or a later one)
        self._answered = False
        self._head_bytes = 0  # bytes fed while a request's head was incomplete
        self._broken: str | None = None  # the parser's error: nothing after it is read
        self._eof = False  # the client closed, or upgraded (never honoured): nothing more is parsed

    # The parser's callbacks (httptools calls them by name while `_feed` runs).
    def on_message_begin(self) -> None:
        self._parsing = _Request()
        self._queue.append(self._parsing)

    def on_url(self, url: bytes) -> None:
        r = self._parsing
        assert r is not None
        r.url += url
        r.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        r = self._parsing
        assert r is not None
        if not r.head_done:  # after the head: a chunked body's trailer fields, dropped
            r.headers.append((name, value.rstrip(b" \t")))
            r.size += len(name) + len(value)

    def on_headers_complete(self) -> None:
        r = self._parsing
        assert r is not None
        p = self._parser
        r.head_done, r.method, r.version, r.keep_alive = True, p.get_method(), p.get_http_version(), p.should_keep_alive()
        self._head_bytes = 0

    def on_body(self, body: bytes) -> None:
        r = self._parsing
        assert r is not None
        r.body_size += len(body)
        if r.body_size <= MAX_BODY_BYTES:  # past it the request is refused; nothing more is kept
            r.body.append(body)

    def on_message_complete(self) -> None:
        assert self._parsing is not None
        self._parsing.done = True

    def _feed(self, data: bytes) -> None:
        if not data:
            self._eof = True
            return
        p = self._parsing
        if p is None or p.done or not p.head_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._eof = True  # the request is served as a plain one, and the connection closes after it
        except httptools.HttpParserError as exc:
            self._broken = str(exc) or type(exc).__name__

    def _recv(self, deadline: float, idle: bool = False) -> bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock = self.request
        if not self._kernel_timeouts:
            sock.settimeout(remaining)
            return sock.recv(RECV_BYTES)
        # Waiting for a next request is the common case: its timeout is set once, not on every read.
        wanted = IDLE_SECONDS if idle else remaining
        if wanted != self._rcvtimeo:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(wanted))
            self._rcvtimeo = wanted
        try:
            return sock.recv(RECV_BYTES)
        except BlockingIOError:  # the kernel's timeout (EAGAIN on a blocking socket)
            raise TimeoutError from None

    def _send(self, data: bytes) -> None:
        if not self._kernel_timeouts:
            self.request.settimeout(SEND_SECONDS)
        try:
            self.request.sendall(data)
        except BlockingIOError:  # SO_SNDTIMEO: the client does not take its answer
            raise TimeoutError from None

    def _refuse(self, status: int, message: str) -> None:
        """Answer and end the connection."""
        log.warning("request refused", extra={"server": self.server.name, "client": self.client_address[0],
                                              "status": status, "reason": message})
        self.close_connection = True
        try:
            self._send(refusal(status, message))
        except OSError:
            pass

    def handle(self) -> None:
        try:
            while self._next_request():
                method = getattr(self, "do_" + self.command, None)
                if method is None:
                    self._refuse(501, f"Unsupported method ({self.command})")
                    return
                self._answered = False
                method()
                if self.close_connection or not self._answered:
                    return
        except RequestAborted:
            pass

    def _next_request(self) -> bool:
        """The next request's line and headers, within the limits; False when the connection is done
        (closed by the client, idle too long, or refused with an answer)."""
        queue = self._queue
        deadline, idle = 0.0, True
        while not (queue and queue[0].head_done):
            if self._broken is not None:
                self._refuse(400, self._broken)
                return False
            if self._eof:
                return False
            if self._head_bytes > MAX_HEADER_BYTES + 2048:  # the raw head, with its separators
                self._refuse(431, "Request header fields too large")
                return False
            started = bool(queue)  # the parser has seen the request's first byte
            if not deadline or (started and idle):  # the header deadline runs from the first byte
                idle = not started
                deadline = time.monotonic() + (HEADER_SECONDS if started else IDLE_SECONDS)
            try:
                data = self._recv(deadline, idle=not started)
            except TimeoutError:
                if started:
                    self._refuse(408, f"Request headers not received within {HEADER_SECONDS:g} s")
                else:
                    log.debug("idle keep-alive connection closed", extra={"server": self.server.name,
                                                                           "client": self.client_address[0]})
                return False
            self._feed(data)
        r = self._current = queue.popleft()
        if r.version not in ("1.1", "1.0"):
            if r.version.startswith(("0.", "1.")):
                self._refuse(400, f"Bad request version (HTTP/{r.version})")
            else:
                self._refuse(505, f"Invalid HTTP version (HTTP/{r.version})")
            return False
        if len(r.headers) > MAX_HEADERS:
            self._refuse(431, "Too many headers")
            return False
        if r.size > MAX_HEADER_BYTES:
            self._refuse(431, "Request header fields too large")
            return False
        # llhttp has checked the framing headers (one valid Content-Length, or chunked, never both)
        length = next((v for n, v in r.headers if n.lower() == b"content-length"), None)
        if length is not None and int(length) > MAX_BODY_BYTES:
            self._refuse(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
            return False
        self.command = r.method.decode("ascii")
        path = r.url.decode("iso-8859-1")
        # As http.server: a path starting '//' would read as a network location in urlsplit.
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        self.request_version = "HTTP/" + r.version
        headers = HTTPMessage()
        for name, value in r.headers:
            headers[name.decode("iso-8859-1")] = value.decode("iso-8859-1")
        self.headers = headers
        self.close_connection = not r.keep_alive
        return True

    def read_body(self) -> bytes:
        """The request body, de-chunked, at most MAX_BODY_BYTES, within BODY_SECONDS; a request that
        breaks one of these is answered (400, 408, 413) and ends with RequestAborted."""
        r = self._current
        if not r.done and r.version == "1.1" and (self.headers.get("Expect") or "").lower() == "100-continue":
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")
        deadline = time.monotonic() + BODY_SECONDS
        while not r.done:
            if r.body_size > MAX_BODY_BYTES:  # a chunked body has no length to refuse up front
                break
            if self._broken is not None:
                self._refuse(400, self._broken)
                raise RequestAborted
            if self._eof:
                raise ConnectionResetError("the client closed the connection in the middle of the body")
            try:
                self._feed(self._recv(deadline))
            except TimeoutError:
                self._refuse(408, f"Request body not received within {BODY_SECONDS:g} s")
                raise RequestAborted from None
        if r.body_size > MAX_BODY_BYTES:
            self._refuse(413, f"Request body larger than {MAX_BODY_BYTES} bytes")
            raise RequestAborted
        return b"".join(r.body)

    def reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        out = [b"HTTP/1.1 %d %s\r\nDate: %s\r\n" % (status, _REASONS.get(status, b""), http_date())]
        ctype = False
        for name, value in headers or []:
            # A function's headers go out as given, but never as a second header or response.
            if not _TOKEN.fullmatch(name) or "\r" in value or "\n" in value or "\0" in value:
                raise ValueError(f"invalid response header {name!r}: {value[:100]!r}")
            ctype = ctype or name.lower() == "content-type"
            out.append(f"{name}: {value}\r\n".encode("iso-8859-1"))
        if not ctype:
            out.append(b"Content-Type: application/json\r\n")
        if not self._current.done or self._eof:
            # The rest of the body is still on its way and was not needed: close rather than read it.
            self.close_connection = True
        if self.close_connection:
            out.append(b"Connection: close\r\n")
        elif self.request_version == "HTTP/1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"Content-Length: %d\r\n\r\n" % len(body))
        if self.command != "HEAD":
            out.append(body)
        self._send(b"".join(out))
        self._answered = True
