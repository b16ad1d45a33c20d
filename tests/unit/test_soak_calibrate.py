"""bench/soak.py's calibration on a pipeline that stores nothing for a while (a busy machine: one store batch
outlasting the window). Its queues and front door are stand-ins here, because the point is the arithmetic of
the window: the real stack's run is tests/integration/test_soak_smoke.py."""

from __future__ import annotations

import time

from bench import soak

TARGET = soak.Target(api="http://127.0.0.1:9", sqs_endpoint="http://127.0.0.1:9", dynamodb_endpoint="http://127.0.0.1:9",
                     queue_urls=("http://127.0.0.1:9/q.fifo",), dead_letter_url="http://127.0.0.1:9/dlq.fifo",
                     table="t")


class FrontDoor:
    """Accepts every event of a request at once."""

    def send(self, req: soak.Request) -> soak.Request:
        req.status, req.accepted = 200, list(req.ids)
        return req


class Queues:
    """Events waiting = accepted − stored, where nothing is stored until `stall` seconds have passed and
    then `rate` events a second."""

    def __init__(self, run: soak.Soak, stall: float, rate: float) -> None:
        self.run, self.stall, self.rate, self.t0 = run, stall, rate, time.monotonic()

    def read(self) -> int:
        sent = sum(len(r.ids) for r in self.run.requests)
        stored = max(0.0, time.monotonic() - self.t0 - self.stall) * self.rate
        return max(0, sent - int(stored))


def calibrated(stall: float, rate: float, **kwargs: float) -> tuple[float, soak.Soak]:
    run = soak.Soak(TARGET, batch=10, say=lambda _: None)
    run.sender = FrontDoor()  # type: ignore[assignment]
    run.backlog = Queues(run, stall, rate)  # type: ignore[assignment]
    return run.calibrate(keep=50, **kwargs), run


def test_a_window_in_which_nothing_was_stored_is_extended_until_something_is() -> None:
    rate, run = calibrated(stall=2.5, rate=1000.0, seconds=1.5, warmup=0.5, longest=30.0)
    assert rate > 0, run.calibration
    assert 2.0 <= run.calibration["measured_seconds"] <= 5.0, run.calibration


def test_a_pipeline_that_stores_nothing_reads_zero_after_the_longest_window() -> None:
    rate, run = calibrated(stall=3.5, rate=10_000.0, seconds=1.0, warmup=0.3, longest=2.0)
    assert rate == 0 and run.calibration["stored"] == 0, run.calibration
    assert 1.4 <= run.calibration["measured_seconds"] <= 2.5, run.calibration
