"""EventBridge schedules of the template's functions (`Type: Schedule` and `Type: ScheduleV2` events).

`rate(N minute|minutes|hour|hours|day|days)` and `cron(min hour day-of-month month day-of-week year)`
(AWS's six fields: `?` is read as `*`, the year must be `*`; croniter evaluates the rest, in UTC).
Each firing invokes the function asynchronously with EventBridge's "Scheduled Event" (or the event's
`Input`), as AWS does; a failure is retried twice, as for any asynchronous invocation.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from .invoker import FunctionPool

log = logging.getLogger("local.schedule")
ATTEMPTS = 3
_UNITS = {"minute": 60, "minutes": 60, "hour": 3600, "hours": 3600, "day": 86400, "days": 86400}


@dataclass
class Schedule:
    name: str  # the rule's name (its ARN's last part)
    expression: str
    payload: str | None = None  # the event's Input (a JSON text) instead of the Scheduled Event
    enabled: bool = True

    def next_after(self, moment: float) -> float:
        """The first firing strictly after `moment` (epoch seconds)."""
        rate = re.fullmatch(r"rate\((\d+)\s+(minutes?|hours?|days?)\)", self.expression.strip())
        if rate:
            period = int(rate.group(1)) * _UNITS[rate.group(2)]
            if period <= 0:
                raise ValueError(f"{self.expression}: the rate must be positive")
            return moment + period
        return float(croniter(_cron(self.expression), datetime.fromtimestamp(moment, UTC)).get_next(float))


def _cron(expression: str) -> str:
    m = re.fullmatch(r"cron\((.+)\)", expression.strip())
    fields = m.group(1).split() if m else []
    if len(fields) != 6:
        raise ValueError(f"{expression!r}: use rate(N unit) or cron(min hour day month weekday year)")
    if fields[5] not in ("*", "?"):
        raise ValueError(f"{expression!r}: only a '*' year runs locally")
    return " ".join("*" if f == "?" else f for f in fields[:5])


def schedules_for(stack: Any, function_lid: str, events: dict[str, dict[str, Any]]) -> list[Schedule]:
    out = []
    for name, event in events.items():
        kind = event.get("Type")
        if kind not in ("Schedule", "ScheduleV2"):
            continue
        props = stack.resolve(event.get("Properties", {}))
        expression = props.get("Schedule") or props.get("ScheduleExpression")
        enabled = props.get("Enabled", props.get("State", "ENABLED"))
        schedule = Schedule(name=str(props.get("Name") or f"{stack.name}-{function_lid}-{name}"),
                            expression=str(expression), payload=props.get("Input"),
                            enabled=str(enabled).upper() not in ("FALSE", "DISABLED"))
        schedule.next_after(time.time())  # a bad expression fails the start, not the first firing
        out.append(schedule)
    return out


def scheduled_event(schedule: Schedule, region: str, account: str, moment: float) -> Any:
    if schedule.payload is not None:
        return json.loads(schedule.payload)
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": account, "time": datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "region": region, "resources": [f"arn:aws:events:{region}:{account}:rule/{schedule.name}"], "detail": {}}


class Scheduler:
    """One thread per schedule: sleeps until the next firing, invokes, repeats."""

    def __init__(self, pool: FunctionPool, schedule: Schedule, region: str, account: str) -> None:
        self.pool, self.schedule, self.region, self.account = pool, schedule, region, account
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"schedule:{schedule.name}", daemon=True)
        self.fired = 0

    def start(self) -> None:
        if self.schedule.enabled:
            self._thread.start()

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        due = self.schedule.next_after(time.time())
        while not self._stop.wait(max(0.0, due - time.time())):
            self.fire(due)
            due = self.schedule.next_after(max(due, time.time()))

    def fire(self, moment: float | None = None) -> bool:
        event = scheduled_event(self.schedule, self.region, self.account, moment or time.time())
        self.fired += 1
        for attempt in range(ATTEMPTS):
            result = self.pool.invoke(event, trigger="schedule", source=self.schedule.name)
            if result.ok:
                return True
            if self._stop.is_set() or attempt + 1 == ATTEMPTS:
                break
            self._stop.wait(1.0)
        log.error("scheduled invocation failed after retries", extra={"function": self.pool.spec.name,
                                                                      "schedule": self.schedule.name})
        return False
