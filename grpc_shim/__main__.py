"""`python -m grpc_shim [--host 127.0.0.1] [--port 4025]` — the container's entrypoint and `make up`'s."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys

from grpc_shim.server import serve


class _Json(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = {k: v for k, v in vars(record).items() if k in ("host", "port", "error")}
        return json.dumps({"level": record.levelname, "logger": record.name, "msg": record.getMessage(), **extra})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m grpc_shim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default; 0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=4025)
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Json())
    logging.basicConfig(level=logging.INFO, handlers=[handler])

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(args.host, args.port, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
