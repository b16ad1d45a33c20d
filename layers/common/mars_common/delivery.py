"""Alert delivery (issue 14 part 3): `fan_out` enqueues one SQS message per (alert, destination) on
AlertDeliveryQueue; DeliveryFunction (functions/delivery/app.py) sends each with `deliver_webhook` or
`deliver_sns`, and retries on the schedule of `retry_delay` until the retry window is over, then moves it
to AlertDeliveryDeadLetterQueue. Whoever raises an alert only pays one Query and one SendMessageBatch:
a slow receiver never slows ingest.

Webhooks follow Standard Webhooks (standardwebhooks.com): headers `webhook-id` (the same for every
attempt and every destination of one alert transition, so a receiver dedupes), `webhook-timestamp`
(this attempt's), `webhook-signature` (`v1,<base64 HMAC-SHA256 of id.timestamp.body>`, made by the
`standardwebhooks` package). Body: the alert JSON (format "standard") or a Slack incoming-webhook body
(format "slack").
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from boto3.dynamodb.conditions import Key
from standardwebhooks.webhooks import Webhook

from . import aws
from .config import settings
from .destinations import Resolver, UrlRefusedError, check_url, resolve

MESSAGE_VERSION = 1
MAX_RESPONSE_BYTES = 4096  # of a receiver's answer, read (for the log line) and dropped
USER_AGENT = "Mars-Webhooks/1"
# SQS refuses a visibility timeout over 12 h; the schedule never asks for more than this.
MAX_VISIBILITY_SECONDS = 43200
ALERT_KEYS = ("type", "alert_id", "app_id", "message_id", "rule", "state", "fired_at", "resolved_at", "timeline_url")


class FanOutError(RuntimeError):
    """Some deliveries could not be enqueued (the message lists them): the caller must retry."""


def webhook_id(alert: dict[str, Any]) -> str:
    """Stable per alert transition (alert_id, state): every retry and redrive repeats it."""
    digest = hashlib.sha256(f"{alert['alert_id']}\x1f{alert['state']}".encode()).hexdigest()[:32]
    return f"msg_{digest}"


def _check_alert(alert: Any) -> None:
    if not isinstance(alert, dict):
        raise ValueError("an alert must be a dict")
    missing = [k for k in ("alert_id", "app_id", "state") if not isinstance(alert.get(k), str) or not alert.get(k)]
    if missing:
        raise ValueError(f"the alert lacks {', '.join(missing)} (shape: {', '.join(ALERT_KEYS)})")


def fan_out(alert: dict[str, Any], *, only: str | None = None) -> int:
    """Enqueues one delivery per destination of the alert's app (or only destination `only`); returns how
    many. Raises FanOutError naming the destinations whose delivery was not enqueued (never drops one)."""
    _check_alert(alert)
    cfg = settings()
    app_id = alert["app_id"]
    if only is not None:
        ids = [only]
    else:
        ids = [str(i["destination_id"]) for i in aws.items(
            cfg.destinations_table, KeyConditionExpression=Key("app_id").eq(app_id),
            ProjectionExpression="#d", ExpressionAttributeNames={"#d": "destination_id"})]
    now = time.time()
    entries = [{"Id": str(n), "MessageBody": json.dumps(
        {"v": MESSAGE_VERSION, "app_id": app_id, "destination_id": d, "webhook_id": webhook_id(alert),
         "first_attempt_at": now, "alert": alert}, ensure_ascii=False, separators=(",", ":"))}
        for n, d in enumerate(ids)]
    failed: list[str] = []
    sqs = aws.client("sqs")
    for start in range(0, len(entries), 10):
        chunk = entries[start:start + 10]
        try:
            resp = sqs.send_message_batch(QueueUrl=cfg.alert_delivery_queue_url, Entries=chunk)
            failed += [f"{ids[int(f['Id'])]}: {f.get('Code')} {f.get('Message', '')}" for f in resp.get("Failed", [])]
        except Exception as exc:
            failed += [f"{ids[int(e['Id'])]}: {type(exc).__name__}: {exc}" for e in chunk]
    if failed:
        raise FanOutError(f"{len(failed)} of {len(ids)} deliveries of alert {alert['alert_id']} were not enqueued: "
                          + "; ".join(failed)[:1000])
    return len(ids)


def test_alert(app_id: str, timeline_url: str) -> dict[str, Any]:
    """What POST /api/apps/{app}/destinations/{id}/test sends: an alert of the usual shape, `rule.kind`
    "test", a fresh alert_id (so a fresh webhook-id) each call."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return {"type": "alert", "alert_id": f"test_{uuid.uuid4().hex}", "app_id": app_id,
            "message_id": "mars-destination-test", "rule": {"kind": "test", "step": None, "after": None},
            "state": "firing", "fired_at": now, "resolved_at": None, "timeline_url": timeline_url}


# --- the retry schedule --------------------------------------------------------------------------------
def retry_delay(attempt: int, first_seconds: int, window_seconds: int) -> int:
    """Seconds before attempt `attempt + 1` after attempt `attempt` (1-based) failed: first_seconds
    doubling each time, capped at an eighth of the window (deployed, 30 s → 1 h 48 m over 24 h) and at SQS's
    12 h."""
    cap = min(MAX_VISIBILITY_SECONDS, max(first_seconds, window_seconds // 8))
    return int(min(cap, first_seconds * 2 ** min(max(attempt - 1, 0), 30)))


def next_visibility(attempt: int, first_attempt_at: float, now: float, first_seconds: int,
                    window_seconds: int) -> int | None:
    """When to try again (seconds), or None when the window is over: the message goes to the DLQ. The
    last retry falls at the window's end, not past it."""
    deadline = first_attempt_at + window_seconds
    if now >= deadline:
        return None
    return max(1, min(retry_delay(attempt, first_seconds, window_seconds), int(deadline - now + 0.999)))


# --- bodies ---------------------------------------------------------------------------------------------
def _slack_escape(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def describe_rule(rule: Any) -> str:
    rule = rule if isinstance(rule, dict) else {}
    kind, step, after = rule.get("kind"), rule.get("step"), rule.get("after")
    if kind == "deadline":
        return f"{step} did not arrive in time after {after}" if after else f"{step} did not arrive in time"
    if kind == "sla":
        return "the message went past its SLA" + (f" (at {step})" if step else "")
    if kind == "failure":
        return f"the message failed at {step}"
    if kind == "test":
        return "a test alert sent from Mars"
    return f"rule {kind}"


def slack_body(alert: dict[str, Any]) -> dict[str, Any]:
    """A Slack incoming-webhook body: `text` (notifications, fallbacks) and Block Kit `blocks`."""
    state = str(alert.get("state", ""))
    icon = ":white_check_mark:" if state == "resolved" else ":rotating_light:"
    what = describe_rule(alert.get("rule"))
    text = (f"[{state.upper()}] app {alert.get('app_id')}, message {alert.get('message_id')}: {what}")
    url = str(alert.get("timeline_url") or "")
    fields = [f"*App*\n{_slack_escape(alert.get('app_id'))}", f"*Message*\n{_slack_escape(alert.get('message_id'))}",
              f"*Rule*\n{_slack_escape(what)}", f"*State*\n{_slack_escape(state)}"]
    when = alert.get("resolved_at") if state == "resolved" else alert.get("fired_at")
    link = f" · <{url}|timeline>" if url.startswith(("https://", "http://")) and not set(url) & set("<>|") else ""
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{_slack_escape(text)}*"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f} for f in fields]},
        {"type": "context", "elements": [{"type": "mrkdwn",
                                          "text": f"{_slack_escape(state)} at {_slack_escape(when)}{link}"}]},
    ]
    return {"text": text + (f" {url}" if url else ""), "blocks": blocks}


def render(alert: dict[str, Any], fmt: str) -> str:
    body = slack_body(alert) if fmt == "slack" else alert
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    return {"webhook-id": msg_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}


# --- sending -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None = None  # the receiver's HTTP status
    error: str = ""
    host: str = ""


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to an address checked beforehand, with SNI and certificate checks for the URL's host name."""

    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, address: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


def post(url: str, body: str, headers: dict[str, str], *, timeout: float, allow_loopback: bool,
         resolver: Resolver = resolve) -> Outcome:
    """One POST, redirects not followed (a 3xx is a failure: a redirect could point anywhere). The URL
    policy is checked again now, and the connection goes to the address it checked."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        addresses = check_url(url, allow_loopback=allow_loopback, resolver=resolver)
    except UrlRefusedError as exc:
        return Outcome(False, None, f"refused: {exc}", host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    kind = _PinnedHTTPS if parts.scheme == "https" else _PinnedHTTP
    conn = kind(addresses[0], host, port, timeout)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        conn.request("POST", path, body=body.encode(), headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        resp = conn.getresponse()
        text = resp.read(MAX_RESPONSE_BYTES).decode(errors="replace")
        if 200 <= resp.status < 300:
            return Outcome(True, resp.status, "", host)
        return Outcome(False, resp.status, f"HTTP {resp.status}: {text[:200]}", host)
    except (OSError, http.client.HTTPException, ssl.SSLError) as exc:
        return Outcome(False, None, f"{type(exc).__name__}: {exc}"[:300], host)
    finally:
        conn.close()


def deliver_webhook(alert: dict[str, Any], msg_id: str, url: str, secret: str, fmt: str, *, timeout: float,
                    allow_loopback: bool, resolver: Resolver = resolve) -> Outcome:
    body = render(alert, fmt)
    return post(url, body, sign(secret, msg_id, int(time.time()), body), timeout=timeout,
                allow_loopback=allow_loopback, resolver=resolver)


def deliver_sns(alert: dict[str, Any], msg_id: str, topic_arn: str) -> Outcome:
    """The alert JSON on the destination's topic (attribute app_id for filter policies)."""
    kwargs: dict[str, Any] = {}
    if topic_arn.endswith(".fifo"):
        kwargs = {"MessageGroupId": str(alert["app_id"]), "MessageDeduplicationId": msg_id}
    try:
        aws.client("sns").publish(TopicArn=topic_arn, Message=json.dumps(alert, ensure_ascii=False),
                                  Subject="Mars alert", MessageAttributes={
                                      "app_id": {"DataType": "String", "StringValue": str(alert["app_id"])},
                                      "webhook_id": {"DataType": "String", "StringValue": msg_id}}, **kwargs)
    except Exception as exc:
        err = getattr(exc, "response", {}).get("Error", {})
        return Outcome(False, None, f"{err.get('Code') or type(exc).__name__}: {err.get('Message') or exc}"[:300],
                       topic_arn.rsplit(":", 1)[-1])
    return Outcome(True, None, "", topic_arn.rsplit(":", 1)[-1])
