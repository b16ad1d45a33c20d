"""The running API against docs/openapi.yaml: every operation driven over real HTTP with valid and invalid
input; every answer's status must be one the document declares for that operation, and its body must match
the schema declared for that status (refs resolved, patterns read as ECMA-262).

The shared stack (`mars`) serves the ordinary answers; two private stacks serve what needs a stage without
test routes (404 of /api/create_event) or a broken queue (207/503 of the ingest routes, 503 of /status,
500 of /api/q/stats), so no other test sees them.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import openapi_schema_validator
import pytest
import requests
from mars_common.sharding import shard

from tests.conftest import wait_until
from tests.unit import test_openapi_document as oas

from .conftest import RunningStack, start_stack, wait_timeline

TWO_MIB = 2 * 1024 * 1024
# (method, path template, status) answered and validated so far; the last test checks the coverage.
SEEN: set[tuple[str, str, str]] = set()
NOT_DRIVEN = {  # (method, status) a test need not reach, and why
    ("get", "500"): "only on an unexpected exception (driven for GET /api/q/stats, with a deleted queue)",
    ("post", "500"): "only on an unexpected exception",
    ("put", "500"): "only on an unexpected exception",
    ("delete", "500"): "only on an unexpected exception",
}

# (method, template, status) reached only by a message too long for one request (20,000 events): driven in
# tests/unit/test_search.py with the limit lowered, not by writing 20,000 events to the shared stack
NOT_DRIVEN_HERE = {("get", "/api/messages", "422"), ("get", "/api/apps/{app_id}/export", "422")}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- the document as an oracle ------------------------------------------------------------------

def response_schema(method: str, template: str, status: int | str) -> dict[str, Any] | None:
    """The JSON schema the document declares for this operation's `status` answer (None: not declared)."""
    responses = oas.document()["paths"][template][method.lower()]["responses"]
    response = responses.get(str(status))
    if response is None:
        return None
    here = oas.pointer("paths", template, method.lower(), "responses", str(status))
    base = response["$ref"][1:] if "$ref" in response else here
    return oas.ref(base + oas.pointer("content", "application/json", "schema"))


def request_schema_errors(method: str, template: str, body: Any) -> list[str]:
    body_spec = oas.document()["paths"][template][method.lower()]["requestBody"]
    here = oas.pointer("paths", template, method.lower(), "requestBody")
    base = body_spec["$ref"][1:] if "$ref" in body_spec else here
    return oas.schema_errors(body, base + oas.pointer("content", "application/json", "schema"))


def check(resp: requests.Response, method: str, template: str) -> Any:
    """Asserts the answer is declared for the operation and matches its schema; returns the parsed body."""
    schema = response_schema(method, template, resp.status_code)
    declared = sorted(oas.document()["paths"][template][method.lower()]["responses"])
    assert schema is not None, (f"{method} {template} answered {resp.status_code}, not one of {declared}: "
                                f"{resp.text[:300]}")
    response = oas.resolve(oas.document()["paths"][template][method.lower()]["responses"][str(resp.status_code)])
    media_type = resp.headers.get("Content-Type", "").split(";")[0]
    if media_type != "application/json":  # the dashboard's page and files
        assert media_type in response["content"], (media_type, sorted(response["content"]))
        SEEN.add((method.lower(), template, str(resp.status_code)))
        return resp.text
    body = resp.json()
    openapi_schema_validator.validate(body, schema, cls=oas.EcmaOAS31Validator, registry=oas.registry())
    for header in response.get("headers", {}):
        assert header in resp.headers, f"{method} {template} {resp.status_code} lacks the header {header}"
    SEEN.add((method.lower(), template, str(resp.status_code)))
    return body


def call(stack: RunningStack, method: str, template: str, *, path: dict[str, str] | None = None,
         params: dict[str, Any] | None = None, body: Any = None, raw: bytes | str | None = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    url_path = template
    for name, value in (path or {}).items():
        url_path = url_path.replace("{" + name + "}", quote(value, safe=""))
    data = raw if raw is not None else (None if body is None else json.dumps(body, ensure_ascii=False).encode())
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    hdrs.update(headers or {})
    return requests.request(method, stack.url(url_path), params=params, data=data, headers=hdrs, timeout=30)


def expect(stack: RunningStack, status: int, method: str, template: str, **kwargs: Any) -> Any:
    resp = call(stack, method, template, **kwargs)
    body = check(resp, method, template)
    assert resp.status_code == status, resp.text[:500]
    return body


def event(app_id: str, message_id: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"app_id": app_id, "message_id": message_id, "event": name, **extra}


# --- data on the shared stack -------------------------------------------------------------------

@pytest.fixture(scope="module")
def stored(mars: RunningStack) -> dict[str, str]:
    """Two apps (one with a lifecycle) that used one message id, and a second message of the first app."""
    app_a, app_b, mid, mid2 = uid("oa"), uid("ob"), uid("contract"), uid("contract")
    lifecycle = {"events": ["CREATED", "SENT", "ACKED"], "sla_seconds": 300}
    assert request_schema_errors("PUT", "/api/apps/{app_id}/lifecycle", lifecycle) == []
    expect(mars, 200, "PUT", "/api/apps/{app_id}/lifecycle", path={"app_id": app_a}, body=lifecycle)
    bulk = {"events": [event(app_a, mid, "CREATED", created_at="2026-11-26T10:00:00+01:00", meta={"region": "eu"}),
                       event(app_a, mid, "SENT", created_at="2026-11-26T09:00:01Z", event_id=f"{mid}:sent"),
                       event(app_b, mid, "CREATED")]}
    assert request_schema_errors("POST", "/api/event/bulk", bulk) == []
    accepted = expect(mars, 202, "POST", "/api/event/bulk", body=bulk)
    assert accepted["event_ids"][1] == f"{mid}:sent" and len(accepted["event_ids"]) == 3
    wait_timeline(mars, mid, events=3)  # stored first, so mid2 is the newer message of app_a
    single = event(app_a, mid2, "CREATED", created_at="2026-11-26T11:00:00Z")
    assert request_schema_errors("POST", "/api/event", single) == []
    expect(mars, 202, "POST", "/api/event", body=single)
    wait_timeline(mars, mid2, events=1)
    return {"app_a": app_a, "app_b": app_b, "mid": mid, "mid2": mid2}


# --- ingest -------------------------------------------------------------------------------------

def test_post_event_202(mars: RunningStack) -> None:
    mid = uid("c202")
    for body in (event("shop", mid, "CREATED"),
                 event("shop", mid, "SENT", created_at="", event_id="", meta=None),
                 event("shop", mid, "ACKED", created_at="2026-11-26 10:00:00", event_id="k.1:a_b-c", meta={})):
        assert request_schema_errors("POST", "/api/event", body) == []
        assert len(expect(mars, 202, "POST", "/api/event", body=body)["event_ids"]) == 1
    # curl's and wrk's default content types are parsed as JSON too
    for ctype in ("text/plain", "application/x-www-form-urlencoded"):
        expect(mars, 202, "POST", "/api/event", body=event("shop", mid, ctype), headers={"Content-Type": ctype})


INVALID_EVENTS = [
    pytest.param(event("a", "m", "E", colour="red"), "colour", id="unknown-field"),
    pytest.param({"app_id": "a", "event": "E"}, "message_id", id="missing-field"),
    pytest.param(event("a", "m", 42), "event", id="wrong-type"),
    pytest.param(event("a b", "m", "E"), "app_id", id="bad-app-id"),
    pytest.param(event("a", "m" * 257, "E"), "message_id", id="message-id-too-long"),
    pytest.param(event("a", "m\u0007", "E"), "message_id", id="control-char"),
    pytest.param(event("a", "m", "E", created_at="yesterday"), "created_at", id="bad-timestamp"),
    pytest.param(event("a", "m", "E", event_id="has space"), "event_id", id="bad-event-id"),
    pytest.param(event("a", "m", "E", meta={"x": {"y": 1}}), "meta", id="meta-not-flat"),
    pytest.param(event("a", "m", "E", meta={"k": "v" * 3000}), "meta", id="meta-too-big"),
    pytest.param({"events": [event("a", "m", "E")]}, "events", id="bulk-on-single-route"),
]


@pytest.mark.parametrize("body,field", INVALID_EVENTS)
def test_post_event_400_validation(mars: RunningStack, body: Any, field: str) -> None:
    # The schema leaves two rules to prose: the 2 KB meta limit (x-max-json-bytes) and the timestamp grammar.
    if field != "created_at" and (field != "meta" or "x" in body["meta"]):
        assert request_schema_errors("POST", "/api/event", body) != [], "the document should refuse it too"
    err = expect(mars, 400, "POST", "/api/event", body=body)["error"]
    assert err["code"] == "VALIDATION_ERROR" and field in {d["field"] for d in err["details"]}


@pytest.mark.parametrize("raw,code", [(b'{"app_id": "a", ', "INVALID_JSON"), (b"", "INVALID_JSON"),
                                      (b"  \n", "INVALID_JSON"), (b"[1, 2]", "VALIDATION_ERROR"),
                                      (b'"event"', "VALIDATION_ERROR")], ids=["truncated", "empty", "blank", "array",
                                                                              "string"])
def test_post_event_400_malformed(mars: RunningStack, raw: bytes, code: str) -> None:
    assert expect(mars, 400, "POST", "/api/event", raw=raw)["error"]["code"] == code


def test_post_bulk_202_and_400(mars: RunningStack) -> None:
    mid = uid("cbulk")
    good = [event("shop", mid, f"E{i}", created_at=f"2026-11-26T10:00:0{i}Z") for i in range(3)]
    assert len(expect(mars, 202, "POST", "/api/event/bulk", body={"events": good})["event_ids"]) == 3
    bad_item = {"events": [good[0], event("shop", mid, "E", created_at="never"), "not an event"]}
    assert request_schema_errors("POST", "/api/event/bulk", bad_item) != []
    details = expect(mars, 400, "POST", "/api/event/bulk", body=bad_item)["error"]["details"]
    assert {(d["index"], d["field"]) for d in details} == {(1, "created_at"), (2, "events[2]")}
    for body in ({"events": [good[0]] * 501}, {"events": []}, {"events": good[0]}, good[0],
                 {"events": good, "app_id": "shop"}):
        assert request_schema_errors("POST", "/api/event/bulk", body) != []
        expect(mars, 400, "POST", "/api/event/bulk", body=body)
    assert expect(mars, 400, "POST", "/api/event/bulk", raw=b"{")["error"]["code"] == "INVALID_JSON"


@pytest.mark.parametrize("method,template,path", [("POST", "/api/event", {}), ("POST", "/api/event/bulk", {}),
                                                  ("PUT", "/api/apps/{app_id}/lifecycle", {"app_id": "big"}),
                                                  ("PUT", "/api/apps/{app_id}/otlp", {"app_id": "big"}),
                                                  ("POST", "/api/apps/{app_id}/destinations", {"app_id": "big"})],
                         ids=["event", "bulk", "lifecycle", "otlp", "destinations"])
def test_body_over_2_mib_is_413(mars: RunningStack, method: str, template: str, path: dict[str, str]) -> None:
    raw = json.dumps({"app_id": "a", "message_id": uid("c413"), "event": "E", "meta": {"pad": "x" * TWO_MIB}})
    assert len(raw) > TWO_MIB
    body = expect(mars, 413, method, template, path=path, raw=raw.encode())
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_create_event_202_and_400(mars: RunningStack) -> None:
    assert len(expect(mars, 202, "GET", "/api/create_event", params={"count": 3})["event_ids"]) == 3
    assert len(expect(mars, 202, "GET", "/api/create_event")["event_ids"]) == 1
    for count in ("0", "501", "abc", ""):
        details = expect(mars, 400, "GET", "/api/create_event", params={"count": count})["error"]["details"]
        assert details[0]["field"] == "count"


# --- operations ---------------------------------------------------------------------------------

def test_queue_stats_200(mars: RunningStack) -> None:
    stats = expect(mars, 200, "GET", "/api/q/stats")
    assert len(stats["queues"]) == 10 and len(stats["dead_letter"]) == 5


def test_status_200(mars: RunningStack) -> None:
    health = expect(mars, 200, "GET", "/status")
    assert health["status"] == "ok" and len(health["checks"]) == 17


# --- timelines ----------------------------------------------------------------------------------

def test_get_message_200_404_400(mars: RunningStack, stored: dict[str, str]) -> None:
    template = "/api/messages/{message_id}"
    both = expect(mars, 200, "GET", template, path={"message_id": stored["mid"]})
    assert [t["app_id"] for t in both["timelines"]] == sorted([stored["app_a"], stored["app_b"]])
    one = expect(mars, 200, "GET", template, path={"message_id": stored["mid"]}, params={"app_id": stored["app_a"]})
    (timeline,) = one["timelines"]
    assert [e["event"] for e in timeline["events"]] == ["CREATED", "SENT"]  # by created_at, not arrival
    assert timeline["missing"] == ["ACKED"] and timeline["status"] == "in_progress"
    assert timeline["events"][0]["meta"] == {"region": "eu"}
    expect(mars, 404, "GET", template, path={"message_id": uid("nope")})
    expect(mars, 404, "GET", template, path={"message_id": stored["mid"]}, params={"app_id": uid("other")})
    expect(mars, 404, "GET", template, path={"message_id": "a message id / with ünicode?"})
    details = expect(mars, 400, "GET", template, path={"message_id": stored["mid"]},
                     params={"app_id": "bad app"})["error"]["details"]
    assert details[0]["field"] == "app_id"
    first = expect(mars, 200, "GET", template, path={"message_id": stored["mid"]},
                   params={"app_id": stored["app_a"], "limit": "1"})["timelines"][0]
    assert len(first["events"]) == 1 and first["event_count"] == 2 and first["cursor"]
    trace = "/api/messages/{message_id}/trace"
    spans = expect(mars, 200, "GET", trace, path={"message_id": stored["mid"]},
                   params={"app_id": stored["app_a"]})["resourceSpans"][0]["scopeSpans"][0]["spans"]
    assert [s["name"] for s in spans[1:]] == ["CREATED", "SENT"] and spans[0]["name"] == f"message {stored['mid']}"
    assert expect(mars, 400, "GET", trace, path={"message_id": stored["mid"]})["error"]["details"][0]["field"] == "app_id"
    expect(mars, 404, "GET", trace, path={"message_id": stored["mid"]}, params={"app_id": uid("other")})
    rest = expect(mars, 200, "GET", template, path={"message_id": stored["mid"]},
                  params={"app_id": stored["app_a"], "limit": "1", "cursor": first["cursor"]})["timelines"][0]
    assert [e["event"] for e in first["events"] + rest["events"]] == ["CREATED", "SENT"] and rest["cursor"] is None
    for params, field in (({"app_id": stored["app_a"], "limit": "1001"}, "limit"), ({"cursor": first["cursor"]}, "cursor"),
                          ({"app_id": stored["app_b"], "cursor": first["cursor"]}, "cursor")):
        details = expect(mars, 400, "GET", template, path={"message_id": stored["mid"]}, params=params)["error"]["details"]
        assert details[0]["field"] == field


def test_list_messages_200(mars: RunningStack, stored: dict[str, str]) -> None:
    template = "/api/messages"
    first = expect(mars, 200, "GET", template, params={"app_id": stored["app_a"], "limit": 1})
    assert [i["message_id"] for i in first["items"]] == [stored["mid2"]] and first["cursor"]
    second = expect(mars, 200, "GET", template, params={"app_id": stored["app_a"], "limit": 1,
                                                         "cursor": first["cursor"]})
    assert [i["message_id"] for i in second["items"]] == [stored["mid"]]
    filtered = expect(mars, 200, "GET", template, params={"app_id": stored["app_a"], "status": "in_progress",
                                                           "cursor": ""})
    assert {i["message_id"] for i in filtered["items"]} == {stored["mid"], stored["mid2"]}
    assert filtered["cursor"] is None
    unknown = expect(mars, 200, "GET", template, params={"app_id": stored["app_b"], "status": "unknown"})
    assert [i["status"] for i in unknown["items"]] == ["unknown"]
    assert expect(mars, 200, "GET", template, params={"app_id": uid("empty")}) == {"items": [], "cursor": None}


@pytest.mark.parametrize("params,field", [
    ({}, "app_id"), ({"app_id": ""}, "app_id"), ({"app_id": "bad app"}, "app_id"),
    ({"app_id": "x", "status": "lost"}, "status"), ({"app_id": "x", "limit": "0"}, "limit"),
    ({"app_id": "x", "limit": "101"}, "limit"), ({"app_id": "x", "limit": "ten"}, "limit"),
    ({"app_id": "x", "cursor": "!!!"}, "cursor"), ({"app_id": "x", "colour": "red"}, "colour"),
], ids=["no-app", "empty-app", "bad-app", "bad-status", "limit-0", "limit-101", "limit-text", "bad-cursor",
        "unknown-param"])
def test_list_messages_400(mars: RunningStack, params: dict[str, str], field: str) -> None:
    details = expect(mars, 400, "GET", "/api/messages", params=params)["error"]["details"]
    assert field in {d["field"] for d in details}


def test_a_cursor_of_another_app_is_400(mars: RunningStack, stored: dict[str, str]) -> None:
    page = expect(mars, 200, "GET", "/api/messages", params={"app_id": stored["app_a"], "limit": 1})
    expect(mars, 400, "GET", "/api/messages", params={"app_id": stored["app_b"], "cursor": page["cursor"]})


# --- search and export (docs/SEARCH.md) ---------------------------------------------------------------

def test_search_filters_and_export_200_400(mars: RunningStack) -> None:
    app = uid("osearch")
    expect(mars, 200, "PUT", "/api/apps/{app_id}/lifecycle", path={"app_id": app},
           body={"events": ["CREATED", "SENT"], "failure": ["FAILED"]})
    expect(mars, 202, "POST", "/api/event/bulk", body={"events": [
        event(app, "m1", "CREATED", meta={"carrier": "dhl"}), event(app, "m1", "SENT"),
        event(app, "m2", "CREATED", meta={"carrier": "ups, \"express\""}), event(app, "m3", "FAILED")]})
    for mid, n in (("m1", 2), ("m2", 1), ("m3", 1)):
        wait_timeline(mars, mid, app_id=app, events=n)
    template = "/api/messages"

    def ids(**params: Any) -> set[str]:
        return {i["message_id"] for i in expect(mars, 200, "GET", template, params={"app_id": app, **params})["items"]}

    assert ids(event="SENT") == {"m1"}
    assert ids(missing="SENT") == {"m2", "m3"}
    assert ids(**{"meta.carrier": "dhl"}) == {"m1"}
    assert ids(**{"meta.carrier": 'ups, "express"'}) == {"m2"}
    # m3's failure alert record is written right after its batch's events: a readable timeline can come a
    # moment before it (seen once, in the suite on a busy machine)
    wait_until(lambda: ids(alert="firing") == {"m3"}, timeout=20, what="m3's failure alert, firing", poll=0.2)
    assert ids(alert="firing") == {"m3"}
    assert ids(**{"from": "2000-01-01T00:00:00Z", "to": "2000-01-02T00:00:00Z"}) == set()
    for params in ({"from": "soon"}, {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                   {"missing": "NOPE"}, {"alert": "resolved"}, {"meta.bad key": "x"}):
        expect(mars, 400, "GET", template, params={"app_id": app, **params})
    export = "/api/apps/{app_id}/export"
    ndjson = call(mars, "GET", export, path={"app_id": app})
    assert ndjson.status_code == 200 and check(ndjson, "GET", export)
    assert ndjson.headers["Content-Type"] == "application/x-ndjson" and "Mars-Cursor" not in ndjson.headers
    assert {json.loads(line)["message_id"] for line in ndjson.text.splitlines()} == {"m1", "m2", "m3"}
    events_csv = call(mars, "GET", export, path={"app_id": app}, params={"format": "csv", "events": "1"})
    assert events_csv.status_code == 200 and events_csv.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(check(events_csv, "GET", export))))
    assert len(rows) == 4 and {json.loads(r["meta"])["carrier"] for r in rows if r["meta"]} == {"dhl", 'ups, "express"'}
    for params in ({"format": "xml"}, {"events": "2"}, {"cursor": "!!!"}, {"from": "soon"}):
        expect(mars, 400, "GET", export, path={"app_id": app}, params=params)


# --- alerts -------------------------------------------------------------------------------------

def test_list_alerts_200_and_400(mars: RunningStack) -> None:
    template = "/api/alerts"
    app = uid("oalert")
    expect(mars, 200, "PUT", "/api/apps/{app_id}/lifecycle", path={"app_id": app},
           body={"events": ["A"], "failure": ["X", "Y"]})
    for mid in ("m1", "m2"):
        expect(mars, 202, "POST", "/api/event", body=event(app, mid, "X"))
    expect(mars, 202, "POST", "/api/event", body=event(app, "m1", "Y"))
    wait_timeline(mars, "m1", app_id=app, events=2)
    wait_timeline(mars, "m2", app_id=app, events=1)
    # the store writes the alert records right after a batch's events, in the same call: a timeline can be
    # readable a moment before its records are
    wait_until(lambda: len(requests.get(mars.url(template), params={"app_id": app}, timeout=10).json()["items"]) == 3,
               timeout=20, what="the three failure alerts")
    first = expect(mars, 200, "GET", template, params={"app_id": app, "limit": 2})
    assert len(first["items"]) == 2 and first["cursor"]
    rest = expect(mars, 200, "GET", template, params={"app_id": app, "limit": 2, "cursor": first["cursor"]})
    assert len(rest["items"]) == 1 and rest["cursor"] is None
    one = expect(mars, 200, "GET", template, params={"app_id": app, "message_id": "m2", "state": "firing",
                                                      "from": "2000-01-01T00:00:00Z", "to": "2999-01-01T00:00:00Z"})
    assert [(a["message_id"], a["rule"]["kind"]) for a in one["items"]] == [("m2", "failure")]
    for params in ({}, {"app_id": "bad app"}, {"app_id": app, "state": "pending"}, {"app_id": app, "to": "soon"},
                   {"app_id": app, "cursor": "!!!"}, {"app_id": app, "limit": "0"}, {"app_id": app, "colour": "red"}):
        expect(mars, 400, "GET", template, params=params)


# --- the funnel (docs/FUNNEL.md): a few dozen messages through the whole pipeline -------------------

def test_funnel_200_400_404_matches_the_messages_sent(mars: RunningStack) -> None:
    template = "/api/apps/{app_id}/funnel"
    app = uid("ofunnel")
    steps = ["CREATED", "PAID", "SHIPPED"]
    expect(mars, 200, "PUT", "/api/apps/{app_id}/lifecycle", path={"app_id": app}, body={"events": steps})
    day = "2026-11-20"
    events, last_step = [], {}
    for i in range(36):  # message i reaches steps[: i % 3 + 1]: 12 stall at each step; PAID 60 s, SHIPPED 600 s later
        last_step[f"m{i}"] = i % 3
        for k, step in enumerate(steps[: i % 3 + 1]):
            second = (0, 60, 660)[k]
            events.append(event(app, f"m{i}", step, created_at=f"{day}T10:{second // 60:02d}:{second % 60:02d}Z"))
    expect(mars, 202, "POST", "/api/event/bulk", body={"events": events})
    for i in range(36):
        wait_timeline(mars, f"m{i}", app_id=app, events=i % 3 + 1)
    got = expect(mars, 200, "GET", template, path={"app_id": app}, params={"from": f"{day}T00:00:00Z", "to": f"{day}T23:00:00Z"})
    rows = {r["step"]: r for r in got["steps"]}
    assert [r["step"] for r in got["steps"]] == steps
    assert [(rows[s]["reached"], rows[s]["stalled_here"]) for s in steps] == [(36, 12), (24, 12), (12, 12)]
    assert (rows["CREATED"]["conversion"], rows["PAID"]["conversion"], rows["SHIPPED"]["conversion"]) == (None, 0.6667, 0.5)
    assert rows["PAID"]["p50_seconds"] == pytest.approx(60, rel=0.01)
    assert rows["SHIPPED"]["p99_seconds"] == pytest.approx(600, rel=0.01)
    other_day = expect(mars, 200, "GET", template, path={"app_id": app}, params={"from": "2026-11-21T00:00:00Z",
                                                                                  "to": "2026-11-21T00:00:00Z"})
    assert [r["reached"] for r in other_day["steps"]] == [0, 0, 0]
    expect(mars, 404, "GET", template, path={"app_id": uid("nofunnel")})
    for params in ({"from": "soon"}, {"from": "2026-11-21T00:00:00Z", "to": "2026-11-20T00:00:00Z"},
                   {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, {"colour": "red"}):
        expect(mars, 400, "GET", template, path={"app_id": app}, params=params)
    expect(mars, 400, "GET", template, path={"app_id": "bad app"})


# --- lifecycles ---------------------------------------------------------------------------------

def test_lifecycle_put_get_200_404_400(mars: RunningStack, stored: dict[str, str]) -> None:
    template = "/api/apps/{app_id}/lifecycle"
    got = expect(mars, 200, "GET", template, path={"app_id": stored["app_a"]})
    assert got == {"app_id": stored["app_a"], "events": ["CREATED", "SENT", "ACKED"], "sla_seconds": 300,
                   "updated_at": got["updated_at"], "optional": [], "failure": [], "deadlines": []}
    app = uid("olife")
    put = expect(mars, 200, "PUT", template, path={"app_id": app}, body={"events": ["A"]})
    assert put["sla_seconds"] == 0 and put["updated_at"]
    expect(mars, 200, "PUT", template, path={"app_id": app}, raw=json.dumps({"events": ["A", "B"]}),
           headers={"Content-Type": "text/plain"})
    assert expect(mars, 200, "GET", template, path={"app_id": app})["events"] == ["A", "B"]
    expect(mars, 404, "GET", template, path={"app_id": uid("nolife")})
    expect(mars, 400, "GET", template, path={"app_id": "bad app"})
    rules = {"events": ["A", "B"], "optional": ["B"], "failure": ["X"],
             "deadlines": [{"step": "B", "after": "A", "within_seconds": 60}]}
    assert request_schema_errors("PUT", template, rules) == []
    assert {k: v for k, v in expect(mars, 200, "PUT", template, path={"app_id": app}, body=rules).items()
            if k in rules} == rules
    for body in ({"events": [], "sla_seconds": -1}, {"events": ["A", "A"]}, {"events": ["A"], "colour": "red"},
                 {"events": ["A"], "sla_seconds": "60"}, ["A"],
                 {"events": ["A"], "deadlines": [{"step": "A", "after": "A", "within_seconds": 5, "x": 1}]},
                 {"events": ["A"], "optional": "A"}):
        assert request_schema_errors("PUT", template, body) != []
        expect(mars, 400, "PUT", template, path={"app_id": app}, body=body)
    assert expect(mars, 400, "PUT", template, path={"app_id": app}, raw=b"")["error"]["code"] == "INVALID_JSON"
    expect(mars, 400, "PUT", template, path={"app_id": "bad app"}, body={"events": ["A"]})


# --- OpenTelemetry in: the mapping routes and POST /v1/traces (OtlpFunction) ----------------------

def otlp_body(app_id: str, message_id: str, *, trace_id: str = "0af7651916cd43dd8448eb211c80319c") -> dict[str, Any]:
    """An OTLP/JSON request with one producer span of `message_id` (ids in hex, as OTLP/JSON writes them)."""
    attrs = [{"key": "messaging.message.id", "value": {"stringValue": message_id}},
             {"key": "messaging.operation.type", "value": {"stringValue": "send"}}]
    return {"resourceSpans": [{"resource": {"attributes": [{"key": "mars.app_id", "value": {"stringValue": app_id}}]},
                               "scopeSpans": [{"spans": [{"traceId": trace_id, "spanId": uuid.uuid4().hex[:16],
                                                          "name": "send", "startTimeUnixNano": "1764496800000000000",
                                                          "attributes": attrs}]}]}]}


def test_otlp_mapping_put_get_200_400(mars: RunningStack) -> None:
    template, app = "/api/apps/{app_id}/otlp", uid("ootlp")
    got = expect(mars, 200, "GET", template, path={"app_id": app})
    assert got["default"] is True and got["message_id_attribute"] == "messaging.message.id"
    body = {"message_id_attribute": "order.id", "event_name": "attribute:step"}
    assert request_schema_errors("PUT", template, body) == []
    assert expect(mars, 200, "PUT", template, path={"app_id": app}, body=body)["event_name"] == "attribute:step"
    assert expect(mars, 200, "GET", template, path={"app_id": app})["default"] is False
    for bad in ({"event_name": "nope"}, {"message_id_attribute": ""}, {"colour": "red"}, ["x"]):
        assert request_schema_errors("PUT", template, bad) != []
        expect(mars, 400, "PUT", template, path={"app_id": app}, body=bad)
    expect(mars, 400, "GET", template, path={"app_id": "bad app"})


def test_v1_traces_200_400_413_415(mars: RunningStack) -> None:
    template, app, mid = "/v1/traces", uid("otraces"), uid("otlpmsg")
    body = otlp_body(app, mid)
    assert request_schema_errors("POST", template, body) == []
    assert expect(mars, 200, "POST", template, body=body) == {}
    wait_timeline(mars, mid, events=1)
    bad = otlp_body(app, uid("otlpmsg"), trace_id="00" * 16)
    assert expect(mars, 200, "POST", template, body=bad)["partialSuccess"]["rejectedSpans"] == "1"
    protobuf = {"Content-Type": "application/x-protobuf", "Accept": "application/x-protobuf"}
    expect(mars, 200, "POST", template, raw=b"", headers=protobuf)  # an empty request: nothing to do
    expect(mars, 400, "POST", template, raw=b"\xff\xff\xff", headers=protobuf)
    assert expect(mars, 400, "POST", template, raw=b"{")["code"] == 3
    expect(mars, 400, "POST", template, raw=b"not gzip", headers={"Content-Encoding": "gzip"})
    expect(mars, 413, "POST", template, raw=b"\0" * (4 * 1024 * 1024 + 1), headers=protobuf)
    expect(mars, 415, "POST", template, raw=b"{}", headers={"Content-Type": "text/plain"})


def test_v1_traces_401_without_a_key_and_another_apps_spans_rejected(mars_auth: RunningStack) -> None:
    body = otlp_body("bank", uid("otlpauth"))
    for key in (None, "mk_AAAAAAAA_" + "A" * 43):
        assert expect(mars_auth, 401, "POST", "/v1/traces", body=body,
                      headers={"x-api-key": key} if key else {})["code"] == 16
    got = expect(mars_auth, 200, "POST", "/v1/traces", body=body, headers={"x-api-key": mars_auth.keys["shop"]})
    assert got["partialSuccess"]["rejectedSpans"] == "1" and "bank" in got["partialSuccess"]["errorMessage"]
    assert expect(mars_auth, 200, "POST", "/v1/traces", body=body, headers={"x-api-key": mars_auth.keys["bank"]}) == {}


# --- alert destinations --------------------------------------------------------------------------
SNS_ARN = "arn:aws:sns:us-east-1:123456789012:contract-alerts"
DESTINATIONS = "/api/apps/{app_id}/destinations"
DESTINATION = "/api/apps/{app_id}/destinations/{destination_id}"


def test_destinations_create_list_delete_test(mars: RunningStack) -> None:
    app = {"app_id": uid("cdest")}
    webhook = {"type": "webhook", "url": "http://127.0.0.1:9/hook", "format": "slack"}
    for body in (webhook, {"type": "sns", "topic_arn": SNS_ARN}):
        assert request_schema_errors("POST", DESTINATIONS, body) == []
    made = expect(mars, 201, "POST", DESTINATIONS, path=app, body=webhook)
    expect(mars, 201, "POST", DESTINATIONS, path=app, body={"type": "sns", "topic_arn": SNS_ARN})
    listed = expect(mars, 200, "GET", DESTINATIONS, path=app)
    assert len(listed["items"]) == 2 and made["secret"] not in json.dumps(listed)
    for bad in ({"type": "email"}, {"type": "webhook", "url": "https://10.0.0.1/"}, {"type": "sns", "topic_arn": "x"}):
        expect(mars, 400, "POST", DESTINATIONS, path=app, body=bad)
    expect(mars, 400, "GET", DESTINATIONS, path={"app_id": "bad app"})
    one = {**app, "destination_id": made["id"]}
    queued = expect(mars, 202, "POST", DESTINATION + "/test", path=one)
    assert queued["alert"]["rule"]["kind"] == "test"
    expect(mars, 400, "POST", DESTINATION + "/test", path={**app, "destination_id": "nope"})
    expect(mars, 200, "DELETE", DESTINATION, path=one)
    expect(mars, 404, "DELETE", DESTINATION, path=one)
    expect(mars, 404, "POST", DESTINATION + "/test", path=one)
    expect(mars, 400, "DELETE", DESTINATION, path={**app, "destination_id": "nope"})


def test_destinations_past_the_limit_are_409(mars: RunningStack) -> None:
    app = {"app_id": uid("cdest409")}
    for _ in range(20):
        expect(mars, 201, "POST", DESTINATIONS, path=app, body={"type": "sns", "topic_arn": SNS_ARN})
    body = expect(mars, 409, "POST", DESTINATIONS, path=app, body={"type": "sns", "topic_arn": SNS_ARN})
    assert body["error"]["code"] == "TOO_MANY_DESTINATIONS"


# --- content types and ids at the edges ----------------------------------------------------------

@pytest.mark.parametrize("method,template,path", [("POST", "/api/event", {}), ("POST", "/api/event/bulk", {}),
                                                  ("PUT", "/api/apps/{app_id}/lifecycle", {"app_id": "ctype"}),
                                                  ("PUT", "/api/apps/{app_id}/otlp", {"app_id": "ctype"}),
                                                  ("POST", "/api/apps/{app_id}/destinations", {"app_id": "ctype"})],
                         ids=["event", "bulk", "lifecycle", "otlp", "destinations"])
def test_an_unsupported_content_type_is_415(mars: RunningStack, method: str, template: str,
                                            path: dict[str, str]) -> None:
    path = {name: uid(value) for name, value in path.items()}
    body = {"events": ["A"]} if method == "PUT" else event("a", uid("c415"), "E")
    if template.endswith("otlp"):
        body = {"event_name": "span_name"}
    if template.endswith("bulk"):
        body = {"events": [body]}
    if template.endswith("destinations"):
        body = {"type": "sns", "topic_arn": SNS_ARN}
    err = expect(mars, 415, method, template, path=path, body=body, headers={"Content-Type": "application/xml"})
    assert err["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    expect(mars, 201 if template.endswith("destinations") else 202 if method == "POST" else 200, method, template,
           path=path, body=body, headers={"Content-Type": "application/json; charset=utf-8"})


def test_get_ignores_the_content_type(mars: RunningStack) -> None:
    """A GET has no body: its Content-Type header (whatever a client sends) does not matter."""
    expect(mars, 200, "GET", "/api/q/stats", headers={"Content-Type": "text/plain"})


@pytest.mark.parametrize("case", ["event_id", "lifecycle-path", "list-query", "message-query"])
def test_a_trailing_newline_is_not_a_valid_id(mars: RunningStack, case: str) -> None:
    """ECMA-262 `$` (the document's patterns) matches only at the end; Python's `re.match` also before a `\n`."""
    if case == "event_id":
        body = event("shop", uid("cnl"), "E", event_id="k\n")
        assert request_schema_errors("POST", "/api/event", body) != []
        expect(mars, 400, "POST", "/api/event", body=body)
    elif case == "lifecycle-path":
        expect(mars, 400, "GET", "/api/apps/{app_id}/lifecycle", path={"app_id": "shop\n"})
    elif case == "list-query":
        expect(mars, 400, "GET", "/api/messages", params={"app_id": "shop\n"})
    else:
        expect(mars, 400, "GET", "/api/messages/{message_id}", path={"message_id": "m"}, params={"app_id": "shop\n"})


@pytest.mark.parametrize("created_at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_created_at_out_of_range_in_utc_is_a_400(mars: RunningStack, created_at: str) -> None:
    body = expect(mars, 400, "POST", "/api/event", body=event("shop", uid("cover"), "E", created_at=created_at))
    assert [d["field"] for d in body["error"]["details"]] == ["created_at"]


# --- private stacks: no test routes; a broken queue -----------------------------------------------

@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningStack]]:
    """Two stacks of this module's own, started side by side."""
    specs = {"no_test_routes": ("AllowTestRoutes=false",), "broken": ("AllowTestRoutes=true",)}

    def start(name: str) -> RunningStack:
        return start_stack(Path(tmp_path_factory.mktemp(f"openapi-{name}")), f"mars-openapi-{name}".replace("_", "-"),
                           parameters=specs[name])

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(start, name) for name in specs}
        stacks = {}
        errors = []
        for name, future in futures.items():
            try:
                stacks[name] = future.result()
            except Exception as exc:  # stop whatever did start before failing
                errors.append(exc)
    try:
        if errors:
            raise errors[0]
        yield stacks
    finally:
        for stack in stacks.values():
            stack.process.terminate()
        for stack in stacks.values():
            stack.stop()


def test_create_event_404_without_test_routes(private: dict[str, RunningStack]) -> None:
    body = expect(private["no_test_routes"], 404, "GET", "/api/create_event", params={"count": 1})
    assert "AllowTestRoutes" in body["error"]["message"]


def _message_in_shard(app_id: str, queue: int, wanted: bool, queues: int) -> str:
    while True:
        mid = uid("cshard")
        if (shard(app_id, mid, queues) == queue) == wanted:
            return mid


def test_enqueue_failures_207_503_and_unhealthy_resources(private: dict[str, RunningStack]) -> None:
    stack = private["broken"]
    urls = stack.outputs["EventsQueueUrls"].split(",")
    sqs = stack.client("sqs")
    sqs.delete_queue(QueueUrl=urls[0])
    at = "2026-11-26T10:00:00Z"  # a fixed created_at, so the derived event ids are the same in every request
    lost = event("shop", _message_in_shard("shop", 0, True, len(urls)), "E", created_at=at)
    kept = event("shop", _message_in_shard("shop", 0, False, len(urls)), "E", created_at=at)

    failed = expect(stack, 503, "POST", "/api/event", body=lost)
    assert failed["event_ids"] == [] and [d["index"] for d in failed["error"]["details"]] == [0]
    partial = expect(stack, 207, "POST", "/api/event/bulk", body={"events": [kept, lost]})
    assert len(partial["event_ids"]) == 1 and [d["index"] for d in partial["error"]["details"]] == [1]
    assert partial["error"]["details"][0]["event_id"] == failed["error"]["details"][0]["event_id"]
    expect(stack, 207, "GET", "/api/create_event", params={"count": 200})  # ~1 in 10 lands on the deleted queue

    health = expect(stack, 503, "GET", "/status")
    assert [c["name"] for c in health["checks"] if not c["ok"]] == [urls[0].rsplit("/", 1)[-1]]
    assert expect(stack, 500, "GET", "/api/q/stats")["error"]["code"] == "INTERNAL"

    for url in urls[1:]:
        sqs.delete_queue(QueueUrl=url)
    none = expect(stack, 503, "GET", "/api/create_event", params={"count": 3})
    assert none["event_ids"] == [] and len(none["error"]["details"]) == 3
    expect(stack, 503, "POST", "/api/event/bulk", body={"events": [kept, lost]})
    failed = expect(stack, 503, "POST", "/v1/traces", body=otlp_body("shop", kept["message_id"]))
    assert failed["code"] == 14  # UNAVAILABLE: exporters retry it


def test_a_test_alert_that_cannot_be_queued_is_503(private: dict[str, RunningStack]) -> None:
    stack = private["broken"]
    app = {"app_id": uid("cdest503")}
    made = expect(stack, 201, "POST", DESTINATIONS, path=app, body={"type": "sns", "topic_arn": SNS_ARN})
    stack.client("sqs").delete_queue(QueueUrl=stack.outputs["AlertDeliveryQueueUrl"])
    body = expect(stack, 503, "POST", DESTINATION + "/test", path={**app, "destination_id": made["id"]})
    assert body["error"]["code"] == "ENQUEUE_FAILED"


def test_an_event_before_year_1000_is_stored_fixed_width(private: dict[str, RunningStack]) -> None:
    """On a private stack: were the year not zero-padded, the queue body would not parse back and the event
    would be retried into the dead-letter queue, which no shared test should see."""
    mars = private["no_test_routes"]
    mid = uid("cyear")
    body = {"events": [event("shop", mid, "LATE", created_at="2026-01-01T00:00:00Z"),
                       event("shop", mid, "EARLY", created_at="0999-01-01T00:00:00Z")]}
    expect(mars, 202, "POST", "/api/event/bulk", body=body)
    wait_timeline(mars, mid, events=2, timeout=15)
    timeline = expect(mars, 200, "GET", "/api/messages/{message_id}", path={"message_id": mid})["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["EARLY", "LATE"]


# --- live and the dashboard -------------------------------------------------------------------------

def test_config_200_names_the_local_websocket(mars: RunningStack) -> None:
    config = expect(mars, 200, "GET", "/api/config")
    assert config["websocket_url"] == mars.outputs["WebSocketUrl"]


def test_test_socket_200_and_400(mars: RunningStack) -> None:
    pushed = expect(mars, 200, "GET", "/api/test_socket", params={"message_id": uid("nobody")})
    assert (pushed["subscribers"], pushed["delivered"]) == (0, 0)
    expect(mars, 400, "GET", "/api/test_socket")
    expect(mars, 400, "GET", "/api/test_socket", params={"message_id": "m", "app_id": "bad app"})
    expect(mars, 400, "GET", "/api/test_socket", params={"message_id": "m", "colour": "red"})


@pytest.mark.parametrize("template,path", [("/", {}), ("/search/event", {}), ("/apps/{app_id}", {"app_id": "shop"})])
def test_dashboard_pages_200(mars: RunningStack, template: str, path: dict[str, str]) -> None:
    page = expect(mars, 200, "GET", template, path=path, params={"message_id": "m-1"} if "search" in template else None)
    assert '<base href="/">' in page and "static/app.js" in page


def test_dashboard_app_400_and_static_200_404(mars: RunningStack) -> None:
    expect(mars, 400, "GET", "/apps/{app_id}", path={"app_id": "no spaces"})
    script = expect(mars, 200, "GET", "/static/{name}", path={"name": "app.js"})
    assert "WebSocket" in script
    assert expect(mars, 200, "GET", "/static/{name}", path={"name": "style.css"})
    expect(mars, 404, "GET", "/static/{name}", path={"name": "nope.js"})
    expect(mars, 404, "GET", "/static/{name}", path={"name": "..%2Fapp.py"})


# --- auth: 401 and 403 on the stack with keys required ----------------------------------------------

AUTH_CASES = [  # (method, template, path params, query, body, app the request is about or None)
    ("POST", "/api/event", {}, None, {"app_id": "bank", "message_id": "m", "event": "E"}, "bank"),
    ("POST", "/api/event/bulk", {}, None, {"events": [{"app_id": "bank", "message_id": "m", "event": "E"}]}, "bank"),
    ("GET", "/api/create_event", {}, {"count": 1}, None, "admin"),
    ("GET", "/api/q/stats", {}, None, None, None),
    ("GET", "/api/messages/{message_id}", {"message_id": "m"}, {"app_id": "bank"}, None, "bank"),
    ("GET", "/api/messages", {}, {"app_id": "bank"}, None, "bank"),
    ("GET", "/api/messages/{message_id}/trace", {"message_id": "m"}, {"app_id": "bank"}, None, "bank"),
    ("PUT", "/api/apps/{app_id}/lifecycle", {"app_id": "bank"}, None, {"events": ["A"]}, "bank"),
    ("GET", "/api/apps/{app_id}/lifecycle", {"app_id": "bank"}, None, None, "bank"),
    ("GET", "/api/alerts", {}, {"app_id": "bank"}, None, "bank"),
    ("GET", "/api/apps/{app_id}/export", {"app_id": "bank"}, None, None, "bank"),
    ("GET", "/api/apps/{app_id}/funnel", {"app_id": "bank"}, None, None, "bank"),
    ("GET", "/api/test_socket", {}, {"message_id": "m", "app_id": "bank"}, None, "bank"),
    ("POST", DESTINATIONS, {"app_id": "bank"}, None, {"type": "sns", "topic_arn": SNS_ARN}, "bank"),
    ("GET", DESTINATIONS, {"app_id": "bank"}, None, None, "bank"),
    ("DELETE", DESTINATION, {"app_id": "bank", "destination_id": "dst_0123456789abcdef"}, None, None, "bank"),
    ("POST", DESTINATION + "/test", {"app_id": "bank", "destination_id": "dst_0123456789abcdef"}, None, None, "bank"),
    ("PUT", "/api/apps/{app_id}/otlp", {"app_id": "bank"}, None, {}, "bank"),
    ("GET", "/api/apps/{app_id}/otlp", {"app_id": "bank"}, None, None, "bank"),
]


@pytest.mark.parametrize("method,template,path,params,body,about", AUTH_CASES,
                         ids=[f"{c[0]} {c[1]}" for c in AUTH_CASES])
def test_401_without_a_key_and_403_with_another_apps_key(mars_auth: RunningStack, method: str, template: str,
                                                         path: dict[str, str], params: dict[str, Any] | None,
                                                         body: Any, about: str | None) -> None:
    for key in (None, "mk_AAAAAAAA_" + "A" * 43):
        headers = {"x-api-key": key} if key else {}
        assert expect(mars_auth, 401, method, template, path=path, params=params, body=body,
                      headers=headers)["error"]["code"] == "UNAUTHORIZED"
    if about is not None:  # a valid key, but for the shop app only
        expect(mars_auth, 403, method, template, path=path, params=params, body=body,
               headers={"x-api-key": mars_auth.keys["shop"]})
    owner = mars_auth.keys["admin" if about in ("admin", None) else "bank"]
    allowed = call(mars_auth, method, template, path=path, params=params, body=body, headers={"x-api-key": owner})
    assert allowed.status_code < 400 or allowed.status_code == 404, allowed.text  # 404: message m was never stored
    check(allowed, method, template)


# --- every declared answer was driven -------------------------------------------------------------

def test_every_declared_response_was_driven(request: pytest.FixtureRequest) -> None:
    module = sys.modules[__name__]
    ours = {item.originalname for item in request.session.items if getattr(item, "module", None) is module}
    if ours != {name for name in vars(module) if name.startswith("test_")}:
        pytest.skip("only part of this module was selected")
    required = {(method, path, status) for method, path, op in oas.operations() for status in op["responses"]
                if (method, status) not in NOT_DRIVEN}
    assert required - SEEN - NOT_DRIVEN_HERE == set()
