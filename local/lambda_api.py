"""The Lambda Invoke API (`POST /2015-03-31/functions/{name}/invocations`) for function→function
calls: boto3's lambda client reaches it through AWS_ENDPOINT_URL_LAMBDA."""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import unquote

from .httpserver import Handler, Server
from .invoker import Invoker

log = logging.getLogger("local.lambda_api")
PREFIX = "/2015-03-31/functions/"


class LambdaApiHandler(Handler):
    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        invoker: Invoker = self.server.app
        body = self.read_body()
        path = self.path.split("?", 1)[0]
        if not (path.startswith(PREFIX) and path.endswith("/invocations")):
            self._error(404, "UnknownOperationException", f"unknown operation {path}")
            return
        name = unquote(path[len(PREFIX):-len("/invocations")])
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
            threading.Thread(target=pool.invoke, args=(event,), kwargs={"trigger": "lambda:event"},
                             daemon=True).start()
            self.reply(202, b"")
            return
        result = pool.invoke(event, trigger="lambda", invoked_arn=pool.spec.arn)
        headers = [("X-Amz-Executed-Version", "$LATEST"), ("x-amzn-RequestId", result.request_id)]
        if result.ok:
            self.reply(200, json.dumps(result.payload).encode(), headers)
        else:
            self.reply(200, json.dumps(result.error).encode(), headers + [("X-Amz-Function-Error", "Unhandled")])

    def _error(self, status: int, kind: str, message: str) -> None:
        self.reply(status, json.dumps({"Type": "User", "message": message}).encode(),
                   [("x-amzn-ErrorType", kind)])


def serve(invoker: Invoker, host: str, port: int = 0) -> Server:
    server = Server(host, port, LambdaApiHandler, invoker)
    server.start("lambda-api")
    return server
