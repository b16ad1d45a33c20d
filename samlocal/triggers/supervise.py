"""Trigger threads that do not die quietly: Lambda's pollers are restarted by the service when they fail.

A trigger's loop (an SQS poller, an SNS delivery poller, a stream shard reader, a schedule) that
raises an exception nobody expected is logged at ERROR with its traceback and started again after a
short pause; it ends only when it returns or its trigger is stopping.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

RESTART_DELAY_SECONDS = 1.0  # first pause before a restart, doubling for a loop that keeps dying …
MAX_RESTART_DELAY_SECONDS = 30.0  # … up to this


def supervised(body: Callable[[], None], stop: threading.Event, logger: logging.Logger,
               extra: Callable[[], dict[str, Any]] | dict[str, Any] | None = None) -> Callable[[], None]:
    """`body` wrapped to run until it returns, restarted (and an ERROR line logged) whenever it raises."""

    def run() -> None:
        restarts = 0
        while True:
            began = time.monotonic()
            try:
                body()
                return
            except Exception:
                if stop.is_set():
                    return
                # A loop that ran a good while before dying starts the backoff again.
                restarts = 1 if time.monotonic() - began > MAX_RESTART_DELAY_SECONDS else restarts + 1
                fields = extra() if callable(extra) else dict(extra or {})
                logger.error("trigger thread died; restarting", exc_info=True,
                             extra={**fields, "thread_name": threading.current_thread().name, "restarts": restarts})
            if stop.wait(min(MAX_RESTART_DELAY_SECONDS, RESTART_DELAY_SECONDS * 2 ** (restarts - 1))):
                return

    return run
