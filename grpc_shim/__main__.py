"""`python -m grpc_shim [--host 127.0.0.1] [--port 4025]` — the container's entrypoint and `make up`'s."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys

from grpc_shim.server import serve

_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}
        out = {"level": record.levelname, "logger": record.name, "msg": record.getMessage(), **extra}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


async def _watch(pid: int, stop: asyncio.Event) -> None:
    """Locally the shim must not outlive `mars up` (e.g. after a SIGKILL)."""
    while not stop.is_set():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()
            return
        except PermissionError:
            pass
        await asyncio.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpc_shim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=4025)
    parser.add_argument("--parent-pid", type=int, help="stop when this process is gone (`mars up`, locally)")
    parser.add_argument("--strict-created-at", action="store_true",
                        help="collectEvent refuses a created_at that is not a timestamp (default: Mars's behaviour, "
                             "the time received; env GRPC_STRICT_CREATED_AT=true)")
    args = parser.parse_args(argv)
    if args.strict_created_at:
        os.environ["GRPC_STRICT_CREATED_AT"] = "true"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.parent_pid:
            loop.create_task(_watch(args.parent_pid, stop))
        await serve(args.host, args.port, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
