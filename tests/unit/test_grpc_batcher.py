"""The shim's batcher: one SendMessageBatch in flight per queue, the next one holding what arrived
meanwhile. Sends are recorded by a stand-in for `send_batch` that takes as long as a slow emulator."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from mars_common.events import Event, parse_event
from mars_common.queues import EnqueueFailure
from mars_common.sharding import shard

from grpc_shim import server

QUEUES = tuple(f"https://sqs.local/q{i}.fifo" for i in range(10))


def event(message_id: str, step: str = "CREATED") -> Event:
    return parse_event({"app_id": "shop", "message_id": message_id, "event": step,
                        "created_at": "2026-11-30T10:00:00Z"})


def same_queue(n: int) -> list[str]:
    """n message ids that land in one queue."""
    ids, i = [], 0
    while len(ids) < n:
        if shard("shop", f"m{i}", len(QUEUES)) == 0:
            ids.append(f"m{i}")
        i += 1
    return ids


class Recorder:
    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.delay, self.fail = delay, fail
        self.batches: list[tuple[str, list[Event]]] = []
        self.in_flight: dict[str, int] = {}
        self.overlap = False
        self.lock = threading.Lock()

    def __call__(self, url: str, items: list[tuple[int, Event]]) -> list[EnqueueFailure]:
        with self.lock:
            self.in_flight[url] = self.in_flight.get(url, 0) + 1
            self.overlap |= self.in_flight[url] > 1
        time.sleep(self.delay)
        with self.lock:
            self.in_flight[url] -= 1
            self.batches.append((url, [ev for _i, ev in items]))
        if self.fail:
            raise ConnectionError("the emulator went away")
        return []


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    rec = Recorder()
    monkeypatch.setattr(server, "send_batch", rec)
    return rec


def test_a_lone_call_is_sent_at_once(recorder: Recorder) -> None:
    async def run() -> None:
        batcher = server.Batcher(QUEUES)
        call = asyncio.create_task(batcher.enqueue([event("m-alone")]))
        await asyncio.sleep(0)  # the call runs up to its first wait
        assert batcher._in_flight == {shard("shop", "m-alone", len(QUEUES))}  # its send is under way: no timer first
        assert await call == []

    asyncio.run(run())
    assert len(recorder.batches) == 1


def test_calls_arriving_during_a_send_go_together_in_the_next_batch(recorder: Recorder) -> None:
    ids = same_queue(8)

    async def run() -> server.Batcher:
        batcher = server.Batcher(QUEUES)
        first = asyncio.create_task(batcher.enqueue([event(ids[0])]))
        await asyncio.sleep(0.01)  # the first batch is in flight
        rest = [asyncio.create_task(batcher.enqueue([event(i)])) for i in ids[1:]]
        assert await asyncio.gather(first, *rest) == [[]] * 8
        return batcher

    batcher = asyncio.run(run())
    assert [len(b) for _url, b in recorder.batches] == [1, 7]
    assert batcher.batches_sent == 2 and batcher.events_sent == 8
    assert not recorder.overlap  # never two sends to one queue at once


def test_one_messages_events_reach_its_queue_in_call_order(recorder: Recorder) -> None:
    steps = [f"STEP_{n:02d}" for n in range(25)]

    async def run() -> None:
        batcher = server.Batcher(QUEUES)
        calls = []
        for step in steps:  # 25 calls, one after the other, none awaited before the next arrives
            calls.append(asyncio.create_task(batcher.enqueue([event("m-ordered", step)])))
            await asyncio.sleep(0.004)
        await asyncio.gather(*calls)

    asyncio.run(run())
    sent = [ev.event for _url, batch in recorder.batches for ev in batch]
    assert sent == steps and not recorder.overlap
    assert all(len(batch) <= 10 for _url, batch in recorder.batches)


def test_queues_send_in_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each send waits until all ten queues have one in flight: sends made one after another would never
    # get there (the barrier breaks after 30 s and every send fails). No timing: a busy machine's slow
    # thread starts only make it wait longer (a 0.6 s bound on the whole failed once under load).
    ten_at_once = threading.Barrier(len(QUEUES), timeout=30)
    rec = Recorder(delay=0)

    def send_when_all_ten_are_sending(url: str, items: list[tuple[int, Event]]) -> list[EnqueueFailure]:
        ten_at_once.wait()
        return rec(url, items)

    monkeypatch.setattr(server, "send_batch", send_when_all_ten_are_sending)

    async def run() -> list[list[EnqueueFailure]]:
        batcher = server.Batcher(QUEUES)
        ids = {shard("shop", f"p{i}", len(QUEUES)): f"p{i}" for i in range(200)}
        return await asyncio.gather(*(batcher.enqueue([event(m)]) for m in ids.values()))

    assert asyncio.run(run()) == [[]] * 10  # ten queues at once, not one after another
    assert len(rec.batches) == 10 and not ten_at_once.broken


def test_a_send_that_raises_answers_every_caller_with_its_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(fail=True)
    monkeypatch.setattr(server, "send_batch", rec)
    ids = same_queue(3)

    async def run() -> list[Any]:
        batcher = server.Batcher(QUEUES)
        first = asyncio.create_task(batcher.enqueue([event(ids[0])]))
        await asyncio.sleep(0.01)
        later = [asyncio.create_task(batcher.enqueue([event(i)])) for i in ids[1:]]
        return await asyncio.wait_for(asyncio.gather(first, *later), timeout=5)

    results = asyncio.run(run())
    assert all(len(r) == 1 and r[0].code == "ConnectionError" for r in results)
    assert len(rec.batches) == 2  # the batch after a failed one is still sent
