"""Mars's own metrics and traces: Powertools Metrics (CloudWatch embedded metric format, EMF) and Tracer.

Every function and the gRPC shim publish in one namespace, `Mars`, with the dimension `service` (the
function, e.g. `mars-store`), and `reason` on rejections: bounded sets only. `app_id` is never a
dimension of a counter: any producer can invent app ids, and each new value is a new billed custom
metric. The one exception is `AlertsFired`, per app: only apps that declared a lifecycle with an SLA
can alert (docs/OBSERVABILITY.md lists every metric).

An EMF line is a JSON object on stdout; CloudWatch Logs turns it into metrics (Lambda's log group,
the shim's awslogs group). Locally the same lines are in the stack's log (`mars stats --metrics`).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from aws_lambda_powertools import Metrics, Tracer, single_metric
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "Mars"
COUNT = MetricUnit.Count
MILLISECONDS = MetricUnit.Milliseconds

# Metric names (docs/OBSERVABILITY.md): one place, so the functions, the shim, the dashboard in
# template.yaml and the tests agree.
EVENTS_ACCEPTED = "EventsAccepted"  # events enqueued into the FIFO queues (API, router, shim)
INGEST_REJECTED = "IngestRejected"  # requests / producer messages / calls refused, dimension `reason`
ENQUEUE_FAILED = "EnqueueFailed"  # events that could not be enqueued (the caller is told to resend)
EVENTS_STORED = "EventsStored"
DUPLICATES_DROPPED = "DuplicatesDropped"
STORE_LATENCY = "StoreLatency"  # one message's upsert, ms
STORE_FAILED = "StoreFailed"  # messages the store could not persist (redelivered)
BATCH_SIZE = "BatchSize"  # records (or events of a bulk request) per invocation
POISON_RECORDS = "PoisonRecords"
ALERTS_FIRED = "AlertsFired"  # stuck messages announced, dimension app_id
WEBSOCKET_PUSHES = "WebsocketPushes"  # frames delivered to connections
GONE_CONNECTIONS = "GoneConnections"  # 410 Gone: stale connections removed
PUSH_FAILED = "PushFailed"
CONNECTIONS_OPENED = "ConnectionsOpened"
CONNECTIONS_REFUSED = "ConnectionsRefused"  # dimension `reason`
WEBSOCKET_ERRORS = "WebsocketErrors"  # error frames answered to a client, dimension `reason`
AUTHORIZER_DECISIONS = "AuthorizerDecisions"  # dimension `decision`: allow / deny
ALERT_TRANSITIONS = "AlertTransitions"  # alert records notified (AlertsFunction), dimension `state`: firing / resolved
ALERT_DELIVERIES = "AlertDeliveries"  # delivery attempts (DeliveryFunction), dimension `outcome`
OTLP_SPANS = "OtlpSpans"  # spans received on /v1/traces (OtlpFunction), dimension `outcome`: accepted / skipped / rejected
TRACES_EXPORTED = "TracesExported"  # timelines pushed to the collector (TraceExportFunction)
TRACE_EXPORTS_FAILED = "TraceExportsFailed"  # export batches that failed, dimension `outcome`: refused / retrying

# A handler that records nothing this time (a ping) is not an error: Powertools would warn on each.
warnings.filterwarnings("ignore", message="No application metrics to publish")


def for_service(service: str) -> tuple[Metrics, Tracer]:
    """The function's Metrics (namespace Mars, dimension service) and Tracer (X-Ray; off where no
    daemon listens: outside Lambda, under `sam local` and the local stack, which set AWS_SAM_LOCAL)."""
    return Metrics(namespace=NAMESPACE, service=service), Tracer(service=service)


def count(metrics: Metrics, name: str, value: float = 1) -> None:
    metrics.add_metric(name=name, unit=COUNT, value=value)


def count_by(metrics: Metrics, name: str, dimension: str, value: str, amount: float = 1) -> None:
    """A count with one more dimension (reason, decision, app_id) than the function's own, in an EMF
    line of its own (Powertools' single_metric), so the function's other metrics keep their dimensions."""
    with single_metric(name=name, unit=COUNT, value=amount, namespace=NAMESPACE) as single:
        if metrics.service:
            single.add_dimension(name="service", value=str(metrics.service))
        single.add_dimension(name=dimension, value=str(value)[:250] or "-")


@contextmanager
def timed(metrics: Metrics, name: str) -> Iterator[None]:
    """Adds the time the block took, in milliseconds (whether it raised or not)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        metrics.add_metric(name=name, unit=MILLISECONDS, value=round((time.perf_counter() - start) * 1000, 3))
