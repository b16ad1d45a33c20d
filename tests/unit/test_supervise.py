"""samlocal.triggers.supervise: a trigger loop that raises is logged at ERROR and restarted, with a backoff."""

from __future__ import annotations

import logging
import threading

import pytest

from samlocal.triggers import supervise


def test_a_dying_loop_is_logged_and_restarted_until_it_returns(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "RESTART_DELAY_SECONDS", 0.01)
    calls: list[int] = []

    def body() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise KeyError("boom")

    caplog.set_level(logging.INFO, logger="unit")
    supervise.supervised(body, threading.Event(), logging.getLogger("unit"), {"trigger": "t"})()
    assert len(calls) == 3
    died = [r for r in caplog.records if r.getMessage() == "trigger thread died; restarting"]
    assert [r.levelno for r in died] == [logging.ERROR] * 2 and [vars(r)["restarts"] for r in died] == [1, 2]
    assert all(r.exc_info and vars(r)["trigger"] == "t" for r in died)


def test_a_loop_that_dies_while_stopping_is_not_restarted() -> None:
    stop = threading.Event()
    calls: list[int] = []

    def body() -> None:
        calls.append(1)
        stop.set()
        raise RuntimeError("pool closed")

    supervise.supervised(body, stop, logging.getLogger("unit"))()
    assert calls == [1]
