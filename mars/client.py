"""A Python client for Mars: one API over four transports, HTTP, gRPC, SNS and SQS.

    from mars.client import MarsClient
    mars = MarsClient.http("http://127.0.0.1:4000/")            # or .grpc("127.0.0.1:4025"), .sns(topic_arn), .sqs(queue_url)
    event_id = mars.send({"app_id": "shop", "message_id": "order-42", "event": "CREATED"})
    ids = mars.send_many(events)                               # batched: 500 per request / message
    body = mars.get_message("order-42")                        # every timeline, every event (pages followed)
    page = mars.get_message_page("order-42", "shop")           # one page: events, event_count, cursor

Every event gets an `event_id` (and a `created_at`) *before* the first attempt, so a retry — of a
whole request, or of the items a partial failure names — can never store an event twice. Without a
client id it is the id Mars itself derives from the event's content (the layer's `parse_event`), so
the same event sent again later, by this client or through any other way in, is stored once too. Retries
use exponential backoff with full jitter, and only for errors that can succeed later (throttling,
5xx, connection failures); a 400 raises `MarsValidationError` at once.

Reading goes through the HTTP API (`MarsClient.http`, or `api_url=` beside another transport). A long
timeline comes in pages of at most 1,000 events (`event_count`, `cursor`); `get_message` and
`iter_pages` follow the cursors until the last page, so a caller sees every event once, in order.
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import requests
from mars_common.events import ValidationError, parse_event

MAX_BULK = 500
MAX_MESSAGE_BYTES = 250 * 1024  # SNS and SQS allow 256 KiB; leave room for attributes
T = TypeVar("T")
RETRYABLE_HTTP = {429, 500, 502, 503, 504}
EXPORT_CURSOR_HEADER = "Mars-Cursor"  # the next export page's cursor (absent on the last page)
RETRYABLE_AWS = {"Throttling", "ThrottlingException", "RequestThrottled", "ServiceUnavailable", "InternalError",
                 "InternalFailure", "KMS.ThrottlingException", "SlowDown"}


class MarsError(Exception):
    """Mars could not take the events (after retries where retrying made sense)."""


class MarsValidationError(MarsError):
    """The events are not valid: `details` holds Mars's per-field (and per-index) errors."""

    def __init__(self, message: str, details: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.details = details


class MarsNotFoundError(MarsError):
    """Mars has no timeline for that message id (in that app): 404."""


class RetryableError(MarsError):
    """A failure worth another attempt; `pending` are the events still to send (None: all of them)."""

    def __init__(self, message: str, pending: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.pending = pending


@dataclass
class Retry:
    max_attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2^attempt)]."""
        return random.uniform(0, min(self.max_delay, self.base_delay * (2 ** attempt)))


def prepare(event: dict[str, Any]) -> dict[str, Any]:
    """A copy with the idempotency fields fixed once: the time if absent, and the event id Mars would
    derive (a random id would make the same event, resent through another way in, a second event).
    An invalid event raises MarsValidationError here, before anything is sent."""
    out = dict(event)
    if not out.get("created_at"):
        out["created_at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if not out.get("event_id"):
        try:
            out["event_id"] = parse_event(out).event_id
        except ValidationError as err:
            raise MarsValidationError(f"the event is not valid: {err}", [e.as_dict() for e in err.errors]) from err
    return out


class Transport:
    """Sends one batch; raises RetryableError or MarsError/MarsValidationError."""

    max_batch = MAX_BULK

    def send_batch(self, events: list[dict[str, Any]]) -> None:
        raise NotImplementedError


class HttpTransport(Transport):
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30,
                 session: requests.Session | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.headers = {"Content-Type": "application/json", **({"x-api-key": api_key} if api_key else {})}
        self.timeout = timeout

    def send_batch(self, events: list[dict[str, Any]]) -> None:
        try:
            resp = self.session.post(self.base + "/api/event/bulk", data=json.dumps({"events": events}),
                                     headers=self.headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RetryableError(f"HTTP request failed: {exc}") from exc
        if resp.status_code == 202:
            return
        body = _json_or_empty(resp)
        error = body.get("error") or {}
        if resp.status_code == 400:
            raise MarsValidationError(error.get("message", "invalid events"), error.get("details", []))
        if resp.status_code == 207:
            failed = {d["index"] for d in error.get("details", []) if "index" in d}
            raise RetryableError("some events were not enqueued", [e for i, e in enumerate(events) if i in failed])
        if resp.status_code in RETRYABLE_HTTP:
            raise RetryableError(f"HTTP {resp.status_code}: {error.get('message', resp.text[:200])}")
        raise MarsError(f"HTTP {resp.status_code}: {error.get('message', resp.text[:200])}")


    def get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One GET of the API; raises RetryableError, MarsNotFoundError, MarsValidationError or MarsError."""
        return _json_or_empty(self._get(path, params))

    def get_text(self, path: str, params: dict[str, str]) -> tuple[str, dict[str, str]]:
        """One GET of a non-JSON answer (an export page): its text and headers; errors as get_json."""
        resp = self._get(path, params)
        return resp.text, dict(resp.headers)

    def _get(self, path: str, params: dict[str, str]) -> requests.Response:
        headers = {k: v for k, v in self.headers.items() if k != "Content-Type"}
        try:
            resp = self.session.get(self.base + path, params=params, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise RetryableError(f"HTTP request failed: {exc}") from exc
        if resp.status_code == 200:
            return resp
        error = _json_or_empty(resp).get("error") or {}
        message = f"HTTP {resp.status_code}: {error.get('message', resp.text[:200])}"
        if resp.status_code == 404:
            raise MarsNotFoundError(message)
        if resp.status_code == 400:
            raise MarsValidationError(message, error.get("details", []))
        if resp.status_code in RETRYABLE_HTTP:
            raise RetryableError(message)
        raise MarsError(message)


class _AwsTransport(Transport):
    """Events packed into messages of up to 500 events and 250 KiB (SNS and SQS cap a message, and a
    batch call's total, at 256 KiB), one message per call."""

    max_batch = MAX_BULK * 10

    @staticmethod
    def _pack(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
        packs: list[list[dict[str, Any]]] = [[]]
        size = 0
        for ev in events:
            n = len(json.dumps(ev).encode()) + 2
            if packs[-1] and (size + n > MAX_MESSAGE_BYTES or len(packs[-1]) >= MAX_BULK):
                packs.append([])
                size = 0
            packs[-1].append(ev)
            size += n
        return packs

    def send_batch(self, events: list[dict[str, Any]]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        pending: list[dict[str, Any]] = []
        last = ""
        for pack in self._pack(events):
            body = json.dumps(pack[0] if len(pack) == 1 else {"events": pack})
            try:
                self._send(body)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                if code not in RETRYABLE_AWS and status < 500:
                    raise MarsError(f"{code}: {exc}") from exc
                pending += pack
                last = f"{code}: {exc}"
            except BotoCoreError as exc:
                pending += pack
                last = str(exc)
        if pending:
            raise RetryableError(f"{len(pending)} events not accepted ({last})", pending)

    def _send(self, body: str) -> None:
        raise NotImplementedError


class SqsTransport(_AwsTransport):
    def __init__(self, queue_url: str, client: Any = None, **client_kwargs: Any) -> None:
        import boto3

        self.queue_url = queue_url
        self.client = client or boto3.client("sqs", **client_kwargs)

    def _send(self, body: str) -> None:
        self.client.send_message(QueueUrl=self.queue_url, MessageBody=body)


class SnsTransport(_AwsTransport):
    def __init__(self, topic_arn: str, client: Any = None, **client_kwargs: Any) -> None:
        import boto3

        self.topic_arn = topic_arn
        self.client = client or boto3.client("sns", **client_kwargs)

    def _send(self, body: str) -> None:
        self.client.publish(TopicArn=self.topic_arn, Message=body)


class GrpcTransport(Transport):
    """collectEvents (up to 500 per call) on the gRPC shim."""

    RETRYABLE = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "ABORTED")

    def __init__(self, target: str, api_key: str | None = None, timeout: float = 30, channel: Any = None) -> None:
        import grpc

        from mars.proto import stubs

        self.pb2, pb2_grpc = stubs()
        self.channel = channel or grpc.insecure_channel(target)
        self.stub = pb2_grpc.MarsGrpcStub(self.channel)
        self.metadata = (("x-api-key", api_key),) if api_key else ()
        self.timeout = timeout

    def send_batch(self, events: list[dict[str, Any]]) -> None:
        import grpc

        requests_ = [self.pb2.EventRequest(app_id=e.get("app_id", ""), message_id=e.get("message_id", ""),
                                           event=e.get("event", ""), created_at=e.get("created_at", ""),
                                           event_id=e["event_id"], meta=e.get("meta") or {}) for e in events]
        try:
            self.stub.collectEvents(self.pb2.EventsRequest(events=requests_), timeout=self.timeout,
                                    metadata=self.metadata)
        except grpc.RpcError as exc:
            code = exc.code().name if exc.code() else "UNKNOWN"
            if code == "INVALID_ARGUMENT":
                raise MarsValidationError(exc.details() or "invalid events", [{"message": exc.details()}]) from exc
            if code in self.RETRYABLE:
                raise RetryableError(f"{code}: {exc.details()}") from exc
            raise MarsError(f"{code}: {exc.details()}") from exc


class MarsClient:
    def __init__(self, transport: Transport, retry: Retry | None = None, reader: HttpTransport | None = None) -> None:
        """`reader`: the HTTP API reads go through (an HttpTransport sends and reads through itself)."""
        self.transport = transport
        self.retry = retry or Retry()
        self.reader = reader or (transport if isinstance(transport, HttpTransport) else None)

    @classmethod
    def http(cls, base_url: str, api_key: str | None = None, retry: Retry | None = None) -> MarsClient:
        return cls(HttpTransport(base_url, api_key), retry)

    @classmethod
    def grpc(cls, target: str, api_key: str | None = None, retry: Retry | None = None,
             api_url: str | None = None) -> MarsClient:
        return cls(GrpcTransport(target, api_key), retry, _reader(api_url, api_key))

    @classmethod
    def sqs(cls, queue_url: str, client: Any = None, retry: Retry | None = None, api_url: str | None = None,
            api_key: str | None = None) -> MarsClient:
        return cls(SqsTransport(queue_url, client), retry, _reader(api_url, api_key))

    @classmethod
    def sns(cls, topic_arn: str, client: Any = None, retry: Retry | None = None, api_url: str | None = None,
            api_key: str | None = None) -> MarsClient:
        return cls(SnsTransport(topic_arn, client), retry, _reader(api_url, api_key))

    # ------------------------------------------------------------------------------------------ reading
    def get_message_page(self, message_id: str, app_id: str | None = None, *, cursor: str | None = None,
                         limit: int | None = None) -> dict[str, Any]:
        """One answer of `GET /api/messages/{id}` as Mars gives it: `{"message_id", "timelines": [...]}`,
        a long timeline's first page (or the page after `cursor`, which needs `app_id`) with `event_count`
        and `cursor` (None on the last page). A short timeline read without limit or cursor has neither."""
        if cursor is not None and app_id is None:
            raise MarsValidationError("a cursor pages one app's timeline: pass app_id",
                                      [{"field": "cursor", "message": "needs app_id"}])
        params = {k: str(v) for k, v in (("app_id", app_id), ("cursor", cursor), ("limit", limit)) if v is not None}
        return self._read(f"/api/messages/{quote(message_id, safe='')}", params)

    def iter_pages(self, message_id: str, app_id: str, *, cursor: str | None = None,
                   limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Each page of one app's timeline in turn (the timeline `T` with that page's events), from the
        page after `cursor` (None: the first) until the one whose cursor is None."""
        seen: set[str] = set()
        while True:
            (timeline,) = self.get_message_page(message_id, app_id, cursor=cursor, limit=limit)["timelines"]
            yield timeline
            cursor = _follow(seen, timeline.get("cursor"), f"{message_id!r} in {app_id!r}")
            if cursor is None:
                return

    def iter_export(self, app_id: str, *, frm: str | None = None, to: str | None = None, fmt: str = "ndjson",
                    events: bool = False, cursor: str | None = None) -> Iterator[str]:
        """`GET /api/apps/{app}/export`, each page's body in turn (NDJSON lines, or CSV with the header in the
        first page only: the pages concatenate into one file), following the Mars-Cursor header to the end."""
        params = {k: v for k, v in (("from", frm), ("to", to), ("format", fmt), ("events", "1" if events else None))
                  if v is not None}
        if self.reader is None:
            raise MarsError("export needs Mars's HTTP API: use MarsClient.http(url), or pass api_url=")
        reader = self.reader
        path = f"/api/apps/{quote(app_id, safe='')}/export"
        seen: set[str] = set()
        while True:
            page = {**params, **({"cursor": cursor} if cursor else {})}
            body, headers = self._retrying(functools.partial(reader.get_text, path, page))
            yield body
            cursor = _follow(seen, {k.lower(): v for k, v in headers.items()}.get(EXPORT_CURSOR_HEADER.lower()) or None,
                             f"the export of {app_id!r}")
            if cursor is None:
                return

    def iter_alerts(self, app_id: str, *, state: str | None = None, frm: str | None = None, to: str | None = None,
                    message_id: str | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """`GET /api/alerts`: the app's alerts (one per message and rule, its latest state, newest first),
        each in turn, following the cursor to the last page. `state` "firing" or "resolved"; `frm`/`to`
        bound when they fired (ISO-8601); `limit` is the page size (1-100)."""
        params = {k: str(v) for k, v in (("app_id", app_id), ("state", state), ("from", frm), ("to", to),
                                         ("message_id", message_id), ("limit", limit)) if v is not None}
        seen: set[str] = set()
        while True:
            page = self._read("/api/alerts", params)
            yield from page["items"]
            cursor = _follow(seen, page.get("cursor"), f"the alerts of {app_id!r}")
            if cursor is None:
                return
            params["cursor"] = cursor

    def get_message(self, message_id: str, app_id: str | None = None) -> dict[str, Any]:
        """`GET /api/messages/{id}` with every timeline whole: a long one's pages are followed to the end,
        its events (each once, sorted by created_at then event_id) in `events`, `event_count` the total
        and `cursor` None. Raises MarsNotFoundError when Mars has none."""
        body = self.get_message_page(message_id, app_id)
        for timeline in body["timelines"]:
            if timeline.get("cursor") is None:
                continue
            pages = self.iter_pages(message_id, timeline["app_id"], cursor=timeline["cursor"])
            events = list(timeline["events"])
            for page in pages:
                events += page["events"]
                # the summary of the last page read is the newest (events may arrive meanwhile)
                timeline.update({k: v for k, v in page.items() if k != "events"})
            timeline["events"] = events
        return body

    def _read(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        if self.reader is None:
            raise MarsError("reading timelines needs Mars's HTTP API: use MarsClient.http(url), or pass api_url=")
        reader = self.reader
        return self._retrying(lambda: reader.get_json(path, params))

    def send(self, event: dict[str, Any]) -> str:
        return self.send_many([event])[0]

    def send_many(self, events: Iterable[dict[str, Any]]) -> list[str]:
        """Sends every event (batched); returns their event ids in order."""
        prepared = [prepare(e) for e in events]
        size = self.transport.max_batch
        for start in range(0, len(prepared), size):
            self._with_retries(prepared[start:start + size])
        return [e["event_id"] for e in prepared]

    def _with_retries(self, batch: list[dict[str, Any]]) -> None:
        pending = batch

        def attempt() -> None:
            self.transport.send_batch(pending)

        def failed(exc: RetryableError) -> None:
            nonlocal pending
            pending = exc.pending if exc.pending is not None else pending

        self._retrying(attempt, failed)

    def _retrying(self, call: Callable[[], T], on_retryable: Callable[[RetryableError], None] | None = None) -> T:
        """`call()` until it succeeds, raises a final error, or the attempts run out (backoff between)."""
        for attempt in range(self.retry.max_attempts):
            try:
                return call()
            except RetryableError as exc:
                if on_retryable is not None:
                    on_retryable(exc)
                if attempt + 1 == self.retry.max_attempts:
                    raise MarsError(f"gave up after {attempt + 1} attempts: {exc}") from exc
                self.retry.sleep(self.retry.delay(attempt))
        raise MarsError("no attempt was allowed (Retry.max_attempts < 1)")


def _follow(seen: set[str], cursor: str | None, paging: str) -> str | None:
    """The cursor of the next page to read (None after the last one), remembered in `seen`: a cursor the
    API gave before is a server bug, which must not turn into an endless loop."""
    if cursor is not None:
        if cursor in seen:
            raise MarsError(f"the API gave cursor {cursor!r} twice for {paging}")
        seen.add(cursor)
    return cursor


def _reader(api_url: str | None, api_key: str | None) -> HttpTransport | None:
    return HttpTransport(api_url, api_key) if api_url else None


def _json_or_empty(resp: requests.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
