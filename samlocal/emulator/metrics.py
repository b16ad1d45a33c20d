"""The SQS -> CloudWatch metrics AWS publishes by itself, published by the emulator.

A background thread samples every SQS queue (every account and region) each
``metrics_interval`` seconds and publishes what AWS publishes automatically:
namespace ``AWS/SQS``, dimension ``QueueName``, metrics
``ApproximateNumberOfMessagesVisible``, ``ApproximateNumberOfMessagesNotVisible``,
``ApproximateNumberOfMessagesDelayed`` and ``ApproximateAgeOfOldestMessage``.  The
samples are exposed to moto's CloudWatch backend the way moto exposes its own
AWS-generated metrics (a ``CloudWatchMetricProvider``), so GetMetricData,
GetMetricStatistics and ListMetrics return them, while the samples live in a
time-bounded store here instead of growing ``metric_data`` forever.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

from moto.cloudwatch.models import Dimension, MetricDatum
from moto.core.common_models import CloudWatchMetricProvider
from moto.core.utils import unix_time_millis, utcnow
from moto.sqs.models import sqs_backends

from samlocal.emulator.patches.sqs import count_messages

logger = logging.getLogger(__name__)

SQS_NAMESPACE = "AWS/SQS"
DEFAULT_METRICS_INTERVAL = 5.0
DEFAULT_METRICS_RETENTION = 3600.0




class _SqsMetricStore:
    """Recent AWS/SQS samples per (account, region, queue), bounded by age."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], deque[MetricDatum]] = {}
        self.retention_seconds = DEFAULT_METRICS_RETENTION

    def add(self, account_id: str, region: str, queue: str, data: list[MetricDatum]) -> None:
        with self._lock:
            self._series.setdefault((account_id, region, queue), deque()).extend(data)

    def expire(self, now: datetime.datetime) -> None:
        cutoff = now - datetime.timedelta(seconds=self.retention_seconds)
        with self._lock:
            for key in list(self._series):
                series = self._series[key]
                while series and series[0].timestamp < cutoff:
                    series.popleft()
                if not series:
                    del self._series[key]

    def get(self, account_id: str, region: str) -> list[MetricDatum]:
        with self._lock:
            out: list[MetricDatum] = []
            for (acct, reg, _), series in self._series.items():
                if acct == account_id and reg == region:
                    out.extend(series)
            return out

    def clear(self) -> None:
        with self._lock:
            self._series.clear()


SQS_METRICS = _SqsMetricStore()


class SqsCloudWatchMetrics(CloudWatchMetricProvider):
    """Moto's hook for AWS-generated metrics: CloudWatchBackend.get_all_metrics()
    adds whatever every CloudWatchMetricProvider subclass returns."""

    @staticmethod
    def get_cloudwatch_metrics(account_id: str, region: str) -> list[MetricDatum]:
        return SQS_METRICS.get(account_id, region)


def _datum(name: str, value: float, unit: str, dimensions: list[Dimension], ts: Any) -> MetricDatum:
    # object.__new__ skips moto's BaseModel.__new__, which would keep every datum
    # alive forever in MetricDatum.instances_tracked.
    datum: MetricDatum = object.__new__(MetricDatum)
    MetricDatum.__init__(datum, SQS_NAMESPACE, name, value, [], ts, unit)
    datum.dimensions = dimensions  # shared per queue and sample
    return datum


def _iter_queues() -> Iterator[tuple[str, str, Any]]:
    # Snapshots (list(...)) so accounts, regions and queues created or deleted by
    # request threads meanwhile cannot break the iteration.
    for account_id, per_region in list(sqs_backends.items()):
        for region, backend in list(per_region.items()):
            for queue in list(backend.queues.values()):
                yield account_id, region, queue


def sample_queue(queue: Any, now_ms: float) -> tuple[int, int, int, float]:
    """(visible, not visible, delayed, age of oldest message in s) for one queue.

    One pass over a snapshot of the queue's messages; works with or without
    the patches.
    """
    visible, not_visible, delayed, oldest = count_messages(list(queue._messages), now_ms)
    age = max(0.0, (now_ms - oldest) / 1000.0) if oldest is not None else 0.0
    return visible, not_visible, delayed, age


def publish_sqs_metrics_once() -> int:
    """Sample every queue of every account/region once; returns the queue count."""
    now = utcnow()
    now_ms = unix_time_millis()
    published = 0
    for account_id, region, queue in _iter_queues():
        try:
            visible, not_visible, delayed, age = sample_queue(queue, now_ms)
        except (RuntimeError, AttributeError):  # queue mutated/half-built: next tick
            continue
        dims = [Dimension("QueueName", queue.name)]
        SQS_METRICS.add(
            account_id,
            region,
            queue.name,
            [
                _datum("ApproximateNumberOfMessagesVisible", visible, "Count", dims, now),
                _datum("ApproximateNumberOfMessagesNotVisible", not_visible, "Count", dims, now),
                _datum("ApproximateNumberOfMessagesDelayed", delayed, "Count", dims, now),
                _datum("ApproximateAgeOfOldestMessage", age, "Seconds", dims, now),
            ],
        )
        published += 1
    SQS_METRICS.expire(now)
    return published


class SqsMetricsPublisher(threading.Thread):
    """Daemon thread: ``publish_sqs_metrics_once()`` every ``interval`` seconds."""

    def __init__(self, interval: float = DEFAULT_METRICS_INTERVAL) -> None:
        super().__init__(name="sqs-cloudwatch-metrics", daemon=True)
        self.interval = interval
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            try:
                publish_sqs_metrics_once()
            except Exception:  # never let one bad tick kill the thread
                logger.exception("sqs metrics tick failed")
            self._stopped.wait(self.interval)

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)


