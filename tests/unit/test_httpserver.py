"""The local servers' HTTP/1.1 layer: request line, headers, keep-alive rules, errors and limits, over
a raw socket so nothing is smoothed over by a client library."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from samlocal import httpserver
from samlocal.httpserver import Handler, Server


class Echo(Handler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps({"path": self.path, "headers": list(self.headers.items()),
                           "trace": self.headers.get_all("X-Trace"), "host": self.headers.get("host")}).encode()
        self.reply(200, body)

    def do_POST(self) -> None:  # noqa: N802
        self.reply(201, self.read_body())

    do_HEAD = do_GET  # noqa: N815


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
        with caplog.at_level(logging.DEBUG, logger="samlocal.http"):
            for path in ("/bug", "/reset"):
                with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
                    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode())
                    sock.recv(1)
    finally:
        srv.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].error_type == "ValueError" and errors[0].exc_info  # type: ignore[attr-defined]
    assert any(r.levelno == logging.DEBUG and r.error_type == "ConnectionResetError" for r in caplog.records)  # type: ignore[attr-defined]


# The limits (issue 12, item 5). Each test fails on the hand-written parser it replaced.

def answer_within(sock: socket.socket, seconds: float) -> tuple[int, bytes, bool]:
    """The status of the one response the server sends, its bytes, and whether it then closed."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
        closed = True
    except TimeoutError:
        closed = False
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data, closed


@pytest.mark.parametrize("framing", [
    b"Content-Length: -1\r\n",  # hung the old server: read() until the client closed
    b"Content-Length: 1x\r\n",
    b"Content-Length: 3\r\nContent-Length: 4\r\n",
    b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",  # the smuggler's pair
    b"Transfer-Encoding: gzip\r\n",  # no way to find the end of the body
])
def test_bad_framing_is_a_400_and_the_connection_closes(server: Server, framing: bytes) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n3\r\nabc\r\n0\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n")
        status, data, closed = answer_within(sock, 3)
    assert status == 400 and closed and data.count(b"HTTP/1.1 ") == 1  # never a second request


def test_a_chunked_body_is_decoded_never_read_as_a_second_request(server: Server) -> None:
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    raw = (b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3;ext=1\r\nabc\r\n%x\r\n%s\r\n0\r\nX-Trailer: t\r\n\r\n" % (len(smuggled), smuggled)
           + b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
    (posted, after), closed = exchange(server, raw, responses=2)
    assert posted[0] == 201 and posted[2] == b"abc" + smuggled
    assert after[0] == 200 and json.loads(after[2])["path"] == "/next" and not closed


def test_a_body_over_the_cap_is_413_before_it_is_read(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "MAX_BODY_BYTES", 10)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")  # and not one byte of it
        status, _, closed = answer_within(sock, 3)
    assert status == 413 and closed
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:  # chunked: no length up front
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n6\r\nghijkl\r\n")
        status, _, closed = answer_within(sock, 3)
    assert status == 413 and closed
    (resp,), _ = exchange(server, b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n0123456789")
    assert resp[0] == 201 and resp[2] == b"0123456789"


def test_headers_over_10_kib_in_all_are_431(server: Server) -> None:
    # each line is short (the old server allowed 64 KiB a line, 100 lines); together they are too many bytes
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 2000) for i in range(6)) + b"\r\n"
    (resp,), closed = exchange(server, raw)
    assert resp[0] == 431 and closed
    (resp,), _ = exchange(server, b"GET / HTTP/1.1\r\nHost: h\r\nX-A: " + b"v" * 9000 + b"\r\n\r\n")
    assert resp[0] == 200


def test_headers_trickled_past_the_header_deadline_are_dropped_with_408(server: Server,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "HEADER_SECONDS", 0.6)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n")
        try:
            for _ in range(20):  # a header byte every 0.1 s: each read succeeds, the whole block never ends
                time.sleep(0.1)
                sock.sendall(b"X")
        except OSError:
            pass  # the server has closed
        status, _, closed = answer_within(sock, 3)
    assert status == 408 and closed and time.monotonic() - started < 2.5


def test_a_body_that_does_not_arrive_in_time_is_a_408(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "BODY_SECONDS", 0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc")  # 7 bytes never come
        status, _, closed = answer_within(sock, 3)
    assert status == 408 and closed and time.monotonic() - started < 2


def test_an_idle_keep_alive_connection_is_closed(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(httpserver, "IDLE_SECONDS", 0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        started = time.monotonic()
        status, _, closed = answer_within(sock, 3)
    assert status == 200 and closed and time.monotonic() - started < 2
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:  # never a byte sent
        status, data, closed = answer_within(sock, 3)
    assert closed and data == b""


def test_connections_beyond_the_cap_get_503_and_a_freed_slot_serves_again() -> None:
    srv = Server("127.0.0.1", 0, Echo, None, max_connections=3)
    srv.start("test-cap")
    held: list[socket.socket] = []
    try:
        for _ in range(3):  # three idle keep-alive connections, each with a thread serving it
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            assert sock.recv(12).startswith(b"HTTP/1.1 200")
            held.append(sock)
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as extra:
            status, _, closed = answer_within(extra, 3)
        assert status == 503 and closed
        held.pop().close()
        for _ in range(50):  # the slot is freed when its thread sees the close
            (resp,), _ = exchange(srv, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            if resp[0] == 200:
                break
            time.sleep(0.05)
        assert resp[0] == 200
    finally:
        for sock in held:
            sock.close()
        srv.stop()


def test_an_upgrade_is_not_honoured_and_what_follows_is_never_a_request(server: Server) -> None:
    raw = (b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
           b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(raw)
        status, data, closed = answer_within(sock, 3)
    assert status == 200 and closed and data.count(b"HTTP/1.1 ") == 1


def test_head_answers_the_length_without_the_body_and_keeps_the_connection(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\nGET /a HTTP/1.1\r\nHost: h\r\n\r\n")
        time.sleep(0.3)
        data = sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    assert head.startswith(b"HTTP/1.1 200") and length > 0 and rest.startswith(b"HTTP/1.1 200")  # no body between
