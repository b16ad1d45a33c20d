"""OTLP in (issue 15): the span → event mapping (mars_common.otlp), OtlpFunction's `POST /v1/traces`
(protobuf, JSON, gzip, partial_success, 400/413/415, auth scoping), the per-app mapping routes of
ApiFunction, and the shim's TraceService/Export — against template.yaml's queues and tables under moto."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from typing import Any

import boto3
import grpc
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from mars_common import auth, otlp
from mars_common.config import settings
from mars_common.events import EVENT_ID_RE, MAX_META_BYTES, Event
from mars_common.store import get_lifecycle, put_lifecycle
from mars_common.timeline import Lifecycle
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from tests.conftest import load_function
from tests.unit.test_api import Api

TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
START = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns


def kv(key: str, value: Any) -> common_pb2.KeyValue:
    if isinstance(value, bool):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(bool_value=value))
    if isinstance(value, int):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(int_value=value))
    if isinstance(value, list):
        return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(array_value=common_pb2.ArrayValue(
            values=[common_pb2.AnyValue(string_value=str(v)) for v in value])))
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=str(value)))


def span(n: int, *, attrs: dict[str, Any] | None = None, name: str = "orders send", trace: bytes = TRACE,
         start: int = START, events: list[trace_pb2.Span.Event] | None = None) -> trace_pb2.Span:
    return trace_pb2.Span(trace_id=trace, span_id=n.to_bytes(8, "big"), name=name, kind=trace_pb2.Span.SPAN_KIND_PRODUCER,
                          start_time_unix_nano=start + n * 1000, end_time_unix_nano=start + n * 1000 + 500,
                          attributes=[kv(k, v) for k, v in (attrs or {}).items()], events=events or [])


def request(spans: list[trace_pb2.Span], resource: dict[str, Any] | None = None
            ) -> trace_service_pb2.ExportTraceServiceRequest:
    res = resource if resource is not None else {"service.name": "orders-api", "mars.app_id": "orders"}
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[kv(k, v) for k, v in res.items()]),
        scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])


def msg(n: int, op: str = "send", **extra: Any) -> dict[str, Any]:
    return {"messaging.message.id": f"m-{n}", "messaging.operation.type": op, "messaging.system": "aws_sqs", **extra}


def mapped(req: Any, principal: auth.Principal = auth.ANONYMOUS_ADMIN,
           mapping: otlp.Mapping = otlp.DEFAULT_MAPPING) -> otlp.Result:
    return otlp.to_events(req, principal, lambda app: mapping, "2026-01-01T00:00:05.000000Z")


# --- the mapping --------------------------------------------------------------------------------


def test_defaults_app_message_event_created_at_and_meta() -> None:
    result = mapped(request([span(1, attrs=msg(1, "send", **{"messaging.destination.name": "orders-q"})),
                             span(2, attrs={"http.method": "GET"})]))
    assert result.spans == 2 and result.skipped_spans == 1 and result.rejected_spans == 0
    (ev,) = result.events
    assert (ev.app_id, ev.message_id, ev.event) == ("orders", "m-1", "send:orders-api")
    assert ev.created_at == "2026-01-01T00:00:00.000001Z"  # the span's start (1000 ns after START)
    assert ev.event_id == f"otlp-{TRACE.hex()}-{(1).to_bytes(8, 'big').hex()}" and EVENT_ID_RE.fullmatch(ev.event_id)
    assert ev.meta == {"otel.trace_id": TRACE.hex(), "otel.span_id": "0000000000000001",
                       "messaging.operation.type": "send", "messaging.system": "aws_sqs",
                       "messaging.destination.name": "orders-q"}  # the message id is not repeated in meta


def test_the_app_falls_back_to_service_name_and_the_event_to_the_span_name() -> None:
    result = mapped(request([span(1, attrs={"messaging.message.id": "m-1"}, name="handle order")],
                            resource={"service.name": "billing"}))
    (ev,) = result.events
    assert (ev.app_id, ev.event) == ("billing", "handle order")


def test_the_older_messaging_operation_attribute_names_the_event_too() -> None:
    (ev,) = mapped(request([span(1, attrs={"messaging.message.id": "m-1", "messaging.operation": "publish"})])).events
    assert ev.event == "publish:orders-api"


def test_per_app_mapping_message_id_attribute_and_event_name_modes() -> None:
    spans = [span(1, attrs={"order.id": "o-1", "step": "PAID", "messaging.operation.type": "send"}, name="pay")]
    by_attr = mapped(request(spans), mapping=otlp.Mapping("order.id", "attribute:step")).events
    assert [(e.message_id, e.event) for e in by_attr] == [("o-1", "PAID")]
    by_name = mapped(request(spans), mapping=otlp.Mapping("order.id", "span_name")).events
    assert [e.event for e in by_name] == ["pay"]
    default = mapped(request(spans)).events  # the default attribute is absent: skipped
    assert default == []


def test_span_events_carrying_a_message_id_become_events() -> None:
    event = trace_pb2.Span.Event(time_unix_nano=START + 7_000_000, name="message acked",
                                 attributes=[kv("messaging.message.id", "m-9"), kv("retry", 2)])
    other = trace_pb2.Span.Event(time_unix_nano=START, name="log", attributes=[kv("msg", "hello")])
    result = mapped(request([span(3, attrs={"http.route": "/x"}, events=[other, event])]))
    (ev,) = result.events
    assert (ev.message_id, ev.event, ev.created_at) == ("m-9", "message acked", "2026-01-01T00:00:00.007000Z")
    assert ev.event_id.endswith("-e1") and ev.meta["retry"] == "2"
    assert result.skipped_spans == 0  # the span counted as carrying one


def test_meta_limits_values_cut_attributes_that_do_not_fit_dropped_and_said() -> None:
    attrs = msg(1, long="x" * 1000, newline="a\nb", **{f"k{i:03d}": "v" * 40 for i in range(100)})
    (ev,) = mapped(request([span(1, attrs=attrs)])).events
    assert len(json.dumps(ev.meta, ensure_ascii=False).encode()) <= MAX_META_BYTES
    assert len(ev.meta["long"]) == otlp.MAX_META_VALUE and ev.meta["long"].endswith("…")
    assert ev.meta["newline"] == "a b"
    dropped = int(ev.meta[otlp.DROPPED_KEY])
    assert dropped > 0 and dropped + len(ev.meta) - 1 == len(attrs) - 1 + 2  # all but the id, + 2 otel ids
    Event.from_dict(ev.as_dict())  # still a valid event for the rest of the pipeline


def test_an_exporters_retry_maps_to_the_same_event_ids() -> None:
    req = request([span(n, attrs=msg(n)) for n in range(1, 6)])
    first = [e.event_id for e in mapped(req).events]
    again = [e.event_id for e in mapped(trace_service_pb2.ExportTraceServiceRequest.FromString(
        req.SerializeToString())).events]
    assert first == again and len(set(first)) == 5


def test_invalid_spans_are_rejected_with_reasons() -> None:
    bad = [span(1, attrs=msg(1), trace=b"\x00" * 16), span(2, attrs=msg(2), trace=b"\x01"),
           span(3, attrs=msg(3)), span(4, attrs={"messaging.message.id": "x" * 300}),
           span(5, attrs=msg(5))]
    bad[2].start_time_unix_nano = 0
    result = mapped(request(bad))
    assert [e.message_id for e in result.events] == ["m-5"]
    assert result.rejected_spans == 4
    message = result.error_message()
    assert message.startswith("4 span(s) rejected: ") and "trace_id" in message and "start_time_unix_nano" in message
    assert message.endswith("and 1 more")


def test_a_key_for_app_a_may_not_send_spans_of_app_b() -> None:
    shop = auth.Principal(key_id="k", apps=frozenset({"shop"}))
    req = request([span(1, attrs=msg(1))], resource={"service.name": "x", "mars.app_id": "bank"})
    req.resource_spans.extend(request([span(2, attrs=msg(2))], resource={"mars.app_id": "shop"}).resource_spans)
    asked: list[str] = []

    def mapping_for(app: str) -> otlp.Mapping:
        asked.append(app)
        return otlp.DEFAULT_MAPPING

    result = otlp.to_events(req, shop, mapping_for, "2026-01-01T00:00:00Z")
    assert [(e.app_id, e.message_id) for e in result.events] == [("shop", "m-2")]
    assert result.rejected_spans == 1 and "may not write to app 'bank'" in result.error_message()
    assert asked == ["shop"]  # no mapping read for an app the key may not use


def test_an_invalid_or_missing_app_is_rejected() -> None:
    assert "not a valid app_id" in mapped(request([span(1, attrs=msg(1))], resource={"mars.app_id": "a b"})).reasons[0]
    assert "no app" in mapped(request([span(1, attrs=msg(1))], resource={})).reasons[0]


def test_parse_mapping_validates() -> None:
    assert otlp.parse_mapping({}) == otlp.DEFAULT_MAPPING
    assert otlp.parse_mapping({"event_name": "attribute:step"}).event_name == "attribute:step"
    bodies: list[Any] = [{"event_name": "nope"}, {"event_name": "attribute:"}, {"message_id_attribute": ""},
                         {"message_id_attribute": 5}, {"extra": 1}, []]
    for body in bodies:
        with pytest.raises(otlp.ValidationError):
            otlp.parse_mapping(body)


# --- decoding ---------------------------------------------------------------------------------


def otlp_json(req: Any) -> dict[str, Any]:
    """OTLP/JSON as an exporter writes it: proto3 JSON, but trace and span ids in hex."""
    data = json_format.MessageToDict(req)
    for rs in data["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for s in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in s:
                        s[key] = base64.b64decode(s[key]).hex()
    return data


def test_decodes_protobuf_json_with_hex_ids_and_gzip() -> None:
    req = request([span(1, attrs=msg(1))])
    assert otlp.decode_request(req.SerializeToString(), otlp.PROTOBUF) == req
    text = json.dumps(otlp_json(req)).encode()
    assert otlp.decode_request(text, otlp.JSON) == req
    assert otlp.decode_request(otlp.inflate(gzip.compress(text), "gzip"), otlp.JSON) == req


def test_a_json_id_that_is_not_hex_rejects_its_span_only() -> None:
    data = otlp_json(request([span(1, attrs=msg(1)), span(2, attrs=msg(2))]))
    data["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "not-hex"
    data["unknownField"] = True  # OTLP: receivers ignore unknown fields
    result = mapped(otlp.decode_request(json.dumps(data).encode(), otlp.JSON))
    assert [e.message_id for e in result.events] == ["m-2"] and result.rejected_spans == 1


@pytest.mark.parametrize("body,ctype", [(b"\xff\xff\xff", otlp.PROTOBUF), (b"{", otlp.JSON), (b"[]", otlp.JSON),
                                        (b'{"resourceSpans": 5}', otlp.JSON)])
def test_bodies_that_do_not_parse(body: bytes, ctype: str) -> None:
    with pytest.raises(otlp.DecodeError):
        otlp.decode_request(body, ctype)


def test_inflate_limits_and_errors() -> None:
    with pytest.raises(otlp.TooLargeError):
        otlp.inflate(gzip.compress(b"\0" * (otlp.MAX_REQUEST_BYTES + 1)), "gzip")  # a bomb: ~4 KB in
    with pytest.raises(otlp.TooLargeError):
        otlp.inflate(b"\0" * (otlp.MAX_REQUEST_BYTES + 1), None)
    with pytest.raises(otlp.DecodeError):
        otlp.inflate(b"not gzip", "gzip")
    with pytest.raises(otlp.DecodeError):
        otlp.inflate(gzip.compress(b"abc")[:-6], "gzip")
    with pytest.raises(otlp.DecodeError):
        otlp.inflate(b"abc", "br")


# --- POST /v1/traces (OtlpFunction) -----------------------------------------------------------


class Otlp:
    """Sends REST proxy events to OtlpFunction as API Gateway does with BinaryMediaTypes
    application/x-protobuf and application/json (bodies base64-encoded)."""

    def __init__(self, module: Any, context: Any) -> None:
        self.module, self.context = module, context

    def post(self, body: bytes, content_type: str | None = otlp.PROTOBUF, *, key: str | None = None,
             encoding: str | None = None, binary: bool = True, error_ok: bool = False) -> tuple[int, str, bytes]:
        headers = {"Host": "localhost"}
        if content_type:
            headers["Content-Type"] = content_type
        if key:
            headers["x-api-key"] = key
        if encoding:
            headers["Content-Encoding"] = encoding
        event = {"resource": "/v1/traces", "path": "/v1/traces", "httpMethod": "POST", "headers": headers,
                 "body": base64.b64encode(body).decode() if binary else body.decode(), "isBase64Encoded": binary,
                 "requestContext": {"requestId": "r", "resourcePath": "/v1/traces", "httpMethod": "POST"}}
        out = self.module.lambda_handler(event, self.context)
        raw = base64.b64decode(out["body"]) if out.get("isBase64Encoded") else out["body"].encode()
        assert out["statusCode"] < 500 or error_ok, out  # never a 5xx for what a client sent
        return out["statusCode"], out["headers"]["Content-Type"], raw


@pytest.fixture
def otlp_fn(mocked_stack: Any, lambda_context: Any) -> Otlp:
    otlp.clear_cache()
    return Otlp(load_function("otlp"), lambda_context)


def queued() -> list[dict[str, Any]]:
    sqs = boto3.client("sqs", region_name="us-east-1")
    out: list[dict[str, Any]] = []
    for url in settings().events_queue_urls:
        while True:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                break
            out.extend(json.loads(m["Body"]) for m in got)
    return out


def test_protobuf_request_enqueues_and_answers_an_empty_response(otlp_fn: Otlp, caplog: pytest.LogCaptureFixture) -> None:
    req = request([span(n, attrs=msg(n)) for n in range(1, 4)] + [span(9, attrs={"http.route": "/"})])
    status, ctype, body = otlp_fn.post(req.SerializeToString())
    assert (status, ctype) == (200, otlp.PROTOBUF)
    assert trace_service_pb2.ExportTraceServiceResponse.FromString(body) == trace_service_pb2.ExportTraceServiceResponse()
    events = queued()
    assert sorted(e["message_id"] for e in events) == ["m-1", "m-2", "m-3"]
    assert {e["event"] for e in events} == {"send:orders-api"}


def test_the_skipped_spans_are_counted_in_a_log_line(otlp_fn: Otlp, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        otlp_fn.post(request([span(1, attrs={"http.route": "/"}), span(2, attrs=msg(2))]).SerializeToString())
    (line,) = [r for r in caplog.records if r.getMessage() == "otlp spans skipped or rejected"]
    assert line.skipped_spans_without_message_id == 1 and line.events == 1  # type: ignore[attr-defined]


def test_json_and_gzip_answered_in_json(otlp_fn: Otlp) -> None:
    req = request([span(1, attrs=msg(1)), span(2, attrs=msg(2), trace=b"\0" * 16)])
    text = json.dumps(otlp_json(req)).encode()
    status, ctype, body = otlp_fn.post(gzip.compress(text), otlp.JSON, encoding="gzip")
    assert (status, ctype) == (200, otlp.JSON)
    answer = json.loads(body)
    assert answer["partialSuccess"]["rejectedSpans"] == "1" and "trace_id" in answer["partialSuccess"]["errorMessage"]
    assert [e["message_id"] for e in queued()] == ["m-1"]
    # JSON without BinaryMediaTypes (plain text through the gateway) is read as well
    status, _, _ = otlp_fn.post(text, otlp.JSON, binary=False)
    assert status == 200


def test_partial_success_in_protobuf(otlp_fn: Otlp) -> None:
    req = request([span(1, attrs=msg(1)), span(2, attrs=msg(2), start=0)])
    req.resource_spans[0].scope_spans[0].spans[1].start_time_unix_nano = 0
    status, _, body = otlp_fn.post(req.SerializeToString())
    reply = trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    assert status == 200 and reply.partial_success.rejected_spans == 1
    assert "start_time_unix_nano is 0" in reply.partial_success.error_message


@pytest.mark.parametrize("body,ctype,encoding,status", [
    (b"\xff\xff\xff", otlp.PROTOBUF, None, 400),
    (b"{not json", otlp.JSON, None, 400),
    (b"not gzip", otlp.PROTOBUF, "gzip", 400),
    (b"", "text/plain", None, 415),
    (b"{}", None, None, 415),
    (b"\0" * (otlp.MAX_REQUEST_BYTES + 1), otlp.PROTOBUF, None, 413),
])
def test_refusals_carry_a_google_rpc_status(otlp_fn: Otlp, body: bytes, ctype: str | None, encoding: str | None,
                                            status: int) -> None:
    got, reply_type, raw = otlp_fn.post(body, ctype, encoding=encoding)
    assert got == status
    rpc = status_pb2.Status.FromString(raw) if reply_type == otlp.PROTOBUF else json_format.Parse(raw, status_pb2.Status())
    assert rpc.code != 0 and rpc.message
    assert queued() == []


def test_auth_401_and_scoped_keys(auth_on: Any, otlp_fn: Otlp) -> None:
    _, shop_key = auth.create_key(settings().keys_table, ["shop"])
    req = request([span(1, attrs=msg(1))], resource={"mars.app_id": "bank"})
    req.resource_spans.extend(request([span(2, attrs=msg(2))], resource={"mars.app_id": "shop"}).resource_spans)
    status, _, raw = otlp_fn.post(req.SerializeToString())
    assert status == 401 and "API key" in status_pb2.Status.FromString(raw).message
    status, _, _ = otlp_fn.post(req.SerializeToString(), key="mk_AAAAAAAA_" + "a" * 43)
    assert status == 401
    status, _, raw = otlp_fn.post(req.SerializeToString(), key=shop_key)
    reply = trace_service_pb2.ExportTraceServiceResponse.FromString(raw)
    assert status == 200 and reply.partial_success.rejected_spans == 1
    assert "may not write to app 'bank'" in reply.partial_success.error_message
    assert [(e["app_id"], e["message_id"]) for e in queued()] == [("shop", "m-2")]  # bank's span: not stored


def test_an_enqueue_failure_is_a_retryable_503(otlp_fn: Otlp, monkeypatch: pytest.MonkeyPatch) -> None:
    from mars_common.queues import EnqueueFailure

    monkeypatch.setattr(otlp_fn.module, "enqueue", lambda events, urls: [EnqueueFailure(0, events[0].event_id,
                                                                                        "ServiceUnavailable", "down")])
    status, _, raw = otlp_fn.post(request([span(1, attrs=msg(1))]).SerializeToString(), error_ok=True)
    assert status == 503 and "retry" in status_pb2.Status.FromString(raw).message


def test_the_mapping_is_read_per_app_and_cached(otlp_fn: Otlp, monkeypatch: pytest.MonkeyPatch) -> None:
    otlp.put_mapping(settings().apps_table, "orders", otlp.Mapping("order.id", "span_name"), "2026-01-01T00:00:00Z")
    reads: list[str] = []
    real = otlp.get_mapping

    def counted(table: str, app: str) -> otlp.Mapping | None:
        reads.append(app)
        return real(table, app)

    monkeypatch.setattr(otlp, "get_mapping", counted)
    for n in (1, 2):
        otlp_fn.post(request([span(n, attrs={"order.id": f"o-{n}"}, name="charge")]).SerializeToString())
    assert sorted((e["message_id"], e["event"]) for e in queued()) == [("o-1", "charge"), ("o-2", "charge")]
    assert reads == ["orders"]  # once for both requests (60 s per warm container)


# --- the mapping routes (ApiFunction) ---------------------------------------------------------


@pytest.fixture
def api(mocked_stack: Any, lambda_context: Any) -> Api:
    return Api(load_function("api"), lambda_context)


def test_put_and_get_the_mapping_and_a_lifecycle_keeps_it(api: Api) -> None:
    path, params = "/api/apps/orders/otlp", {"app_id": "orders"}
    got = api.call("GET", path, resource="/api/apps/{app_id}/otlp", params=params)
    assert got.status == 200 and got.body == {"app_id": "orders", "message_id_attribute": "messaging.message.id",
                                              "event_name": "operation_and_service", "default": True}
    put = api.call("PUT", path, resource="/api/apps/{app_id}/otlp", params=params,
                   body={"message_id_attribute": "order.id", "event_name": "attribute:step"})
    assert put.status == 200 and put.body["event_name"] == "attribute:step" and put.body["updated_at"]
    assert get_lifecycle(settings().apps_table, "orders") is None  # a mapping is no lifecycle
    put_lifecycle(settings().apps_table, "orders", Lifecycle(("CREATED",), 0))
    got = api.call("GET", path, resource="/api/apps/{app_id}/otlp", params=params)
    assert got.body["message_id_attribute"] == "order.id" and got.body["default"] is False
    assert get_lifecycle(settings().apps_table, "orders") == Lifecycle(("CREATED",), 0)


def test_put_mapping_refuses_bad_bodies(api: Api) -> None:
    bad = api.call("PUT", "/api/apps/orders/otlp", resource="/api/apps/{app_id}/otlp", params={"app_id": "orders"},
                   body={"event_name": "whatever", "colour": "red"})
    assert bad.status == 400 and {d["field"] for d in bad.body["error"]["details"]} == {"event_name", "colour"}


def test_the_mapping_routes_are_scoped_to_the_keys_apps(auth_on: Any, lambda_context: Any) -> None:
    api = Api(load_function("api"), lambda_context)
    _, shop_key = auth.create_key(settings().keys_table, ["shop"])
    base = api.event("PUT", "/api/apps/bank/otlp", resource="/api/apps/{app_id}/otlp", params={"app_id": "bank"},
                     body={})
    base["headers"]["x-api-key"] = shop_key
    assert api.send(base).status == 403
    assert otlp.get_mapping(settings().apps_table, "bank") is None


# --- gRPC TraceService/Export on the shim -----------------------------------------------------


def test_grpc_export_maps_rejects_and_answers_partial_success(mocked_stack: Any,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from tests.security.test_grpc_security import with_shim

    otlp.clear_cache()
    req = request([span(1, attrs=msg(1)), span(2, attrs=msg(2), trace=b"\0" * 16), span(3, attrs={"a": "b"})])

    async def check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            reply = await stub.Export(req)
            assert reply.partial_success.rejected_spans == 1 and "trace_id" in reply.partial_success.error_message
            again = await stub.Export(request([span(1, attrs=msg(1))]))  # a retry: the same event id
            assert not again.HasField("partial_success")
            bad = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await bad(b"\xff\xff\xff")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with caplog.at_level(logging.INFO, logger="mars.grpc"):
        with_shim(check)
    events = queued()
    assert {e["event_id"] for e in events} == {f"otlp-{TRACE.hex()}-0000000000000001"}
    assert any(getattr(r, "skipped_spans_without_message_id", 0) == 1 for r in caplog.records)


def test_grpc_export_needs_a_key_for_the_spans_app(auth_on: Any) -> None:
    from tests.security.test_grpc_security import with_shim

    otlp.clear_cache()
    _, shop_key = auth.create_key(settings().keys_table, ["shop"])
    req = request([span(1, attrs=msg(1))], resource={"mars.app_id": "bank"})

    async def check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = trace_service_pb2_grpc.TraceServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Export(req)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = await stub.Export(req, metadata=(("x-api-key", shop_key),))
            assert reply.partial_success.rejected_spans == 1

    with_shim(check)
    assert queued() == []


def test_an_unreadable_mapping_is_a_retryable_503_and_logged(otlp_fn: Otlp, monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(table: str, app: str) -> otlp.Mapping:
        raise RuntimeError("AppsTable unreachable")

    monkeypatch.setattr(otlp, "get_mapping", broken)
    status, _, raw = otlp_fn.post(request([span(1, attrs=msg(1))]).SerializeToString(), error_ok=True)
    assert status == 503 and "retry" in status_pb2.Status.FromString(raw).message
    assert any(r.getMessage() == "otlp request failed" and r.exc_info for r in caplog.records)
    assert queued() == []


def test_grpc_export_with_an_unreadable_mapping_is_unavailable(mocked_stack: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.security.test_grpc_security import with_shim

    otlp.clear_cache()
    monkeypatch.setenv("APPS_TABLE", "")  # as the shim had before it was given AppsTable's name
    from mars_common import config

    config.settings.cache_clear()

    async def check(target: str) -> None:
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await trace_service_pb2_grpc.TraceServiceStub(channel).Export(request([span(1, attrs=msg(1))]))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    with_shim(check)


def test_spans_by_outcome_accepted_events_and_refusals_are_counted_in_emf(otlp_fn: Otlp,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from mars_common import metrics as m

    from tests.unit.test_emf_metrics import metrics_of, services, total

    capsys.readouterr()
    req = request([span(1, attrs=msg(1)), span(2, attrs=msg(2)), span(3, attrs={"http.route": "/"}),
                   span(4, attrs=msg(4), trace=b"\0" * 16)])
    otlp_fn.post(req.SerializeToString())
    otlp_fn.post(b"not protobuf")
    lines = metrics_of(capsys)
    assert services(lines) == {"mars-otlp"}
    assert total(lines, m.OTLP_SPANS, outcome="accepted") == 2
    assert total(lines, m.OTLP_SPANS, outcome="skipped") == 1
    assert total(lines, m.OTLP_SPANS, outcome="rejected") == 1
    assert total(lines, m.EVENTS_ACCEPTED) == 2
    assert total(lines, m.INGEST_REJECTED, reason="HTTP_400") == 1
