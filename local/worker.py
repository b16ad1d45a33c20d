"""One Lambda execution environment: a process that imports a handler once and serves invocations.

It runs in its own process, so each function has its own environment variables, modules and
timeout, as in Lambda; the parent kills it when an invocation overruns the function's timeout.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any

from . import awscalls


class LambdaContext:
    """The attributes and method handlers use from Lambda's context object."""

    def __init__(self, spec: dict[str, Any], request_id: str, deadline_ms: int, invoked_arn: str) -> None:
        self.function_name = spec["name"]
        self.function_version = "$LATEST"
        self.invoked_function_arn = invoked_arn or spec["arn"]
        self.memory_limit_in_mb = str(spec["memory_mb"])
        self.aws_request_id = request_id
        self.log_group_name = f"/aws/lambda/{spec['name']}"
        self.log_stream_name = f"local/[$LATEST]{os.getpid()}"
        self.identity = None
        self.client_context = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int(self._deadline_ms - time.time() * 1000))


def _load(spec: dict[str, Any]) -> Any:
    awscalls.install()
    os.environ.clear()
    os.environ.update(spec["environment"])
    for path in reversed([spec["code_dir"], *spec["layer_dirs"]]):
        sys.path.insert(0, path)
    os.chdir(spec["code_dir"])
    module_name, _, attr = spec["handler"].rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _error(exc: BaseException) -> dict[str, Any]:
    return {"errorMessage": str(exc), "errorType": type(exc).__name__,
            "stackTrace": traceback.format_tb(exc.__traceback__)}


def main(conn: Connection, spec: dict[str, Any]) -> None:
    # Ctrl-C reaches the whole process group; the runtime, not the terminal, ends environments.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handler = _load(spec)
    except BaseException as exc:  # an init error is reported on every invocation, like Lambda's
        init_error: dict[str, Any] | None = _error(exc)
        handler = None
    else:
        init_error = None
    conn.send_bytes(json.dumps(["ready", init_error]).encode())
    while True:
        try:
            msg = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if msg is None:
            return
        request_id, event, deadline_ms, invoked_arn = msg
        if init_error is not None:
            conn.send_bytes(json.dumps(["error", init_error, {}]).encode())
            continue
        try:
            reply = ["ok", handler(event, LambdaContext(spec, request_id, deadline_ms, invoked_arn)), awscalls.take()]
        except BaseException as exc:
            reply = ["error", _error(exc), awscalls.take()]
        try:
            data = json.dumps(reply)
        except (TypeError, ValueError) as exc:
            # Lambda serialises the result as JSON: a handler returning something else fails there too.
            data = json.dumps(["error", _error(exc), reply[2]])
        conn.send_bytes(data.encode())
        sys.stdout.flush()
