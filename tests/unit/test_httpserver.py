"""The local servers' HTTP/1.1 layer: request line, headers (read without the email package),
keep-alive rules and errors, over a raw socket so nothing is smoothed over by a client library."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from local.httpserver import Handler, Server


class Echo(Handler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"path": self.path, "headers": list(self.headers.items()),
                           "trace": self.headers.get_all("X-Trace"), "host": self.headers.get("host")}).encode()
        self.reply(200, body)

    def do_POST(self) -> None:  # noqa: N802
        self.reply(201, self.read_body())


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server("127.0.0.1", 0, Echo, None)
    srv.start("test-http")
    yield srv
    srv.stop()


def exchange(srv: Server, raw: bytes, responses: int = 1) -> tuple[list[tuple[int, dict[str, str], bytes]], bool]:
    """Sends `raw`, reads `responses` responses; returns them and whether the server then closed."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
        sock.sendall(raw)
        f = sock.makefile("rb")
        out = []
        for _ in range(responses):
            status = int(f.readline().split()[1])
            headers: dict[str, str] = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            out.append((status, headers, f.read(int(headers.get("content-length", 0)))))
        sock.settimeout(1)
        try:
            closed = f.read(1) == b""
        except TimeoutError:
            closed = False
    return out, closed


def test_headers_repeats_and_case_insensitive_lookup(server: Server) -> None:
    (resp,), _ = exchange(server, b"GET /a?b=1 HTTP/1.1\r\nHost: h\r\nX-Trace: one\r\nx-trace:  two \r\n"
                                  b"Connection: close\r\n\r\n")
    status, headers, body = resp
    assert status == 200 and headers["content-type"] == "application/json" and headers["date"].endswith("GMT")
    got = json.loads(body)
    assert got["path"] == "/a?b=1" and got["host"] == "h" and got["trace"] == ["one", "two"]
    assert ["X-Trace", "one"] in got["headers"] and ["x-trace", "two"] in got["headers"]


def test_keep_alive_rules(server: Server) -> None:
    two = b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    responses, closed = exchange(server, two, responses=2)
    assert [r[0] for r in responses] == [200, 201] and responses[1][2] == b"abc" and not closed
    _, closed = exchange(server, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert closed
    _, closed = exchange(server, b"GET / HTTP/1.0\r\n\r\n")
    assert closed
    _, closed = exchange(server, b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    assert not closed


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /\r\n\r\n", 400),  # HTTP/0.9
    (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
    (b"GET / XTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\n\r\n", 505),
    (b"GET / HTTP/1.1\r\nX-Bad : v\r\n\r\n", 400),  # whitespace before the colon
    (b"GET / HTTP/1.1\r\nX-A: v\r\n folded\r\n\r\n", 400),  # obsolete line folding
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nX-Long: " + b"v" * 70000 + b"\r\n\r\n", 431),
])
def test_malformed_requests_get_a_precise_error_and_the_connection_closes(server: Server, raw: bytes,
                                                                          status: int) -> None:
    (resp,), closed = exchange(server, raw)
    assert resp[0] == status and closed


def test_expect_100_continue_and_double_slash_paths(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 100")
    (resp,), _ = exchange(server, b"GET //evil.example/p HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert json.loads(resp[2])["path"] == "/evil.example/p"


def test_a_handler_that_raises_is_one_structured_error_and_a_hang_up_is_not(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    class Raises(Handler):
        def do_GET(self) -> None:  # noqa: N802
            raise (ConnectionResetError("gone") if self.path == "/reset" else ValueError("bug"))

    srv = Server("127.0.0.1", 0, Raises, None)
    srv.start("test-raises")
    try:
        with caplog.at_level(logging.DEBUG, logger="local.http"):
            for path in ("/bug", "/reset"):
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                    sock.recv(1)
    finally:
        srv.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].error_type == "ValueError" and errors[0].exc_info  # type: ignore[attr-defined]
    assert any(r.levelno == logging.DEBUG and r.error_type == "ConnectionResetError" for r in caplog.records)  # type: ignore[attr-defined]
