"""`POST /_local/sqs/wake`: ends the long polls waiting on a queue (not an SQS API).

The local runtime's SQS pollers long-poll for 20 s, as Lambda's do, so that an idle stack costs almost
nothing; a poller that is paused (UpdateEventSourceMapping Enabled=false) or stopping asks the emulator to
end its wait at once, empty-handed, instead of taking a message up to 20 s later. Body: `{"queue_url":
"http://…/<account>/<name>", "region": "us-east-1"}`. Answers 200 `{"queue": name}`, 404 for a queue the
emulator does not hold, 400 for a body it cannot read, 501 on stock moto (the wake needs the patched
receive: `patches.sqs.wake_receivers`)."""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urlsplit

from moto.sqs.models import sqs_backends

from samlocal.emulator import patches
from samlocal.emulator.patches.sqs import wake_receivers

PATH = "/_local/sqs/wake"
MAX_BODY = 4096
logger = logging.getLogger(__name__)


def _answer(start_response: Any, status: str, payload: dict[str, Any]) -> list[bytes]:
    body = json.dumps(payload).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


class SqsWake:
    """WSGI middleware serving PATH; every other request goes to `app`."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != PATH:
            return self.app(environ, start_response)
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(min(length, MAX_BODY + 1))
        if environ.get("REQUEST_METHOD") != "POST":
            return _answer(start_response, "405 Method Not Allowed", {"message": "POST only"})
        if not patches.is_applied():
            return _answer(start_response, "501 Not Implemented", {"message": "the wake needs the patched emulator"})
        try:
            if len(raw) > MAX_BODY:
                raise ValueError("body too large")
            body = json.loads(raw)
            region = str(body["region"])
            account, name = urlsplit(str(body["queue_url"])).path.strip("/").split("/")
        except (ValueError, KeyError, TypeError) as exc:
            return _answer(start_response, "400 Bad Request",
                           {"message": f"expected {{\"queue_url\": …, \"region\": …}}: {exc}"})
        queue = sqs_backends[account][region].queues.get(name) if account.isdigit() else None
        if queue is None:
            logger.warning("sqs wake for an unknown queue", extra={"queue": name[:100], "region": region[:40]})
            return _answer(start_response, "404 Not Found", {"message": f"no queue {name!r} in {account}/{region}"})
        wake_receivers(queue)
        return _answer(start_response, "200 OK", {"queue": name})
