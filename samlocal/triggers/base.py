"""The one shape of a trigger: what every SQS, DynamoDB stream, SNS and schedule trigger shares.

A ``Trigger`` is one template event of one function. The base owns what used to be written once per
trigger: reading its sources from the template (``sources_for``), starting and stopping its threads
(each supervised: a thread that dies is logged and restarted), filter criteria (``passes``), the size
a record adds to the invocation payload, the parsing of a ``batchItemFailures`` report, and Lambda's
asynchronous invocation (``invoke_async``: retries, then the failure destinations). An
``EventSourceMapping`` (the SQS and stream pollers) adds what Lambda's API shows of it: its UUID, its
description, pause and resume. Compare LocalStack's event-source-mapping ``Poller`` base, which
likewise owns filtering and batch-failure parsing for every poller.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid as uuid_module
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from . import async_invoke
from .filtering import matches
from .supervise import supervised

if TYPE_CHECKING:
    from ..invoker import FunctionPool, InvokeResult

PAYLOAD_LIMIT_BYTES = 6 * 1024 * 1024  # Lambda's synchronous invocation payload
EVENT_OVERHEAD = len('{"Records":[]}')


def record_size(record: dict[str, Any]) -> int:
    """The bytes a record adds to a `{"Records": [...]}` invocation payload (its comma included)."""
    return len(json.dumps(record, separators=(",", ":")).encode()) + 1


def flag(value: Any, default: bool = False) -> bool:
    """A template boolean: true/false, or the strings parameters and conditions resolve to."""
    if value is None:
        return default
    return str(value).lower() == "true"


def reported_failures(payload: Any) -> list[str] | None:
    """A function's ``ReportBatchItemFailures`` answer → the item identifiers it reports as failed.

    ``[]``: the whole batch succeeded (a null answer, or a null or empty ``batchItemFailures`` list).
    None: the answer is unusable and the whole batch fails, as Lambda treats "an invalid JSON
    response, an empty string or null itemIdentifier, an itemIdentifier with a bad key name". Whether
    every identifier names an item of the batch is the caller's check (it knows the batch)."""
    if payload is None:
        return []
    if not isinstance(payload, dict):
        return None
    failures = payload.get("batchItemFailures")
    if failures is None or failures == []:
        return []
    if not isinstance(failures, list):
        return None
    out: list[str] = []
    for failure in failures:
        identifier = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(identifier, str) or not identifier:
            return None
        out.append(identifier)
    return out


def mapping_uuid(function_arn: str, source_arn: str) -> str:
    return str(uuid_module.uuid5(uuid_module.NAMESPACE_URL, f"{function_arn}|{source_arn}"))


def describe_mapping(function_arn: str, source_arn: str, *, enabled: bool, batch_size: int,
                     window_seconds: float, report_failures: bool, **extra: Any) -> dict[str, Any]:
    """An EventSourceMapping as Lambda's API describes it: the fields every kind of source has,
    then `extra`. The UUID is derived from the function and the source, so it survives restarts."""
    return {"UUID": mapping_uuid(function_arn, source_arn), "EventSourceArn": source_arn, "FunctionArn": function_arn,
            "State": "Enabled" if enabled else "Disabled", "BatchSize": batch_size,
            "MaximumBatchingWindowInSeconds": int(window_seconds),
            "FunctionResponseTypes": ["ReportBatchItemFailures"] if report_failures else [], **extra}


class Trigger(ABC):
    """One template event of one function that invokes it."""

    kind: ClassVar[str]  # the invocation's trigger label: "sqs", "dynamodb", "sns", "schedule"
    event_types: ClassVar[tuple[str, ...]]  # the template Events `Type`s it serves
    log: ClassVar[logging.Logger]

    def __init__(self, pool: FunctionPool, source: Any) -> None:
        self.pool = pool
        self.source = source
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # --- from the template -------------------------------------------------------------------------
    @classmethod
    def sources_for(cls, stack: Any, function_lid: str, events: dict[str, dict[str, Any]]) -> list[Any]:
        """The sources of this kind among one function's template Events, properties resolved; a
        source AWS would refuse raises ValueError (the stack does not start, as it would not deploy)."""
        out = []
        for name, spec in events.items():
            if spec.get("Type") not in cls.event_types:
                continue
            props = stack.resolve(spec.get("Properties", {}))
            out.append(cls.source_from(stack, function_lid, name, str(spec["Type"]), props))
        return out

    @classmethod
    @abstractmethod
    def source_from(cls, stack: Any, function_lid: str, event_name: str, event_type: str,
                    props: dict[str, Any]) -> Any:
        """One template event's resolved properties → this trigger's source."""

    # --- what it is --------------------------------------------------------------------------------
    @property
    @abstractmethod
    def name(self) -> str:
        """The source's short name: logs and the invocation's `source`."""

    def log_fields(self, **fields: Any) -> dict[str, Any]:
        return {"function": self.pool.spec.name, "trigger": self.kind, "source": self.name, **fields}

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Starts the trigger's main loop (`run`) on its own supervised thread."""
        self.spawn(self.run, f"{self.kind}:{self.name}")

    @abstractmethod
    def run(self) -> None:
        """The trigger's main loop; returns when `self._stop` is set."""

    def spawn(self, body: Callable[[], None], name: str,
              fields: Callable[[], dict[str, Any]] | None = None) -> threading.Thread:
        """`body` on a daemon thread, restarted (with an ERROR line) whenever it dies."""
        run = supervised(body, self._stop, self.log, fields or self.log_fields)
        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

    def interrupt(self) -> None:  # noqa: B027 (only long-polling triggers wait on anything)
        """Ends a wait on the source now (a long poll): called after a stop or a disable."""

    def stop(self, timeout: float = 5) -> None:
        self._stop.set()
        self.interrupt()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))
        self.stopped()

    def stopped(self) -> None:  # noqa: B027 (most triggers hold nothing else)
        """After the threads are joined: release what else the trigger holds."""

    # --- records -----------------------------------------------------------------------------------
    @property
    def filters(self) -> list[dict[str, Any]]:
        return list(getattr(self.source, "filters", None) or [])

    def filter_view(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record as the FilterCriteria see it (SQS parses a JSON body)."""
        return record

    def passes(self, record: dict[str, Any]) -> bool:
        """FilterCriteria: no filters pass everything, else any pattern matching."""
        return matches(self.filters, self.filter_view(record))

    # --- invoking ----------------------------------------------------------------------------------
    def invoke_async(self, event: Any) -> InvokeResult:
        """Lambda's asynchronous invocation (SNS, schedules): retries, then the failure destinations."""
        result: InvokeResult = async_invoke.invoke_async(self.pool, event, trigger=self.kind, source=self.name,
                                                         stop=self._stop)
        return result


class EventSourceMapping(Trigger):
    """A trigger Lambda's API lists as an event source mapping (the SQS and stream pollers)."""

    @property
    @abstractmethod
    def source_arn(self) -> str: ...

    @property
    def enabled(self) -> bool:
        return bool(self.source.enabled)

    @property
    def uuid(self) -> str:
        return mapping_uuid(self.pool.spec.arn, self.source_arn)

    def mapping_fields(self) -> dict[str, Any]:
        """What this kind of mapping adds to the description (batch size and the like included)."""
        return {}

    def mapping(self) -> dict[str, Any]:
        """This poller as Lambda's EventSourceMapping resource describes it."""
        src = self.source
        out = describe_mapping(self.pool.spec.arn, self.source_arn, enabled=src.enabled, batch_size=src.batch_size,
                               window_seconds=src.window_seconds, report_failures=src.report_failures,
                               **self.mapping_fields())
        if self.filters:
            out["FilterCriteria"] = {"Filters": [{"Pattern": json.dumps(p)} for p in self.filters]}
        return out

    def set_enabled(self, enabled: bool) -> None:
        """UpdateEventSourceMapping Enabled: a disabled mapping stops polling (a wait in progress is ended);
        a batch in flight finishes."""
        self.source.enabled = enabled
        if not enabled:
            self.interrupt()
