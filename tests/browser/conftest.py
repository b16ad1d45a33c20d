"""Browser fixtures: Debian's headless Chromium driven by Playwright, and a fake Mars for the page alone.

Chromium is the system package (`make system-deps` installs it): no `playwright install`, no download.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "functions" / "api" / "dashboard"
SHOTS = ROOT / "build" / "browser"
CHROMIUM = os.environ.get("MARS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 375, "height": 740}
FAKE_ORIGIN = "http://mars.test"
FAKE_WS = "ws://mars.test/ws"
# The policy ApiFunction serves the page with (connect-src: itself and its own websocket URL only): the
# page must work under it (no inline script or style).
CSP = (f"default-src 'self'; connect-src 'self' {FAKE_WS}; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "base-uri 'self'; frame-ancestors 'none'")
PAGE_LIMIT = 1000   # events a page of a long timeline, as GET /api/messages/{id}
CONTENT_TYPES = {".js": "application/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One Chromium per test module (not per session: sync Playwright's event loop must not outlive
    the browser tests into modules that run asyncio themselves)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: run `make system-deps` (apt-get install chromium) or set MARS_CHROMIUM")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """new_page(viewport=...) -> a page in its own context (own localStorage); uncaught script errors and
    CSP violations fail the test."""
    contexts: list[Any] = []
    errors: list[str] = []

    def make(viewport: dict[str, int] | None = None) -> Any:
        context = browser.new_context(viewport=viewport or LAPTOP, reduced_motion="no-preference")
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # the page must work under the Content-Security-Policy it is served with (no inline script/style)
        page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def screenshot(page: Any, name: str, full_page: bool = True) -> Path:
    """build/browser/<name>.png; full_page=False for a page thousands of rows long (seconds to capture whole)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


class FakeMars:
    """Mars's side of the dashboard inside the test: index.html with its base path filled in, the static
    files, the JSON routes (from the dicts below) and a websocket that answers like BroadcastFunction's
    routes. The page cannot tell it from a stack; the test can push frames and break things at will."""

    def __init__(self, page: Any, base: str = "/dev/") -> None:
        self.page = page
        self.base = base
        self.config: dict[str, Any] = {"websocket_url": FAKE_WS, "stage": "dev", "auth_required": False}
        self.messages: dict[str, list[dict[str, Any]]] = {}     # message_id -> timelines
        self.lifecycles: dict[str, dict[str, Any]] = {}         # app_id -> lifecycle
        self.app_items: dict[str, list[dict[str, Any]]] = {}    # app_id -> items, newest first
        self.alerts: dict[str, list[dict[str, Any]]] = {}       # app_id -> alerts, newest first
        self.funnels: dict[str, dict[str, Any]] = {}            # app_id -> GET api/apps/{app}/funnel's body
        self.stats: dict[str, Any] = {
            "queues": [{"name": f"mars-EventsQueue{i}-X1.fifo", "visible": 0, "in_flight": 0, "oldest_age_seconds": None}
                       for i in range(10)],
            "dead_letter": [{"name": "mars-DeadLetterQueue-X1.fifo", "visible": 0, "in_flight": 0, "oldest_age_seconds": None}],
            "event_collector_q": 0}
        self.overrides: dict[str, tuple[int, Any] | str] = {}  # "api/..." -> (status, body) or "abort"
        self.requests: list[dict[str, Any]] = []
        self.sockets: list[Any] = []
        self.ws_urls: list[str] = []
        self.received: list[dict[str, Any]] = []
        page.route(f"{FAKE_ORIGIN}/**", self._http)
        page.route_web_socket(re.compile(r"^ws://mars\.test/ws.*"), self._ws)

    def url(self, rel: str = "") -> str:
        return FAKE_ORIGIN + self.base + rel

    # ------------------------------------------------------------ HTTP

    def _http(self, route: Any) -> None:
        request = route.request
        parts = urlsplit(request.url)
        path = parts.path
        rel = path[len(self.base):] if path.startswith(self.base) else None
        self.requests.append({"method": request.method, "path": path, "query": parse_qs(parts.query),
                              "headers": dict(request.headers), "rel": rel})
        if rel is None:
            route.fulfill(status=404, body="outside the base path")
        elif rel == "" or rel == "search/event" or rel.startswith("apps/"):
            html = (DASHBOARD / "index.html").read_text().replace("{{BASE}}", self.base)
            route.fulfill(status=200, body=html, content_type="text/html; charset=utf-8", headers={"Content-Security-Policy": CSP})
        elif rel.startswith("static/"):
            name = rel[len("static/"):]
            file = DASHBOARD / name
            if not re.fullmatch(r"[a-z0-9_-]+\.(js|css|svg)", name) or not file.exists():
                route.fulfill(status=404, body="no such file")
            else:
                route.fulfill(status=200, body=file.read_text(), content_type=CONTENT_TYPES[file.suffix])
        elif rel.startswith("api/"):
            override = self.overrides.get(rel.split("?")[0])
            if override == "abort":
                route.abort("connectionrefused")
                return
            status, body = override if override else self._api(request.method, rel, parse_qs(parts.query))
            route.fulfill(status=status, body=json.dumps(body), content_type="application/json")
        else:
            route.fulfill(status=404, body=json.dumps({"message": "Missing Authentication Token"}))

    def _api(self, method: str, rel: str, query: dict[str, list[str]]) -> tuple[int, Any]:
        def q(name: str) -> str | None:
            return query.get(name, [None])[0]

        if rel == "api/config":
            return 200, self.config
        if rel == "api/q/stats":
            return 200, self.stats
        if m := re.fullmatch(r"api/apps/([^/]+)/lifecycle", rel):
            app_id = unquote(m.group(1))
            if app_id in self.lifecycles:
                return 200, {"app_id": app_id, **self.lifecycles[app_id]}
            return 404, _error("NOT_FOUND", f"app {app_id!r} declares no lifecycle; PUT one first")
        if m := re.fullmatch(r"api/apps/([^/]+)/funnel", rel):
            app_id = unquote(m.group(1))
            if app_id in self.funnels:
                return 200, self.funnels[app_id]
            return 404, _error("NOT_FOUND", f"app {app_id!r} declares no lifecycle, so it has no funnel; PUT one first")
        if m := re.fullmatch(r"api/messages/(.+)", rel):
            message_id = unquote(m.group(1))
            timelines = [t for t in self.messages.get(message_id, []) if q("app_id") in (None, t["app_id"])]
            if not timelines:
                return 404, _error("NOT_FOUND", f"no events for message_id {message_id!r}")
            if q("cursor") and not q("app_id"):
                return 400, _error("VALIDATION_ERROR", "cursor needs app_id (a cursor pages one app's timeline)")
            return 200, {"message_id": message_id, "timelines": [self._page(t, q("limit"), q("cursor")) for t in timelines]}
        if rel == "api/alerts":
            return 200, {"items": self.alerts.get(q("app_id") or "", [])[:int(q("limit") or 20)], "cursor": None}
        if rel == "api/messages":
            items = self.app_items.get(q("app_id") or "", [])
            if q("event"):  # the search filters the app view sends (docs/SEARCH.md), on the fake's own data
                items = [t for t in items if any(e["event"] == q("event") for e in t.get("events", []))]
            if q("missing"):
                items = [t for t in items if q("missing") in t.get("missing", [])]
            start, limit = int(q("cursor") or 0), int(q("limit") or 20)
            page = [{k: v for k, v in t.items() if k != "events"} for t in items[start:start + limit]]
            cursor = str(start + limit) if start + limit < len(items) else None
            return 200, {"items": page, "cursor": cursor}
        return 404, _error("NOT_FOUND", "no such route")

    def _page(self, timeline: dict[str, Any], limit: str | None, cursor: str | None) -> dict[str, Any]:
        """A long timeline (one with `event_count`) in pages as the API gives them: sorted by created_at
        then event_id, at most PAGE_LIMIT a page, an opaque cursor (here: the key the page ended at)."""
        if "event_count" not in timeline and limit is None and cursor is None:
            return timeline
        events = sorted(timeline["events"], key=lambda e: (e["created_at"], e["event_id"]))
        after = [e for e in events if cursor is None or (e["created_at"], e["event_id"]) > tuple(json.loads(cursor))]
        size = min(int(limit or PAGE_LIMIT), PAGE_LIMIT)
        page = after[:size]
        more = len(after) > size
        return {**timeline, "events": page, "event_count": len(events),
                "cursor": json.dumps([page[-1]["created_at"], page[-1]["event_id"]]) if more else None}

    def api_requests(self, rel_prefix: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if (r["rel"] or "").startswith(rel_prefix)]

    # ------------------------------------------------------------ websocket

    def _ws(self, ws: Any) -> None:
        self.sockets.append(ws)
        self.ws_urls.append(ws.url)
        ws.on_message(lambda message: self._on_frame(ws, message))

    def _on_frame(self, ws: Any, message: str | bytes) -> None:
        frame = json.loads(message)
        frame["_socket"] = len(self.sockets) - 1 if ws is self.sockets[-1] else self.sockets.index(ws)
        self.received.append(frame)
        action = frame.get("action")
        if action == "ping":
            ws.send(json.dumps({"type": "pong"}))
        elif action in ("subscribe", "unsubscribe"):
            reply = {"type": action + "d", "app_id": frame["app_id"]}
            if frame.get("message_id"):
                reply["message_id"] = frame["message_id"]
            ws.send(json.dumps(reply))
            if action == "subscribe" and frame.get("message_id"):
                for t in self.messages.get(frame["message_id"], []):
                    if t["app_id"] == frame["app_id"] and "event_count" in t:
                        total = len(t["events"])
                        ws.send(json.dumps({"type": "timeline", **t, "events": [], "new_events": [], "event_count": total,
                                            "truncated": {"events_total": total, "events_sent": 0}}))
                    elif t["app_id"] == frame["app_id"]:
                        ws.send(json.dumps({"type": "timeline", **t, "new_events": []}))

    def push(self, frame: dict[str, Any]) -> None:
        """A frame from the server to the page's current socket."""
        self.sockets[-1].send(json.dumps(frame))

    def frames(self, action: str) -> list[dict[str, Any]]:
        return [f for f in self.received if f.get("action") == action]


def _error(code: str, message: str) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, "details": []}}


@pytest.fixture
def fake_mars(new_page: Callable[..., Any]) -> Callable[..., tuple[Any, FakeMars]]:
    def make(viewport: dict[str, int] | None = None, base: str = "/dev/") -> tuple[Any, FakeMars]:
        page = new_page(viewport)
        return page, FakeMars(page, base)
    return make
