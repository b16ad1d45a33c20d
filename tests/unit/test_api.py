"""ApiFunction (the Chalice app, `Handler: app.app`) invoked with API Gateway REST proxy v1 events,
against template.yaml's queues and tables under moto."""

from __future__ import annotations

import copy
import json
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pytest
from botocore.exceptions import ClientError
from mars_common import aws, config, queues
from mars_common.config import settings
from mars_common.events import parse_event
from mars_common.sharding import dedup_id, message_key, shard
from mars_common.store import upsert_message

from tests.conftest import event_file, load_function

API_EVENT_FILES = ["api_post_event.json", "api_post_bulk.json", "api_get_message.json", "api_list_messages.json",
                   "api_put_lifecycle.json"]
TIMELINE_KEYS = {"app_id", "message_id", "events", "missing", "status", "first_seen", "last_seen"}
LIFECYCLE = ["MESSAGE_CREATED", "MESSAGE_QUEUED", "MESSAGE_SENT", "MESSAGE_DELIVERED", "MESSAGE_ACKED"]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


class Api:
    """Sends proxy events to the Chalice app the way API Gateway does (a real event file, re-aimed)."""

    def __init__(self, module: Any, context: Any) -> None:
        self.module, self.context = module, context
        self.template = event_file("api_post_event.json")

    def event(self, method: str, path: str, *, resource: str | None = None, body: Any = None,
              raw: str | None = None, query: dict[str, str] | None = None, params: dict[str, str] | None = None,
              content_type: str = "application/json") -> dict[str, Any]:
        event = copy.deepcopy(self.template)
        resource = resource or path
        headers = {k: v for k, v in event["headers"].items() if k not in ("Content-Type", "Content-Length")}
        text = raw if raw is not None else (None if body is None else json.dumps(body, ensure_ascii=False))
        if text is not None:
            headers["Content-Type"] = content_type
            headers["Content-Length"] = str(len(text.encode()))
        event.update({
            "resource": resource, "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {k: [v] for k, v in headers.items()},
            "queryStringParameters": query or None,
            "multiValueQueryStringParameters": {k: [v] for k, v in query.items()} if query else None,
            "pathParameters": params or None, "body": text, "isBase64Encoded": False,
        })
        event["requestContext"].update({"resourcePath": resource, "httpMethod": method, "path": "/dev" + path,
                                        "requestId": str(uuid.uuid4())})
        return event

    def send(self, event: dict[str, Any]) -> Reply:
        out = self.module.app(event, self.context)
        headers = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
        body = out.get("body")
        parsed = json.loads(body) if body else None
        return Reply(out["statusCode"], headers, parsed)

    def call(self, method: str, path: str, **kwargs: Any) -> Reply:
        return self.send(self.event(method, path, **kwargs))


@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any) -> Api:
    return Api(load_function("api"), lambda_context)


def queue_urls() -> list[str]:
    return list(settings().events_queue_urls)


def depths() -> list[int]:
    sqs = aws.client("sqs")
    return [int(sqs.get_queue_attributes(QueueUrl=u, AttributeNames=["ApproximateNumberOfMessages"])
                ["Attributes"]["ApproximateNumberOfMessages"])
            for u in [*queue_urls(), settings().dead_letter_queue_url]]


def drain(url: str) -> list[dict[str, Any]]:
    sqs = aws.client("sqs")
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"],
                                  VisibilityTimeout=60).get("Messages", [])
        if not got:
            return out
        out.extend(got)


def assert_error(reply: Reply, status: int, code: str | None = None) -> list[dict[str, Any]]:
    assert reply.status == status, reply.body
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.body["success"] is False
    error = reply.body["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["details"], list)
    if code:
        assert error["code"] == code
    return error["details"]


def fields(details: list[dict[str, Any]]) -> set[str]:
    return {d["field"] for d in details}


def each_case(cases: list[Any], check: Any) -> None:
    """Runs every case on one mocked stack (a stack per case is slow) and reports every failing case."""
    problems = []
    for case in cases:
        try:
            check(*case.values)
        except AssertionError as exc:
            problems.append(f"[{case.id}] {exc}")
    assert not problems, "\n".join(problems)


def event_body(**overrides: Any) -> dict[str, Any]:
    body = {"app_id": "checkout", "message_id": "order-1", "event": "MESSAGE_CREATED",
            "created_at": "2024-05-01T10:00:00Z"}
    body.update(overrides)
    return body


# --- the event files are real API Gateway events ------------------------------------------------

@pytest.mark.parametrize("name", API_EVENT_FILES)
def test_event_files_are_rest_proxy_v1_events_for_declared_routes(name: str) -> None:
    event = event_file(name)
    assert {"resource", "path", "httpMethod", "headers", "multiValueHeaders", "queryStringParameters",
            "multiValueQueryStringParameters", "pathParameters", "stageVariables", "requestContext", "body",
            "isBase64Encoded"} <= set(event)
    ctx = event["requestContext"]
    assert ctx["resourcePath"] == event["resource"] and ctx["httpMethod"] == event["httpMethod"]
    assert ctx["path"] == f"/{ctx['stage']}{event['path']}"
    assert {"requestId", "accountId", "apiId", "stage", "identity", "requestTimeEpoch", "domainName"} <= set(ctx)
    assert ctx["identity"]["sourceIp"]
    path = event["resource"]
    for key, value in (event["pathParameters"] or {}).items():
        path = path.replace("{" + key + "}", value)
    assert path == event["path"]
    assert event["multiValueHeaders"] == {k: [v] for k, v in event["headers"].items()}
    if event["queryStringParameters"]:
        assert event["multiValueQueryStringParameters"] == {k: [v] for k, v in event["queryStringParameters"].items()}
    if event["body"] is not None:
        assert int(event["headers"]["Content-Length"]) == len(event["body"].encode())
        json.loads(event["body"])
    module = load_function("api")
    assert event["httpMethod"] in module.app.routes[event["resource"]]


# --- POST /api/event ----------------------------------------------------------------------------

def test_post_event_enqueues_into_its_shard(api: Api) -> None:
    event = event_file("api_post_event.json")
    reply = api.send(event)
    assert reply.status == 202, reply.body
    sent = json.loads(event["body"])
    expected = parse_event(sent)
    assert reply.body == {"success": True, "event_ids": [expected.event_id]}
    target = shard(sent["app_id"], sent["message_id"], 10)
    assert depths() == [1 if i == target else 0 for i in range(10)] + [0]
    [message] = drain(queue_urls()[target])
    assert message["Attributes"]["MessageGroupId"] == message_key("checkout", "order-1001")
    assert message["Attributes"]["MessageDeduplicationId"] == dedup_id("checkout", "order-1001", expected.event_id)
    body = json.loads(message["Body"])
    assert body["created_at"] == "2023-11-28T09:15:42.120000Z"  # +01:00 converted to UTC
    assert body["meta"] == sent["meta"] and body["event_id"] == expected.event_id
    assert body["received_at"].endswith("Z")


def test_posting_the_same_event_twice_is_deduplicated(api: Api) -> None:
    first = api.call("POST", "/api/event", body=event_body())
    again = api.call("POST", "/api/event", body=event_body())
    assert first.status == again.status == 202
    assert first.body["event_ids"] == again.body["event_ids"]
    assert sum(depths()) == 1  # same dedup id within SQS's 5-minute window


def test_client_event_id_is_echoed(api: Api) -> None:
    reply = api.call("POST", "/api/event", body=event_body(event_id="client:42"))
    assert reply.body == {"success": True, "event_ids": ["client:42"]}


def test_curl_and_wrk_content_types_are_accepted(api: Api) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json; charset=utf-8"):
        reply = api.call("POST", "/api/event", body=event_body(), content_type=content_type)
        assert reply.status == 202, (content_type, reply.body)


def test_unsupported_content_type_answers_in_the_error_format(api: Api) -> None:
    reply = api.call("POST", "/api/event", body=event_body(), content_type="application/xml")
    assert_error(reply, 415)


INVALID_SINGLE = [
    pytest.param(event_body(event=None), "VALIDATION_ERROR", {"event"}, id="missing-field"),
    pytest.param({k: v for k, v in event_body().items() if k != "app_id"}, "VALIDATION_ERROR", {"app_id"},
                 id="absent-field"),
    pytest.param(event_body(colour="red"), "VALIDATION_ERROR", {"colour"}, id="unknown-field"),
    pytest.param(event_body(created_at="next tuesday"), "VALIDATION_ERROR", {"created_at"}, id="bad-timestamp"),
    pytest.param(event_body(message_id=12345), "VALIDATION_ERROR", {"message_id"}, id="wrong-type"),
    pytest.param(event_body(message_id="m" * 257), "VALIDATION_ERROR", {"message_id"}, id="oversize-message-id"),
    pytest.param(event_body(app_id="a" * 129), "VALIDATION_ERROR", {"app_id"}, id="oversize-app-id"),
    pytest.param(event_body(meta={"k": "v" * 3000}), "VALIDATION_ERROR", {"meta"}, id="oversize-meta"),
    pytest.param(event_body(app_id="bad app", event=""), "VALIDATION_ERROR", {"app_id", "event"}, id="two-errors"),
    pytest.param([event_body()], "VALIDATION_ERROR", None, id="json-array"),
    pytest.param({"events": [event_body()]}, "VALIDATION_ERROR", {"events"}, id="bulk-on-single-route"),
    pytest.param("{not json", "INVALID_JSON", set(), id="bad-json"),
    pytest.param("", "INVALID_JSON", set(), id="empty-body"),
    pytest.param("   \n", "INVALID_JSON", set(), id="blank-body"),
    pytest.param(None, "INVALID_JSON", set(), id="no-body"),
]


def test_invalid_event_is_a_400_and_nothing_is_enqueued(api: Api) -> None:
    each_case(INVALID_SINGLE, lambda *case: _invalid_single(api, *case))


def _invalid_single(api: Api, body: Any, code: str, bad_fields: set[str] | None) -> None:
    if isinstance(body, str):
        reply = api.call("POST", "/api/event", raw=body)
    elif body is None:
        reply = api.call("POST", "/api/event")
    else:
        reply = api.call("POST", "/api/event", body=body)
    details = assert_error(reply, 400, code)
    if bad_fields is not None:
        assert fields(details) == bad_fields
    assert all(isinstance(d["message"], str) and d["message"] for d in details)
    assert depths() == [0] * 11


def test_out_of_range_timestamp_is_a_400(api: Api) -> None:
    reply = api.call("POST", "/api/event", body=event_body(created_at="0001-01-01T00:00:00+01:00"))
    assert fields(assert_error(reply, 400, "VALIDATION_ERROR")) == {"created_at"}


def test_body_too_large_is_a_413(api: Api) -> None:
    huge = json.dumps(event_body(meta={"pad": "x" * (2 * 1024 * 1024)}))
    assert_error(api.call("POST", "/api/event", raw=huge), 413, "PAYLOAD_TOO_LARGE")
    assert_error(api.call("POST", "/api/event/bulk", raw=huge), 413, "PAYLOAD_TOO_LARGE")
    assert depths() == [0] * 11


# --- POST /api/event/bulk -----------------------------------------------------------------------

def test_bulk_file_enqueues_every_event_in_order(api: Api) -> None:
    event = event_file("api_post_bulk.json")
    items = json.loads(event["body"])["events"]
    reply = api.send(event)
    assert reply.status == 202, reply.body
    assert reply.body == {"success": True, "event_ids": [parse_event(i).event_id for i in items]}
    assert reply.body["event_ids"][1] == "order-1001:sent:1"
    assert sum(depths()) == len(items)
    target = shard("checkout", "order-1001", 10)
    bodies = [json.loads(m["Body"]) for m in drain(queue_urls()[target])]
    order_1001 = [b["event"] for b in bodies if b["message_id"] == "order-1001"]
    assert order_1001 == ["MESSAGE_QUEUED", "MESSAGE_SENT"]  # FIFO: the order they were posted in


def test_bulk_of_500_is_spread_over_every_queue(api: Api) -> None:
    items = [event_body(message_id=f"bulk-{i}", event="MESSAGE_SENT") for i in range(500)]
    reply = api.call("POST", "/api/event/bulk", body={"events": items})
    assert reply.status == 202, reply.body
    ids = reply.body["event_ids"]
    assert len(ids) == 500 and len(set(ids)) == 500
    expected = Counter(shard("checkout", f"bulk-{i}", 10) for i in range(500))
    assert depths() == [expected[q] for q in range(10)] + [0]
    assert all(expected[q] > 0 for q in range(10))


INVALID_BULK = [
    pytest.param({"events": [event_body(message_id=f"m{i}") for i in range(501)]}, {"events"}, id="over-500"),
    pytest.param({"events": []}, {"events"}, id="empty-list"),
    pytest.param({"events": "x"}, {"events"}, id="not-a-list"),
    pytest.param({"events": [event_body()], "app_id": "x"}, {"app_id"}, id="unknown-key"),
    pytest.param([event_body()], {"events"}, id="bare-list"),
    pytest.param(event_body(), {"events"}, id="single-event"),
]


def test_invalid_bulk_is_a_400_and_nothing_is_enqueued(api: Api) -> None:
    def check(body: Any, bad_fields: set[str]) -> None:
        details = assert_error(api.call("POST", "/api/event/bulk", body=body), 400, "VALIDATION_ERROR")
        assert fields(details) == bad_fields
        assert depths() == [0] * 11

    each_case(INVALID_BULK, check)


def test_one_invalid_item_rejects_the_whole_bulk_with_per_index_details(api: Api) -> None:
    items = [event_body(message_id=f"m{i}") for i in range(6)]
    items[2]["created_at"] = "yesterday"
    items[4] = {"app_id": "checkout", "message_id": "m4"}
    items[5] = "not an object"
    details = assert_error(api.call("POST", "/api/event/bulk", body={"events": items}), 400, "VALIDATION_ERROR")
    assert {(d["index"], d["field"]) for d in details} == {(2, "created_at"), (4, "event"), (5, "events[5]")}
    assert depths() == [0] * 11


# --- enqueue failures are reported, never dropped -----------------------------------------------

def _patch_sqs(monkeypatch: pytest.MonkeyPatch, behaviour: Any, method: str | None = None) -> list[dict[str, Any]]:
    """`behaviour(real, calls, **kwargs)` answers the SQS client's `method`; without one, every send
    (a batch, or a lone entry's SendMessage) as SendMessageBatch would, with QueueUrl and Entries."""
    calls: list[dict[str, Any]] = []
    if method is None:
        real_send = queues._send

        def real(**kw: Any) -> Any:
            return real_send(kw["QueueUrl"], kw["Entries"])

        def fake_send(url: str, entries: list[dict[str, Any]]) -> Any:
            calls.append({"QueueUrl": url, "Entries": entries})
            return behaviour(real, calls, QueueUrl=url, Entries=entries)

        monkeypatch.setattr(queues, "_send", fake_send)
        return calls
    sqs = aws.client("sqs")
    real_method = getattr(sqs, method)

    def fake(**kwargs: Any) -> Any:
        calls.append(kwargs)
        return behaviour(real_method, calls, **kwargs)

    monkeypatch.setattr(sqs, method, fake)
    return calls


def _failed(entries: list[dict[str, Any]], code: str = "InternalError", sender: bool = False) -> dict[str, Any]:
    return {"Successful": [], "Failed": [{"Id": e["Id"], "SenderFault": sender, "Code": code,
                                          "Message": f"{code} (simulated)"} for e in entries]}


def _bulk(n: int) -> dict[str, Any]:
    return {"events": [event_body(message_id=f"fail-{i}") for i in range(n)]}


def test_every_entry_failed_is_a_503_listing_every_index(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _patch_sqs(monkeypatch, lambda real, calls, **kw: _failed(kw["Entries"]))
    reply = api.call("POST", "/api/event/bulk", body=_bulk(12))
    details = assert_error(reply, 503, "ENQUEUE_FAILED")
    assert reply.body["event_ids"] == []
    assert sorted(d["index"] for d in details) == list(range(12))
    assert all(d["code"] == "InternalError" and d["event_id"] for d in details)
    assert reply.headers.get("retry-after")
    assert depths() == [0] * 11
    assert len(calls) > len({c["QueueUrl"] for c in calls})  # server faults are retried


def test_a_raising_sqs_call_is_a_503(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(real: Any, calls: Any, **kw: Any) -> Any:
        raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "try later"}}, "SendMessage")

    calls = _patch_sqs(monkeypatch, boom, "send_message")
    reply = api.call("POST", "/api/event", body=event_body())
    details = assert_error(reply, 503, "ENQUEUE_FAILED")
    assert [(d["index"], d["code"]) for d in details] == [(0, "ServiceUnavailable")]
    assert len(calls) == 3  # retried, then reported
    assert depths() == [0] * 11


def test_one_event_is_one_send_message_with_the_batch_entry_fields(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = _patch_sqs(monkeypatch, lambda real, calls, **kw: real(**kw), "send_message_batch")
    failures = iter([ClientError({"Error": {"Code": "InternalError", "Message": "once"}}, "SendMessage")])

    def flaky(real: Any, calls: Any, **kw: Any) -> Any:
        failure = next(failures, None)
        if failure:
            raise failure
        return real(**kw)

    singles = _patch_sqs(monkeypatch, flaky, "send_message")
    reply = api.call("POST", "/api/event", body=event_body(message_id="lone"))
    assert reply.status == 202, reply.body
    assert batches == [] and len(singles) == 2  # one transient failure, retried
    assert set(singles[1]) == {"QueueUrl", "MessageBody", "MessageGroupId", "MessageDeduplicationId"}
    assert json.loads(singles[1]["MessageBody"])["event_id"] == reply.body["event_ids"][0]
    assert sum(depths()) == 1


def test_one_failing_queue_is_a_207_naming_exactly_its_events(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_queue = queue_urls()[3]

    def one_queue_down(real: Any, calls: Any, **kw: Any) -> Any:
        return _failed(kw["Entries"]) if kw["QueueUrl"] == bad_queue else real(**kw)

    _patch_sqs(monkeypatch, one_queue_down)
    body = _bulk(40)
    reply = api.call("POST", "/api/event/bulk", body=body)
    details = assert_error(reply, 207, "ENQUEUE_FAILED")
    lost = sorted(i for i, e in enumerate(body["events"]) if shard(e["app_id"], e["message_id"], 10) == 3)
    assert lost and sorted(d["index"] for d in details) == lost
    ids = [parse_event(e).event_id for e in body["events"]]
    assert reply.body["event_ids"] == [ids[i] for i in range(40) if i not in lost]
    assert {d["event_id"] for d in details} == {ids[i] for i in lost}
    assert sum(depths()) == 40 - len(lost) and depths()[3] == 0


def test_a_transient_entry_failure_is_retried(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    def flaky(real: Any, calls: Any, **kw: Any) -> Any:
        if len(calls) == 1:  # the first attempt fails one entry
            out = real(**{**kw, "Entries": kw["Entries"][1:]})
            out.setdefault("Failed", []).extend(_failed(kw["Entries"][:1])["Failed"])
            return out
        return real(**kw)

    calls = _patch_sqs(monkeypatch, flaky)
    items = [event_body(message_id="same", event=f"STEP_{i}") for i in range(3)]
    reply = api.call("POST", "/api/event/bulk", body={"events": items})
    assert reply.status == 202 and len(reply.body["event_ids"]) == 3
    assert len(calls) == 2 and sum(depths()) == 3


def test_sender_faults_are_not_retried_and_keep_their_codes(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _patch_sqs(monkeypatch, lambda real, calls, **kw: _failed(kw["Entries"], "InvalidParameterValue", True))
    items = [event_body(message_id="same", event=f"STEP_{i}") for i in range(3)]  # one queue, one batch
    details = assert_error(api.call("POST", "/api/event/bulk", body={"events": items}), 503, "ENQUEUE_FAILED")
    assert sorted(d["index"] for d in details) == [0, 1, 2]
    assert {d["code"] for d in details} == {"InvalidParameterValue"}
    assert len(calls) == 1


# --- GET /api/create_event ----------------------------------------------------------------------

def test_create_event_enqueues_count_random_lifecycle_events(api: Api) -> None:
    reply = api.call("GET", "/api/create_event", query={"count": "25"})
    assert reply.status == 202, reply.body
    assert reply.body["success"] is True and len(set(reply.body["event_ids"])) == 25
    assert sum(depths()) == 25 and depths()[10] == 0
    one = api.call("GET", "/api/create_event")
    assert one.status == 202 and len(one.body["event_ids"]) == 1
    bodies = [json.loads(m["Body"]) for u in queue_urls() for m in drain(u)]
    assert len(bodies) == 26
    assert {b["app_id"] for b in bodies} == {"mars-loadtest"}
    assert {b["event"] for b in bodies} <= set(LIFECYCLE)


def test_create_event_count_out_of_range_is_a_400(api: Api) -> None:
    def check(count: str) -> None:
        details = assert_error(api.call("GET", "/api/create_event", query={"count": count}), 400,
                               "VALIDATION_ERROR")
        assert fields(details) == {"count"}
        assert depths() == [0] * 11

    each_case([pytest.param(c, id=c or "empty") for c in ("0", "501", "-3", "ten", "1.5", "")], check)


def test_create_event_is_a_404_unless_the_stage_allows_test_routes(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALLOW_TEST_ROUTES", "false")
    config.settings.cache_clear()
    try:
        assert_error(api.call("GET", "/api/create_event", query={"count": "5"}), 404, "NOT_FOUND")
        assert depths() == [0] * 11
    finally:
        config.settings.cache_clear()


# --- lifecycles ---------------------------------------------------------------------------------

def test_lifecycle_put_get_round_trip(api: Api) -> None:
    put = api.send(event_file("api_put_lifecycle.json"))
    assert put.status == 200, put.body
    assert put.body["app_id"] == "checkout" and put.body["events"] == LIFECYCLE and put.body["sla_seconds"] == 300
    got = api.call("GET", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                   params={"app_id": "checkout"})
    assert got.status == 200
    assert got.body == {"app_id": "checkout", "events": LIFECYCLE, "sla_seconds": 300, "updated_at": put.body["updated_at"],
                        "optional": [], "failure": [], "deadlines": []}  # a body without rules: none
    replaced = api.call("PUT", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                        params={"app_id": "checkout"}, body={"events": ["A", "B"]})
    assert replaced.status == 200 and replaced.body["sla_seconds"] == 0
    again = api.call("GET", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                     params={"app_id": "checkout"})
    assert again.body["events"] == ["A", "B"]


def test_lifecycle_of_an_unknown_app_is_a_404(api: Api) -> None:
    reply = api.call("GET", "/api/apps/nobody/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                     params={"app_id": "nobody"})
    assert_error(reply, 404, "NOT_FOUND")


INVALID_LIFECYCLES = [
    pytest.param({"events": []}, {"events"}, id="empty"),
    pytest.param({"sla_seconds": 5}, {"events"}, id="no-events"),
    pytest.param({"events": "CREATED"}, {"events"}, id="not-a-list"),
    pytest.param({"events": ["A", "A"]}, {"events"}, id="duplicate-names"),
    pytest.param({"events": ["A", 5]}, {"events"}, id="non-string-name"),
    pytest.param({"events": ["E" * 129]}, {"events"}, id="long-name"),
    pytest.param({"events": [f"E{i}" for i in range(51)]}, {"events"}, id="too-many"),
    pytest.param({"events": ["A"], "sla_seconds": -1}, {"sla_seconds"}, id="negative-sla"),
    pytest.param({"events": ["A"], "sla_seconds": "300"}, {"sla_seconds"}, id="string-sla"),
    pytest.param({"events": ["A"], "sla_seconds": True}, {"sla_seconds"}, id="bool-sla"),
    pytest.param({"events": ["A"], "sla_seconds": 1.5}, {"sla_seconds"}, id="float-sla"),
    pytest.param({"events": ["A"], "sla_seconds": 31 * 86400}, {"sla_seconds"}, id="huge-sla"),
    pytest.param({"events": ["A"], "sla": 5}, {"sla"}, id="unknown-field"),
    pytest.param(["A"], {"body"}, id="not-an-object"),
    pytest.param({"events": [], "sla_seconds": -1}, {"events", "sla_seconds"}, id="every-error"),
]


def test_lifecycle_validation(api: Api) -> None:
    def check(body: Any, bad_fields: set[str]) -> None:
        reply = api.call("PUT", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                         params={"app_id": "checkout"}, body=body)
        assert fields(assert_error(reply, 400, "VALIDATION_ERROR")) == bad_fields
        got = api.call("GET", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                       params={"app_id": "checkout"})
        assert got.status == 404  # nothing was written

    each_case(INVALID_LIFECYCLES, check)


def test_lifecycle_bad_app_id_and_bad_json(api: Api) -> None:
    reply = api.call("PUT", "/api/apps/bad app/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                     params={"app_id": "bad app"}, body={"events": ["A"]})
    assert fields(assert_error(reply, 400, "VALIDATION_ERROR")) == {"app_id"}
    reply = api.call("PUT", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                     params={"app_id": "checkout"}, raw="{")
    assert_error(reply, 400, "INVALID_JSON")


# --- GET /api/messages/{message_id} -------------------------------------------------------------

def _store(app_id: str, message_id: str, *names_and_times: tuple[str, str], meta: dict[str, str] | None = None) -> None:
    events = [parse_event({"app_id": app_id, "message_id": message_id, "event": n, "created_at": t,
                           **({"meta": meta} if meta and i == 0 else {})})
              for i, (n, t) in enumerate(names_and_times)]
    upsert_message(settings().messages_table, app_id, message_id, events, 30)


def test_get_message_is_404_then_the_timeline(api: Api) -> None:
    event = event_file("api_get_message.json")
    assert_error(api.send(event), 404, "NOT_FOUND")
    api.send(event_file("api_put_lifecycle.json"))
    _store("checkout", "order-1001", ("MESSAGE_SENT", "2023-11-28T09:15:43.010Z"),
           ("MESSAGE_CREATED", "2023-11-28T09:15:42.120Z"), ("MESSAGE_RETRIED", "2023-11-28T09:15:42.500Z"),
           meta={"smtp": "250 OK"})
    reply = api.send(event)
    assert reply.status == 200, reply.body
    assert set(reply.body) == {"message_id", "timelines"} and reply.body["message_id"] == "order-1001"
    [timeline] = reply.body["timelines"]
    assert TIMELINE_KEYS <= set(timeline)
    assert (timeline["app_id"], timeline["message_id"]) == ("checkout", "order-1001")
    assert [e["event"] for e in timeline["events"]] == ["MESSAGE_CREATED", "MESSAGE_RETRIED", "MESSAGE_SENT"]
    for ev in timeline["events"]:
        assert {"event", "created_at", "event_id"} <= set(ev) <= {"event", "created_at", "event_id", "meta",
                                                                  "received_at"}
    assert timeline["events"][2]["meta"] == {"smtp": "250 OK"} and "meta" not in timeline["events"][0]
    assert timeline["missing"] == ["MESSAGE_QUEUED", "MESSAGE_DELIVERED", "MESSAGE_ACKED"]
    assert timeline["status"] in ("in_progress", "stuck")
    assert timeline["first_seen"] == "2023-11-28T09:15:42.120000Z"
    assert timeline["last_seen"] == "2023-11-28T09:15:43.010000Z"


def test_get_message_without_lifecycle_is_unknown_and_complete_with_all_steps(api: Api) -> None:
    _store("billing", "invoice-21", ("INVOICE_ISSUED", "2023-11-28T09:15:45Z"))
    reply = api.call("GET", "/api/messages/invoice-21", resource="/api/messages/{message_id}",
                     params={"message_id": "invoice-21"})
    assert reply.body["timelines"][0]["status"] == "unknown" and reply.body["timelines"][0]["missing"] == []
    upsert_message(settings().messages_table, "checkout", "done", [
        parse_event({"app_id": "checkout", "message_id": "done", "event": n}) for n in LIFECYCLE], 30)
    api.send(event_file("api_put_lifecycle.json"))
    reply = api.call("GET", "/api/messages/done", resource="/api/messages/{message_id}",
                     params={"message_id": "done"})
    assert reply.body["timelines"][0]["status"] == "complete" and reply.body["timelines"][0]["missing"] == []


def test_get_message_across_apps_and_filtered(api: Api) -> None:
    _store("zeta", "shared", ("A", "2024-05-01T10:00:00Z"))
    _store("alpha", "shared", ("B", "2024-05-01T10:00:00Z"), ("C", "2024-05-01T10:00:01Z"))
    kwargs: dict[str, Any] = {"resource": "/api/messages/{message_id}", "params": {"message_id": "shared"}}
    both = api.call("GET", "/api/messages/shared", **kwargs)
    assert [t["app_id"] for t in both.body["timelines"]] == ["alpha", "zeta"]
    assert [len(t["events"]) for t in both.body["timelines"]] == [2, 1]
    one = api.call("GET", "/api/messages/shared", query={"app_id": "zeta"}, **kwargs)
    assert [t["app_id"] for t in one.body["timelines"]] == ["zeta"]
    assert_error(api.call("GET", "/api/messages/shared", query={"app_id": "nobody"}, **kwargs), 404, "NOT_FOUND")
    details = assert_error(api.call("GET", "/api/messages/shared", query={"app_id": "bad app"}, **kwargs), 400)
    assert fields(details) == {"app_id"}


def test_get_message_with_an_unusual_id(api: Api) -> None:
    message_id = "order 42 — ünïcödé 日本"
    _store("checkout", message_id, ("A", "2024-05-01T10:00:00Z"))
    reply = api.call("GET", "/api/messages/order%2042", resource="/api/messages/{message_id}",
                     params={"message_id": message_id})  # API Gateway passes path parameters decoded
    assert reply.status == 200 and reply.body["timelines"][0]["message_id"] == message_id


# --- GET /api/messages --------------------------------------------------------------------------

def test_list_messages_file_shape(api: Api) -> None:
    event = event_file("api_list_messages.json")
    empty = api.send(event)
    assert empty.status == 200 and empty.body == {"items": [], "cursor": None}
    for i in range(3):
        _store("checkout", f"order-{i}", ("MESSAGE_CREATED", f"2024-05-01T10:00:0{i}Z"))
    _store("billing", "invoice-1", ("INVOICE_ISSUED", "2024-05-01T10:00:00Z"))
    reply = api.send(event)
    assert reply.status == 200 and set(reply.body) == {"items", "cursor"}
    assert reply.body["cursor"] is None
    assert [i["message_id"] for i in reply.body["items"]] == ["order-2", "order-1", "order-0"]  # newest first
    for item in reply.body["items"]:
        assert TIMELINE_KEYS - {"events"} <= set(item) and "events" not in item


def test_list_messages_paginates_through_the_api(api: Api) -> None:
    for i in range(7):
        _store("checkout", f"m{i}", ("MESSAGE_CREATED", "2024-05-01T10:00:00Z"))
    seen: list[str] = []
    query = {"app_id": "checkout", "limit": "3"}
    for _ in range(10):
        reply = api.call("GET", "/api/messages", query=query)
        assert reply.status == 200, reply.body
        seen += [i["message_id"] for i in reply.body["items"]]
        if reply.body["cursor"] is None:
            break
        assert isinstance(reply.body["cursor"], str)
        query = {**query, "cursor": reply.body["cursor"]}
    assert seen == [f"m{i}" for i in reversed(range(7))]


def test_list_messages_status_filter(api: Api) -> None:
    api.send(event_file("api_put_lifecycle.json"))
    upsert_message(settings().messages_table, "checkout", "done", [
        parse_event({"app_id": "checkout", "message_id": "done", "event": n}) for n in LIFECYCLE], 30)
    _store("checkout", "half", ("MESSAGE_CREATED", "2024-05-01T10:00:00Z"))
    done = api.call("GET", "/api/messages", query={"app_id": "checkout", "status": "complete"})
    assert [i["message_id"] for i in done.body["items"]] == ["done"]
    assert done.body["items"][0]["status"] == "complete"
    unknown = api.call("GET", "/api/messages", query={"app_id": "checkout", "status": "unknown"})
    assert unknown.body == {"items": [], "cursor": None}


LIST_ERRORS = [
    pytest.param({}, {"app_id"}, id="missing-app-id"),
    pytest.param({"app_id": ""}, {"app_id"}, id="empty-app-id"),
    pytest.param({"app_id": "bad app"}, {"app_id"}, id="bad-app-id"),
    pytest.param({"app_id": "checkout", "status": "lost"}, {"status"}, id="bad-status"),
    pytest.param({"app_id": "checkout", "limit": "0"}, {"limit"}, id="limit-0"),
    pytest.param({"app_id": "checkout", "limit": "101"}, {"limit"}, id="limit-101"),
    pytest.param({"app_id": "checkout", "limit": "many"}, {"limit"}, id="limit-text"),
    pytest.param({"app_id": "checkout", "cursor": "garbage!"}, {"cursor"}, id="bad-cursor"),
    pytest.param({"app_id": "checkout", "page": "2"}, {"page"}, id="unknown-param"),
]


def test_list_messages_errors(api: Api) -> None:
    def check(query: dict[str, str], bad_fields: set[str]) -> None:
        details = assert_error(api.call("GET", "/api/messages", query=query), 400, "VALIDATION_ERROR")
        assert fields(details) == bad_fields

    each_case(LIST_ERRORS, check)


def test_a_cursor_of_another_app_is_rejected(api: Api) -> None:
    for i in range(3):
        _store("other", f"m{i}", ("A", "2024-05-01T10:00:00Z"))
    cursor = api.call("GET", "/api/messages", query={"app_id": "other", "limit": "1"}).body["cursor"]
    assert cursor
    reply = api.call("GET", "/api/messages", query={"app_id": "checkout", "cursor": cursor})
    assert fields(assert_error(reply, 400, "VALIDATION_ERROR")) == {"cursor"}


# --- GET /api/q/stats and /status ---------------------------------------------------------------

def test_queue_stats_shape(api: Api) -> None:
    api.call("POST", "/api/event/bulk", body={"events": [event_body(message_id=f"s{i}") for i in range(6)]})
    reply = api.call("GET", "/api/q/stats")
    assert reply.status == 200, reply.body
    assert set(reply.body) == {"queues", "dead_letter", "event_collector_q"}
    queues, dead = reply.body["queues"], reply.body["dead_letter"]
    assert [q["name"] for q in queues] == [u.rsplit("/", 1)[1] for u in queue_urls()]  # shard order
    assert [d["name"] for d in dead] == [u.rsplit("/", 1)[1] for u in settings().dead_letter_queue_urls]
    # the event queues' DLQ, the producers' (ingest) DLQ, then where failed alert notifications, live pushes
    # and alert deliveries end (TraceExportFailureQueue only exists with an OtlpExportEndpoint)
    assert [d["name"].split("-", 1)[1].removesuffix(".fifo") for d in dead] == [
        "DeadLetterQueue", "IngestDeadLetterQueue", "AlertsFailureQueue", "BroadcastFailureQueue",
        "AlertDeliveryDeadLetterQueue"]
    for row in queues + dead:
        assert set(row) == {"name", "visible", "in_flight", "oldest_age_seconds"}
        assert isinstance(row["visible"], int) and isinstance(row["in_flight"], int)
        assert row["oldest_age_seconds"] is None or isinstance(row["oldest_age_seconds"], (int, float))
    assert [q["visible"] for q in queues] == depths()[:10]
    assert reply.body["event_collector_q"] == 6 == sum(q["visible"] for q in queues)
    assert dead[0]["visible"] == 0


def test_stats_count_in_flight_messages(api: Api) -> None:
    api.call("POST", "/api/event", body=event_body())
    drain(queue_urls()[shard("checkout", "order-1", 10)])
    queues = api.call("GET", "/api/q/stats").body["queues"]
    assert sum(q["in_flight"] for q in queues) == 1 and sum(q["visible"] for q in queues) == 0


def test_status_checks_every_table_and_queue(api: Api) -> None:
    reply = api.call("GET", "/status")
    assert reply.status == 200, reply.body
    assert reply.body["status"] == "ok" and reply.body["stage"] == "dev"
    checks = reply.body["checks"]
    cfg = settings()
    assert {(c["kind"], c["name"]) for c in checks} == {
        ("table", cfg.messages_table), ("table", cfg.apps_table),
        *[("queue", u.rsplit("/", 1)[1]) for u in (*cfg.events_queue_urls, *cfg.dead_letter_queue_urls)]}
    # 2 tables, 10 event queues, 2 dead-letter queues, 3 failure queues (alerts, live pushes, deliveries)
    assert len(checks) == 17 and all(c["ok"] and c["latency_ms"] >= 0 for c in checks)


def test_status_is_503_when_a_resource_is_gone(api: Api) -> None:
    aws.client("sqs").delete_queue(QueueUrl=queue_urls()[5])
    reply = api.call("GET", "/status")
    assert reply.status == 503 and reply.body["status"] == "degraded"
    bad = [c for c in reply.body["checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == [queue_urls()[5].rsplit("/", 1)[1]] and bad[0]["error"]


def test_an_unexpected_error_is_a_500_in_the_error_format(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api.module, "get_items", lambda *a, **k: 1 / 0)
    reply = api.call("GET", "/api/messages/x", resource="/api/messages/{message_id}", params={"message_id": "x"})
    details = assert_error(reply, 500, "INTERNAL")
    assert details == [] and "ZeroDivision" not in json.dumps(reply.body)  # no internals leak


def test_lifecycle_affects_timelines_immediately(api: Api) -> None:
    _store("checkout", "order-9", ("MESSAGE_CREATED", "2024-05-01T10:00:00Z"))
    kwargs: dict[str, Any] = {"resource": "/api/messages/{message_id}", "params": {"message_id": "order-9"}}
    assert api.call("GET", "/api/messages/order-9", **kwargs).body["timelines"][0]["status"] == "unknown"
    api.call("PUT", "/api/apps/checkout/lifecycle", resource="/api/apps/{app_id}/lifecycle",
             params={"app_id": "checkout"}, body={"events": ["MESSAGE_CREATED", "MESSAGE_SENT"], "sla_seconds": 1})
    timeline = api.call("GET", "/api/messages/order-9", **kwargs).body["timelines"][0]
    assert timeline["missing"] == ["MESSAGE_SENT"] and timeline["status"] in ("in_progress", "stuck")
