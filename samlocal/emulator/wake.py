"""The emulator's routes for the local runtime's long waits (not AWS APIs).

`POST /_local/sqs/wake` ends the long polls waiting on a queue. The local runtime's SQS pollers long-poll for
20 s, as Lambda's do, so that an idle stack costs almost nothing; a poller that is paused
(UpdateEventSourceMapping Enabled=false) or stopping asks the emulator to end its wait at once,
empty-handed, instead of taking a message up to 20 s later. Body: `{"queue_url": "http://…/<account>/<name>",
"region": "us-east-1"}`. Answers 200 `{"queue": name}`, 404 for a queue the emulator does not hold.

`POST /_local/dynamodbstreams/wait` waits until a stream shard has had a record added. DynamoDB Streams has
no long poll: Lambda reads each shard 4 times a second, and so do the runtime's readers while records
flow; an idle reader waits here instead of reading an empty shard (that was most of an idle stack's CPU).
Body: `{"stream_arn": …, "shard_id": …, "known": <the count this route last answered, or null>,
"seconds": <at most 20>}`. Answers 200 `{"records": <records the shard has ever had>}` once that differs
from `known` (at once for null), or after `seconds`; 404 for a stream or shard the emulator does not hold.

Both: 400 for a body they cannot read, 405 for another method, 501 on stock moto (they need the patched
receive and stream: `patches.sqs.wake_receivers`, `patches.dynamodb.wait_for_stream_records`)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from moto.core.exceptions import JsonRESTError
from moto.dynamodbstreams.models import dynamodbstreams_backends
from moto.sqs.models import sqs_backends

from samlocal.emulator import patches
from samlocal.emulator.patches.dynamodb import wait_for_stream_records
from samlocal.emulator.patches.sqs import wake_receivers

PATH = "/_local/sqs/wake"
STREAM_WAIT_PATH = "/_local/dynamodbstreams/wait"
MAX_STREAM_WAIT_SECONDS = 20.0
MAX_BODY = 4096
logger = logging.getLogger(__name__)


class _NotFoundError(Exception):
    pass


def _sqs_wake(body: dict[str, Any]) -> dict[str, Any]:
    try:
        region = str(body["region"])
        account, name = urlsplit(str(body["queue_url"])).path.strip("/").split("/")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"expected {{\"queue_url\": …, \"region\": …}}: {exc}") from exc
    queue = sqs_backends[account][region].queues.get(name) if account.isdigit() else None
    if queue is None:
        logger.warning("sqs wake for an unknown queue", extra={"queue": name[:100], "region": region[:40]})
        raise _NotFoundError(f"no queue {name!r} in {account}/{region}")
    wake_receivers(queue)
    return {"queue": name}


def _stream_wait(body: dict[str, Any]) -> dict[str, Any]:
    try:
        arn, shard_id, known = str(body["stream_arn"]), str(body["shard_id"]), body.get("known")
        seconds = float(body["seconds"])
        _, _, service, region, account, resource = arn.split(":", 5)
        if service != "dynamodb" or not account.isdigit() or "/stream/" not in resource:
            raise ValueError(f"not a DynamoDB stream ARN: {arn[:200]!r}")
        if known is not None and (not isinstance(known, int) or isinstance(known, bool)):
            raise ValueError("known must be an integer or null")
        if not 0 <= seconds <= MAX_STREAM_WAIT_SECONDS:
            raise ValueError(f"seconds must be 0 to {MAX_STREAM_WAIT_SECONDS:g}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"expected {{\"stream_arn\": …, \"shard_id\": …, \"known\": …, \"seconds\": …}}: {exc}") from exc
    try:
        table = dynamodbstreams_backends[account][region]._get_table_from_arn(arn)
    except (JsonRESTError, KeyError) as exc:
        raise _NotFoundError(f"no stream {arn[:200]!r}") from exc
    shard = table.stream_shard
    if shard is None or shard.id != shard_id:
        raise _NotFoundError(f"no shard {shard_id[:100]!r} in {arn[:200]!r}")
    return {"records": wait_for_stream_records(shard, known, seconds)}


ROUTES: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {PATH: _sqs_wake, STREAM_WAIT_PATH: _stream_wait}

# Requests to these routes not yet answered (their response written: WSGI calls close() after): a stopping
# emulator releases the stream waits and lets them answer before its server closes.
_open_requests = [0]
_open_changed = threading.Condition()


class _Answered(list[bytes]):
    def close(self) -> None:
        with _open_changed:
            _open_requests[0] -= 1
            _open_changed.notify_all()


def wait_until_answered(timeout: float) -> bool:
    """Whether every request to these routes was answered within `timeout` seconds."""
    with _open_changed:
        return _open_changed.wait_for(lambda: _open_requests[0] == 0, timeout)


def _answer(start_response: Any, status: str, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return _Answered([body])


class LocalWaits:
    """WSGI middleware serving ROUTES; every other request goes to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None:
            return self.app(environ, start_response)
        with _open_changed:
            _open_requests[0] += 1  # every path below answers through _answer, whose close() counts it done
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(min(length, MAX_BODY + 1))
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, "405 Method Not Allowed", {"message": "POST only"})
        if not patches.is_applied():
            return _answer(start_response, "501 Not Implemented", {"message": "this route needs the patched emulator"})
        try:
            if len(raw) > MAX_BODY:
                raise ValueError("body too large")
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return _answer(start_response, "200 OK", route(body))
        except _NotFoundError as exc:
            return _answer(start_response, "404 Not Found", {"message": str(exc)})
        except ValueError as exc:  # json's errors are ValueErrors too
            return _answer(start_response, "400 Bad Request", {"message": str(exc)})
