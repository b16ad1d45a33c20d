"""The ports tests give the stacks they start (tests/integration/conftest.py): parallel xdist workers never
draw from one block, nor from the kernel's ephemeral range, and a port is handed out once."""

from __future__ import annotations

import socket

import pytest

from tests.integration.conftest import Ports, free_port, port_block


def test_each_worker_has_a_block_of_its_own_below_the_ephemeral_range() -> None:
    blocks = [port_block({"PYTEST_XDIST_WORKER": f"gw{n}", "PYTEST_XDIST_WORKER_COUNT": "3"}, ephemeral_low=32768)
              for n in range(3)]
    assert blocks[0].start == 10_000 and blocks[-1].stop <= 32768
    for a, b in zip(blocks, blocks[1:]):
        assert a.stop <= b.start, (a, b)
    assert min(len(b) for b in blocks) > 5000
    alone = port_block({}, ephemeral_low=32768)  # no xdist: the whole span
    assert (alone.start, alone.stop) == (10_000, 32768)


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
