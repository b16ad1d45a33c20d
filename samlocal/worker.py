"""One Lambda execution environment: a process that imports a handler once and serves invocations.

It runs in its own process, so each function has its own environment variables, modules and
timeout, as in Lambda; the parent kills it when an invocation overruns the function's timeout.
"""

from __future__ import annotations

import decimal
import importlib
import importlib.abc
import importlib.machinery
import json
import math
import os
import resource
import signal
import sys
import threading
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


class FaultError(Exception):
    """An error the Python runtime itself reports (its FaultException): `Runtime.*` types, no stack
    trace of the handler's."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type, self.trace = error_type, trace or []


class DeclaredOnly(importlib.abc.MetaPathFinder):
    """Refuses top-level modules a deployed function would not have: the environment runs in the
    project's venv, where everything is installed, but a deployed function has only the standard
    library, its own code and layers, the runtime's boto3, and what its requirements.txt declare.
    Modules the environment imported before the handler (boto3's) are never looked up again."""

    def __init__(self, importable: list[str], own_dirs: list[str]) -> None:
        self.importable = frozenset(importable)
        self.own_dirs = own_dirs

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if "." in fullname or fullname in self.importable or fullname in sys.stdlib_module_names \
                or fullname in sys.builtin_module_names:
            return None
        if importlib.machinery.PathFinder.find_spec(fullname, self.own_dirs) is not None:
            return None  # the function's code or a layer's
        raise ModuleNotFoundError(f"No module named '{fullname}'", name=fullname)


class LogCopy:
    """A stream that also appends each complete line to the stack's log. One os.write per batch of
    whole lines on an O_APPEND descriptor: the lines of concurrent environments never interleave."""

    def __init__(self, stream: Any, path: str) -> None:
        self.stream = stream
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.pending = ""
        self.lock = threading.Lock()  # handlers may print from their own threads

    def write(self, text: str) -> int:
        self.stream.write(text)
        with self.lock:
            self.pending += text
            if "\n" in self.pending:
                lines, _, self.pending = self.pending.rpartition("\n")
                os.write(self.fd, (lines + "\n").encode("utf-8", "replace"))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, encoding, isatty… are the stream's
        return getattr(self.stream, name)


def _load(spec: dict[str, Any]) -> Any:
    awscalls.install()
    if spec.get("log_file"):  # before the handler's module makes its loggers (they keep sys.stdout)
        sys.stdout = LogCopy(sys.stdout, spec["log_file"])
        sys.stderr = LogCopy(sys.stderr, spec["log_file"])
    os.environ.clear()
    os.environ.update(spec["environment"])
    own_dirs = [spec["code_dir"], *spec["layer_dirs"]]
    for path in reversed(own_dirs):
        sys.path.insert(0, path)
    if spec.get("importable") is not None:
        sys.meta_path.insert(0, DeclaredOnly(spec["importable"], own_dirs))
    os.chdir(spec["code_dir"])
    return _get_handler(spec["handler"])


def _get_handler(handler: str) -> Any:
    """The handler, or the error Lambda's Python runtime (awslambdaric's bootstrap) reports for it."""
    try:
        module_name, attr = handler.rsplit(".", 1)
    except ValueError as exc:
        raise FaultError("Runtime.MalformedHandlerName", f"Bad handler '{handler}': {exc}") from None
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        raise FaultError("Runtime.ImportModuleError", f"Unable to import module '{module_name}': {exc}") from None
    except SyntaxError as exc:
        trace = [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}']
        raise FaultError("Runtime.UserCodeSyntaxError", f"Syntax error in module '{module_name}': {exc}", trace) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise FaultError("Runtime.HandlerNotFound", f"Handler '{attr}' missing on module '{module_name}'") from None


def _error(exc: BaseException, request_id: str = "") -> dict[str, Any]:
    """Lambda's error shape. The stack trace is the handler's: the runtime's own leading frames (this
    file's, as Lambda drops bootstrap.py's) are left out, each frame one string (traceback.format_list)."""
    if isinstance(exc, FaultError):
        return {"errorMessage": str(exc), "errorType": exc.error_type, "requestId": request_id, "stackTrace": exc.trace}
    frames = traceback.extract_tb(exc.__traceback__)
    while frames and frames[0].filename == __file__:
        frames.pop(0)
    return {"errorMessage": str(exc), "errorType": type(exc).__name__, "requestId": request_id,
            "stackTrace": traceback.format_list(frames)}


def _decimal(value: Any) -> Any:
    """Lambda's runtime writes a Decimal as a JSON number (its text, NaN as NaN): a handler may return
    what boto3's DynamoDB resource gave it. The parent decodes the number as the caller would."""
    if isinstance(value, decimal.Decimal):
        return math.nan if value.is_nan() else json.loads(str(value))
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _reply(kind: str, body: Any, calls: Any, request_id: str) -> bytes:
    # The environment's peak memory goes with every answer (one getrusage, ~1 µs): the invoker holds
    # it to the function's MemorySize without reading /proc on each invocation.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    try:
        return json.dumps([kind, body, calls, peak], default=_decimal).encode()
    except (TypeError, ValueError) as exc:
        # What Lambda answers for a result it cannot serialise (awslambdaric's marshal_response).
        error = {"errorMessage": f"Unable to marshal response: {exc}", "errorType": "Runtime.MarshalError",
                 "requestId": request_id, "stackTrace": []}
        return json.dumps(["error", error, calls, peak]).encode()


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
            reply = _reply("ok", handler(event, LambdaContext(spec, request_id, deadline_ms, invoked_arn)),
                           awscalls.take(), request_id)
        except BaseException as exc:
            reply = _reply("error", _error(exc, request_id), awscalls.take(), request_id)
        conn.send_bytes(reply)
        sys.stdout.flush()
