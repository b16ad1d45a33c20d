"""The gRPC shim: MarsGrpc and OTLP's TraceService (+ health and reflection) → the layer's validation
→ the FIFO queues.

A call is answered only after its events are durably enqueued. Events of concurrent calls bound for
the same queue are sent together (micro-batching: up to 10 per SendMessageBatch, one batch in flight
per queue, the next one holding what arrived meanwhile), which keeps that guarantee: each call awaits
its own events' results.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from aws_lambda_powertools import Metrics
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

# The layer's package (pyproject.toml maps mars_common to layers/common/mars_common; the image copies it
# beside grpc_shim) and the generated code, a module of this package.
from mars_common import auth, otlp
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import MAX_BULK, Event, FieldError, ValidationError, parse_event, utc_now
from mars_common.queues import EnqueueFailure, send_batch
from mars_common.sharding import shard
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from grpc_shim import event_pb2, event_pb2_grpc

log = logging.getLogger("mars.grpc")
SERVICE = "MarsWeb.GrpcService.MarsGrpc"
TRACE_SERVICE = trace_service_pb2.DESCRIPTOR.services_by_name["TraceService"].full_name
REFLECTION_PREFIX = "/grpc.reflection."  # v1alpha and v1: both are stream-stream ServerReflectionInfo
# A stream's summary lists at most this many accepted ids (`accepted` counts them all): a long
# stream must not hold every id in memory, nor outgrow gRPC's 4 MB default message size.
MAX_STREAM_IDS = 10_000


class ShimMetrics:
    """The shim's counts (namespace Mars, service mars-grpc), summed in memory and written as EMF lines
    on stdout every `interval` seconds: a container has no invocation to flush after, and one line
    per interval costs nothing whatever the load. In AWS the task's awslogs group turns them into
    metrics; locally they are in the stack's log (`mars stats --metrics`)."""

    def __init__(self) -> None:
        self.metrics = Metrics(namespace=m.NAMESPACE, service="mars-grpc")
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.batches = 0

    def reject(self, reason: str) -> None:
        self.rejected[reason] += 1

    def flush(self) -> None:
        counts, rejected, batches = self.counts, self.rejected, self.batches
        self.counts, self.rejected, self.batches = Counter(), Counter(), 0
        for reason, n in sorted(rejected.items()):
            m.count_by(self.metrics, m.INGEST_REJECTED, "reason", reason, n)
        if not counts:
            return
        for name, n in sorted(counts.items()):
            m.count(self.metrics, name, n)
        if batches:  # the interval's mean: one value, where one per batch would be a line per 100 batches
            m.count(self.metrics, m.BATCH_SIZE, round(counts[m.EVENTS_ACCEPTED] / batches, 2))
        self.metrics.flush_metrics()


async def flush_every(shim_metrics: ShimMetrics, interval: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
        shim_metrics.flush()


class Batcher:
    """Sends each queue's events in batches of up to 10, one SendMessageBatch in flight per queue.

    While a queue's batch is in flight, the events of calls that arrive meanwhile wait and go
    together in the next one: batches grow with the load by themselves (the cost of a send is per
    call, so a batch of 5 costs a fifth per event of a lone send; docs/BENCHMARKS.md), an idle
    queue sends at once (no timer), and one message's events reach its FIFO queue in the order
    the calls arrived (two batches of one queue never race)."""

    def __init__(self, queue_urls: tuple[str, ...], shim_metrics: ShimMetrics | None = None) -> None:
        self.queue_urls = queue_urls
        self.shim_metrics = shim_metrics or ShimMetrics()
        self._buffers: dict[int, list[tuple[Event, asyncio.Future[EnqueueFailure | None]]]] = defaultdict(list)
        self._in_flight: set[int] = set()
        # botocore blocks: a thread per queue, so no queue waits for another's send
        self._senders = ThreadPoolExecutor(max_workers=len(queue_urls), thread_name_prefix="sqs-send")
        self.batches_sent = 0
        self.events_sent = 0

    async def enqueue(self, events: list[Event]) -> list[EnqueueFailure]:
        loop = asyncio.get_running_loop()
        futures = []
        queues = set()
        for ev in events:
            q = shard(ev.app_id, ev.message_id, len(self.queue_urls))
            fut: asyncio.Future[EnqueueFailure | None] = loop.create_future()
            self._buffers[q].append((ev, fut))
            futures.append(fut)
            queues.add(q)
        for q in queues:
            if q not in self._in_flight:
                self._start(q)
        results = await asyncio.gather(*futures)
        return [r for r in results if r is not None]

    def _start(self, q: int) -> None:
        batch, self._buffers[q] = self._buffers[q][:10], self._buffers[q][10:]
        if batch:
            self._in_flight.add(q)
            asyncio.get_running_loop().create_task(self._send(q, batch))

    async def _send(self, q: int, batch: list[tuple[Event, asyncio.Future[EnqueueFailure | None]]]) -> None:
        items = [(i, ev) for i, (ev, _f) in enumerate(batch)]
        try:
            failures = await asyncio.get_running_loop().run_in_executor(
                self._senders, send_batch, self.queue_urls[q], items)
        except Exception as exc:  # never leave a caller waiting
            failures = [EnqueueFailure(i, ev.event_id, type(exc).__name__, str(exc)) for i, ev in items]
        finally:
            self._in_flight.discard(q)
            self._start(q)  # what arrived meanwhile
        self.batches_sent += 1
        self.events_sent += len(batch)
        self.shim_metrics.batches += 1
        self.shim_metrics.counts[m.EVENTS_ACCEPTED] += len(batch) - len(failures)
        if failures:
            self.shim_metrics.counts[m.ENQUEUE_FAILED] += len(failures)
        by_index = {f.index: f for f in failures}
        for i, (_ev, fut) in enumerate(batch):
            if not fut.done():
                fut.set_result(by_index.get(i))


def to_dict(req: event_pb2.EventRequest) -> dict[str, Any]:
    out: dict[str, Any] = {"app_id": req.app_id, "message_id": req.message_id, "event": req.event,
                           "created_at": req.created_at}
    if req.HasField("event_id"):
        out["event_id"] = req.event_id
    if req.meta:
        out["meta"] = dict(req.meta)
    return out


def describe(errors: list[FieldError]) -> str:
    return "; ".join((f"events[{e.index}].{e.field}" if e.index is not None else e.field) + f": {e.message}"
                     for e in errors)


LENIENT_META_KEY = "created_at_text"  # where collectEvent keeps a created_at that is not a timestamp
MAX_PEERS_REMEMBERED = 10_000


class MarsGrpc(event_pb2_grpc.MarsGrpcServicer):
    def __init__(self, batcher: Batcher, strict_created_at: bool = False) -> None:
        self.batcher = batcher
        # Mars's own collectEvent ignored created_at (its README's ghz load test sends "Hello"): unless
        # strict, a created_at that is not a timestamp becomes the time received, the text kept in meta.
        self.strict_created_at = strict_created_at
        self.lenient_by_peer: dict[str, int] = {}

    def _lenient(self, req: event_pb2.EventRequest, exc: ValidationError, received: str,
                 context: grpc.aio.ServicerContext) -> Event | None:
        """The event with created_at = the time received, or None when something else is wrong too."""
        if self.strict_created_at or any(e.field != "created_at" for e in exc.errors):
            return None
        data = to_dict(req)
        text = data.pop("created_at")
        meta = dict(data.get("meta") or {})
        meta.setdefault(LENIENT_META_KEY, text[:128])
        data["meta"] = meta
        try:
            event = parse_event(data, received_at=received)
        except ValidationError:
            return None  # the kept text would break meta's rules (e.g. a control character): refuse
        peer = str(context.peer() or "?")
        seen = self.lenient_by_peer.get(peer, 0) + 1
        if peer in self.lenient_by_peer or len(self.lenient_by_peer) < MAX_PEERS_REMEMBERED:
            self.lenient_by_peer[peer] = seen
        if seen == 1 or seen % 1000 == 0:  # once per client, then every thousandth: visible, not a flood
            log.warning("collectEvent: created_at is not a timestamp; stored with the time received, the text kept "
                        f"in meta.{LENIENT_META_KEY} (Mars's behaviour; GRPC_STRICT_CREATED_AT=true refuses it)",
                        extra={"peer": peer, "count": seen, "created_at": text[:64], "app_id": event.app_id})
        return event

    async def _principal(self, context: grpc.aio.ServicerContext) -> auth.Principal:
        """The caller's key from the `x-api-key` metadata (DESIGN §2), as on HTTP."""
        key = next((str(v) for k, v in (context.invocation_metadata() or ()) if k.lower() == auth.HEADER), None)
        cfg = settings()
        try:
            return await asyncio.to_thread(auth.authenticate, cfg.keys_table, cfg.auth_required, key)
        except auth.AuthError as err:
            self.batcher.shim_metrics.reject("UNAUTHENTICATED")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, err.message)
            raise  # abort raises; this line is for the type checker

    async def _authorize(self, principal: auth.Principal, events: list[Event],
                         context: grpc.aio.ServicerContext) -> None:
        denied = principal.denied(e.app_id for e in events)
        if denied:
            self.batcher.shim_metrics.reject("PERMISSION_DENIED")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"app_id: this API key may not write to app(s) {', '.join(denied)}")

    async def _accept(self, events: list[Event], context: grpc.aio.ServicerContext) -> list[str]:
        failures = await self.batcher.enqueue(events)
        if failures:
            self.batcher.shim_metrics.reject("UNAVAILABLE")
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"{len(failures)} event(s) not enqueued, resend them: {failures[0].code}")
        return [e.event_id for e in events]

    async def _validate(self, requests: list[event_pb2.EventRequest], context: grpc.aio.ServicerContext,
                        indexed: bool, lenient: bool = False) -> list[Event]:
        received = utc_now()
        events, errors = [], []
        for i, req in enumerate(requests):
            try:
                events.append(parse_event(to_dict(req), received_at=received, index=i if indexed else None))
            except ValidationError as exc:
                event = self._lenient(req, exc, received, context) if lenient else None
                if event is None:
                    errors.extend(exc.errors)
                else:
                    events.append(event)
        if errors:
            self.batcher.shim_metrics.reject("INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, describe(errors))
        return events

    async def collectEvent(self, request: event_pb2.EventRequest,  # noqa: N802 - Mars's rpc name
                           context: grpc.aio.ServicerContext) -> event_pb2.EventResponse:
        principal = await self._principal(context)
        events = await self._validate([request], context, indexed=False, lenient=True)
        await self._authorize(principal, events, context)
        ids = await self._accept(events, context)
        return event_pb2.EventResponse(success=True, event_id=ids[0])

    async def collectEvents(self, request: event_pb2.EventsRequest,  # noqa: N802
                            context: grpc.aio.ServicerContext) -> event_pb2.EventsResponse:
        principal = await self._principal(context)
        if not request.events or len(request.events) > MAX_BULK:
            self.batcher.shim_metrics.reject("INVALID_ARGUMENT")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"events: send 1 to {MAX_BULK} events")
        events = await self._validate(list(request.events), context, indexed=True)
        await self._authorize(principal, events, context)
        return event_pb2.EventsResponse(success=True, event_ids=await self._accept(events, context))

    async def streamEvents(self, request_iterator: Any,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> event_pb2.StreamSummary:
        principal = await self._principal(context)
        received, accepted = 0, 0
        ids: list[str] = []
        pending: list[event_pb2.EventRequest] = []

        async def flush(requests: list[event_pb2.EventRequest]) -> None:
            nonlocal accepted
            events = await self._validate(requests, context, indexed=True)
            await self._authorize(principal, events, context)
            got = await self._accept(events, context)
            accepted += len(got)
            ids.extend(got[:MAX_STREAM_IDS - len(ids)])  # the first MAX_STREAM_IDS; the rest only counted

        async for req in request_iterator:
            received += 1
            pending.append(req)
            if len(pending) == MAX_BULK:
                await flush(pending)
                pending = []
        if pending:
            await flush(pending)
        return event_pb2.StreamSummary(success=True, received=received, accepted=accepted, event_ids=ids)


class OtlpTraceService:
    """OTLP's `TraceService/Export`: the same key, mapping (mars_common.otlp), batcher and queues as
    `collectEvents`. Invalid spans are answered in `partial_success`, as on `POST /v1/traces`; only a
    failed enqueue fails the call (UNAVAILABLE, which OTLP exporters retry: the span ids make the
    retry store each event once)."""

    def __init__(self, mars: MarsGrpc) -> None:
        self.mars = mars

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,  # noqa: N802 - OTLP's rpc name
                     context: grpc.aio.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        principal = await self.mars._principal(context)
        cfg = settings()
        # to_events may read AppsTable (a mapping, once a minute per app): off the event loop
        try:
            result = await asyncio.to_thread(otlp.to_events, request, principal,
                                             lambda app: otlp.cached_mapping(cfg.apps_table, app), utc_now())
        except Exception as exc:  # AppsTable unreachable: retryable, never UNKNOWN
            log.exception("otlp mapping failed")
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"could not read the apps' OTLP mappings, retry: "
                                f"{type(exc).__name__}")
            raise
        if result.events:
            failures = await self.mars.batcher.enqueue(result.events)
            if failures:
                log.error("otlp enqueue failed", extra={**result.log_fields(), "failed": len(failures)})
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{len(failures)} of {len(result.events)} event(s) "
                                    f"not enqueued, resend them: {failures[0].code}")
        if result.rejected_spans or result.skipped_spans:
            log.info("otlp spans skipped or rejected", extra={**result.log_fields(), "reasons": result.reasons})
        return otlp.response(result)


class ReflectionNeedsKey(grpc.aio.ServerInterceptor):
    """With auth on, server reflection (which lists and describes the services) wants a valid key in
    `x-api-key`, like every Mars rpc; health checks stay open for load balancers and `grpc_health_probe`."""

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        if not str(details.method or "").startswith(REFLECTION_PREFIX) or not settings().auth_required:
            return await continuation(details)
        key = next((str(v) for k, v in (details.invocation_metadata or ()) if k.lower() == auth.HEADER), None)
        cfg = settings()
        try:
            await asyncio.to_thread(auth.authenticate, cfg.keys_table, True, key)
        except auth.AuthError as err:
            message = err.message

            async def refuse(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

            return grpc.stream_stream_rpc_method_handler(refuse)
        return await continuation(details)


def _decode(message_type: Any, raw: bytes) -> Any:
    return message_type.FromString(raw)


def register(servicer: MarsGrpc, server: grpc.aio.Server) -> None:
    """The generated registration, except that requests arrive as bytes and are decoded here: a message
    that is not a valid protobuf is the caller's error (INVALID_ARGUMENT), where grpcio's own
    decoding answers UNKNOWN ("Exception deserializing request")."""
    async def invalid(context: grpc.aio.ServicerContext, message_type: Any, exc: Exception) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                            f"the request is not a valid {message_type.DESCRIPTOR.full_name}: {exc}")

    def unary(behavior: Any, message_type: Any) -> Any:
        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = _decode(message_type, raw)
            except DecodeError as exc:
                await invalid(context, message_type, exc)
            return await behavior(request, context)
        return handler

    def stream(behavior: Any, message_type: Any) -> Any:
        async def handler(raws: Any, context: grpc.aio.ServicerContext) -> Any:
            async def decoded() -> Any:
                async for raw in raws:
                    try:
                        yield _decode(message_type, raw)
                    except DecodeError as exc:
                        await invalid(context, message_type, exc)
            return await behavior(decoded(), context)
        return handler

    handlers = {
        "collectEvent": grpc.unary_unary_rpc_method_handler(
            unary(servicer.collectEvent, event_pb2.EventRequest),
            response_serializer=event_pb2.EventResponse.SerializeToString),
        "collectEvents": grpc.unary_unary_rpc_method_handler(
            unary(servicer.collectEvents, event_pb2.EventsRequest),
            response_serializer=event_pb2.EventsResponse.SerializeToString),
        "streamEvents": grpc.stream_unary_rpc_method_handler(
            stream(servicer.streamEvents, event_pb2.EventRequest),
            response_serializer=event_pb2.StreamSummary.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    traces = OtlpTraceService(servicer)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(TRACE_SERVICE, {
        "Export": grpc.unary_unary_rpc_method_handler(
            unary(traces.Export, trace_service_pb2.ExportTraceServiceRequest),
            response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString)}),))


async def serve(host: str, port: int, stop: asyncio.Event, grace: float = 5.0) -> None:
    server = grpc.aio.server(interceptors=[ReflectionNeedsKey()])
    strict = os.environ.get("GRPC_STRICT_CREATED_AT", "").strip().lower() in ("1", "true", "yes", "on")
    shim_metrics = ShimMetrics()
    batcher = Batcher(settings().events_queue_urls, shim_metrics)
    interval = float(os.environ.get("METRICS_INTERVAL_SECONDS") or 60)
    register(MarsGrpc(batcher, strict_created_at=strict), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE, TRACE_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    for name in ("", SERVICE, TRACE_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("grpc shim listening", extra={"host": host, "port": bound})
    flusher = asyncio.get_running_loop().create_task(flush_every(shim_metrics, interval, stop))
    await stop.wait()
    for name in ("", SERVICE, TRACE_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.stop(grace)  # in-flight calls finish; new ones are refused
    await flusher
    shim_metrics.flush()  # what the last calls added
    log.info("grpc shim stopped", extra={"batches_sent": batcher.batches_sent, "events_sent": batcher.events_sent,
                                         "events_per_batch": round(batcher.events_sent / max(1, batcher.batches_sent), 2)})
