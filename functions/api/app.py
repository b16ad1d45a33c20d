"""ApiFunction: Mars's HTTP API (a Chalice app behind an API Gateway REST API, `Handler: app.app`).

Every route answers JSON; every error is `{"success": false, "error": {code, message, details}}`.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from aws_lambda_powertools import Logger
from chalice import Chalice, ConvertToMiddleware, Response
from chalice.app import Request
from mars_common import alerts, auth, aws, delivery, destinations, funnel, live, otlp, search
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import (
    APP_ID_RE,
    MAX_EVENT,
    MAX_MESSAGE_ID,
    Event,
    FieldError,
    ValidationError,
    check_text,
    parse_event,
    parse_events,
    utc_now,
)
from mars_common.queues import enqueue, queue_name, stats
from mars_common.store import (
    MAX_PAGE_LIMIT,
    decode_cursor,
    decode_event_cursor,
    encode_cursor,
    get_items,
    get_lifecycle,
    list_messages,
    put_lifecycle,
    read_timeline,
    to_timeline,
)
from mars_common.timeline import MAX_RETENTION_DAYS, STATUSES, Lifecycle, parse_rules
from mars_common.traces import read_trace

app = Chalice(app_name="mars")
logger = Logger(service="mars-api")
# Chalice is the handler (`app.app`): Powertools' handler decorators wrap each request as middleware.
metrics, tracer = m.for_service("mars-api")
app.register_middleware(ConvertToMiddleware(metrics.log_metrics(capture_cold_start_metric=True)), "http")
app.register_middleware(ConvertToMiddleware(tracer.capture_lambda_handler), "http")

# curl and wrk send form or text content types by default; the body is parsed as JSON regardless.
# Chalice is told to accept anything so that an unsupported type gets Mars's error format (415).
BODY_TYPES = ["*/*"]
JSON_LIKE_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")
# The types an HTML form or a no-preflight fetch can send: refused from browsers (see _body).
BROWSER_FORM_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_CREATE_COUNT = 500
# A filtered search page checks messages for at most this long, then answers with what it has and a cursor:
# alert=firing queries AlertsTable per message (up to 1,000 a page), which on a busy stack outlasted the
# function's 15 s (a 504). The margin leaves time to answer when the invocation itself has less left.
SEARCH_BUDGET_SECONDS = 5.0
SEARCH_ANSWER_MARGIN_SECONDS = 2.0
DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboard"
STATIC_NAME_RE = re.compile(r"^[a-z0-9_-]+\.(js|css|svg)$")
STATIC_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8", "svg": "image/svg+xml"}
LOADTEST_LIFECYCLE = ("MESSAGE_CREATED", "MESSAGE_QUEUED", "MESSAGE_SENT", "MESSAGE_DELIVERED", "MESSAGE_ACKED")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(body=json.dumps(body, ensure_ascii=False), status_code=status,
                    headers={"Content-Type": "application/json", **(headers or {})})


def _error(err: ApiError) -> Response:
    return _json(err.status, {"success": False, "error": {"code": err.code, "message": err.message,
                                                          "details": err.details}})


def _request() -> Request:
    """The request being handled (chalice types `current_request` as optional; inside a route it is set)."""
    request = app.current_request
    if request is None:
        raise RuntimeError("no current request: called outside a route")
    return request


def _handles_errors(view: Any) -> Any:
    """Maps ApiError and ValidationError to the error format; anything else is a logged 500."""
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except ApiError as err:
            return _error(err)
        except auth.AuthError as err:
            return _error(ApiError(err.status, err.code, err.message))
        except ValidationError as err:
            return _error(ApiError(400, "VALIDATION_ERROR", "the request is not valid",
                                   [e.as_dict() for e in err.errors]))
        except Exception:
            logger.exception("unhandled error")
            return _error(ApiError(500, "INTERNAL", "internal error; the request id is in the logs"))
    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _counts_rejections(view: Any) -> Any:
    """An ingest route's refusal counted by its error code (IngestRejected, dimension reason), then
    answered by _handles_errors as before."""
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except (ApiError, auth.AuthError) as err:
            m.count_by(metrics, m.INGEST_REJECTED, "reason", err.code)
            raise
        except ValidationError:
            m.count_by(metrics, m.INGEST_REJECTED, "reason", "VALIDATION_ERROR")
            raise
    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _is_browser(headers: Any) -> bool:
    """Browsers send Origin on every write and Sec-Fetch-* on every request; curl, wrk and SDKs send neither."""
    return "origin" in headers or any(str(k).lower().startswith("sec-fetch-") for k in headers)


def _same_site_only() -> None:
    """Refuses a request a page of another site made the browser send (CSRF; with auth off nothing
    else stops it): a text/plain or form POST and a plain GET need no CORS preflight. Runs before the
    key is read, on every route that changes something or pushes to sockets."""
    headers = _request().headers
    if (headers.get("sec-fetch-site") or "").strip().lower() == "cross-site":
        raise ApiError(403, "CROSS_SITE", "cross-site requests are refused (Sec-Fetch-Site: cross-site)")
    origin = headers.get("origin")
    if origin is not None and not _own_origin(origin, headers.get("host") or ""):
        raise ApiError(403, "CROSS_SITE", "requests from another origin are refused (the Origin is not this API's)")


def _own_origin(origin: str, host: str) -> bool:
    """The page's origin is the API's own: the host and port of the Host header the browser sent."""
    try:
        page, api = urlsplit(origin.strip()), urlsplit("//" + host.strip())
        if page.scheme not in ("http", "https") or not page.hostname or not api.hostname:
            return False  # includes `Origin: null` (sandboxed frames, file: pages)
        default = 443 if page.scheme == "https" else 80
        return (page.hostname, page.port or default) == (api.hostname, api.port or default)
    except ValueError:  # a malformed port or bracket
        return False


def _body() -> Any:
    headers = _request().headers
    content_type = (headers.get("content-type") or "application/json").split(";")[0].strip().lower()
    # curl -d and wrk send form/text types, so non-browsers keep them; from a browser they are the
    # preflight-free way to post across sites, so only JSON is read.
    if content_type in BROWSER_FORM_TYPES and _is_browser(headers):
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE",
                       f"send JSON (Content-Type: application/json), not {content_type}, from a browser")
    if content_type not in JSON_LIKE_TYPES:
        raise ApiError(415, "UNSUPPORTED_MEDIA_TYPE", f"send JSON (Content-Type: application/json), not {content_type}")
    raw = _request().raw_body or b""
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(413, "PAYLOAD_TOO_LARGE", f"the body must be at most {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        raise ApiError(400, "INVALID_JSON", "the body is empty; send a JSON object")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "INVALID_JSON", f"the body is not valid JSON: {exc}") from exc


def _principal() -> auth.Principal:
    """Who is calling (401 without a valid key when auth is on); every non-public route asks first."""
    cfg = settings()
    return auth.authenticate(cfg.keys_table, cfg.auth_required, _request().headers.get(auth.HEADER))


def _require_event_apps(principal: auth.Principal, events: list[Event]) -> None:
    denied = [(i, e.app_id) for i, e in enumerate(events) if not principal.can(e.app_id)]
    if denied:
        raise ApiError(403, "FORBIDDEN", "this API key may not write to app(s) "
                       + ", ".join(sorted({a for _, a in denied})),
                       [{"index": i, "field": "app_id", "message": f"app {a!r} is not one of this key's apps"}
                        for i, a in denied])


def _query() -> dict[str, str]:
    return dict(_request().query_params or {})


def _accept(events: list[Event]) -> Response:
    """202 when every event is enqueued; otherwise say exactly which were not (never drop silently)."""
    failures = enqueue(events, settings().events_queue_urls)
    failed_idx = {f.index for f in failures}
    accepted = [e.event_id for i, e in enumerate(events) if i not in failed_idx]
    m.count(metrics, m.BATCH_SIZE, len(events))
    m.count(metrics, m.EVENTS_ACCEPTED, len(accepted))
    if failures:
        m.count(metrics, m.ENQUEUE_FAILED, len(failures))
    if not failures:
        return _json(202, {"success": True, "event_ids": accepted})
    logger.error("enqueue failed", extra={"failed": len(failures), "accepted": len(accepted)})
    body = {"success": False, "event_ids": accepted,
            "error": {"code": "ENQUEUE_FAILED", "message": f"{len(failures)} event(s) were not enqueued; resend them",
                      "details": [{"index": f.index, "event_id": f.event_id, "code": f.code, "message": f.message}
                                  for f in failures]}}
    return _json(503 if not accepted else 207, body, {"Retry-After": "1"})


@app.route("/api/event", methods=["POST"], content_types=BODY_TYPES)
@_handles_errors
@_counts_rejections
def post_event() -> Response:
    _same_site_only()
    principal = _principal()
    body = _body()
    if isinstance(body, dict) and "events" in body:
        raise ApiError(400, "VALIDATION_ERROR", "this route takes one event; send lists to /api/event/bulk",
                       [{"field": "events", "message": "is not a known field (use /api/event/bulk)"}])
    events = [parse_event(body)]
    _require_event_apps(principal, events)
    return _accept(events)


@app.route("/api/event/bulk", methods=["POST"], content_types=BODY_TYPES)
@_handles_errors
@_counts_rejections
def post_bulk() -> Response:
    _same_site_only()
    principal = _principal()
    body = _body()
    if not isinstance(body, dict) or "events" not in body:
        raise ApiError(400, "VALIDATION_ERROR", 'the body must be {"events": [...]}',
                       [{"field": "events", "message": "is required"}])
    events = parse_events(body)
    _require_event_apps(principal, events)
    return _accept(events)


@app.route("/api/create_event", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
@_counts_rejections
def create_event() -> Response:
    """Mars's load-test route: N random lifecycle events (only where the stage allows test routes)."""
    _same_site_only()  # a link on another site must not make a browser enqueue (GET, so no preflight)
    if not settings().allow_test_routes:
        raise ApiError(404, "NOT_FOUND", "test routes are disabled on this stage (parameter AllowTestRoutes)")
    if not _principal().admin:
        raise ApiError(403, "FORBIDDEN", "the load-test route needs an admin key")
    count = _int_param("count", default=1, low=1, high=MAX_CREATE_COUNT)
    now = time.time()
    events = [parse_event({"app_id": "mars-loadtest", "message_id": str(uuid.uuid4()),
                           "event": random.choice(LOADTEST_LIFECYCLE),
                           "created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{i % 1000000:06d}Z"})
              for i in range(count)]
    return _accept(events)


@app.route("/api/q/stats", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def queue_stats() -> Response:
    _principal()  # any valid key: queue depths hold no app's data
    cfg = settings()
    return _json(200, stats(cfg.events_queue_urls, cfg.dead_letter_queue_urls))


@app.route("/status", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def status() -> Response:
    """Health; 503 when any backing resource is unreachable. Without an admin key only `{"status"}`:
    resource names and AWS error text are for operators (with auth off every caller is admin). An
    invalid key is no error here: load balancers and uptime checks call this route without one."""
    cfg = settings()
    key = _request().headers.get(auth.HEADER)
    principal = auth.ANONYMOUS_ADMIN if not cfg.auth_required else (auth.lookup(cfg.keys_table, key) if key else None)
    detailed = principal is not None and principal.admin
    results = _health_checks()
    healthy = all(r["ok"] for r in results)
    body: dict[str, Any] = {"status": "ok" if healthy else "degraded"}
    if detailed:
        body.update(stage=cfg.stage, checks=results)
    return _json(200 if healthy else 503, body)


# One run of the 14 checks serves every /status call of this environment for this long, so a flood
# of anonymous health checks costs at most one run per environment per window, not 14 AWS calls each.
STATUS_CACHE_SECONDS = 5.0
_status_cache: tuple[float, list[dict[str, Any]]] | None = None
_status_lock = threading.Lock()


def _health_checks() -> list[dict[str, Any]]:
    global _status_cache
    with _status_lock:  # one run at a time: concurrent callers wait for it and share its result
        if _status_cache is not None and time.monotonic() - _status_cache[0] < STATUS_CACHE_SECONDS:
            return _status_cache[1]
        results = _run_health_checks()
        _status_cache = (time.monotonic(), results)
        return results


def _run_health_checks() -> list[dict[str, Any]]:
    cfg = settings()
    checks: list[tuple[str, str, Any]] = [("table", t, lambda t=t: aws.client("dynamodb").describe_table(TableName=t))
                                          for t in (cfg.messages_table, cfg.apps_table)]
    checks += [("queue", queue_name(u),
                lambda u=u: aws.client("sqs").get_queue_attributes(QueueUrl=u, AttributeNames=["QueueArn"]))
               for u in (*cfg.events_queue_urls, *cfg.dead_letter_queue_urls)]

    def run(check: tuple[str, str, Any]) -> dict[str, Any]:
        kind, name, call = check
        start = time.perf_counter()
        try:
            call()
            out: dict[str, Any] = {"kind": kind, "name": name, "ok": True}
        except Exception as exc:
            logger.warning("health check failed", extra={"kind": kind, "resource": name, "error": str(exc)[:300]})
            out = {"kind": kind, "name": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        out["latency_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(run, checks))


@app.route("/api/messages/{message_id}", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def get_message(message_id: str) -> Response:
    principal = _principal()
    _only_params("app_id", "limit", "cursor")
    app_id = _query().get("app_id")
    if app_id is not None:
        _check_app_id(app_id)
        auth.require_apps(principal, [app_id])
    limit, after = _event_page(message_id, app_id)
    cfg = settings()
    # Another app's timeline of the same id is neither shown nor hinted at: a scoped key reads only its
    # own apps' items (never the index, nor another app's item), so no answer or timing depends on them.
    scope = None if principal.admin or app_id is not None else principal.apps
    items = [i for i in get_items(cfg.messages_table, message_id, app_id, apps=scope) if principal.can(i["app_id"])]
    if not items:
        raise ApiError(404, "NOT_FOUND", f"no events for message_id {message_id!r}"
                       + (f" in app {app_id!r}" if app_id else ""))
    lifecycles = {a: get_lifecycle(cfg.apps_table, a) for a in {i["app_id"] for i in items}}
    timelines = [read_timeline(cfg.messages_table, cfg.events_table, i["app_id"], message_id, lifecycles[i["app_id"]],
                               limit=limit, cursor=after, item=i) for i in items]
    return _json(200, {"message_id": message_id, "timelines": [t for t in timelines if t is not None]})


@app.route("/api/messages/{message_id}/trace", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def get_message_trace(message_id: str) -> Response:
    """One app's timeline as an OpenTelemetry trace (OTLP/JSON), for Jaeger, Tempo or X-Ray."""
    principal = _principal()
    _only_params("app_id")
    app_id = _query().get("app_id")
    if app_id is None:
        raise ValidationError([FieldError("app_id", "is required (a trace is one app's timeline)")])
    _check_app_id(app_id)
    auth.require_apps(principal, [app_id])
    cfg = settings()
    lifecycle = get_lifecycle(cfg.apps_table, app_id)
    trace = read_trace(cfg.messages_table, cfg.events_table, app_id, message_id, lifecycle)
    if trace is None:
        raise ApiError(404, "NOT_FOUND", f"no events for message_id {message_id!r} in app {app_id!r}")
    return _json(200, trace)


def _event_page(message_id: str, app_id: str | None) -> tuple[int | None, str | None]:
    """`limit` (None: a short timeline whole, a long one's first page) and the event key a `cursor` ends at."""
    limit = _int_param("limit", default=0, low=1, high=MAX_PAGE_LIMIT) or None
    cursor = _query().get("cursor") or None
    if cursor is None:
        return limit, None
    if app_id is None:  # a cursor is one app's timeline's: which one must be said
        raise ValidationError([FieldError("cursor", "needs app_id (a cursor pages one app's timeline)")])
    try:
        return limit, decode_event_cursor(cursor, app_id, message_id)
    except ValueError as exc:
        raise ValidationError([FieldError("cursor", str(exc))]) from exc


@app.route("/api/messages", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def list_app_messages() -> Response:
    """An app's messages, newest first; search filters (mars_common.search, docs/SEARCH.md) keep cursor paging."""
    principal = _principal()
    query = _query()
    _only_params("app_id", "status", "limit", "cursor", *(k for k in query if search.is_filter_param(k)))
    app_id = query.get("app_id")
    if not app_id:
        raise ApiError(400, "VALIDATION_ERROR", "app_id is required", [{"field": "app_id", "message": "is required"}])
    _check_app_id(app_id)
    auth.require_apps(principal, [app_id])
    status_filter = query.get("status")
    if status_filter is not None and status_filter not in STATUSES:
        raise ApiError(400, "VALIDATION_ERROR", "unknown status",
                       [{"field": "status", "message": "must be one of " + ", ".join(STATUSES)}])
    limit = _int_param("limit", default=20, low=1, high=100)
    cursor = _list_cursor(app_id)
    cfg = settings()
    lifecycle = get_lifecycle(cfg.apps_table, app_id)
    filters = search.parse_filters(query, lifecycle)
    keep = search.keep_for(filters, messages_table=cfg.messages_table, events_table=cfg.events_table,
                           alerts_table=cfg.alerts_table)
    deadline = _search_deadline()
    try:
        items, last = list_messages(cfg.messages_table, app_id, lifecycle, status=status_filter, limit=limit,
                                    cursor=cursor, frm=filters.frm, to=filters.to, keep=keep, deadline=deadline)
    except search.TooLongError as exc:
        logger.warning("search refused", extra={"app_id": app_id, "error": str(exc)})
        raise ApiError(422, "MESSAGE_TOO_LONG", str(exc)) from exc
    if last is not None and len(items) < limit and time.monotonic() >= deadline:
        logger.info("search page cut at its time budget", extra={"app_id": app_id, "items": len(items),
                                                                  "limit": limit, "filters": sorted(query)})
    return _json(200, {"items": items, "cursor": encode_cursor(last)})


def _search_deadline() -> float:
    """When a filtered page stops checking messages and answers with what it has and a cursor (docs/SEARCH.md):
    SEARCH_BUDGET_SECONDS, or less when the invocation has less time left (a margin to answer)."""
    budget = SEARCH_BUDGET_SECONDS
    context = getattr(app, "lambda_context", None)
    if context is not None:
        budget = min(budget, context.get_remaining_time_in_millis() / 1000 - SEARCH_ANSWER_MARGIN_SECONDS)
    return time.monotonic() + max(budget, 0.0)


def _list_cursor(app_id: str) -> dict[str, Any] | None:
    raw = _query().get("cursor")
    if not raw:
        return None
    try:
        return decode_cursor(raw, app_id)
    except ValueError as exc:
        raise ApiError(400, "VALIDATION_ERROR", str(exc), [{"field": "cursor", "message": str(exc)}]) from exc


EXPORT_CURSOR_HEADER = "Mars-Cursor"


@app.route("/api/apps/{app_id}/export", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def export_app(app_id: str) -> Response:
    """One page of an app's messages (or their events with events=1) as NDJSON or CSV, newest update first,
    at most ~1 MB; the next page's cursor is in the Mars-Cursor header (absent on the last page)."""
    principal = _principal()
    _only_params("from", "to", "format", "events", "cursor")
    _check_app_id(app_id)
    auth.require_apps(principal, [app_id])
    query = _query()
    errors: list[FieldError] = []
    fmt = query.get("format", "ndjson")
    if fmt not in search.FORMATS:
        errors.append(FieldError("format", "must be one of " + ", ".join(search.FORMATS)))
    events = query.get("events", "0")
    if events not in ("0", "1"):
        errors.append(FieldError("events", "must be 0 (a line per message) or 1 (a line per event)"))
    if errors:
        raise ValidationError(errors)
    cfg = settings()
    lifecycle = get_lifecycle(cfg.apps_table, app_id)
    bounds = search.parse_filters({k: v for k, v in query.items() if k in ("from", "to")}, lifecycle)
    cursor = _list_cursor(app_id)

    def list_page(start: dict[str, Any] | None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        return list_messages(cfg.messages_table, app_id, lifecycle, status=None, limit=100, cursor=start,
                             frm=bounds.frm, to=bounds.to, with_events=events == "1")

    try:
        body, last = search.export_page(list_page, cfg.messages_table, cfg.events_table, fmt=fmt,
                                        events=events == "1", cursor=cursor, header=cursor is None)
    except search.TooLongError as exc:
        logger.warning("export refused", extra={"app_id": app_id, "error": str(exc)})
        raise ApiError(422, "MESSAGE_TOO_LONG", str(exc)) from exc
    next_cursor = encode_cursor(last)
    headers: dict[str, str | list[str]] = {"Content-Type": search.FORMATS[fmt]}
    if next_cursor:
        headers[EXPORT_CURSOR_HEADER] = next_cursor
    return Response(body=body, status_code=200, headers=headers)


def _app_access(app_id: str, *, writes: bool) -> None:
    """The checks of every /api/apps/{app_id}/... route: same site for a write, a valid app id, a key for it."""
    if writes:
        _same_site_only()
    principal = _principal()
    _check_app_id(app_id)
    auth.require_apps(principal, [app_id])


@app.route("/api/apps/{app_id}/lifecycle", methods=["PUT"], content_types=BODY_TYPES)
@_handles_errors
def put_app_lifecycle(app_id: str) -> Response:
    _app_access(app_id, writes=True)
    body = _body()
    lifecycle = _parse_lifecycle(body)
    item = put_lifecycle(settings().apps_table, app_id, lifecycle)
    return _json(200, {"app_id": app_id, "events": item["events"], "sla_seconds": item["sla_seconds"],
                       **lifecycle.rules_dict(), "updated_at": item["updated_at"],
                       **({"retention_days": item["retention_days"]} if "retention_days" in item else {})})


@app.route("/api/alerts", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def list_app_alerts() -> Response:
    """An app's alerts that fired (firing or resolved), newest first; paged like GET /api/messages."""
    principal = _principal()
    _only_params("app_id", "message_id", "state", "from", "to", "limit", "cursor")
    query = _query()
    app_id = query.get("app_id")
    if not app_id:
        raise ValidationError([FieldError("app_id", "is required")])
    _check_app_id(app_id)
    auth.require_apps(principal, [app_id])
    errors: list[FieldError] = []
    state = query.get("state")
    if state is not None and state not in alerts.STATES:
        errors.append(FieldError("state", "must be one of " + ", ".join(alerts.STATES)))
    bounds = alerts.parse_bounds(query, errors)
    message_id = query.get("message_id")
    if message_id is not None and not (0 < len(message_id) <= MAX_MESSAGE_ID and message_id.isprintable()):
        errors.append(FieldError("message_id", f"must be 1-{MAX_MESSAGE_ID} printable characters"))
    cursor = None
    if query.get("cursor"):
        try:
            cursor = decode_cursor(query["cursor"], app_id, alerts.CURSOR_FIELDS)
        except ValueError as exc:
            errors.append(FieldError("cursor", str(exc)))
    if errors:
        raise ValidationError(errors)
    limit = _int_param("limit", default=20, low=1, high=100)
    cfg = settings()
    items, last = alerts.list_alerts(cfg.alerts_table, app_id, state=state, frm=bounds["from"], to=bounds["to"],
                                     message_id=message_id, limit=limit, cursor=cursor)
    # timeline_url: absolute where the stack knows its dashboard's URL, else relative to the dashboard's base
    return _json(200, {"items": [alerts.public(i, cfg.dashboard_url) for i in items],
                       "cursor": encode_cursor(last)})


@app.route("/api/apps/{app_id}/lifecycle", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def get_app_lifecycle(app_id: str) -> Response:
    _app_access(app_id, writes=False)
    lifecycle = get_lifecycle(settings().apps_table, app_id)
    if lifecycle is None:
        raise ApiError(404, "NOT_FOUND", f"app {app_id!r} declares no lifecycle; PUT one first")
    return _json(200, {"app_id": app_id, "events": list(lifecycle.events), "sla_seconds": lifecycle.sla_seconds,
                       **lifecycle.rules_dict(), "updated_at": lifecycle.updated_at,
                       **({"retention_days": lifecycle.retention_days} if lifecycle.retention_days else {})})


@app.route("/api/apps/{app_id}/funnel", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def get_app_funnel(app_id: str) -> Response:
    """The app's funnel over the messages whose first lifecycle event fell in [from, to] (whole UTC days;
    default: the last 7), merged from its day buckets (docs/FUNNEL.md)."""
    principal = _principal()
    _check_app_id(app_id)
    auth.require_apps(principal, [app_id])
    _only_params("from", "to")
    query = _query()
    errors: list[FieldError] = []
    bounds: dict[str, datetime | None] = {}
    for name in ("from", "to"):
        try:
            parsed = alerts.parse_time(name, query.get(name))
            bounds[name] = datetime.fromisoformat(parsed.replace("Z", "+00:00")) if parsed else None
        except ValueError as exc:
            errors.append(FieldError(name, str(exc)))
    if errors:
        raise ValidationError(errors)
    default_from, default_to = funnel.default_range()
    to = bounds["to"] or default_to
    frm = bounds["from"] or (to - (default_to - default_from))
    if frm > to:
        raise ValidationError([FieldError("from", "must not be after to")])
    if (to.date() - frm.date()).days >= funnel.MAX_RANGE_DAYS:
        raise ValidationError([FieldError("from", f"the range may span at most {funnel.MAX_RANGE_DAYS} days")])
    cfg = settings()
    lifecycle = get_lifecycle(cfg.apps_table, app_id)
    if lifecycle is None or not lifecycle.events:
        raise ApiError(404, "NOT_FOUND", f"app {app_id!r} declares no lifecycle, so it has no funnel; PUT one first")
    return _json(200, funnel.read_funnel(cfg.funnel_table, cfg.alerts_table, app_id, lifecycle, frm, to))


@app.route("/api/apps/{app_id}/otlp", methods=["PUT"], content_types=BODY_TYPES)
@_handles_errors
def put_app_otlp(app_id: str) -> Response:
    """How this app's OTLP spans become events (docs/OBSERVABILITY.md); applies within a minute."""
    _app_access(app_id, writes=True)
    mapping = otlp.put_mapping(settings().apps_table, app_id, otlp.parse_mapping(_body()), utc_now())
    return _json(200, {"app_id": app_id, **mapping.as_dict()})


@app.route("/api/apps/{app_id}/otlp", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def get_app_otlp(app_id: str) -> Response:
    """The app's mapping, or the default one (`"default": true`) when it stored none."""
    _app_access(app_id, writes=False)
    mapping = otlp.get_mapping(settings().apps_table, app_id)
    return _json(200, {"app_id": app_id, **(mapping or otlp.DEFAULT_MAPPING).as_dict(), "default": mapping is None})


# --- alert destinations (docs/DESTINATIONS.md; logic in mars_common.destinations and .delivery) ---------
def _destination_id(destination_id: str) -> str:
    if not destinations.DESTINATION_ID_RE.fullmatch(destination_id):
        raise ValidationError([FieldError("destination_id", "must be dst_ and 16 hex digits (the id POST returned)")])
    return destination_id


@app.route("/api/apps/{app_id}/destinations", methods=["POST"], content_types=BODY_TYPES)
@_handles_errors
def create_destination(app_id: str) -> Response:
    """201 with the webhook's signing secret: the only answer that ever holds it."""
    _app_access(app_id, writes=True)
    cfg = settings()
    new = destinations.parse(_body(), allow_loopback=cfg.allow_loopback_destinations)
    try:
        created = destinations.create(cfg.destinations_table, cfg.destination_secrets_table, app_id, new)
    except destinations.TooManyError as exc:
        raise ApiError(409, "TOO_MANY_DESTINATIONS", str(exc)) from exc
    logger.info("destination created", extra={"app_id": app_id, "destination_id": created["id"], "type": new.type})
    return _json(201, {"app_id": app_id, **created})


@app.route("/api/apps/{app_id}/destinations", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def list_destinations(app_id: str) -> Response:
    _app_access(app_id, writes=False)
    _only_params()
    items = destinations.list_for(settings().destinations_table, app_id)
    return _json(200, {"app_id": app_id, "items": [destinations.public(i) for i in items]})


@app.route("/api/apps/{app_id}/destinations/{destination_id}", methods=["DELETE"], content_types=BODY_TYPES)
@_handles_errors
def delete_destination(app_id: str, destination_id: str) -> Response:
    _app_access(app_id, writes=True)
    cfg = settings()
    if not destinations.delete(cfg.destinations_table, cfg.destination_secrets_table, app_id,
                               _destination_id(destination_id)):
        raise ApiError(404, "NOT_FOUND", f"app {app_id!r} has no destination {destination_id!r}")
    logger.info("destination deleted", extra={"app_id": app_id, "destination_id": destination_id})
    return _json(200, {"success": True, "app_id": app_id, "id": destination_id})


@app.route("/api/apps/{app_id}/destinations/{destination_id}/test", methods=["POST"], content_types=BODY_TYPES)
@_handles_errors
def test_destination(app_id: str, destination_id: str) -> Response:
    """Enqueues a test alert (rule.kind "test") for this one destination; 202: delivery is asynchronous."""
    _app_access(app_id, writes=True)
    cfg = settings()
    if destinations.get(cfg.destinations_table, app_id, _destination_id(destination_id)) is None:
        raise ApiError(404, "NOT_FOUND", f"app {app_id!r} has no destination {destination_id!r}")
    alert = delivery.test_alert(app_id, _timeline_url(app_id, "mars-destination-test"))
    try:
        delivery.fan_out(alert, only=destination_id)
    except delivery.FanOutError as exc:
        logger.error("test alert not enqueued", extra={"app_id": app_id, "destination_id": destination_id,
                                                       "error": str(exc)})
        raise ApiError(503, "ENQUEUE_FAILED", "the test alert could not be enqueued; try again") from exc
    return _json(202, {"success": True, "id": destination_id, "webhook_id": delivery.webhook_id(alert),
                       "alert": alert})


def _timeline_url(app_id: str, message_id: str) -> str:
    """The dashboard's page of a message, on the host and stage this request came through."""
    request = _request()
    context_path = str(request.context.get("path") or request.path)
    base = context_path[: len(context_path) - len(request.path)] if context_path.endswith(request.path) else ""
    proto = (request.headers.get("x-forwarded-proto") or "https").split(",")[0].strip()
    return (f"{proto}://{request.headers.get('host', 'localhost')}{base}/search/event?"
            f"{urlencode({'message_id': message_id, 'app_id': app_id})}")


def _parse_lifecycle(body: Any) -> Lifecycle:
    errors: list[FieldError] = []
    if not isinstance(body, dict):
        raise ValidationError([FieldError("body", "must be a JSON object")])
    allowed = ("events", "sla_seconds", "retention_days", "optional", "failure", "deadlines")
    for k in sorted(set(body) - set(allowed)):
        errors.append(FieldError(k, f"is not a known field (allowed: {', '.join(allowed)})"))
    events = body.get("events")
    if not isinstance(events, list) or not events:
        errors.append(FieldError("events", "must be a non-empty list of event names"))
    elif len(events) > 50:
        errors.append(FieldError("events", "must hold at most 50 event names"))
    elif not all(isinstance(e, str) and 0 < len(e) <= MAX_EVENT and e.isprintable() for e in events):
        errors.append(FieldError("events", f"every name must be a printable string of 1-{MAX_EVENT} characters"))
    elif len(set(events)) != len(events):
        errors.append(FieldError("events", "names must be unique"))
    sla = body.get("sla_seconds", 0)
    if isinstance(sla, float) and sla.is_integer():
        sla = int(sla)  # JSON has one number type: 300.0 is the integer 300
    if isinstance(sla, bool) or not isinstance(sla, int) or not 0 <= sla <= 30 * 86400:
        errors.append(FieldError("sla_seconds", "must be an integer from 0 to 2592000"))
    retention = body.get("retention_days")
    if isinstance(retention, float) and retention.is_integer():
        retention = int(retention)
    if "retention_days" in body and (isinstance(retention, bool) or not isinstance(retention, int)
                                     or not 1 <= retention <= MAX_RETENTION_DAYS):
        errors.append(FieldError("retention_days", f"must be an integer from 1 to {MAX_RETENTION_DAYS}"))
    valid_events = tuple(str(e) for e in events) if isinstance(events, list) and not any(
        e.field == "events" for e in errors) else ()
    rules = parse_rules(body, valid_events, errors)  # optional, failure, deadlines (mars_common.timeline)
    if errors:
        raise ValidationError(errors)
    return Lifecycle(events=tuple(str(e) for e in events or ()), sla_seconds=sla, retention_days=retention, **rules)


def _check_app_id(app_id: str) -> None:
    if not APP_ID_RE.fullmatch(app_id):
        raise ValidationError([FieldError("app_id", "must be 1-128 characters of letters, digits and . _ : -")])


def _only_params(*allowed: str) -> None:
    unknown = sorted(set(_query()) - set(allowed))
    if unknown:
        raise ApiError(400, "VALIDATION_ERROR", "unknown query parameter(s)",
                       [{"field": k, "message": "is not a known parameter"} for k in unknown])


def _int_param(name: str, *, default: int, low: int, high: int) -> int:
    raw = _query().get(name)
    if raw is None:
        return default
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else low - 1
    if not low <= value <= high:
        raise ValidationError([FieldError(name, f"must be an integer from {low} to {high}")])
    return value


@app.route("/api/test_socket", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def test_socket() -> Response:
    """Mars's route: pushes a test entry to every subscriber of that message (nothing is stored)."""
    _same_site_only()
    principal = _principal()
    _only_params("message_id", "app_id")
    query = _query()
    errors: list[FieldError] = []
    message_id = check_text(query, "message_id", MAX_MESSAGE_ID, errors)
    if errors or message_id is None:
        raise ValidationError(errors)
    app_id = query.get("app_id")
    if app_id is not None:
        _check_app_id(app_id)
        auth.require_apps(principal, [app_id])
    cfg = settings()
    rows = [r for r in live.message_subscriptions(cfg.connections_table, message_id, app_id)
            if principal.can(r["app_id"])]
    by_app: dict[str, set[str]] = {}
    for row in rows:
        by_app.setdefault(row["app_id"], set()).add(row["connection_id"])
    entry: dict[str, Any] = {"event": "TEST_SOCKET", "created_at": utc_now(), "received_at": utc_now(),
             "event_id": f"test-{uuid.uuid4().hex[:16]}", "meta": {"source": "GET /api/test_socket"}}
    delivered = stale = 0
    for sub_app, connections in sorted(by_app.items()):
        items = get_items(cfg.messages_table, message_id, sub_app)
        item = items[0] if items else {"app_id": sub_app, "message_id": message_id}
        timeline = to_timeline(item, get_lifecycle(cfg.apps_table, sub_app))
        timeline["events"] = [*timeline["events"], entry]
        frame = {**live.timeline_frame(timeline, {entry["event_id"]}), "test": True}
        result = live.push(cfg.websocket_management_url, cfg.connections_table, connections, frame)
        delivered, stale = delivered + result.delivered, stale + result.stale
    return _json(200, {"success": True, "message_id": message_id, "subscribers": len(rows),
                       "delivered": delivered, "stale_removed": stale, "event": entry})


@app.route("/api/config", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def client_config() -> Response:
    """What the dashboard needs to find the rest: the websocket URL differs per deployment."""
    cfg = settings()
    return _json(200, {"websocket_url": cfg.websocket_url, "stage": cfg.stage, "auth_required": cfg.auth_required})


WS_URL_RE = re.compile(r"^(wss?)://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?(/[A-Za-z0-9._~/-]*)?$")


def _connect_src(websocket_url: str) -> str:
    """The page may connect to itself and to its own websocket (the URL /api/config gives it), not to
    any ws:/wss: host: injected script could otherwise send what it reads anywhere."""
    url = websocket_url.strip()
    if url.startswith(("http://", "https://")):
        url = "ws" + url[4:]  # the dashboard turns an http(s) URL into ws(s) the same way
    match = WS_URL_RE.fullmatch(url)
    return f"'self' {url}" if match else "'self'"  # nothing odd ever reaches the header


def _dashboard() -> Response:
    """The one-page dashboard; relative URLs under <base> work at / locally and /{stage}/ deployed."""
    request = _request()
    context_path = str(request.context.get("path") or request.path)
    base = context_path[: len(context_path) - len(request.path)] + "/" if context_path.endswith(request.path) else "/"
    html = (DASHBOARD_DIR / "index.html").read_text(encoding="utf-8").replace("{{BASE}}", base)
    return Response(body=html, status_code=200, headers={
        "Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-cache",
        "Content-Security-Policy": f"default-src 'self'; connect-src {_connect_src(settings().websocket_url)}; "
                                   "img-src 'self' data:; style-src 'self'; script-src 'self'; base-uri 'self'; "
                                   "frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff"})


@app.route("/", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def dashboard() -> Response:
    return _dashboard()


@app.route("/search/event", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def dashboard_search() -> Response:
    """Mars's deep link: the dashboard opened on ?message_id=…"""
    return _dashboard()


@app.route("/apps/{app_id}", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def dashboard_app(app_id: str) -> Response:
    _check_app_id(app_id)
    return _dashboard()


@app.route("/static/{name}", methods=["GET"], content_types=BODY_TYPES)
@_handles_errors
def dashboard_static(name: str) -> Response:
    match = STATIC_NAME_RE.fullmatch(name)
    path = DASHBOARD_DIR / name
    if not match or not path.is_file():
        raise ApiError(404, "NOT_FOUND", f"no static file {name!r}")
    return Response(body=path.read_text(encoding="utf-8"), status_code=200, headers={
        "Content-Type": STATIC_TYPES[match.group(1)], "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})
