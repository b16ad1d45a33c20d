"""Search filters on GET /api/messages and GET /api/apps/{app}/export (mars_common.search), through the
Chalice app under moto, against a ground truth the test builds itself."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from mars_common import alerts, auth, search
from mars_common.config import settings
from mars_common.events import parse_event, utc_now
from mars_common.store import INLINE_MAX_BYTES, get_items, is_paged, upsert_message
from requests.structures import CaseInsensitiveDict

from mars.client import HttpTransport, MarsClient
from tests.conftest import load_function
from tests.unit.test_api import Api, Reply, assert_error, each_case, fields

LIFECYCLE = {"events": ["CREATED", "PAID", "SHIPPED", "DELIVERED"], "failure": ["FAILED"]}
APP = "shop"


class RawApi(Api):
    """Api whose replies keep a non-JSON body (export answers NDJSON or CSV) as text."""

    def send(self, event: dict[str, Any]) -> Reply:
        out = self.module.app(event, self.context)
        headers = {k.lower(): v for k, v in (out.get("headers") or {}).items()}
        body = out.get("body") or ""
        if headers.get("content-type", "").startswith("application/json"):
            return Reply(out["statusCode"], headers, json.loads(body))
        return Reply(out["statusCode"], headers, body)


@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any) -> RawApi:
    return RawApi(load_function("api"), lambda_context)


def store(message_id: str, steps: list[str], meta: dict[str, str] | None = None, app_id: str = APP) -> None:
    events = [parse_event({"app_id": app_id, "message_id": message_id, "event": s,
                           "created_at": f"2026-11-30T10:00:{i:02d}Z", **({"meta": meta} if meta and i == 0 else {})})
              for i, s in enumerate(steps)]
    upsert_message(settings().messages_table, app_id, message_id, events, 30)


def truth(api: RawApi, n: int = 24) -> dict[str, dict[str, Any]]:
    """n messages: every 3rd lacks SHIPPED, every 4th has meta carrier=dhl (else ups), every 5th a firing alert."""
    assert api.call("PUT", f"/api/apps/{APP}/lifecycle", resource="/api/apps/{app_id}/lifecycle",
                    params={"app_id": APP}, body=LIFECYCLE).status == 200
    out: dict[str, dict[str, Any]] = {}
    for i in range(n):
        steps = ["CREATED", "PAID"] + ([] if i % 3 == 0 else ["SHIPPED"])
        carrier = "dhl" if i % 4 == 0 else "ups"
        store(f"m{i:03d}", steps, {"carrier": carrier, "note": 'a, "quoted" value; x'})
        firing = i % 5 == 0
        if firing:
            alerts.fire_failure(settings().alerts_table, APP, f"m{i:03d}", "FAILED", utc_now(), 2**31)
        out[f"m{i:03d}"] = {"steps": set(steps), "carrier": carrier, "firing": firing}
    # a resolved alert is not firing
    alerts.fire_sla(settings().alerts_table, APP, "m001", utc_now(), 2**31)
    alerts.resolve_sla(settings().alerts_table, APP, "m001", utc_now())
    return out


def all_pages(api: RawApi, query: dict[str, str], limit: int = 4) -> list[str]:
    seen: list[str] = []
    q = {"app_id": APP, "limit": str(limit), **query}
    for _ in range(100):
        reply = api.call("GET", "/api/messages", query=q)
        assert reply.status == 200, reply.body
        assert len(reply.body["items"]) <= limit
        seen += [i["message_id"] for i in reply.body["items"]]
        if reply.body["cursor"] is None:
            return seen
        q = {**q, "cursor": reply.body["cursor"]}
    raise AssertionError("no end of pages")


def test_filters_match_the_ground_truth_through_every_page(api: RawApi) -> None:
    gt = truth(api)
    newest_first = sorted(gt, reverse=True)  # stored in order, so updated_at order is id order
    cases: list[tuple[dict[str, str], Any]] = [
        ({"event": "SHIPPED"}, lambda t: "SHIPPED" in t["steps"]),
        ({"missing": "SHIPPED"}, lambda t: "SHIPPED" not in t["steps"]),
        ({"meta.carrier": "dhl"}, lambda t: t["carrier"] == "dhl"),
        ({"alert": "firing"}, lambda t: t["firing"]),
        ({"alert": "firing", "missing": "SHIPPED", "meta.carrier": "dhl"},
         lambda t: t["firing"] and "SHIPPED" not in t["steps"] and t["carrier"] == "dhl"),
        ({"meta.carrier": "dhl", "meta.note": 'a, "quoted" value; x'}, lambda t: t["carrier"] == "dhl"),
        ({"meta.carrier": "fedex"}, lambda t: False),
    ]
    for query, want in cases:
        expected = [m for m in newest_first if want(gt[m])]
        assert all_pages(api, query) == expected, query
        assert all_pages(api, query, limit=1) == expected, query


def test_from_and_to_bound_the_last_update(api: RawApi) -> None:
    for i in range(3):
        store(f"old{i}", ["CREATED"])
    time.sleep(0.01)
    middle = utc_now()
    time.sleep(0.01)
    for i in range(3):
        store(f"new{i}", ["CREATED"])
    assert all_pages(api, {"from": middle}) == ["new2", "new1", "new0"]
    assert all_pages(api, {"to": middle}) == ["old2", "old1", "old0"]
    assert all_pages(api, {"from": "2020-01-01T00:00:00Z", "to": "2020-01-02T00:00:00+00:00"}) == []


def test_a_page_of_skipped_items_still_resumes_exactly(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """With one index page a request and 2 items a page, pages come back short or empty, never losing one."""
    from mars_common import store as store_mod

    gt = truth(api, 12)
    original = store_mod.list_messages
    monkeypatch.setattr(store_mod, "FILTERED_PAGE_ITEMS", 2)
    api.module.list_messages = lambda *a, **k: original(*a, **{**k, "max_pages": 1})
    try:
        pages: list[int] = []
        q: dict[str, str] = {"app_id": APP, "limit": "2", "meta.carrier": "dhl"}
        seen: list[str] = []
        while True:
            reply = api.call("GET", "/api/messages", query=q)
            pages.append(len(reply.body["items"]))
            seen += [i["message_id"] for i in reply.body["items"]]
            if not reply.body["cursor"]:
                break
            q["cursor"] = reply.body["cursor"]
    finally:
        api.module.list_messages = original
    assert seen == [m for m in sorted(gt, reverse=True) if gt[m]["carrier"] == "dhl"]
    assert 0 in pages  # some pages held nothing but still gave a cursor


def test_a_slow_filter_answers_within_its_budget_and_the_cursor_finds_every_match(
        api: RawApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """alert=firing queries AlertsTable per message: when those queries are slow (a busy stack: 1,000 of them
    outlasted the function's 15 s), a page stops at its budget with what it has and a cursor, and following
    the cursor still finds every firing message exactly once, in order."""
    gt = truth(api, 12)
    real = search.has_firing_alert

    def slow(*args: Any) -> bool:
        time.sleep(0.05)
        return real(*args)

    monkeypatch.setattr(search, "has_firing_alert", slow)
    monkeypatch.setattr(api.module, "SEARCH_BUDGET_SECONDS", 0.12)
    caplog.set_level("INFO")
    q: dict[str, str] = {"app_id": APP, "limit": "100", "alert": "firing"}
    seen: list[str] = []
    pages: list[tuple[int, float]] = []
    while True:
        t0 = time.monotonic()
        reply = api.call("GET", "/api/messages", query=q)
        pages.append((len(reply.body["items"]), time.monotonic() - t0))
        assert reply.status == 200, reply.body
        seen += [i["message_id"] for i in reply.body["items"]]
        if not reply.body["cursor"]:
            break
        q["cursor"] = reply.body["cursor"]
    assert seen == [m for m in sorted(gt, reverse=True) if gt[m]["firing"]]
    assert len(pages) >= 3, pages  # 12 messages at 0.05 s each against a 0.12 s budget: cut several times
    assert all(took < 0.12 + 0.05 + 1.0 for _, took in pages), pages  # a budget, plus the one check past it
    cut = [r for r in caplog.records if r.getMessage() == "search page cut at its time budget"]
    assert len(cut) == len(pages) - 1 and all(r.__dict__["app_id"] == APP for r in cut), cut


def test_the_budget_shrinks_to_the_invocations_time_left(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page never plans past the function's own timeout: 2.3 s left and a 2 s margin leave ~0.3 s."""
    from samlocal.worker import LambdaContext

    gt = truth(api, 12)
    real = search.has_firing_alert
    monkeypatch.setattr(search, "has_firing_alert", lambda *a: (time.sleep(0.05), real(*a))[1])
    api.context = LambdaContext({"name": "unit-function", "memory_mb": 512,
                                 "arn": "arn:aws:lambda:us-east-1:123456789012:function:unit-function"},
                                "req-short", int(time.time() * 1000) + 2_300, "")
    reply = api.call("GET", "/api/messages", query={"app_id": APP, "limit": "100", "alert": "firing"})
    assert reply.status == 200 and reply.body["cursor"], reply.body
    assert len(reply.body["items"]) < sum(t["firing"] for t in gt.values())


def test_meta_filter_reads_a_long_timelines_pages(api: RawApi) -> None:
    api.call("PUT", f"/api/apps/{APP}/lifecycle", resource="/api/apps/{app_id}/lifecycle",
             params={"app_id": APP}, body=LIFECYCLE)
    filler = "x" * 200
    events = [parse_event({"app_id": APP, "message_id": "long", "event": "CREATED",
                           "created_at": f"2026-11-30T10:{i // 60:02d}:{i % 60:02d}Z", "meta": {"pad": filler}})
              for i in range(INLINE_MAX_BYTES // 150)]
    events.append(parse_event({"app_id": APP, "message_id": "long", "event": "PAID",
                               "created_at": "2026-11-30T11:00:00Z", "meta": {"carrier": "dhl"}}))
    upsert_message(settings().messages_table, APP, "long", events[:-1], 30)
    upsert_message(settings().messages_table, APP, "long", events[-1:], 30)
    store("short", ["CREATED"], {"carrier": "ups"})
    (item,) = get_items(settings().messages_table, "long", APP)
    assert is_paged(item)
    assert all_pages(api, {"meta.carrier": "dhl"}) == ["long"]
    assert all_pages(api, {"event": "PAID"}) == ["long"]
    assert all_pages(api, {"missing": "PAID"}) == ["short"]


def test_a_too_long_timeline_is_refused_not_guessed(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    events = [parse_event({"app_id": APP, "message_id": "long", "event": "CREATED",
                           "created_at": f"2026-11-30T10:{i // 60:02d}:{i % 60:02d}Z", "meta": {"pad": "y" * 200}})
              for i in range(60)]
    upsert_message(settings().messages_table, APP, "long", events[:30], 30)
    upsert_message(settings().messages_table, APP, "long", events[30:], 30)
    monkeypatch.setattr(search, "META_MAX_EVENTS", 10)
    monkeypatch.setattr(search, "read_timeline", _small_pages(search.read_timeline))
    assert_error(api.call("GET", "/api/messages", query={"app_id": APP, "meta.carrier": "dhl"}), 422,
                 "MESSAGE_TOO_LONG")


def _small_pages(read: Any) -> Any:
    return lambda *a, **k: read(*a, **{**k, "limit": 10})


SEARCH_ERRORS = [
    pytest.param({"from": "yesterday"}, {"from"}, id="bad-from"),
    pytest.param({"to": "2026-13-01T00:00:00Z"}, {"to"}, id="bad-to"),
    pytest.param({"from": "2026-11-30T10:00:00Z", "to": "2026-11-29T10:00:00Z"}, {"from"}, id="from-after-to"),
    pytest.param({"event": ""}, {"event"}, id="empty-event"),
    pytest.param({"event": "A\nB"}, {"event"}, id="unprintable-event"),
    pytest.param({"missing": "NOT_A_STEP"}, {"missing"}, id="missing-not-in-lifecycle"),
    pytest.param({"alert": "resolved"}, {"alert"}, id="bad-alert"),
    pytest.param({"meta.bad key": "x"}, {"meta.bad key"}, id="bad-meta-key"),
    pytest.param({"meta.": "x"}, {"meta."}, id="empty-meta-key"),
    pytest.param({"meta.carrier": ""}, {"meta.carrier"}, id="empty-meta-value"),
    pytest.param({f"meta.k{i}": "v" for i in range(6)}, {"meta"}, id="too-many-meta"),
    pytest.param({"metadata": "x"}, {"metadata"}, id="unknown-param"),
]


def test_search_validation_names_the_parameter(api: RawApi) -> None:
    api.call("PUT", f"/api/apps/{APP}/lifecycle", resource="/api/apps/{app_id}/lifecycle",
             params={"app_id": APP}, body=LIFECYCLE)

    def check(query: dict[str, str], bad: set[str]) -> None:
        reply = api.call("GET", "/api/messages", query={"app_id": APP, **query})
        assert fields(assert_error(reply, 400, "VALIDATION_ERROR")) == bad

    each_case(SEARCH_ERRORS, check)


def test_missing_needs_a_lifecycle(api: RawApi) -> None:
    reply = api.call("GET", "/api/messages", query={"app_id": "nolife", "missing": "PAID"})
    assert fields(assert_error(reply, 400, "VALIDATION_ERROR")) == {"missing"}


# --- export --------------------------------------------------------------------------------------------
def export(api: RawApi, app_id: str = APP, **query: str) -> Reply:
    return api.call("GET", f"/api/apps/{app_id}/export", resource="/api/apps/{app_id}/export",
                    params={"app_id": app_id}, query=query or None)


def export_all(api: RawApi, **query: str) -> tuple[list[str], int]:
    bodies: list[str] = []
    for _ in range(500):
        reply = export(api, **query)
        assert reply.status == 200, reply.body
        bodies.append(reply.body)
        cursor = reply.headers.get("mars-cursor")
        if not cursor:
            return bodies, len(bodies)
        query = {**query, "cursor": cursor}
    raise AssertionError("no end of export")


def test_export_ndjson_one_line_per_message(api: RawApi) -> None:
    gt = truth(api, 10)
    reply = export(api)
    assert reply.headers["content-type"] == "application/x-ndjson" and "mars-cursor" not in reply.headers
    rows = [json.loads(line) for line in reply.body.splitlines()]
    assert [r["message_id"] for r in rows] == sorted(gt, reverse=True)
    for r in rows:
        assert set(r) == set(search.MESSAGE_COLUMNS)
        assert ("SHIPPED" in r["missing"]) == ("SHIPPED" not in gt[r["message_id"]]["steps"])
        assert r["status"] in ("in_progress", "stuck", "complete", "failed")


def test_export_csv_events_quotes_and_has_one_header(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    gt = truth(api, 10)
    monkeypatch.setattr(search, "EXPORT_TARGET_BYTES", 300)  # a few messages a response
    bodies, pages = export_all(api, format="csv", events="1")
    assert pages > 2
    assert bodies[0].startswith(",".join(search.EVENT_COLUMNS) + "\r\n")
    assert not any(b.startswith("app_id,") for b in bodies[1:])  # the header once: pages concatenate
    rows = list(csv.DictReader(io.StringIO("".join(bodies))))
    assert len(rows) == sum(len(t["steps"]) for t in gt.values())
    assert {(r["message_id"], r["event"]) for r in rows} == {(m, s) for m, t in gt.items() for s in t["steps"]}
    firsts = [r for r in rows if r["event"] == "CREATED"]
    for r in firsts:  # the meta with a comma, quotes and a semicolon survives the round trip
        assert json.loads(r["meta"]) == {"carrier": gt[r["message_id"]]["carrier"], "note": 'a, "quoted" value; x'}


def test_export_pages_by_bytes_and_the_cursor_resumes_exactly(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    gt = truth(api, 15)
    monkeypatch.setattr(search, "EXPORT_TARGET_BYTES", 500)
    bodies, pages = export_all(api)
    assert pages >= 3
    ids = [json.loads(line)["message_id"] for b in bodies for line in b.splitlines()]
    assert ids == sorted(gt, reverse=True)
    assert all(len(b.encode()) < 500 + 400 for b in bodies)


def test_export_from_to_and_errors(api: RawApi) -> None:
    store("a", ["CREATED"])
    time.sleep(0.01)
    middle = utc_now()
    store("b", ["CREATED"])
    assert [json.loads(x)["message_id"] for x in export(api, **{"from": middle}).body.splitlines()] == ["b"]
    for query, bad in [({"format": "xml"}, {"format"}), ({"events": "yes"}, {"events"}),
                       ({"from": "soon"}, {"from"}), ({"cursor": "nope"}, {"cursor"}),
                       ({"event": "CREATED"}, {"event"})]:
        assert fields(assert_error(export(api, **query), 400, "VALIDATION_ERROR")) == bad, query


def test_export_of_an_empty_app_is_empty(api: RawApi) -> None:
    assert export(api, format="csv").body == ",".join(search.MESSAGE_COLUMNS) + "\r\n"
    assert export(api).body == ""


def test_search_and_export_are_scoped_to_the_keys_apps(auth_on: Any, lambda_context: Any) -> None:
    api = RawApi(load_function("api"), lambda_context)
    table = settings().keys_table
    shop_key = auth.create_key(table, ["shop"])[1]
    store("m1", ["CREATED"], app_id="bank")

    def call(path: str, key: str | None, **kwargs: Any) -> Reply:
        event = api.event("GET", path, **kwargs)
        if key is not None:
            event["headers"]["x-api-key"] = key
            event["multiValueHeaders"]["x-api-key"] = [key]
        return api.send(event)

    bank_export = {"resource": "/api/apps/{app_id}/export", "params": {"app_id": "bank"}}
    assert_error(call("/api/apps/bank/export", shop_key, **bank_export), 403)
    assert_error(call("/api/apps/bank/export", None, **bank_export), 401)
    assert_error(call("/api/messages", shop_key, query={"app_id": "bank", "event": "CREATED"}), 403)
    own = call("/api/apps/shop/export", shop_key, resource="/api/apps/{app_id}/export", params={"app_id": "shop"})
    assert own.status == 200 and own.body == ""


# --- mars.client.iter_export and `mars export`, through the Chalice app ------------------------------------
class ChaliceSession:
    """A requests.Session whose GETs are API Gateway events to the Chalice app (no socket)."""

    def __init__(self, api: RawApi) -> None:
        self.api, self.calls = api, 0

    def get(self, url: str, params: dict[str, str], headers: dict[str, str], timeout: float) -> requests.Response:
        self.calls += 1
        path = urlsplit(url).path
        event = self.api.event("GET", path, resource="/api/apps/{app_id}/export",
                               params={"app_id": path.split("/")[3]}, query=params or None)
        out = self.api.module.app(event, self.api.context)
        resp = requests.Response()
        resp.status_code = out["statusCode"]
        resp._content = (out.get("body") or "").encode()
        resp.headers = CaseInsensitiveDict(out.get("headers") or {})
        return resp


def mars_client(api: RawApi) -> MarsClient:
    return MarsClient(HttpTransport("http://127.0.0.1:9", session=ChaliceSession(api)))  # type: ignore[arg-type]


def test_iter_export_follows_the_cursor_to_the_end(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    gt = truth(api, 12)
    monkeypatch.setattr(search, "EXPORT_TARGET_BYTES", 400)
    client = mars_client(api)
    pages = list(client.iter_export(APP, fmt="csv"))
    assert len(pages) > 2 and client.transport.session.calls == len(pages)  # type: ignore[attr-defined]
    rows = list(csv.DictReader(io.StringIO("".join(pages))))
    assert [r["message_id"] for r in rows] == sorted(gt, reverse=True)


def test_mars_export_writes_every_page_and_fails_loudly(api: RawApi, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from mars import cli

    gt = truth(api, 6)
    monkeypatch.setattr(search, "EXPORT_TARGET_BYTES", 300)
    monkeypatch.setattr(MarsClient, "http", classmethod(lambda cls, url, api_key=None, retry=None: mars_client(api)))
    assert cli.main(["export", "--app", APP, "--url", "http://127.0.0.1:9", "--events"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == sum(len(t["steps"]) for t in gt.values()) and err == ""  # no TTY: no progress
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert cli.main(["export", "--app", APP, "--url", "http://127.0.0.1:9"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 6 and "6 line(s)" in err and err.endswith("\n")
    assert cli.main(["export", "--app", APP, "--url", "http://127.0.0.1:9", "--from", "never"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "export of 'shop' failed" in err and "HTTP 400" in err


def test_export_refuses_a_message_too_big_for_one_response(api: RawApi, monkeypatch: pytest.MonkeyPatch) -> None:
    store("big", ["CREATED", "PAID", "SHIPPED"], {"carrier": "dhl"})
    monkeypatch.setattr(search, "EXPORT_MAX_BYTES", 100)
    reply = export(api, events="1")
    assert_error(reply, 422, "MESSAGE_TOO_LONG")
    assert "big" in reply.body["error"]["message"]
