"""The parts of the Lambda API a local stack needs, on one loopback port:

- `POST /2015-03-31/functions/{name}/invocations` — Invoke, for function→function calls (boto3's
  lambda client reaches it through AWS_ENDPOINT_URL_LAMBDA);
- `GET /2015-03-31/event-source-mappings/`, `GET|PUT /2015-03-31/event-source-mappings/{uuid}` —
  List/Get/UpdateEventSourceMapping, so an operator (or a benchmark) can pause a trigger as in AWS;
- `GET /_local/aws-calls` — AWS API calls made so far, per function and by the runtime itself.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from . import awscalls
from .httpserver import Handler, Server
from .invoker import Invoker
from .triggers import async_invoke
from .triggers.base import EventSourceMapping

log = logging.getLogger("samlocal.lambda_api")
FUNCTIONS = "/2015-03-31/functions/"
MAPPINGS = "/2015-03-31/event-source-mappings/"


@dataclass
class LambdaControl:
    invoker: Invoker
    pollers: list[EventSourceMapping] = field(default_factory=list)

    def mapping(self, uuid: str) -> EventSourceMapping | None:
        return next((p for p in self.pollers if p.uuid == uuid), None)

    def aws_calls(self) -> dict[str, Any]:
        functions = {pool.spec.logical_id: pool.aws_call_counts() for pool in self.invoker.pools.values()}
        return {"runtime": awscalls.peek(), "functions": functions}


class LambdaApiHandler(Handler):
    server: Server

    @property
    def control(self) -> LambdaControl:
        control: LambdaControl = self.server.app
        return control

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        split = urlsplit(self.path)
        if split.path == "/_local/aws-calls":
            self._json(200, self.control.aws_calls())
        elif split.path.rstrip("/") + "/" == MAPPINGS:
            wanted = parse_qs(split.query).get("FunctionName", [None])[0]
            pool = self.control.invoker.find(wanted) if wanted else None
            if wanted and pool is None:
                self._error(404, "ResourceNotFoundException", f"Function not found: {wanted}")
                return
            items = [p.mapping() for p in self.control.pollers if pool is None or p.pool is pool]
            self._json(200, {"EventSourceMappings": items})
        elif split.path.startswith(MAPPINGS):
            poller = self.control.mapping(split.path[len(MAPPINGS):].strip("/"))
            if poller is None:
                self._error(404, "ResourceNotFoundException", "The resource you requested does not exist.")
                return
            self._json(200, poller.mapping())
        else:
            self._error(404, "UnknownOperationException", f"unknown operation GET {split.path}")

    def do_PUT(self) -> None:  # noqa: N802
        split = urlsplit(self.path)
        body = self.read_body()
        poller = self.control.mapping(split.path[len(MAPPINGS):].strip("/")) if split.path.startswith(MAPPINGS) else None
        if poller is None:
            self._error(404, "ResourceNotFoundException", "The resource you requested does not exist.")
            return
        try:
            update = json.loads(body or b"{}")
        except ValueError:
            self._error(400, "InvalidParameterValueException", "body is not JSON")
            return
        if "Enabled" in update:
            poller.set_enabled(bool(update["Enabled"]))
            log.info("event source mapping updated", extra={"uuid": poller.uuid, "enabled": bool(update["Enabled"])})
        self._json(202, poller.mapping())

    def do_POST(self) -> None:  # noqa: N802
        invoker = self.control.invoker
        body = self.read_body()
        path = self.path.split("?", 1)[0]
        if not (path.startswith(FUNCTIONS) and path.endswith("/invocations")):
            self._error(404, "UnknownOperationException", f"unknown operation POST {path}")
            return
        name = unquote(path[len(FUNCTIONS):-len("/invocations")])
        pool = invoker.find(name)
        if pool is None:
            self._error(404, "ResourceNotFoundException", f"Function not found: {name}")
            return
        try:
            event = json.loads(body) if body else {}
        except ValueError:
            self._error(400, "InvalidRequestContentException", "Could not parse request body into json")
            return
        kind = self.headers.get("X-Amz-Invocation-Type", "RequestResponse")
        if kind == "DryRun":
            self.reply(204, b"")
            return
        if kind == "Event":
            # Lambda queues the event and answers at once; retries and failure destinations follow.
            threading.Thread(target=async_invoke.invoke_async, args=(pool, event), kwargs={"trigger": "lambda:event"},
                             name=f"lambda-event:{pool.spec.name}", daemon=True).start()
            self.reply(202, b"")
            return
        result = pool.invoke(event, trigger="lambda", invoked_arn=pool.spec.arn, throttle=True)
        headers = [("X-Amz-Executed-Version", "$LATEST"), ("x-amzn-RequestId", result.request_id)]
        if result.error_type == "TooManyRequestsException":  # past the reserved concurrency: HTTP 429
            error = result.error or {}
            self.reply(429, json.dumps({"Type": "User", "message": error.get("errorMessage"),
                                        "Reason": error.get("Reason")}).encode(),
                       [("x-amzn-ErrorType", "TooManyRequestsException"), ("x-amzn-RequestId", result.request_id)])
        elif result.ok:
            self.reply(200, json.dumps(result.payload).encode(), headers)
        else:
            self.reply(200, json.dumps(result.error).encode(), headers + [("X-Amz-Function-Error", "Unhandled")])

    def _json(self, status: int, body: Any) -> None:
        self.reply(status, json.dumps(body).encode())

    def _error(self, status: int, kind: str, message: str) -> None:
        self.reply(status, json.dumps({"Type": "User", "message": message}).encode(), [("x-amzn-ErrorType", kind)])


def serve(control: LambdaControl, host: str, port: int = 0) -> Server:
    server = Server(host, port, LambdaApiHandler, control)
    server.start("lambda-api")
    return server
