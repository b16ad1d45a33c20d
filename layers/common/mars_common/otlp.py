"""OTLP traces in (issue 15): an `ExportTraceServiceRequest` → Mars events, and each app's mapping.

One module for both ways in (`POST /v1/traces` in functions/otlp, `TraceService/Export` on the gRPC
shim), so a span becomes the same event whichever way it came. docs/OBSERVABILITY.md is the user's
view of the rules below.

- app: resource attribute `mars.app_id`, else `service.name`;
- message id: the span attribute the app's mapping names (default `messaging.message.id`); spans
  without it are skipped and counted (not rejected: most spans of a service are not about messages);
- event: `{messaging.operation.type}:{service.name}` (e.g. `send:checkout-api`), else the span's
  name; or the span name, or an attribute's value (per app);
- created_at: the span's start (a span event: its time);
- event_id: `otlp-{trace_id}-{span_id}[-e{index}]`, so an exporter's retry is stored once;
- meta: the remaining attributes, within events.py's limits (`otlp.dropped_attributes` says how many
  did not fit).

The protobuf classes load on first decode: ApiFunction imports this module for the mapping only.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import aws
from .auth import Principal
from .events import (
    APP_ID_RE,
    MAX_EVENT,
    MAX_META_BYTES,
    MAX_META_KEY,
    Event,
    FieldError,
    ValidationError,
    format_ts,
    parse_event,
)

DEFAULT_MESSAGE_ID_ATTRIBUTE = "messaging.message.id"
OPERATION_AND_SERVICE, SPAN_NAME, ATTRIBUTE_PREFIX = "operation_and_service", "span_name", "attribute:"
APP_ATTRIBUTE, SERVICE_ATTRIBUTE = "mars.app_id", "service.name"
# `messaging.operation.type` is current semantic conventions; `messaging.operation` the older name.
OPERATION_ATTRIBUTES = ("messaging.operation.type", "messaging.operation")
# A request at most this large, after gzip (gRPC's default maximum message size: the same limit both ways in).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MAX_META_VALUE = 256  # characters of one attribute's value kept in meta (longer: cut, ending in "…")
DROPPED_KEY = "otlp.dropped_attributes"
MAX_REASONS = 3  # reasons quoted in partial_success.error_message
MAPPING_ATTR = "otlp"  # the AppsTable item's attribute holding the app's mapping
MAPPING_TTL_SECONDS = 60.0  # a changed mapping applies within this long (per warm container)
MAX_ATTRIBUTE_NAME = 255


@dataclass(frozen=True)
class Mapping:
    """How one app's spans become events (`PUT /api/apps/{app_id}/otlp`)."""

    message_id_attribute: str = DEFAULT_MESSAGE_ID_ATTRIBUTE
    event_name: str = OPERATION_AND_SERVICE  # | span_name | attribute:<name>
    updated_at: str | None = field(default=None, compare=False)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message_id_attribute": self.message_id_attribute, "event_name": self.event_name}
        if self.updated_at:
            out["updated_at"] = self.updated_at
        return out


DEFAULT_MAPPING = Mapping()


def parse_mapping(body: Any) -> Mapping:
    """A mapping from a request body; every field optional (defaults above), unknown ones refused."""
    if not isinstance(body, dict):
        raise ValidationError([FieldError("body", "must be a JSON object")])
    errors = [FieldError(k, "is not a known field (allowed: event_name, message_id_attribute)")
              for k in sorted(set(body) - {"message_id_attribute", "event_name"})]
    attr = body.get("message_id_attribute", DEFAULT_MESSAGE_ID_ATTRIBUTE)
    if not _attribute_name(attr):
        errors.append(FieldError("message_id_attribute", f"must be an attribute name: 1-{MAX_ATTRIBUTE_NAME} "
                                                         "printable characters"))
    mode = body.get("event_name", OPERATION_AND_SERVICE)
    if not isinstance(mode, str) or not (mode in (OPERATION_AND_SERVICE, SPAN_NAME) or (
            mode.startswith(ATTRIBUTE_PREFIX) and _attribute_name(mode[len(ATTRIBUTE_PREFIX):]))):
        errors.append(FieldError("event_name", f'must be "{OPERATION_AND_SERVICE}", "{SPAN_NAME}" or '
                                               f'"{ATTRIBUTE_PREFIX}<attribute name>"'))
    if errors:
        raise ValidationError(errors)
    return Mapping(message_id_attribute=attr, event_name=mode)


def _attribute_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ATTRIBUTE_NAME and value.isprintable() \
        and value.strip() == value


def get_mapping(table_name: str, app_id: str) -> Mapping | None:
    """The app's stored mapping; None when it has none (then DEFAULT_MAPPING applies)."""
    item = aws.table(table_name).get_item(
        Key={"app_id": app_id}, ProjectionExpression="#o", ExpressionAttributeNames={"#o": MAPPING_ATTR}).get("Item")
    stored = (item or {}).get(MAPPING_ATTR)
    if not isinstance(stored, dict):
        return None
    return Mapping(message_id_attribute=str(stored.get("message_id_attribute", DEFAULT_MESSAGE_ID_ATTRIBUTE)),
                   event_name=str(stored.get("event_name", OPERATION_AND_SERVICE)),
                   updated_at=stored.get("updated_at"))


def put_mapping(table_name: str, app_id: str, mapping: Mapping, now: str) -> Mapping:
    """Stores the mapping on the app's item, beside its lifecycle (an UpdateItem: the lifecycle stays)."""
    stored = Mapping(mapping.message_id_attribute, mapping.event_name, now)
    aws.table(table_name).update_item(Key={"app_id": app_id}, UpdateExpression="SET #o = :o",
                                      ExpressionAttributeNames={"#o": MAPPING_ATTR},
                                      ExpressionAttributeValues={":o": stored.as_dict()})
    with _cache_lock:
        _cache.pop((table_name, app_id), None)
    return stored


_cache: dict[tuple[str, str], tuple[float, Mapping]] = {}
_cache_lock = threading.Lock()


def cached_mapping(table_name: str, app_id: str) -> Mapping:
    """The app's mapping, read from AppsTable at most once per MAPPING_TTL_SECONDS per warm container
    (as the store caches retention): a busy exporter must not cost a GetItem per request."""
    now = time.monotonic()
    with _cache_lock:
        hit = _cache.get((table_name, app_id))
    if hit is not None and now - hit[0] < MAPPING_TTL_SECONDS:
        return hit[1]
    mapping = get_mapping(table_name, app_id) or DEFAULT_MAPPING
    with _cache_lock:
        _cache[(table_name, app_id)] = (now, mapping)
    return mapping


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


# --- decoding ---------------------------------------------------------------------------------------

PROTOBUF, JSON = "application/x-protobuf", "application/json"


class DecodeError(ValueError):
    """The body is not an ExportTraceServiceRequest (HTTP 400, gRPC INVALID_ARGUMENT)."""


class TooLargeError(ValueError):
    """The body, or what it inflates to, is over MAX_REQUEST_BYTES (HTTP 413)."""


def inflate(body: bytes, encoding: str | None) -> bytes:
    """The body without its Content-Encoding (`gzip` or none), refusing more than MAX_REQUEST_BYTES
    of output before making it (a small gzip bomb must not fill a Lambda's memory)."""
    coding = (encoding or "identity").strip().lower()
    if coding == "identity":
        if len(body) > MAX_REQUEST_BYTES:
            raise TooLargeError(f"the body is {len(body)} bytes; at most {MAX_REQUEST_BYTES} are accepted")
        return body
    if coding not in ("gzip", "x-gzip"):
        raise DecodeError(f"Content-Encoding {coding!r} is not supported (send gzip or none)")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)  # 16+: the gzip header and trailer
    try:
        out = inflater.decompress(body, MAX_REQUEST_BYTES + 1)
        if len(out) > MAX_REQUEST_BYTES:
            raise TooLargeError(f"the body inflates to more than {MAX_REQUEST_BYTES} bytes")
        if not inflater.eof:
            raise DecodeError("the gzip body is truncated")
    except zlib.error as exc:
        raise DecodeError(f"the body is not valid gzip: {exc}") from exc
    return out


def decode_request(body: bytes, content_type: str) -> Any:
    """An ExportTraceServiceRequest from an OTLP/HTTP body: binary protobuf, or OTLP's JSON encoding
    (ids in hex, not proto3 JSON's base64; unknown fields ignored, as OTLP asks of receivers)."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError as ProtoDecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except ProtoDecodeError as exc:
            raise DecodeError(f"the body is not a valid ExportTraceServiceRequest protobuf: {exc}") from exc
        return request
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise DecodeError("the body must be a JSON object (an ExportTraceServiceRequest)")
    try:
        _hex_ids_to_base64(data)
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError) as exc:
        raise DecodeError(f"the body is not an OTLP/JSON ExportTraceServiceRequest: {exc}") from exc
    return request


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP/JSON writes trace and span ids as hex where proto3 JSON expects base64: rewrites them in
    place. An id that is not hex becomes empty bytes, so its span is rejected (partial_success)
    rather than the whole request."""
    import base64

    def fix(obj: dict[str, Any]) -> None:
        for key in _ID_FIELDS:
            value = obj.get(key)
            if isinstance(value, str):
                try:
                    raw = bytes.fromhex(value)
                except ValueError:
                    raw = b""
                obj[key] = base64.b64encode(raw).decode()

    for rs in _list(data, "resourceSpans", "resource_spans"):
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            for span in _list(ss, "spans"):
                fix(span)
                for link in _list(span, "links"):
                    fix(link)


def _list(obj: Any, *keys: str) -> list[dict[str, Any]]:
    if not isinstance(obj, dict):
        return []
    for key in keys:
        value = obj.get(key)
        if isinstance(value, list):
            return [v for v in value if isinstance(v, dict)]
    return []


def response(result: "Result") -> Any:
    """The ExportTraceServiceResponse: partial_success only when spans were rejected (OTLP: a
    response without it means every span was accepted; skipped spans were accepted, deliberately)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    out = ExportTraceServiceResponse()
    if result.rejected_spans:
        out.partial_success.rejected_spans = result.rejected_spans
        out.partial_success.error_message = result.error_message()
    return out


def encode_response(result: "Result", content_type: str) -> bytes:
    """`response(result)` in the request's encoding. Fully accepted, the protobuf form is empty:
    nothing a gateway can mangle."""
    from google.protobuf import json_format

    response_message = response(result)
    if content_type == PROTOBUF:
        return bytes(response_message.SerializeToString())
    return json.dumps(json_format.MessageToDict(response_message), ensure_ascii=False).encode()


# --- mapping ----------------------------------------------------------------------------------------


@dataclass
class Result:
    """What one request's spans became: events to enqueue, and what was skipped or rejected."""

    events: list[Event] = field(default_factory=list)
    spans: int = 0
    skipped_spans: int = 0  # no message id: not Mars's business
    rejected_spans: int = 0
    reasons: list[str] = field(default_factory=list)  # the first MAX_REASONS reasons
    apps: set[str] = field(default_factory=set)

    def reject(self, reason: str) -> None:
        self.rejected_spans += 1
        if len(self.reasons) < MAX_REASONS:
            self.reasons.append(reason)

    def error_message(self) -> str:
        more = self.rejected_spans - len(self.reasons)
        return (f"{self.rejected_spans} span(s) rejected: " + "; ".join(self.reasons)
                + (f"; and {more} more" if more > 0 else ""))

    def log_fields(self) -> dict[str, Any]:
        return {"spans": self.spans, "events": len(self.events), "skipped_spans_without_message_id": self.skipped_spans,
                "rejected_spans": self.rejected_spans, "apps": sorted(self.apps)[:20]}


def value_of(any_value: Any) -> Any:
    """An OTLP AnyValue as plain Python (None when unset)."""
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [value_of(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value_of(kv.value) for kv in any_value.kvlist_value.values}
    if kind == "bytes_value":
        return bytes(any_value.bytes_value).hex()
    return getattr(any_value, kind)


def attributes(kvs: Any) -> dict[str, Any]:
    """Key → value, in the order sent (the first of a repeated key wins, as OTLP says keys are unique)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        if kv.key not in out:
            out[kv.key] = value_of(kv.value)
    return out


def as_text(value: Any) -> str:
    """An attribute's value as meta's string: JSON for lists and maps, `true`/`false` for booleans."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return "" if value is None else str(value)


def _printable(text: str) -> str:
    """Control characters (newlines of a SQL statement, ANSI escapes) as spaces: meta must print."""
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


def build_meta(first: dict[str, str], attrs: dict[str, Any], skip: str) -> dict[str, str]:
    """`first`, then the attributes (less `skip`, the message id's) while they fit events.py's meta
    limits; values over MAX_META_VALUE characters are cut, attributes that do not fit are left out and
    counted in `otlp.dropped_attributes`."""
    meta = dict(first)
    room = MAX_META_BYTES - len(json.dumps({DROPPED_KEY: "9999"}, ensure_ascii=False).encode())
    size = len(json.dumps(meta, ensure_ascii=False).encode())
    dropped = 0
    for key, raw in attrs.items():
        if key == skip or key in meta:
            continue
        value = _printable(as_text(raw))
        if len(value) > MAX_META_VALUE:
            value = value[:MAX_META_VALUE - 1] + "…"
        # the JSON size grows by `"key": "value", ` — computed, not re-serialised per attribute
        grow = len(json.dumps({key: value}, ensure_ascii=False).encode()) - 2 + (2 if meta else 0)
        if not 0 < len(key) <= MAX_META_KEY or not key.isprintable() or size + grow > room:
            dropped += 1
            continue
        meta[key] = value
        size += grow
    if dropped:
        meta[DROPPED_KEY] = str(min(dropped, 9999))
    return meta


def _timestamp(nanos: int) -> str:
    if nanos <= 0:
        raise ValueError("is 0 (unset)")
    return format_ts(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=nanos // 1000))


def _event_name(mapping: Mapping, attrs: dict[str, Any], service: str, fallback: str) -> str:
    if mapping.event_name == SPAN_NAME:
        name = fallback
    elif mapping.event_name.startswith(ATTRIBUTE_PREFIX):
        name = as_text(attrs.get(mapping.event_name[len(ATTRIBUTE_PREFIX):])) or fallback
    else:
        op = next((as_text(attrs[a]) for a in OPERATION_ATTRIBUTES if as_text(attrs.get(a))), "")
        name = (f"{op}:{service}" if service else op) if op else fallback
    return _printable(name)[:MAX_EVENT]  # span names are free text: cut, not refused


def to_events(request: Any, principal: Principal, mapping_for: Callable[[str], Mapping],
              received_at: str) -> Result:
    """Every span (and span event) of the request that carries a message id, as a validated Event;
    the others skipped or rejected with a reason. Validation is parse_event's, as on every way in."""
    result = Result()
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = as_text(resource.get(SERVICE_ATTRIBUTE))
        app_id = as_text(resource.get(APP_ATTRIBUTE)) or service
        spans = [s for scope in resource_spans.scope_spans for s in scope.spans]
        result.spans += len(spans)
        if not spans:
            continue
        problem = _app_problem(app_id, principal)
        if problem:  # no mapping is read for an app the key may not use
            for span in spans:
                result.reject(f"span {bytes(span.span_id).hex() or '?'}: {problem}")
            continue
        result.apps.add(app_id)
        mapping = mapping_for(app_id)
        for span in spans:
            _span_events(span, app_id, service, mapping, received_at, result)
    return result


def _app_problem(app_id: str, principal: Principal) -> str | None:
    if not app_id:
        return f"no app: set the resource attribute {APP_ATTRIBUTE} (or {SERVICE_ATTRIBUTE})"
    if not APP_ID_RE.fullmatch(app_id):
        return f"app {app_id[:64]!r} is not a valid app_id (1-128 of letters, digits and . _ : -)"
    if not principal.can(app_id):
        return f"this API key may not write to app {app_id!r}"
    return None


def _span_events(span: Any, app_id: str, service: str, mapping: Mapping, received_at: str, result: Result) -> None:
    """The span's own event and its span events' (those carrying a message id); a span counts once,
    rejected if any of its events is invalid (none of them is sent then: the exporter's retry of a
    fixed span must not find half of it stored under other ids)."""
    trace_id, span_id = bytes(span.trace_id), bytes(span.span_id)
    label = f"span {span_id.hex() or '?'}"
    attrs = attributes(span.attributes)
    candidates: list[tuple[str, dict[str, Any], str, int, str]] = []  # (message id, attrs, name, time, id suffix)
    own = as_text(attrs.get(mapping.message_id_attribute))
    if own:
        candidates.append((own, attrs, _event_name(mapping, attrs, service, span.name), span.start_time_unix_nano, ""))
    for index, span_event in enumerate(span.events):
        ev_attrs = attributes(span_event.attributes)
        message_id = as_text(ev_attrs.get(mapping.message_id_attribute))
        if message_id:
            candidates.append((message_id, ev_attrs, _event_name(mapping, ev_attrs, service, span_event.name),
                               span_event.time_unix_nano, f"-e{index}"))
    if not candidates:
        result.skipped_spans += 1
        return
    if len(trace_id) != 16 or not any(trace_id):
        result.reject(f"{label}: trace_id must be 16 bytes (32 hex digits), not all zero")
        return
    if len(span_id) != 8 or not any(span_id):
        result.reject(f"{label}: span_id must be 8 bytes (16 hex digits), not all zero")
        return
    events: list[Event] = []
    for message_id, ev_attrs, name, nanos, suffix in candidates:
        try:
            created_at = _timestamp(nanos)
        except (ValueError, OverflowError) as exc:
            which = "start_time_unix_nano" if not suffix else f"events[{suffix[2:]}].time_unix_nano"
            result.reject(f"{label}: {which} {exc}")
            return
        first = {"otel.trace_id": trace_id.hex(), "otel.span_id": span_id.hex()}
        try:
            events.append(parse_event({
                "app_id": app_id, "message_id": message_id, "event": name, "created_at": created_at,
                "event_id": f"otlp-{trace_id.hex()}-{span_id.hex()}{suffix}",
                "meta": build_meta(first, ev_attrs, mapping.message_id_attribute)}, received_at=received_at))
        except ValidationError as exc:
            result.reject(f"{label}: {exc}")
            return
    result.events.extend(events)
