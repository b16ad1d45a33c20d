"""The helpers of tests/integration/conftest.py. The ports tests give the stacks they start: parallel xdist
workers never draw from one block, nor from the kernel's ephemeral range, and a port is handed out once.
Waiting for a stack to drain: a busy gateway's error answer is "not yet", and the failure shows it."""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Ports, RunningStack, free_port, port_block


def test_each_worker_has_a_block_of_its_own_below_the_ephemeral_range() -> None:
    blocks = [port_block({"PYTEST_XDIST_WORKER": f"gw{n}", "PYTEST_XDIST_WORKER_COUNT": "3"}, ephemeral_low=32768)
              for n in range(3)]
    assert blocks[0].start == 10_000 and blocks[-1].stop <= 32768
    for a, b in zip(blocks, blocks[1:]):
        assert a.stop <= b.start, (a, b)
    assert min(len(b) for b in blocks) > 5000
    alone = port_block({}, ephemeral_low=32768)  # no xdist: the whole span
    assert (alone.start, alone.stop) == (10_000, 32768)


def test_a_run_beside_the_workers_takes_the_ports_it_is_given() -> None:
    assert port_block({"MARS_TEST_PORTS": "6000-9999", "PYTEST_XDIST_WORKER": "gw1",
                       "PYTEST_XDIST_WORKER_COUNT": "2"}) == range(6000, 10000)
    for bad in ("6000", "a-b", "9999-6000", "80-9999", "6000-6010", "6000-70000"):
        with pytest.raises(ValueError, match="MARS_TEST_PORTS"):
            port_block({"MARS_TEST_PORTS": bad})


def test_ports_are_handed_out_once_a_stride_apart_and_skip_one_in_use() -> None:
    base = free_port()  # a free stretch of this worker's block to play in
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", base + 8))
        busy.listen()
        ports = Ports(range(base, base + 40), start=0)
        got = [ports.take() for _ in range(5)]
    assert got == [base, base + 4, base + 12, base + 16, base + 20], "base + 8 is in use: skipped"
    assert len(set(got)) == len(got)


def test_a_block_with_no_free_port_left_says_so() -> None:
    base = free_port()
    ports = Ports(range(base, base + 8), start=0)
    busy = [socket.socket() for _ in range(2)]
    try:
        for s, port in zip(busy, (base, base + 4)):
            s.bind(("127.0.0.1", port))
            s.listen()
        with pytest.raises(RuntimeError, match=f"no free port left in {base}-{base + 7}"):
            ports.take()
    finally:
        for s in busy:
            s.close()


def test_free_port_never_repeats_within_a_run() -> None:
    got = [free_port() for _ in range(50)]
    assert len(set(got)) == 50
    block = port_block()
    assert all(p in block for p in got)


class _Stats(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        status, body = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def stats_server() -> Iterator[tuple[RunningStack, type[_Stats]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Stats)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stack = RunningStack(None, Path("."), Path("."), {"ApiUrl": f"http://127.0.0.1:{server.server_port}/"},  # type: ignore[arg-type]
                         "fake")
    try:
        yield stack, _Stats
    finally:
        server.shutdown()
        server.server_close()


QUEUE = {"name": "q", "visible": 0, "in_flight": 0, "oldest_age_seconds": None}


def test_a_gateway_timeout_while_draining_is_not_yet_drained(stats_server: tuple[RunningStack, type[_Stats]]) -> None:
    stack, handler = stats_server
    handler.answers = [(504, {"message": "Endpoint request timed out"}), (200, {"queues": [QUEUE]})]
    assert stack.drained() is False
    stack.wait_drained(timeout=5)


def test_a_stack_that_never_drains_fails_with_the_last_stats(stats_server: tuple[RunningStack, type[_Stats]]) -> None:
    stack, handler = stats_server
    handler.answers = [(200, {"queues": [{**QUEUE, "in_flight": 3}]})]
    with pytest.raises(AssertionError, match=r"did not drain within 0.5s; last GET /api/q/stats: 200 .*\"in_flight\": 3"):
        stack.wait_drained(timeout=0.5)
