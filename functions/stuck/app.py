"""StuckFunction (every minute): a message whose app declares an SLA and that saw no event for longer
than it, still incomplete, is marked once (`stuck_at`, which the stream turns into a live push) and
announced on AlertsTopic. A new event clears the mark, so a message can alert again later."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from mars_common import aws
from mars_common import metrics as m
from mars_common.config import settings
from mars_common.events import format_ts
from mars_common.store import lifecycles, mark_stuck, stuck_candidates, to_timeline

logger = Logger(service="mars-stuck")
metrics, tracer = m.for_service("mars-stuck")
# How far behind the SLA cut-off a sweep looks: runs are a minute apart, so an hour leaves room for
# missed runs without re-reading an app's whole history each minute.
LOOKBACK_SECONDS = 3600


def alert(topic_arn: str, timeline: dict[str, Any], sla_seconds: int, stuck_at: str) -> None:
    message = {"type": "stuck", "app_id": timeline["app_id"], "message_id": timeline["message_id"],
               "missing": timeline["missing"], "last_seen": timeline["last_seen"], "sla_seconds": sla_seconds,
               "stuck_at": stuck_at}
    aws.client("sns").publish(TopicArn=topic_arn, Subject="Mars: a message is stuck"[:100],
                              Message=json.dumps(message),
                              MessageAttributes={"app_id": {"DataType": "String", "StringValue": timeline["app_id"]}})


@metrics.log_metrics(capture_cold_start_metric=True)
@tracer.capture_lambda_handler
@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, int]:
    cfg = settings()
    topic = os.environ["ALERTS_TOPIC_ARN"]
    now = datetime.now(UTC)
    marked = candidates = 0
    fired: Counter[str] = Counter()
    for app_id, lifecycle in lifecycles(cfg.apps_table).items():
        for item in stuck_candidates(cfg.messages_table, app_id, lifecycle, now, LOOKBACK_SECONDS):
            candidates += 1
            stuck_at = format_ts(now)
            if mark_stuck(cfg.messages_table, item, stuck_at):  # one alert per stuck spell, even if runs overlap
                marked += 1
                alert(topic, to_timeline(item, lifecycle, with_events=False, now=now), lifecycle.sla_seconds, stuck_at)
                fired[app_id] += 1
    for app_id, n in sorted(fired.items()):  # app_id is bounded here: only apps that declared an SLA alert
        m.count_by(metrics, m.ALERTS_FIRED, "app_id", app_id, n)
    m.count(metrics, m.ALERTS_FIRED, marked)
    logger.info("swept", extra={"candidates": candidates, "marked": marked})
    return {"candidates": candidates, "marked": marked}
