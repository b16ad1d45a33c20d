"""Structured JSON log lines for the runtime (one object per line, on stderr)."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def copy_lines(stream: IO[bytes], path: Path) -> None:
    """Copies a child process's output, line by line, to this process's stdout and appends it to `path`
    (one write per line, O_APPEND: lines never interleave with other writers'); returns at its end."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        for line in iter(stream.readline, b""):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            os.write(fd, line if line.endswith(b"\n") else line + b"\n")
    finally:
        os.close(fd)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    install_excepthooks()


def install_excepthooks() -> None:
    """An exception nobody caught (in any thread) is one structured ERROR line, never a raw traceback."""
    crash = logging.getLogger("samlocal.crash")

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        crash.error("uncaught exception in a thread",
                    exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
                    extra={"thread": args.thread.name if args.thread else None, "error_type": args.exc_type.__name__})

    def process_hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            return
        crash.error("uncaught exception", exc_info=(exc_type, exc, tb), extra={"error_type": exc_type.__name__})

    threading.excepthook = thread_hook
    sys.excepthook = process_hook
