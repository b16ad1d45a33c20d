"""mars tail on long timelines: what a frame leaves out (a long timeline's history, a change's events
the frame could not carry) is read from the HTTP API page by page — each event printed once, in order."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from mars import tail
from samlocal.httpserver import Server
from tests.unit.test_client import FakeApi, _events, serve_fake_api

Api = tuple[Server, type[FakeApi]]


@pytest.fixture
def api() -> Iterator[Api]:
    yield from serve_fake_api()


def _long(handler: type[FakeApi], n: int) -> list[dict[str, Any]]:
    events = _events(n)
    handler.timelines["m"] = [{"app_id": "shop", "message_id": "m", "events": events, "missing": [], "status": "complete"}]
    return events


def _frame(count: int, added: list[dict[str, Any]]) -> dict[str, Any]:
    """A long timeline's frame as BroadcastFunction sends it: the summary and the events a change added."""
    return {"type": "timeline", "app_id": "shop", "message_id": "m", "events": added, "new_events": added,
            "missing": [], "status": "complete", "event_count": count,
            "truncated": {"events_total": count, "events_sent": len(added)}}


def _ids(out: io.StringIO) -> list[str]:
    return [json.loads(line)["event_id"] for line in out.getvalue().splitlines()]


def test_a_long_timelines_history_is_read_in_pages_each_event_once_in_order(api: Api) -> None:
    srv, handler = api
    events = _long(handler, 2500)
    out = io.StringIO()
    printer = tail.Printer(out, as_json=True, pages=tail.api_pages(f"http://127.0.0.1:{srv.port}"))
    printer.frame(_frame(2500, []), history=True)   # a subscription's first frame: the summary only
    assert _ids(out) == [e["event_id"] for e in events]
    assert len(handler.seen) == 3   # 1,000 + 1,000 + 500

    # the next change adds one event: printed from the frame, nothing read
    events.append({"event": "DONE", "created_at": "2026-11-26T11:00:00.000000Z", "event_id": "z-last"})
    printer.frame(_frame(2501, events[-1:]))
    assert _ids(out)[-1] == "z-last" and len(_ids(out)) == 2501 and len(handler.seen) == 3


def test_a_change_with_more_events_than_its_frame_carried_is_caught_up_from_the_last_page(api: Api) -> None:
    srv, handler = api
    events = _long(handler, 1500)
    out = io.StringIO()
    printer = tail.Printer(out, as_json=True, pages=tail.api_pages(f"http://127.0.0.1:{srv.port}"))
    printer.frame(_frame(1500, []), history=True)
    before = len(handler.seen)
    events += [{"event": "MORE", "created_at": f"2026-11-26T12:00:{i:02d}.000000Z", "event_id": f"z{i:03d}"}
               for i in range(40)]
    printer.frame(_frame(1540, events[-10:]))   # the frame was trimmed to its 10 newest events
    assert _ids(out) == [e["event_id"] for e in events]
    resumed = handler.seen[before:]
    assert len(resumed) == 1 and "cursor=" in resumed[0]   # from the last page read, not from the start


def test_without_the_api_tail_says_what_it_could_not_show_and_only_then(api: Api) -> None:
    out = io.StringIO()
    printer = tail.Printer(out)
    printer.frame(_frame(2500, []), history=True)
    assert "2500 event(s) of m not in the live frame; pass --api-url" in out.getvalue()
    out.truncate(0)
    out.seek(0)
    added = [{"event": "DONE", "created_at": "2026-11-26T11:00:00.000000Z", "event_id": "z-last"}]
    printer.frame(_frame(2501, added))   # carries everything the change added: one line, no note
    assert len(out.getvalue().splitlines()) == 1 and "DONE" in out.getvalue()
    printer.frame(_frame(2600, []))
    assert "99 event(s) of m not in the live frame" in out.getvalue()


@pytest.fixture
def socket_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A websocket answering a subscription as WebSocketFunction does for a long timeline."""
    frames: list[dict[str, Any]] = []

    def handler(ws: ServerConnection) -> None:
        request = json.loads(ws.recv())
        ws.send(json.dumps({"type": "subscribed", "app_id": request["app_id"], "message_id": request["message_id"]}))
        for frame in frames:
            ws.send(json.dumps(frame))
        ws.recv()   # until the client goes

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}", frames
        server.shutdown()


def test_run_prints_a_long_timeline_whole_then_fails_clearly_when_the_api_refuses(
        api: Api, socket_url: tuple[str, list[dict[str, Any]]]) -> None:
    srv, handler = api
    events = _long(handler, 1200)
    url, frames = socket_url
    frames.append(_frame(1200, []))
    out, err = io.StringIO(), io.StringIO()
    code = tail.run(url, "shop", "m", out=out, err=err, as_json=True, api_url=f"http://127.0.0.1:{srv.port}",
                    stop=lambda: len(out.getvalue().splitlines()) >= 1200)
    assert code == 0 and _ids(out) == [e["event_id"] for e in events]

    handler.failures[:] = [403]
    out, err = io.StringIO(), io.StringIO()
    code = tail.run(url, "shop", "m", out=out, err=err, api_url=f"http://127.0.0.1:{srv.port}")
    assert code == 1 and "reading the timeline from http://127.0.0.1" in err.getvalue() and "HTTP 403" in err.getvalue()


ALERT = {"type": "alert", "alert_id": "a1", "app_id": "shop", "message_id": "m",
         "rule": {"kind": "deadline", "step": "SHIPPED", "after": "PAID"}, "state": "firing",
         "fired_at": "2026-11-30T10:00:05.000000Z", "resolved_at": None,
         "timeline_url": "http://127.0.0.1:4000/search/event?message_id=m&app_id=shop"}


def test_tail_alerts_prints_only_the_alert_frames(socket_url: tuple[str, list[dict[str, Any]]]) -> None:
    url, frames = socket_url
    event = {"event_id": "e1", "event": "PAID", "created_at": "2026-11-30T10:00:00.000000Z"}
    frames.extend([{"type": "timeline", "app_id": "shop", "message_id": "m", "events": [event], "new_events": [event],
                    "missing": ["SHIPPED"], "status": "in_progress"},
                   ALERT, {**ALERT, "state": "resolved", "resolved_at": "2026-11-30T10:00:09.000000Z"}])
    out, err = io.StringIO(), io.StringIO()
    code = tail.run(url, "shop", "m", out=out, err=err, alerts_only=True, stop=lambda: len(out.getvalue().splitlines()) >= 2)
    lines = out.getvalue().splitlines()
    assert code == 0 and len(lines) == 2 and "the alerts of message m" in err.getvalue()
    assert "FIRING  deadline: SHIPPED not within its deadline after PAID" in lines[0] and "10:00:05.000" in lines[0]
    assert "RESOLVED" in lines[1] and "10:00:09.000" in lines[1] and "PAID" not in lines[1].split("deadline:")[0]
    out = io.StringIO()
    tail.run(url, "shop", "m", out=out, err=io.StringIO(), as_json=True,  # without --alerts: events and alerts
             stop=lambda: len(out.getvalue().splitlines()) >= 3)
    assert [json.loads(line).get("type", "event") for line in out.getvalue().splitlines()] == ["event", "alert", "alert"]
