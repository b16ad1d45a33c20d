"""Lambda's SNS trigger (local.triggers.sns): the delivery poller never dies quietly."""

from __future__ import annotations

import json
import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from samlocal.invoker import InvokeResult
from samlocal.triggers import supervise
from samlocal.triggers.sns import SnsPoller, SnsSource


class ScriptedSqs:
    """The delivery queue: answers ReceiveMessage from a script (an exception, a malformed answer)."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.deleted: list[str] = []
        self._lock = threading.Lock()

    def receive_message(self, **_kwargs: Any) -> dict[str, Any]:
        with self._lock:
            answer = self.answers.pop(0) if self.answers else {}
        if not answer:
            time.sleep(0.02)
        return answer

    def delete_message(self, QueueUrl: str, ReceiptHandle: str) -> None:  # noqa: N803 (boto3's names)
        with self._lock:
            self.deleted.append(ReceiptHandle)


class RecordingPool:
    def __init__(self) -> None:
        self.spec = SimpleNamespace(name="unit-Fn")
        self.events: list[Any] = []

    def invoke(self, event: Any, *, trigger: str, source: str = "", **_kwargs: Any) -> InvokeResult:
        self.events.append(event)
        return InvokeResult(True)


def test_the_sns_poller_thread_is_restarted_when_it_dies(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(supervise, "RESTART_DELAY_SECONDS", 0.02)
    notification = {"Type": "Notification", "MessageId": "n1", "TopicArn": "arn:t", "Message": "hello"}
    sqs = ScriptedSqs([{"Messages": None},  # a malformed answer: iterating it raises in the poll loop
                       {"Messages": [{"Body": json.dumps(notification), "ReceiptHandle": "r1"}]}])
    pool = RecordingPool()
    caplog.set_level(logging.INFO, logger="samlocal.sns")
    poller = SnsPoller(sqs, pool, SnsSource("arn:t", "http://q/delivery", "arn:t:sub"))  # type: ignore[arg-type]
    poller.start()
    try:
        deadline = time.monotonic() + 5
        while not sqs.deleted and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        poller.stop()
    assert sqs.deleted == ["r1"] and pool.events[0]["Records"][0]["Sns"]["Message"] == "hello"
    died = [r for r in caplog.records if r.getMessage() == "trigger thread died; restarting"]
    assert died and died[0].levelno == logging.ERROR and vars(died[0])["topic"] == "arn:t"
