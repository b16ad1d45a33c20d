"""`mars tail --app A [--message M]`: a terminal live tail over the websocket.

One line per new event (time, message, event, the delay since the message's previous event, the
status) and, as the lifecycle advances, the steps still missing. Reconnects with backoff and
re-subscribes; a message subscription's first frame (the current timeline) prints as history.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, TextIO

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

STATUS_MARK = {"complete": "✔ complete", "in_progress": "… in_progress", "stuck": "⚠ stuck", "unknown": "? unknown"}


class SubscriptionError(Exception):
    """The server refused the subscription (an `error` frame): retrying would not help."""


def _ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def _delay(previous: str | None, current: str) -> str:
    a, b = _ts(previous), _ts(current)
    if a is None or b is None:
        return ""
    seconds = (b - a).total_seconds()
    return f"+{seconds:.3f}s" if abs(seconds) < 120 else f"+{seconds / 60:.1f}m"


class Printer:
    """Turns timeline frames into lines; remembers what it printed so a re-sent frame prints nothing."""

    def __init__(self, out: TextIO, as_json: bool = False) -> None:
        self.out, self.as_json = out, as_json
        self.seen: set[tuple[str, str, str]] = set()
        self.missing: dict[tuple[str, str], list[str]] = {}

    def frame(self, frame: dict[str, Any], *, history: bool = False) -> None:
        key = (frame["app_id"], frame["message_id"])
        events = frame.get("events", [])
        fresh = events if history else frame.get("new_events", [])
        by_id = {e["event_id"]: i for i, e in enumerate(events)}
        for event in fresh:
            ident = (*key, event["event_id"])
            if ident in self.seen:
                continue
            self.seen.add(ident)
            index = by_id.get(event["event_id"], 0)
            previous = events[index - 1]["created_at"] if index > 0 else None
            self._line(frame, event, _delay(previous, event["created_at"]), history)
        if self.missing.get(key) != frame.get("missing") and frame.get("missing") is not None:
            self.missing[key] = list(frame["missing"])
            if frame["missing"] and not self.as_json:
                self.out.write(f"{'':12}  {frame['message_id']}  missing: {', '.join(frame['missing'])}\n")
        if frame.get("truncated") and not self.as_json:
            t = frame["truncated"]
            self.out.write(f"{'':12}  (timeline trimmed: {t['events_sent']} of {t['events_total']} events sent; "
                           f"`curl …/api/messages/{frame['message_id']}?app_id={frame['app_id']}` has them all)\n")
        self.out.flush()

    def _line(self, frame: dict[str, Any], event: dict[str, Any], delay: str, history: bool) -> None:
        if self.as_json:
            self.out.write(json.dumps({"app_id": frame["app_id"], "message_id": frame["message_id"], **event,
                                       "status": frame.get("status"), "missing": frame.get("missing", []),
                                       "history": history}) + "\n")
            return
        created = event["created_at"][11:23]
        status = STATUS_MARK.get(frame.get("status", ""), frame.get("status", ""))
        mark = "·" if history else "▶"
        test = " [test]" if frame.get("test") else ""
        self.out.write(f"{mark} {created}  {frame['app_id']}  {frame['message_id']}  {event['event']}{test}  "
                       f"{delay:>10}  {status}\n")


def run(url: str, app_id: str, message_id: str | None, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        as_json: bool = False, stop: Callable[[], bool] = lambda: False, max_backoff: float = 30.0,
        api_key: str | None = None) -> int:
    """Tails until `stop()` or Ctrl-C; returns an exit code (1: the server refused the subscription)."""
    printer = Printer(out, as_json)
    request = {"action": "subscribe", "app_id": app_id, **({"message_id": message_id} if message_id else {})}
    target = url + (("&" if "?" in url else "?") + f"api_key={api_key}" if api_key else "")
    backoff = 1.0
    while not stop():
        try:
            with connect(target, open_timeout=10, max_size=2 ** 20) as ws:
                ws.send(json.dumps(request))
                first = True
                while not stop():
                    try:
                        raw = ws.recv(timeout=1)
                    except TimeoutError:
                        continue
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "subscribed":
                        backoff = 1.0
                        what = f"message {message_id} of app {app_id}" if message_id else f"every message of app {app_id}"
                        err.write(f"mars tail: live on {url} - {what} (Ctrl-C stops)\n")
                    elif kind == "timeline":
                        printer.frame(frame, history=first and message_id is not None)
                        first = False
                    elif kind == "error":
                        raise SubscriptionError(f"{frame.get('code')}: {frame.get('message')} {frame.get('details') or ''}")
        except SubscriptionError as exc:
            err.write(f"mars tail: the server refused the subscription - {exc}\n")
            return 1
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                err.write(f"mars tail: {url} refused the connection ({status}); pass --api-key\n")
                return 1
            err.write(f"mars tail: {url} answered {status}; retrying in {backoff:.0f}s\n")
        except (OSError, ConnectionClosed, InvalidHandshake, TimeoutError) as exc:
            err.write(f"mars tail: disconnected ({type(exc).__name__}); reconnecting in {backoff:.0f}s\n")
        if stop():
            break
        time.sleep(backoff * random.uniform(0.8, 1.2))
        backoff = min(backoff * 2, max_backoff)
    return 0
