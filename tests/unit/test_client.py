"""mars.client: batching, retries with backoff and jitter on retryable errors only, idempotent ids."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from mars.client import MarsClient, MarsError, MarsValidationError, Retry, SqsTransport, prepare


class FakeResponse:
    def __init__(self, status: int, body: Any) -> None:
        self.status_code, self._body, self.text = status, body, json.dumps(body)

    def json(self) -> Any:
        return self._body


class FakeSession:
    """Scripted answers; records every request body."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[list[dict[str, Any]]] = []

    def post(self, url: str, data: str, headers: dict[str, str], timeout: float) -> FakeResponse:
        self.sent.append(json.loads(data)["events"])
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, body = answer
        if callable(body):
            body = body(self.sent[-1])
        return FakeResponse(status, body)


def accepted(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {"success": True, "event_ids": [e["event_id"] for e in events]}


def client(session: FakeSession, attempts: int = 4) -> tuple[MarsClient, list[float]]:
    sleeps: list[float] = []
    mars = MarsClient.http("http://mars.test/", retry=Retry(max_attempts=attempts, sleep=sleeps.append))
    mars.transport.session = session  # type: ignore[attr-defined]
    return mars, sleeps


EV = {"app_id": "shop", "message_id": "m1", "event": "CREATED"}


def test_prepare_fixes_the_idempotency_fields_once() -> None:
    a = prepare(EV)
    assert a["event_id"] and a["created_at"].endswith("Z") and "event_id" not in EV
    b = prepare({**EV, "event_id": "mine", "created_at": "2026-11-26T10:00:00Z"})
    assert b["event_id"] == "mine" and b["created_at"] == "2026-11-26T10:00:00Z"


def test_without_an_event_id_the_client_uses_the_id_mars_derives() -> None:
    """The same event sent by the client and, later, by anyone else (or a restarted client) is one event."""
    from mars_common.events import parse_event

    ev = {**EV, "created_at": "2026-11-26T11:00:00+01:00", "meta": {"k": "v"}}
    assert prepare(ev)["event_id"] == prepare(dict(ev))["event_id"] == parse_event(ev).event_id
    with pytest.raises(MarsValidationError) as bad:
        prepare({"app_id": "shop", "event": "X"})
    assert bad.value.details[0]["field"] == "message_id"


def test_retries_resend_the_same_event_ids() -> None:
    session = FakeSession((503, {"error": {"message": "busy"}}), requests.ConnectionError("reset"), (202, accepted))
    mars, sleeps = client(session)
    event_id = mars.send(EV)
    assert len(session.sent) == 3 and len(sleeps) == 2
    assert {e["event_id"] for sent in session.sent for e in sent} == {event_id}
    assert len({e["created_at"] for sent in session.sent for e in sent}) == 1


def test_a_partial_failure_resends_only_the_failed_items() -> None:
    def partial(events: list[dict[str, Any]]) -> dict[str, Any]:
        return {"success": False, "event_ids": [events[0]["event_id"]],
                "error": {"code": "ENQUEUE_FAILED", "message": "1 not enqueued",
                          "details": [{"index": 1, "event_id": events[1]["event_id"], "code": "X", "message": "y"}]}}

    session = FakeSession((207, partial), (202, accepted))
    mars, _ = client(session)
    ids = mars.send_many([EV, {**EV, "event": "SENT"}])
    assert [e["event_id"] for e in session.sent[1]] == [ids[1]]


def test_validation_errors_are_not_retried() -> None:
    details = [{"index": 0, "field": "event", "message": "is required"}]
    session = FakeSession((400, {"success": False, "error": {"code": "VALIDATION_ERROR", "message": "bad",
                                                             "details": details}}))
    mars, sleeps = client(session)
    with pytest.raises(MarsValidationError) as err:
        mars.send(EV)  # valid here; the server has the last word (e.g. a newer rule)
    assert err.value.details == details and sleeps == [] and len(session.sent) == 1
    with pytest.raises(MarsValidationError):
        mars.send({"app_id": "shop", "message_id": "m1"})  # invalid before anything is sent
    assert len(session.sent) == 1


def test_other_client_errors_are_not_retried_and_retries_are_bounded() -> None:
    mars, sleeps = client(FakeSession((404, {"error": {"message": "no"}})))
    with pytest.raises(MarsError):
        mars.send(EV)
    assert sleeps == []
    mars, sleeps = client(FakeSession(*[(503, {})] * 3), attempts=3)
    with pytest.raises(MarsError, match="gave up after 3 attempts"):
        mars.send(EV)
    assert len(sleeps) == 2


def test_backoff_is_exponential_with_full_jitter() -> None:
    retry = Retry(base_delay=0.1, max_delay=1.0)
    for attempt, cap in ((0, 0.1), (1, 0.2), (3, 0.8), (6, 1.0)):
        delays = [retry.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays) and max(delays) > cap / 2


def test_send_many_batches_500_per_request() -> None:
    session = FakeSession(*[(202, accepted)] * 3)
    mars, _ = client(session)
    ids = mars.send_many([{**EV, "message_id": f"m{i}"} for i in range(1200)])
    assert [len(s) for s in session.sent] == [500, 500, 200] and len(set(ids)) == 1200


def test_sqs_transport_packs_events_and_retries_throttling(aws_credentials: None) -> None:
    from moto import mock_aws

    with mock_aws():
        sqs = boto3.client("sqs", region_name="us-east-1")
        url = sqs.create_queue(QueueName="ingest")["QueueUrl"]
        calls = {"n": 0}
        real = sqs.send_message

        def flaky(**kwargs: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"},
                                   "ResponseMetadata": {"HTTPStatusCode": 400}}, "SendMessage")
            return real(**kwargs)

        sqs.send_message = flaky  # type: ignore[method-assign]
        sleeps: list[float] = []
        mars = MarsClient(SqsTransport(url, sqs), Retry(sleep=sleeps.append))
        ids = mars.send_many([{**EV, "message_id": f"m{i}"} for i in range(3)])
        bodies = [json.loads(m["Body"]) for m in
                  real.__self__.receive_message(QueueUrl=url, MaxNumberOfMessages=10)["Messages"]]
        assert len(sleeps) == 1 and calls["n"] == 2
        assert [e["event_id"] for e in bodies[0]["events"]] == ids, "one message, the same ids after the retry"
