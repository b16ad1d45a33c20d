"""EventBridge schedule expressions (local.triggers.schedule) as AWS reads them, and the scheduler thread."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from samlocal.invoker import InvokeResult
from samlocal.triggers import supervise
from samlocal.triggers.schedule import Schedule, Scheduler

SUNDAY = datetime(2026, 11, 29, 0, 0, tzinfo=UTC).timestamp()  # Sunday 29 November 2026, 00:00 UTC


def at(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("expression", "expected"), [
    ("cron(0 12 ? * 2 *)", at(2026, 11, 30, 12)),  # 2 is Monday in EventBridge (cron's 2 is Tuesday)
    ("cron(0 12 ? * 1 *)", at(2026, 11, 29, 12)),  # 1: Sunday
    ("cron(0 12 ? * 7 *)", at(2026, 12, 5, 12)),  # 7: Saturday
    ("cron(0 12 ? * 3-4 *)", at(2026, 12, 1, 12)),  # TUE-WED
    ("cron(0 12 ? * 2,6 *)", at(2026, 11, 30, 12)),
    ("cron(0 12 ? * MON-FRI *)", at(2026, 11, 30, 12)),
    ("cron(0 12 ? * sat *)", at(2026, 12, 5, 12)),
    ("cron(0 12 ? * 6#3 *)", at(2026, 12, 18, 12)),  # the third Friday
    ("cron(0 12 ? * 2#1 *)", at(2026, 12, 7, 12)),  # the first Monday
    ("cron(0 12 ? * 5L *)", at(2026, 12, 31, 12)),  # the month's last Thursday
    ("cron(0 12 ? * L *)", at(2026, 12, 5, 12)),  # L alone: Saturday
    ("cron(0 12 L * ? *)", at(2026, 11, 30, 12)),  # the month's last day
    ("cron(0 12 15W * ? *)", at(2026, 12, 15, 12)),
    ("cron(30 9 ? JAN-MAR MON *)", at(2027, 1, 4, 9, 30)),
    ("cron(0 8 ? * MON 2027-2028)", at(2027, 1, 4, 8)),
    ("rate(1 minute)", SUNDAY + 60),
    ("rate(5 minutes)", SUNDAY + 300),
    ("rate(2 days)", SUNDAY + 172_800),
])
def test_expressions_fire_when_eventbridge_would(expression: str, expected: float) -> None:
    schedule = Schedule("r", expression)
    schedule.validate()
    assert schedule.next_after(SUNDAY) == expected


@pytest.mark.parametrize("expression", [
    "cron(0 12 * * MON *)",  # a value in both day fields
    "cron(0 12 ? * ? *)",  # neither
    "cron(0 12 ? * 0 *)", "cron(0 12 ? * 8 *)",  # not 1-7
    "cron(0 12 ? * 1/2 *)",
    "rate(1 minutes)", "rate(5 minute)", "rate(0 minutes)",
    "at(2027-01-01T00:00:00)",  # at() is EventBridge Scheduler's (ScheduleV2)
])
def test_expressions_eventbridge_refuses_are_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        Schedule("r", expression).validate()


def test_a_cron_whose_years_are_over_never_fires() -> None:
    assert Schedule("r", "cron(0 8 ? * MON 2025)").next_after(SUNDAY) is None


def test_schedule_v2_takes_either_rate_unit_and_a_timezone() -> None:
    Schedule("r", "rate(1 minutes)", v2=True).validate()
    new_york = Schedule("r", "cron(0 9 ? * * *)", timezone="America/New_York", v2=True)
    assert new_york.next_after(at(2026, 3, 7, 15)) == at(2026, 3, 8, 13)  # 09:00 EDT, the day DST starts
    assert new_york.next_after(at(2026, 3, 7, 0)) == at(2026, 3, 7, 14)  # 09:00 EST


def test_at_fires_once_in_its_timezone() -> None:
    once = Schedule("r", "at(2027-03-01T09:30:00)", timezone="Europe/Paris", v2=True)
    once.validate()
    assert once.next_after(SUNDAY) == at(2027, 3, 1, 8, 30)
    assert once.next_after(at(2027, 3, 1, 8, 30)) is None, "one time only"
    assert Schedule("r", "at(2027-03-01T09:30:00)", v2=True).next_after(SUNDAY) == at(2027, 3, 1, 9, 30), "UTC by default"


class FakePool:
    def __init__(self, errors: list[Exception] | None = None) -> None:
        self.spec = SimpleNamespace(name="fake")
        self.errors = errors or []
        self.events: list[Any] = []
        self._lock = threading.Lock()

    def invoke(self, event: Any, *, trigger: str, source: str = "", **_kwargs: Any) -> InvokeResult:
        with self._lock:
            if self.errors:
                raise self.errors.pop(0)
            self.events.append(event)
        return InvokeResult(True)


def test_the_scheduler_fires_an_at_schedule_once() -> None:
    moment = datetime.fromtimestamp(int(time.time()) + 1, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    pool = FakePool()
    timer = Scheduler(pool, Schedule("once", f"at({moment})", v2=True), "us-east-1", "123456789012")  # type: ignore[arg-type]
    timer.start()
    try:
        (thread,) = timer._threads
        thread.join(5)
        assert not thread.is_alive(), "done after its one firing"
    finally:
        timer.stop()
    assert timer.fired == 1 and len(pool.events) == 1


def test_a_scheduler_thread_that_dies_is_restarted_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "RESTART_DELAY_SECONDS", 0.02)
    monkeypatch.setattr(Schedule, "next_after", lambda self, moment: moment + 0.05)
    pool = FakePool([RuntimeError("unexpected")])
    caplog.set_level(logging.INFO, logger="samlocal.schedule")
    timer = Scheduler(pool, Schedule("tick", "rate(1 minute)"), "us-east-1", "123456789012")  # type: ignore[arg-type]
    timer.start()
    try:
        deadline = time.monotonic() + 5
        while not pool.events and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        timer.stop()
    assert pool.events, "the schedule fires again after its thread died"
    died = [r for r in caplog.records if r.getMessage() == "trigger thread died; restarting"]
    assert died and died[0].levelno == logging.ERROR and vars(died[0])["schedule"] == "tick"


def test_an_input_that_is_not_json_fails_the_start() -> None:
    stack = SimpleNamespace(name="s", resolve=lambda value: value)
    events = {"E": {"Type": "Schedule", "Properties": {"Schedule": "rate(1 minute)", "Input": "{not json"}}}
    with pytest.raises(ValueError, match="Input must be JSON"):
        Scheduler.sources_for(stack, "Fn", events)
    events["E"]["Properties"]["Input"] = '{"ok": true}'
    assert Scheduler.sources_for(stack, "Fn", events)[0].payload == '{"ok": true}'
