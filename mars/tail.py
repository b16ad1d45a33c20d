"""`mars tail --app A [--message M]`: a terminal live tail over the websocket.

One line per new event (time, message, event, the delay since the message's previous event, the
status) and, as the lifecycle advances, the steps still missing. Reconnects with backoff and
re-subscribes; a message subscription's first frame (the current timeline) prints as history.

A long timeline's frames carry its summary and only the events a change added (`event_count` the
total, `truncated` what was left out): tail reads what a frame did not carry from the HTTP API
(`--api-url`, default the stack's ApiUrl) page by page, following each `cursor` until the last, so
every event prints once, in order. Without the API it says how many events it could not show.

Alert frames (docs/ALERTS.md: a rule firing or resolving) print as `⚑` lines; `--alerts` prints only them.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Callable, Iterator
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


# (app_id, message_id, cursor) -> that timeline's pages from the one after `cursor` (None: the first)
PageReader = Callable[[str, str, str | None], Iterator[dict[str, Any]]]


class Printer:
    """Turns timeline frames into lines; remembers what it printed so a re-sent frame prints nothing.
    With `pages` it reads from the API what a frame left out (a long timeline's history, a trimmed frame)."""

    def __init__(self, out: TextIO, as_json: bool = False, pages: PageReader | None = None) -> None:
        self.out, self.as_json, self.pages = out, as_json, pages
        self.seen: set[tuple[str, str, str]] = set()
        self.missing: dict[tuple[str, str], list[str]] = {}
        self.counts: dict[tuple[str, str], int] = {}              # a long timeline's event_count, as last known
        self.resume: dict[tuple[str, str], str | None] = {}       # the cursor of the last page read
        self.last: dict[tuple[str, str], str] = {}                # created_at of the last event printed

    def alert(self, alert: dict[str, Any]) -> None:
        """One line per alert transition (a redelivered one prints again: its alert_id and state say so)."""
        if self.as_json:
            self.out.write(json.dumps(alert) + "\n")
        else:
            rule = alert.get("rule") or {}
            what = {"deadline": f"{rule.get('step')} not within its deadline after {rule.get('after')}",
                    "sla": "no event for longer than the SLA", "failure": f"failure step {rule.get('step')}"}
            at = (alert.get("resolved_at") if alert.get("state") == "resolved" else alert.get("fired_at")) or ""
            self.out.write(f"⚑ {at[11:23]}  {alert.get('app_id')}  {alert.get('message_id')}  "
                           f"{str(alert.get('state')).upper()}  {rule.get('kind')}: "
                           f"{what.get(str(rule.get('kind')), '')}  {alert.get('timeline_url', '')}\n")
        self.out.flush()

    def frame(self, frame: dict[str, Any], *, history: bool = False) -> None:
        key = (frame["app_id"], frame["message_id"])
        events = frame.get("events", [])
        fresh = events if history else frame.get("new_events", [])
        left_out = self._left_out(key, frame, history, len(fresh))
        if left_out and self.pages is not None:
            self._catch_up(key, frame, history)
            left_out = 0
        by_id = {e["event_id"]: i for i, e in enumerate(events)}
        for event in fresh:
            index = by_id.get(event["event_id"], 0)
            # a long timeline's frame starts after events printed before; a short one's first event has none
            previous = events[index - 1]["created_at"] if index > 0 else self.last.get(key) if "event_count" in frame else None
            self._event(key, frame, event, previous, history)
        if "event_count" in frame:
            self.counts[key] = max(self.counts.get(key, 0), int(frame["event_count"]))
        if self.missing.get(key) != frame.get("missing") and frame.get("missing") is not None:
            self.missing[key] = list(frame["missing"])
            if frame["missing"] and not self.as_json:
                self.out.write(f"{'':12}  {frame['message_id']}  missing: {', '.join(frame['missing'])}\n")
        if left_out and not self.as_json:
            self.out.write(f"{'':12}  ({left_out} event(s) of {frame['message_id']} not in the live frame; "
                           f"pass --api-url to read them, or page `…/api/messages/{frame['message_id']}"
                           f"?app_id={frame['app_id']}`)\n")
        self.out.flush()

    def _left_out(self, key: tuple[str, str], frame: dict[str, Any], history: bool, carried: int) -> int:
        """How many events this frame should have shown but does not carry (0: none)."""
        truncated = frame.get("truncated")
        if history or "event_count" not in frame:  # the whole timeline was due: what the trim left out
            return int(truncated["events_total"]) - int(truncated["events_sent"]) if truncated else 0
        if key not in self.counts:  # the first frame of a long timeline seen live: its past is not due
            return 0
        # a long timeline's frame carries the events its change added: fewer than the count grew = left out
        return max(0, int(frame["event_count"]) - self.counts[key] - carried)

    def _catch_up(self, key: tuple[str, str], frame: dict[str, Any], history: bool) -> None:
        """Prints, in order, the events not printed yet, reading pages from where the last read ended."""
        assert self.pages is not None
        cursor = self.resume.get(key)
        for page in self.pages(key[0], key[1], cursor):
            for event in page.get("events", []):
                self._event(key, {**frame, **page}, event, self.last.get(key), history)
            if "event_count" in page:
                self.counts[key] = int(page["event_count"])
            if page.get("cursor") is None:
                break
            cursor = page["cursor"]
        self.resume[key] = cursor  # the last page is read again next time: events may join it meanwhile

    def _event(self, key: tuple[str, str], frame: dict[str, Any], event: dict[str, Any], previous: str | None,
               history: bool) -> None:
        ident = (*key, event["event_id"])
        if ident in self.seen:
            return
        self.seen.add(ident)
        self._line(frame, event, _delay(previous, event["created_at"]), history)
        self.last[key] = event["created_at"]

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


def api_pages(api_url: str, api_key: str | None = None) -> PageReader:
    """Pages of a timeline from Mars's HTTP API, through the client library (its retries and errors)."""
    from mars.client import MarsClient

    client = MarsClient.http(api_url, api_key)

    def pages(app_id: str, message_id: str, cursor: str | None) -> Iterator[dict[str, Any]]:
        if cursor is None:  # the first page, or a short timeline whole (it has no cursor)
            (first,) = client.get_message_page(message_id, app_id)["timelines"]
            yield first
            cursor = first.get("cursor")
            if cursor is None:
                return
        yield from client.iter_pages(message_id, app_id, cursor=cursor)

    return pages


def run(url: str, app_id: str, message_id: str | None, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        as_json: bool = False, stop: Callable[[], bool] = lambda: False, max_backoff: float = 30.0,
        api_key: str | None = None, api_url: str | None = None, alerts_only: bool = False) -> int:
    """Tails until `stop()` or Ctrl-C; returns an exit code (1: the server refused the subscription, or
    the HTTP API refused a read)."""
    from mars.client import MarsError

    printer = Printer(out, as_json, api_pages(api_url, api_key) if api_url else None)
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
                        what = f"the alerts of {what}" if alerts_only else what
                        err.write(f"mars tail: live on {url} - {what} (Ctrl-C stops)\n")
                    elif kind == "timeline" and not alerts_only:
                        printer.frame(frame, history=first and message_id is not None)
                        first = False
                    elif kind == "alert":
                        printer.alert(frame)
                    elif kind == "error":
                        raise SubscriptionError(f"{frame.get('code')}: {frame.get('message')} {frame.get('details') or ''}")
        except SubscriptionError as exc:
            err.write(f"mars tail: the server refused the subscription - {exc}\n")
            return 1
        except MarsError as exc:  # retried already where retrying made sense (the client's policy)
            err.write(f"mars tail: reading the timeline from {api_url} failed - {exc}\n")
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
