"""mars.client: batching, retries with backoff and jitter on retryable errors only, idempotent ids."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from mars.client import MarsClient, MarsError, MarsNotFoundError, MarsValidationError, Retry, SqsTransport, prepare
from samlocal.httpserver import Handler, Server


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


# ------------------------------------------------------------------------------------------------ reading


class FakeApi(Handler):
    """`GET /api/messages/{id}` as the OpenAPI document describes it, over real HTTP: a short timeline
    whole, a long one in pages (`limit`, default and maximum 1,000; an opaque `cursor` that needs `app_id`)."""

    timelines: dict[str, list[dict[str, Any]]] = {}   # message_id -> timelines (all events)
    failures: list[int] = []                         # statuses to answer first, one per request
    seen: list[str] = []                             # request paths

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        parts = urlsplit(self.path)
        self.seen.append(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if self.failures:
            return self._answer(self.failures.pop(0), {"success": False, "error": {"code": "X", "message": "busy"}})
        message_id = unquote(parts.path.removeprefix("/api/messages/"))
        if "cursor" in query and "app_id" not in query:
            return self._answer(400, {"success": False, "error": {"code": "VALIDATION_ERROR", "message": "cursor needs app_id",
                                                                  "details": [{"field": "cursor", "message": "needs app_id"}]}})
        found = [t for t in self.timelines.get(message_id, []) if query.get("app_id") in (None, t["app_id"])]
        if not found:
            return self._answer(404, {"success": False, "error": {"code": "NOT_FOUND", "message": f"no events for {message_id!r}"}})
        out = []
        for t in found:
            events = t["events"]
            if "limit" not in query and "cursor" not in query and len(events) <= 5:
                out.append(t)   # a short timeline: the shape it always had
                continue
            start = int(base64.b64decode(query["cursor"]).decode()) if "cursor" in query else 0
            size = min(int(query.get("limit", 1000)), 1000)
            end = start + size
            out.append({**t, "events": events[start:end], "event_count": len(events),
                        "cursor": base64.b64encode(str(end).encode()).decode() if end < len(events) else None})
        self._answer(200, {"message_id": message_id, "timelines": out})

    def _answer(self, status: int, body: Any) -> None:
        self.reply(status, json.dumps(body).encode(), [("Content-Type", "application/json")])


def _events(n: int, prefix: str = "e") -> list[dict[str, Any]]:
    return [{"event": f"STEP_{i % 3}", "created_at": f"2026-11-26T10:{i // 6000:02d}:{i // 100 % 60:02d}.{i % 100:02d}0000Z",
             "event_id": f"{prefix}{i:05d}"} for i in range(n)]


def serve_fake_api() -> Iterator[tuple[Server, type[FakeApi]]]:
    """A FakeApi of its own (fresh class state) on a free loopback port, for a fixture to yield from."""
    handler = type("Api", (FakeApi,), {"timelines": {}, "failures": [], "seen": []})
    srv = Server("127.0.0.1", 0, handler, None)
    srv.start("fake-api")
    yield srv, handler
    srv.stop()


@pytest.fixture
def api() -> Iterator[tuple[Server, type[FakeApi]]]:
    yield from serve_fake_api()


def reader(srv: Server, attempts: int = 3) -> tuple[MarsClient, list[float]]:
    sleeps: list[float] = []
    return MarsClient.http(f"http://127.0.0.1:{srv.port}/", retry=Retry(max_attempts=attempts, sleep=sleeps.append)), sleeps


def test_get_message_follows_every_cursor_and_returns_each_event_once_in_order(api: tuple[Server, type[FakeApi]]) -> None:
    srv, handler = api
    long, short = _events(2500), _events(3, "s")
    handler.timelines["m 1/é"] = [{"app_id": "shop", "message_id": "m 1/é", "events": long, "missing": [], "status": "complete"},
                                  {"app_id": "bill", "message_id": "m 1/é", "events": short, "missing": [], "status": "unknown"}]
    mars, _ = reader(srv)
    body = mars.get_message("m 1/é")
    shop, bill = body["timelines"]
    assert [e["event_id"] for e in shop["events"]] == [e["event_id"] for e in long]
    assert shop["event_count"] == 2500 and shop["cursor"] is None
    assert bill == handler.timelines["m 1/é"][1]   # a short timeline keeps its shape: no event_count, no cursor
    # the first answer, then the shop timeline's two further pages, each asked with its app_id
    assert len(handler.seen) == 3 and all("app_id=shop" in p and "cursor=" in p for p in handler.seen[1:])
    assert handler.seen[0] == "/api/messages/m%201%2F%C3%A9"


def test_one_page_on_request_and_iter_pages_from_a_cursor(api: tuple[Server, type[FakeApi]]) -> None:
    srv, handler = api
    handler.timelines["m"] = [{"app_id": "shop", "message_id": "m", "events": _events(1200), "missing": [], "status": "x"}]
    mars, _ = reader(srv)
    (first,) = mars.get_message_page("m", "shop", limit=500)["timelines"]
    assert len(first["events"]) == 500 and first["event_count"] == 1200 and first["cursor"]
    pages = list(mars.iter_pages("m", "shop", cursor=first["cursor"], limit=500))
    assert [len(p["events"]) for p in pages] == [500, 200] and pages[-1]["cursor"] is None
    assert [e["event_id"] for p in [first, *pages] for e in p["events"]] == [f"e{i:05d}" for i in range(1200)]
    with pytest.raises(MarsValidationError, match="app_id"):
        mars.get_message_page("m", cursor=first["cursor"])   # said before anything is sent


def test_reads_retry_what_can_succeed_later_and_name_what_cannot(api: tuple[Server, type[FakeApi]]) -> None:
    srv, handler = api
    handler.timelines["m"] = [{"app_id": "shop", "message_id": "m", "events": _events(1001), "missing": [], "status": "x"}]
    handler.failures[:] = [503, 429]
    mars, sleeps = reader(srv)
    assert len(mars.get_message("m")["timelines"][0]["events"]) == 1001 and len(sleeps) == 2
    with pytest.raises(MarsNotFoundError, match="no events for 'nope'"):
        mars.get_message("nope")
    handler.failures[:] = [503, 503]
    with pytest.raises(MarsError, match="gave up after 2 attempts"):
        reader(srv, attempts=2)[0].get_message("m")
    handler.failures[:] = [403]
    with pytest.raises(MarsError, match="HTTP 403"):
        mars.get_message("m")


def test_a_cursor_given_twice_stops_the_paging_with_an_error(api: tuple[Server, type[FakeApi]]) -> None:
    srv, handler = api
    handler.timelines["m"] = [{"app_id": "shop", "message_id": "m", "events": _events(10), "missing": [], "status": "x"}]
    stuck = base64.b64encode(b"2").decode()

    class Loop(FakeApi):   # a broken server answering the same page forever
        def do_GET(self) -> None:  # noqa: N802
            self._answer(200, {"message_id": "m", "timelines": [{"app_id": "shop", "events": [], "cursor": stuck}]})

    srv.RequestHandlerClass = Loop
    with pytest.raises(MarsError, match="twice"):
        reader(srv)[0].get_message("m")


class AlertsApi(FakeApi):
    """`GET /api/alerts` as the OpenAPI document describes it: `{"items", "cursor"}`, `limit` per page."""

    alerts: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802
        parts = urlsplit(self.path)
        self.seen.append(self.path)
        if self.failures:
            return self._answer(self.failures.pop(0), {"success": False, "error": {"code": "X", "message": "busy"}})
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        assert parts.path == "/api/alerts"
        wanted = [a for a in self.alerts if a["app_id"] == query["app_id"] and query.get("state") in (None, a["state"])]
        start = int(query.get("cursor", "0"))
        end = start + int(query.get("limit", "20"))
        self._answer(200, {"items": wanted[start:end], "cursor": str(end) if end < len(wanted) else None})


def test_iter_alerts_follows_the_cursor_with_the_same_filters(api: tuple[Server, type[FakeApi]]) -> None:
    srv, _ = api
    handler = type("Alerts", (AlertsApi,), {"alerts": [{"app_id": "shop", "alert_id": f"a{i}",
                                                         "state": "resolved" if i % 3 else "firing"} for i in range(7)]
                                            + [{"app_id": "bill", "alert_id": "b", "state": "firing"}],
                                            "failures": [503], "seen": []})
    srv.RequestHandlerClass = handler
    mars, sleeps = reader(srv)
    got = list(mars.iter_alerts("shop", state="resolved", limit=2, frm="2026-11-01T00:00:00Z"))
    assert [a["alert_id"] for a in got] == ["a1", "a2", "a4", "a5"] and len(sleeps) == 1  # the 503 retried
    pages = [p for p in handler.seen if "state=resolved" in p]
    assert len(pages) == 2 + 1 and all("from=2026-11-01T00%3A00%3A00Z" in p and "limit=2" in p for p in pages)
    assert "cursor=2" in pages[2] and "cursor" not in pages[0]
    assert [a["alert_id"] for a in mars.iter_alerts("bill")] == ["b"]

    class Loop(AlertsApi):   # a broken server answering the same page forever
        def do_GET(self) -> None:  # noqa: N802
            self._answer(200, {"items": [], "cursor": "x"})

    srv.RequestHandlerClass = Loop
    with pytest.raises(MarsError, match="twice"):
        list(reader(srv)[0].iter_alerts("shop"))  # a new connection: the old one is served by the old handler


def test_reading_without_the_http_api_says_how(aws_credentials: None) -> None:
    mars = MarsClient(SqsTransport("http://127.0.0.1:1/q", client=object()))
    with pytest.raises(MarsError, match="HTTP API"):
        mars.get_message("m")
    with pytest.raises(MarsError, match="HTTP API"):
        next(mars.iter_alerts("shop"))
    assert MarsClient.sqs("http://127.0.0.1:1/q", client=object(), api_url="http://127.0.0.1:4000").reader is not None
