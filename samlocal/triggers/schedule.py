"""EventBridge schedules of the template's functions (`Type: Schedule` and `Type: ScheduleV2` events).

Expressions, as EventBridge reads them:
- `rate(N unit)`: minute(s), hour(s), day(s); for rules (`Schedule`) the unit is singular when N is 1
  and plural otherwise, as EventBridge requires (Scheduler, `ScheduleV2`, takes either);
- `cron(min hour day-of-month month day-of-week year)`: AWS's six fields. Day-of-week counts 1-7 =
  SUN-SAT (cron's 0-6 is off by one), names SUN-SAT, `L` (Saturday; `5L` the month's last Thursday),
  `#` (`2#1` the first Monday); day-of-month `L` and `W`; one of the two day fields must be `?`; the
  year a value, range, list or `*`. croniter evaluates the rest;
- `at(yyyy-mm-ddThh:mm:ss)` (`ScheduleV2` only): one firing, never again.
Times are UTC, or `ScheduleExpressionTimezone` for `ScheduleV2` (cron and at, daylight saving
included). Each firing invokes the function asynchronously with EventBridge's "Scheduled Event" (or
the event's `Input`), as AWS does; a failure is retried twice, then goes to the function's DeadLetterQueue / OnFailure destination,
as for any asynchronous invocation (`Trigger.invoke_async`).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from croniter import croniter

from .base import Trigger

if TYPE_CHECKING:
    from ..invoker import FunctionPool

log = logging.getLogger("samlocal.schedule")
_UNITS = {"minute": 60, "hour": 3600, "day": 86400}
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]  # AWS numbers them 1-7
_MAX_YEAR = 2199  # EventBridge's years run 1970-2199


@dataclass
class Schedule:
    name: str  # the rule's name (its ARN's last part)
    expression: str
    payload: str | None = None  # the event's Input (a JSON text) instead of the Scheduled Event
    enabled: bool = True
    timezone: str | None = None  # ScheduleExpressionTimezone (ScheduleV2)
    v2: bool = False  # EventBridge Scheduler (ScheduleV2) rather than an EventBridge rule

    def validate(self) -> None:
        """Raises ValueError for an expression EventBridge would refuse (or this runtime cannot run)."""
        text = self.expression.strip()
        if text.startswith("rate("):
            _rate(text, strict_units=not self.v2)
        elif text.startswith("cron("):
            _cron(text)
        elif text.startswith("at("):
            if not self.v2:
                raise ValueError(f"{text!r}: at() one-time schedules are ScheduleV2 (EventBridge Scheduler) only")
            _at(text, self.tz)
        else:
            raise ValueError(f"{text!r}: use rate(N unit), cron(min hour day month weekday year) or at(yyyy-mm-ddThh:mm:ss)")

    @property
    def tz(self) -> tzinfo:
        if not self.timezone:
            return UTC
        if not self.v2:
            raise ValueError("ScheduleExpressionTimezone is a ScheduleV2 property")
        return ZoneInfo(self.timezone)

    def next_after(self, moment: float) -> float | None:
        """The first firing strictly after `moment` (epoch seconds); None when there is none (an at()
        schedule that has passed, a cron whose years are over)."""
        text = self.expression.strip()
        if text.startswith("rate("):
            return moment + _rate(text, strict_units=not self.v2)
        if text.startswith("at("):
            when = _at(text, self.tz)
            return when if when > moment else None
        expression, years = _cron(text)
        start = datetime.fromtimestamp(moment, self.tz)
        while True:
            nxt = croniter(expression, start).get_next(datetime)
            if nxt.year > _MAX_YEAR or nxt.year > max(years, default=_MAX_YEAR):
                return None
            if not years or nxt.year in years:
                return nxt.timestamp()
            later = [y for y in years if y > nxt.year]
            if not later:
                return None
            # Jump to just before the next allowed year rather than walk there firing by firing.
            start = datetime(later[0], 1, 1, tzinfo=self.tz).replace(microsecond=0)
            start = datetime.fromtimestamp(start.timestamp() - 1, self.tz)


def _rate(expression: str, strict_units: bool) -> int:
    m = re.fullmatch(r"rate\((\d+)\s+(minute|hour|day)(s?)\)", expression)
    if not m:
        raise ValueError(f"{expression!r}: use rate(N minute[s]|hour[s]|day[s])")
    value, unit, plural = int(m.group(1)), m.group(2), m.group(3)
    if value <= 0:
        raise ValueError(f"{expression!r}: the rate must be positive")
    if strict_units and (value == 1) == bool(plural):
        # EventBridge: "If the value is equal to 1, then the unit must be singular" (and plural otherwise)
        want = f"{unit}s" if value > 1 else unit
        raise ValueError(f"{expression!r}: EventBridge wants rate({value} {want})")
    return value * _UNITS[unit]


def _at(expression: str, tz: tzinfo) -> float:
    m = re.fullmatch(r"at\((\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})\)", expression)
    if not m:
        raise ValueError(f"{expression!r}: use at(yyyy-mm-ddThh:mm:ss)")
    return datetime.fromisoformat(m.group(1)).replace(tzinfo=tz).timestamp()


def _weekday(token: str, expression: str) -> str:
    """One AWS day-of-week item (1-7 = SUN-SAT, names, `L`, `nL`, `n#k`) → croniter's (0-6 = SUN-SAT)."""
    def day(value: str) -> int:
        if value.upper() in _DAYS:
            return _DAYS.index(value.upper())
        if value.isdigit() and 1 <= int(value) <= 7:
            return int(value) - 1
        raise ValueError(f"{expression!r}: day-of-week {value!r} is not 1-7 or SUN-SAT")

    if token in ("*", "?"):
        return "*"
    if token.upper() == "L":
        return "6"  # alone, L is the last day of the week: Saturday
    if "/" in token:
        raise ValueError(f"{expression!r}: EventBridge allows no '/' in day-of-week")
    if token.upper().endswith("L"):
        return f"L{day(token[:-1])}"  # the month's last such day
    if "#" in token:
        base, _, nth = token.partition("#")
        return f"{day(base)}#{nth}"
    if "-" in token:
        low, _, high = token.partition("-")
        return f"{day(low)}-{day(high)}"
    return str(day(token))


def _years(field: str, expression: str) -> list[int]:
    """The year field → the years it allows ([] for every year)."""
    if field in ("*", "?"):
        return []
    years: set[int] = set()
    for part in field.split(","):
        base, _, step = part.partition("/")
        low, _, high = base.partition("-")
        try:
            first = 1970 if low == "*" else int(low)
            last = _MAX_YEAR if (low == "*" or (step and not high)) else int(high or low)
            years.update(range(first, last + 1, int(step or 1)))
        except ValueError:
            raise ValueError(f"{expression!r}: year {part!r} is not a year, range or list") from None
    return sorted(y for y in years if 1970 <= y <= _MAX_YEAR)


def _cron(expression: str) -> tuple[str, list[int]]:
    """AWS's cron(…) → (croniter's five fields, the years allowed: [] for any)."""
    m = re.fullmatch(r"cron\((.+)\)", expression)
    fields = m.group(1).split() if m else []
    if len(fields) != 6:
        raise ValueError(f"{expression!r}: use cron(min hour day-of-month month day-of-week year)")
    minute, hour, dom, month, dow, year = fields
    if (dom == "?") == (dow == "?"):
        # EventBridge: a value or * in one of the day fields needs a ? in the other
        raise ValueError(f"{expression!r}: exactly one of day-of-month and day-of-week must be '?'")
    if dom.upper() == "LW":
        raise ValueError(f"{expression!r}: day-of-month LW is not emulated locally")
    weekdays = ",".join(_weekday(t, expression) for t in dow.split(","))
    text = " ".join([minute, hour, "*" if dom == "?" else dom, month, weekdays])
    if not croniter.is_valid(text):
        raise ValueError(f"{expression!r}: not a cron expression this runtime can evaluate ({text!r})")
    return text, _years(year, expression)


def scheduled_event(schedule: Schedule, region: str, account: str, moment: float) -> Any:
    if schedule.payload is not None:
        return json.loads(schedule.payload)
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": account, "time": datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region, "resources": [f"arn:aws:events:{region}:{account}:rule/{schedule.name}"], "detail": {}}


class Scheduler(Trigger):
    """One thread per schedule: sleeps until the next firing, invokes, repeats."""

    kind = "schedule"
    event_types = ("Schedule", "ScheduleV2")
    log = log

    def __init__(self, pool: FunctionPool, schedule: Schedule, region: str, account: str) -> None:
        super().__init__(pool, schedule)
        self.schedule, self.region, self.account = schedule, region, account
        self.fired = 0

    @classmethod
    def source_from(cls, stack: Any, function_lid: str, event_name: str, event_type: str,
                    props: dict[str, Any]) -> Schedule:
        expression = props.get("Schedule") or props.get("ScheduleExpression")
        enabled = props.get("Enabled", props.get("State", "ENABLED"))
        schedule = Schedule(name=str(props.get("Name") or f"{stack.name}-{function_lid}-{event_name}"),
                            expression=str(expression), payload=props.get("Input"),
                            enabled=str(enabled).upper() not in ("FALSE", "DISABLED"),
                            timezone=props.get("ScheduleExpressionTimezone"), v2=event_type == "ScheduleV2")
        schedule.validate()  # a bad expression fails the start, not the first firing
        if schedule.payload is not None:
            try:
                json.loads(schedule.payload)
            except (TypeError, ValueError):
                # EventBridge refuses a target Input that is not JSON text; it would fail every firing
                raise ValueError(f"schedule {schedule.name}: Input must be JSON text, not {schedule.payload!r}") from None
        return schedule

    @property
    def name(self) -> str:
        return self.schedule.name

    def log_fields(self, **fields: Any) -> dict[str, Any]:
        return super().log_fields(schedule=self.schedule.name, **fields)

    def start(self) -> None:
        if self.schedule.enabled:
            super().start()

    def run(self) -> None:
        due = self.schedule.next_after(time.time())
        if due is None:
            log.warning("schedule never fires: its time has passed",
                        extra=self.log_fields(expression=self.schedule.expression))
        while due is not None and not self._stop.wait(max(0.0, due - time.time())):
            self.fire(due)
            due = self.schedule.next_after(max(due, time.time()))

    def fire(self, moment: float | None = None) -> bool:
        event = scheduled_event(self.schedule, self.region, self.account, moment or time.time())
        self.fired += 1
        # EventBridge invokes asynchronously: Lambda's retries and failure destinations apply.
        return bool(self.invoke_async(event).ok)

