"""GET /api/messages/{id}/trace: a timeline as an OTLP/JSON trace that opentelemetry-proto parses,
with a stable trace id, a root span over the message and a child span per step."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from google.protobuf import json_format
from mars_common import auth
from mars_common.config import settings
from mars_common.events import parse_event
from mars_common.store import put_lifecycle, upsert_message
from mars_common.timeline import Lifecycle
from mars_common.traces import timeline_trace
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status, TracesData

from tests.conftest import load_function
from tests.unit.test_api import Api

LIFECYCLE = Lifecycle(("CREATED", "PAID", "SHIPPED", "DELIVERED"), 300)
RESOURCE = "/api/messages/{message_id}/trace"


def store(message_id: str, steps: list[tuple[str, str]], app_id: str = "shop",
          meta: dict[str, str] | None = None) -> list[str]:
    events = [parse_event({"app_id": app_id, "message_id": message_id, "event": name, "created_at": at,
                           **({"meta": meta} if meta else {})}) for name, at in steps]
    upsert_message(settings().messages_table, app_id, message_id, events, 30)
    return [e.event_id for e in events]


def parse(body: dict[str, Any]) -> TracesData:
    """OTLP/JSON to protobuf as collectors read it: ids are hex in OTLP/JSON, base64 in protobuf's JSON."""
    body = copy.deepcopy(body)
    for resource in body["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for span in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()
    return json_format.ParseDict(body, TracesData())


def attrs(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in span.attributes:
        which = kv.value.WhichOneof("value")
        value = getattr(kv.value, which)
        out[kv.key] = [getattr(v, v.WhichOneof("value")) for v in value.values] if which == "array_value" else value
    return out


@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any) -> Api:
    put_lifecycle(settings().apps_table, "shop", LIFECYCLE)
    return Api(load_function("api"), lambda_context)


def trace(api: Api, message_id: str, app_id: str | None = "shop") -> Any:
    return api.call("GET", f"/api/messages/{message_id}/trace", resource=RESOURCE, params={"message_id": message_id},
                    query={"app_id": app_id} if app_id else None)


def test_a_timeline_is_a_trace_with_a_root_and_a_span_per_step(api: Api) -> None:
    ids = store("order-1", [("CREATED", "2026-11-30T10:00:00Z"), ("SHIPPED", "2026-11-30T10:00:05Z"),
                            ("PAID", "2026-11-30T10:00:07.250Z"), ("AUDITED", "2026-11-30T10:00:09Z")],
                meta={"carrier": "dhl"})
    reply = trace(api, "order-1")
    assert reply.status == 200, reply.body
    data = parse(reply.body)
    (spans,) = [s.spans for r in data.resource_spans for s in r.scope_spans]
    root, *steps = spans
    assert len({s.trace_id for s in spans}) == 1 and len(root.trace_id) == 16 and len(root.span_id) == 8
    assert root.name == "message order-1" and not root.parent_span_id
    assert attrs(root) == {"messaging.message.id": "order-1", "mars.app_id": "shop", "mars.status": "in_progress",
                           "mars.missing": ["DELIVERED"], "mars.event_count": 4}
    assert root.start_time_unix_nano == 1_796_032_800_000_000_000  # 2026-11-30T10:00:00Z
    assert root.end_time_unix_nano == 1_796_032_809_000_000_000
    assert [s.name for s in steps] == ["CREATED", "SHIPPED", "PAID", "AUDITED"]
    assert all(s.parent_span_id == root.span_id for s in steps)
    # a step lasts from the previous event to it
    assert steps[2].start_time_unix_nano == 1_796_032_805_000_000_000
    assert steps[2].end_time_unix_nano == 1_796_032_807_250_000_000
    assert attrs(steps[0])["carrier"] == "dhl" and attrs(steps[0])["mars.event_id"] == ids[0]
    # SHIPPED was created before PAID, its predecessor (timeline.event_flags: the timeline's out_of_order too)
    assert [[e.name for e in s.events] for s in steps] == [[], ["out_of_order"], [], ["unexpected"]]
    assert root.status.code == Status.STATUS_CODE_UNSET
    assert trace(api, "order-1").body == reply.body  # the same ids on every call


def test_complete_is_ok_and_stuck_is_an_error_naming_what_is_missing(api: Api) -> None:
    store("done", [(step, f"2026-11-30T10:00:0{i}Z") for i, step in enumerate(LIFECYCLE.events)])
    (root, *_steps) = parse(trace(api, "done").body).resource_spans[0].scope_spans[0].spans
    assert root.status.code == Status.STATUS_CODE_OK and attrs(root)["mars.status"] == "complete"
    # stuck: nothing received for longer than the SLA (a timeline as the store reads it then)
    created = {"event": "CREATED", "created_at": "2026-11-30T10:00:00Z", "event_id": "e1"}
    stuck = {"app_id": "shop", "message_id": "stale", "events": [created], "status": "stuck",
             "missing": ["PAID", "SHIPPED", "DELIVERED"], "first_seen": created["created_at"],
             "last_seen": created["created_at"]}
    (root, _created) = parse(timeline_trace(stuck, [created], LIFECYCLE, 1)).resource_spans[0].scope_spans[0].spans
    assert root.status.code == Status.STATUS_CODE_ERROR
    assert root.status.message == "stuck; missing PAID, SHIPPED, DELIVERED"


def test_a_long_timeline_gives_every_event_in_order(api: Api) -> None:
    steps = [("TICK", f"2026-11-30T10:{i // 60:02d}:{i % 60:02d}Z") for i in range(1500)]
    for start in range(0, len(steps), 100):
        store("chatty", steps[start:start + 100])
    spans = parse(trace(api, "chatty").body).resource_spans[0].scope_spans[0].spans
    assert len(spans) == 1501 and attrs(spans[0])["mars.event_count"] == 1500
    times = [s.end_time_unix_nano for s in spans[1:]]
    assert times == sorted(times) and len(set(times)) == 1500


def test_errors(api: Api) -> None:
    store("order-2", [("CREATED", "2026-11-30T10:00:00Z")])
    missing_app = trace(api, "order-2", app_id=None)
    assert missing_app.status == 400 and missing_app.body["error"]["details"][0]["field"] == "app_id"
    assert trace(api, "nope").status == 404
    assert trace(api, "order-2", app_id="other").status == 404
    assert trace(api, "order-2", app_id="bad app").status == 400


def test_a_key_reads_only_its_apps_traces(auth_on: Any, lambda_context: Any) -> None:
    put_lifecycle(settings().apps_table, "shop", LIFECYCLE)
    store("order-3", [("CREATED", "2026-11-30T10:00:00Z")])
    api = Api(load_function("api"), lambda_context)
    _id, bank = auth.create_key(settings().keys_table, ["bank"])
    _id, shop = auth.create_key(settings().keys_table, ["shop"])
    for key, status in ((bank, 403), (shop, 200)):
        event = api.event("GET", "/api/messages/order-3/trace", resource=RESOURCE, params={"message_id": "order-3"},
                          query={"app_id": "shop"})
        event["headers"]["x-api-key"] = key
        event["multiValueHeaders"]["x-api-key"] = [key]
        assert api.send(event).status == status
