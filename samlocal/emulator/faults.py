"""Fault injection: the emulator fails a fraction of one API's calls, as a throttled service does."""

from __future__ import annotations

import json
import random
import threading
from typing import Any


class ErrorInjection:
    """Fails a fraction of one API's calls with an AWS error, as a throttled or failing service does
    (`Target=rate:ErrorCode`, e.g. `DynamoDB_20120810.UpdateItem=0.05:ProvisionedThroughputExceededException`:
    the `X-Amz-Target` of JSON-protocol calls). `GET /_local/faults` counts calls and injected errors."""

    def __init__(self, app: Any, specs: list[str], seed: int | None = None) -> None:
        self.app = app
        self.rules: dict[str, tuple[float, str]] = {}
        for spec in specs:
            target, _, rest = spec.partition("=")
            rate, _, code = rest.partition(":")
            if not target or not code or not 0 <= float(rate) <= 1:
                raise ValueError(f"bad emulator fault {spec!r}: use Target=rate:ErrorCode")
            self.rules[target] = (float(rate), code)
        self.random = random.Random(seed)
        self.counts: dict[str, dict[str, int]] = {t: {"calls": 0, "injected": 0} for t in self.rules}
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == "/_local/faults":
            with self._lock:
                body = json.dumps(self.counts).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        rule = self.rules.get(environ.get("HTTP_X_AMZ_TARGET", ""))
        if rule is not None:
            target = environ["HTTP_X_AMZ_TARGET"]
            with self._lock:
                self.counts[target]["calls"] += 1
                inject = self.random.random() < rule[0]
                if inject:
                    self.counts[target]["injected"] += 1
            if inject:
                code = rule[1]
                status = "503 Service Unavailable" if "Unavailable" in code else (
                    "500 Internal Server Error" if "Internal" in code else "400 Bad Request")
                body = json.dumps({"__type": code, "message": f"injected by the emulator ({target})"}).encode()
                environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))  # keep the connection usable
                start_response(status, [("Content-Type", "application/x-amz-json-1.0"), ("x-amzn-ErrorType", code),
                                        ("Content-Length", str(len(body)))])
                return [body]
        return self.app(environ, start_response)


