"""A threaded HTTP/1.1 server with keep-alive, loopback by default, that stops cleanly."""

from __future__ import annotations

import logging
import sys
import threading
import time
from http import HTTPStatus
from http.client import HTTPMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

log = logging.getLogger("local.http")
MAX_LINE = 65536
MAX_HEADERS = 100


class HeaderError(ValueError):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_headers(fp: IO[bytes]) -> HTTPMessage:
    """The header block, as http.client.parse_headers reads it but without the email package's
    parser (a third of the REST gateway's CPU per request). Strict where RFC 9112 says to be: no
    obsolete line folding, no whitespace before the colon."""
    msg = HTTPMessage()
    for _ in range(MAX_HEADERS + 1):
        line = fp.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeaderError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long")
        if line in (b"\r\n", b"\n", b""):
            return msg
        text = line.decode("iso-8859-1").rstrip("\r\n")
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip() or text[0] in " \t":
            raise HeaderError(HTTPStatus.BAD_REQUEST, f"Malformed header line {text[:100]!r}")
        msg[name] = value.strip(" \t")
    raise HeaderError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers")


_date: tuple[int, str] = (0, "")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], app: Any) -> None:
        super().__init__((host, port), handler)
        self.app = app
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self, name: str) -> None:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A handler that raised: one structured ERROR line (socketserver prints a raw traceback). A
        client that hung up (reset, broken pipe) is not an error of the server."""
        exc = sys.exc_info()[1]
        extra = {"server": self._thread.name if self._thread else None, "client": str(client_address)}
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client connection ended", extra={**extra, "error_type": type(exc).__name__})
            return
        log.error("request handler failed", exc_info=True, extra={**extra, "error_type": type(exc).__name__})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # A buffered writer: headers and body leave in one write when handle_one_request flushes after
    # each request (unbuffered, they were two sends and two wakeups of the client per response).
    wbufsize = 64 * 1024
    # Never hold a response back for the client's delayed ACK (~40 ms on every keep-alive response
    # that needs more than one write).
    disable_nagle_algorithm = True
    server: Server

    def parse_request(self) -> bool:
        """http.server's request line and connection rules for HTTP/1.0 and 1.1 (API Gateway speaks
        nothing older), with the headers read by `read_headers`."""
        self.command = None
        self.request_version = "HTTP/0.9"
        self.close_connection = True
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) != 3 or words[2] not in ("HTTP/1.0", "HTTP/1.1"):
            self.request_version = self.protocol_version  # answer with a status line, not HTTP/0.9's bare body
            if len(words) == 3 and words[2].startswith("HTTP/"):
                self.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({words[2]})")
            else:
                self.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({self.requestline!r})")
            return False
        self.command, path, self.request_version = words
        # As http.server: a path starting '//' would read as a network location in urlsplit.
        self.path = "/" + path.lstrip("/") if path.startswith("//") else path
        try:
            self.headers = read_headers(self.rfile)
        except HeaderError as err:
            self.send_error(err.status, str(err))
            return False
        connection = (self.headers.get("Connection") or "").lower()
        if self.request_version == "HTTP/1.1":
            self.close_connection = connection == "close"
        else:
            self.close_connection = connection != "keep-alive"
        expect = (self.headers.get("Expect") or "").lower()
        if expect == "100-continue" and self.request_version == "HTTP/1.1":
            return self.handle_expect_100()
        return True

    def handle_expect_100(self) -> bool:
        ok = super().handle_expect_100()
        self.wfile.flush()  # the interim answer cannot wait in the buffer for the final one
        return ok

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The Date header, formatted once a second rather than on every response."""
        global _date
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        if _date[0] != now:
            _date = (now, super().date_time_string(now))
        return _date[1]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the per-invoke log says enough
        pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def reply(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        names = set()
        for name, value in headers or []:
            names.add(name.lower())
            self.send_header(name, value)
        if "content-type" not in names:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
