"""The emulator's DynamoDB TTL sweeper: deletes expired items every few seconds (see ``patches.dynamodb``)."""

from __future__ import annotations

import logging
import threading
import time

from samlocal.emulator.patches.dynamodb import sweep_expired_items

logger = logging.getLogger(__name__)

# How often expired DynamoDB items are deleted (patched emulator only): DynamoDB takes up to a few
# days, tests cannot; a sweep walks every item of the TTL-enabled tables under the backend's lock,
# so not much more often than this.
DEFAULT_TTL_INTERVAL = 2.0
TTL_MAX_SHARE_INVERSE = 20  # pause at least 20× the last sweep's duration


class TtlSweeper(threading.Thread):
    """Daemon thread: ``sweep_expired_items()`` every ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_TTL_INTERVAL) -> None:
        super().__init__(name="dynamodb-ttl-sweeper", daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        pause = self.interval
        while not self._stopped.wait(pause):
            started = time.monotonic()
            try:
                sweep_expired_items()
            except Exception:  # never let one bad sweep kill the thread
                logger.exception("dynamodb ttl sweep failed")
            # A sweep walks every item (~1.7 µs each): big tables are swept less often, so the
            # sweeper never takes more than ~5% of the emulator's time (100k items: every 3.5 s).
            pause = max(self.interval, TTL_MAX_SHARE_INVERSE * (time.monotonic() - started))

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


