"""The dashboard in headless Chromium.

First the page alone, against FakeMars (conftest.py): its routes and websocket are the contract of
DESIGN §2, answered in-process, so these tests are fast and pin the page's logic (stepper, chips,
live updates, reconnects, errors, XSS). Then the same page served by a real local stack (`mars`
fixture): events sent over HTTP show up on screen, live over the websocket.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import PHONE, screenshot
from tests.integration.conftest import wait_timeline

T0 = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
XSS = '<img src=x onerror="window.__xss=1">'


def ts(seconds: float, base: datetime = T0) -> str:
    return (base + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event(name: str, at: float, event_id: str | None = None, meta: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"event": name, "created_at": ts(at), "received_at": ts(at + 0.12),
                           "event_id": event_id or f"id-{name.lower()}-{at}"}
    if meta:
        out["meta"] = meta
    return out


def timeline(app_id: str, message_id: str, events: list[dict[str, Any]], missing: list[str], status: str,
             updated_at: str | None = None) -> dict[str, Any]:
    events = sorted(events, key=lambda e: e["created_at"])
    return {"app_id": app_id, "message_id": message_id, "events": events, "missing": missing, "status": status,
            "first_seen": events[0]["created_at"] if events else None,
            "last_seen": events[-1]["created_at"] if events else None,
            "updated_at": updated_at or (events[-1]["received_at"] if events else ts(0))}


def _poll(page: Any, expression: str, timeout: float = 10) -> Any:
    """Polls a page expression from Python (the page's own timers may be a fake clock)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(expression)
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"{expression} stayed falsy for {timeout}s")


def no_horizontal_scroll(page: Any) -> None:
    widths = page.evaluate("[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]")
    assert max(widths[:2]) <= widths[2], f"the page scrolls sideways: scrollWidth {widths[:2]} > viewport {widths[2]}"


LIFECYCLE = {"events": ["CREATED", "QUEUED", "SENT", "DELIVERED", "ACKED"], "sla_seconds": 60,
             "updated_at": ts(-3600)}


def shop_message(message_id: str) -> dict[str, Any]:
    """CREATED, QUEUED, SENT 123 s later (beyond the 60 s SLA: late), RETRY (not in the lifecycle),
    ACKED; DELIVERED never came."""
    return timeline("shop", message_id, [
        event("CREATED", 0, meta={"source": "checkout", "note": XSS}),
        event("QUEUED", 2),
        event("SENT", 125),
        event("RETRY", 130),
        event("ACKED", 140),
    ], ["DELIVERED"], "in_progress")


# ------------------------------------------------------------------------------------------------ the page alone


def test_message_view_draws_the_lifecycle_and_the_event_table(fake_mars: Any) -> None:
    page, fake = fake_mars()
    message_id = "order-42 " + XSS   # user input: must be shown as text, never parsed as HTML
    fake.lifecycles["shop"] = LIFECYCLE
    fake.messages[message_id] = [shop_message(message_id),
                                 timeline("billing", message_id, [event("INVOICED", 3)], [], "unknown")]
    page.goto(fake.url("search/event?message_id=" + requests.utils.quote(message_id, safe="")))

    shop = page.locator('[data-testid="timeline-panel"][data-app="shop"]')
    expect(page.locator('[data-testid="timeline-panel"]')).to_have_count(2)
    expect(shop.get_by_test_id("message-id")).to_have_text(message_id)
    expect(shop.get_by_test_id("status-badge")).to_have_text("in progress")
    expect(shop.locator('[data-testid="status-badge"] svg')).to_have_count(1)   # an icon, not colour alone
    expect(shop.get_by_test_id("duration")).to_have_text("2 min 20 s")

    steps = shop.get_by_test_id("step")
    expect(steps).to_have_count(5)
    assert [steps.nth(i).get_attribute("data-step") for i in range(5)] == LIFECYCLE["events"]
    assert [steps.nth(i).get_attribute("data-state") for i in range(5)] == ["done", "done", "done", "missing", "done"]
    delivered = shop.locator('[data-step="DELIVERED"][data-testid="step"]')
    expect(delivered.get_by_test_id("missing-tag")).to_have_text("missing")
    sent = shop.locator('[data-step="SENT"][data-testid="step"]')
    expect(sent).to_have_attribute("data-late", "true")
    expect(sent.get_by_test_id("late-tag")).to_have_text("late")
    expect(sent.get_by_test_id("step-delay")).to_contain_text("+2 min 3 s")
    expect(shop.locator('[data-step="QUEUED"][data-testid="step"]')).to_contain_text("10:00:02.000")
    expect(shop.locator('[data-step="QUEUED"] [data-testid="late-tag"]')).to_have_count(0)
    expect(shop.get_by_test_id("unexpected-event")).to_have_text(re.compile(r"RETRY\s*unexpected\s*10:02:10"))

    rows = shop.get_by_test_id("event-row")
    expect(rows).to_have_count(5)
    expect(rows.first).to_contain_text("source=checkout")
    expect(rows.first).to_contain_text("note=" + XSS)
    expect(rows.nth(1)).to_contain_text("+2.00 s")
    expect(rows.nth(1)).to_contain_text("id-queued-2")

    # the app without a lifecycle: events in order, nothing missing, said so
    billing = page.locator('[data-testid="timeline-panel"][data-app="billing"]')
    expect(billing.get_by_test_id("status-badge")).to_have_text("unknown")
    expect(billing.get_by_test_id("no-lifecycle")).to_be_visible()

    assert page.evaluate("window.__xss") is None
    expect(page.locator("img")).to_have_count(0)
    # relative URLs under the stage's base path; one message subscription per timeline
    assert all(r["path"].startswith("/dev/") for r in fake.requests)
    expect(shop.get_by_test_id("panel-live")).to_have_text("Watching live.")
    subs = {(f["app_id"], f["message_id"]) for f in fake.frames("subscribe")}
    assert subs == {("shop", message_id), ("billing", message_id)}
    no_horizontal_scroll(page)
    screenshot(page, "mocked-message-view")


def test_new_events_arrive_live_and_truncated_frames_refetch(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.lifecycles["shop"] = LIFECYCLE
    fake.messages["m-live"] = [shop_message("m-live")]
    page.goto(fake.url("search/event?message_id=m-live&app_id=shop"))
    expect(page.get_by_test_id("panel-live")).to_have_text("Watching live.")
    page.evaluate("window.__sameDocument = true")

    done = shop_message("m-live")
    delivered = event("DELIVERED", 135, event_id="id-delivered-new", meta={"by": "push"})
    done["events"] = sorted(done["events"] + [delivered], key=lambda e: e["created_at"])
    done.update(missing=[], status="complete", updated_at=ts(200))
    fake.push({"type": "timeline", **done, "new_events": [delivered]})

    row = page.locator('[data-testid="event-row"][data-event-id="id-delivered-new"]')
    expect(row).to_be_visible()
    expect(row).to_have_class(re.compile(r"\bis-new\b"))          # highlighted briefly
    expect(page.get_by_test_id("announcer")).to_contain_text("New event DELIVERED on m-live")
    expect(page.locator('[data-step="DELIVERED"][data-testid="step"]')).to_have_attribute("data-state", "done")
    expect(page.get_by_test_id("status-badge")).to_have_text("complete")
    expect(page.get_by_test_id("missing-tag")).to_have_count(0)
    expect(row).not_to_have_class(re.compile(r"\bis-new\b"), timeout=8000)   # and the highlight fades

    # a frame too big for the socket says so: the page fetches the full timeline over HTTP
    fake.messages["m-live"][0] = {**done, "events": done["events"] + [event("ARCHIVED", 300, event_id="id-archived")],
                                  "updated_at": ts(301)}
    before = len(fake.api_requests("api/messages/m-live"))
    fake.push({"type": "timeline", **{k: v for k, v in done.items() if k != "events"}, "events": done["events"][:1],
               "new_events": [], "updated_at": ts(301), "truncated": {"events_total": 7, "events_sent": 1}})
    expect(page.locator('[data-event-id="id-archived"]')).to_be_visible()
    refetch = fake.api_requests("api/messages/m-live")[before:]
    assert refetch and refetch[0]["query"] == {"app_id": ["shop"]}
    # an older frame arriving late does not roll the page back
    fake.push({"type": "timeline", **shop_message("m-live"), "new_events": []})
    page.wait_for_timeout(200)
    expect(page.get_by_test_id("status-badge")).to_have_text("complete")
    assert page.evaluate("window.__sameDocument") is True


def long_message(message_id: str, beats: int) -> dict[str, Any]:
    """CREATED, QUEUED, `beats` HEARTBEATs (outside the lifecycle), SENT and ACKED after them (so in a
    later page than the first), DELIVERED never came: a long timeline, paged by FakeMars like the API."""
    events = [event("CREATED", 0), event("QUEUED", 1)]
    events += [event("HEARTBEAT", 2 + i / 100, event_id=f"hb-{i:05d}") for i in range(beats)]
    events += [event("SENT", 2 + beats / 100 + 1), event("ACKED", 2 + beats / 100 + 2)]
    return {**timeline("shop", message_id, events, ["DELIVERED"], "in_progress"), "event_count": len(events)}


def _shown_ids(panel: Any) -> list[str]:
    return panel.locator('[data-testid="event-row"]').evaluate_all("rows => rows.map(r => r.dataset.eventId)")


def test_a_long_timeline_pages_with_load_more_and_takes_live_frames(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.lifecycles["shop"] = LIFECYCLE
    long = long_message("m-long", 1100)
    fake.messages["m-long"] = [long]
    page.goto(fake.url("search/event?message_id=m-long&app_id=shop"))
    panel = page.get_by_test_id("timeline-panel")
    rows = panel.get_by_test_id("event-row")

    # the first page, and the stepper from the summary: SENT and ACKED were seen, in a page not loaded yet
    expect(rows).to_have_count(1000)
    expect(panel.get_by_test_id("events-shown")).to_have_text("1,000 of 1,104 events")
    expect(panel.get_by_test_id("event-count")).to_have_text("1,104")
    expect(panel.locator('[data-step="SENT"] .step__delay')).not_to_contain_text("start")   # no time known yet
    states = panel.get_by_test_id("step").evaluate_all("s => s.map(x => [x.dataset.step, x.dataset.state])")
    assert states == [["CREATED", "done"], ["QUEUED", "done"], ["SENT", "done"], ["DELIVERED", "missing"], ["ACKED", "done"]]
    expect(panel.locator('[data-step="SENT"] [data-testid="step-unloaded"]')).to_have_text("seen · later page")
    expect(panel.locator('[data-step="DELIVERED"] [data-testid="missing-tag"]')).to_have_text("missing")
    expect(panel.get_by_test_id("unexpected-event")).to_have_count(1)   # 998 HEARTBEATs: one entry
    expect(panel.get_by_test_id("outside-count")).to_have_text("×998")
    expect(panel.get_by_test_id("panel-live")).to_have_text("Watching live.")
    screenshot(page, "mocked-long-timeline", full_page=False)   # 1,000 rows: the top (stepper) is what to see
    panel.get_by_test_id("event-pager").scroll_into_view_if_needed()
    screenshot(page, "mocked-long-timeline-pager", full_page=False)

    # live: DELIVERED arrives after the loaded pages: the stepper and the count take it, the table waits
    delivered = event("DELIVERED", 2 + 11 + 3, event_id="id-delivered-late")
    long["events"].append(delivered)
    summary = {k: v for k, v in long.items() if k != "events"}
    fake.push({"type": "timeline", **summary, "events": [delivered], "new_events": [delivered], "missing": [],
               "status": "complete", "event_count": 1105, "updated_at": ts(100),
               "truncated": {"events_total": 1105, "events_sent": 1}})
    expect(panel.get_by_test_id("status-badge")).to_have_text("complete")
    expect(panel.locator('[data-step="DELIVERED"][data-testid="step"]')).to_have_attribute("data-state", "done")
    expect(panel.get_by_test_id("events-shown")).to_have_text("1,000 of 1,105 events")
    expect(rows).to_have_count(1000)

    # a failed page is said where it was asked for, and can be asked again
    fake.overrides["api/messages/m-long"] = (503, {"success": False, "error": {"code": "UNAVAILABLE", "message": "try later"}})
    panel.get_by_test_id("load-more-events").click()
    expect(panel.get_by_test_id("events-shown")).to_contain_text("could not load more: try later")
    del fake.overrides["api/messages/m-long"]

    before = len(fake.api_requests("api/messages/m-long"))
    panel.get_by_test_id("load-more-events").click()
    expect(rows).to_have_count(1105)
    expect(panel.get_by_test_id("events-shown")).to_have_text("1,105 of 1,105 events")
    expect(panel.get_by_test_id("load-more-events")).to_have_count(0)
    (asked,) = fake.api_requests("api/messages/m-long")[before:]
    assert asked["query"]["app_id"] == ["shop"] and asked["query"]["cursor"]
    expected = [e["event_id"] for e in sorted(long["events"], key=lambda e: (e["created_at"], e["event_id"]))]
    assert _shown_ids(panel) == expected   # each event once, in order
    expect(panel.locator('[data-step="SENT"][data-testid="step"]')).to_contain_text("10:00:14.000")
    expect(panel.get_by_test_id("outside-count")).to_have_text("×1100")

    # all loaded: a new event joins the table live; a frame that could not carry its events offers "Load more"
    acked2 = event("ACKED", 30, event_id="id-acked-again")
    long["events"].append(acked2)
    fake.push({"type": "timeline", **summary, "events": [acked2], "new_events": [acked2], "missing": [],
               "status": "complete", "event_count": 1106, "updated_at": ts(101),
               "truncated": {"events_total": 1106, "events_sent": 1}})
    expect(panel.locator('[data-event-id="id-acked-again"]')).to_have_class(re.compile(r"\bis-new\b"))
    expect(panel.get_by_test_id("events-shown")).to_have_text("1,106 of 1,106 events")
    extra = [event("HEARTBEAT", 40 + i, event_id=f"hb-late-{i}") for i in range(3)]
    long["events"] += extra
    fake.push({"type": "timeline", **summary, "events": [], "new_events": [], "missing": [], "status": "complete",
               "event_count": 1109, "updated_at": ts(102), "truncated": {"events_total": 1109, "events_sent": 0}})
    expect(panel.get_by_test_id("events-shown")).to_have_text("1,106 of 1,109 events")
    panel.get_by_test_id("load-more-events").click()
    expect(rows).to_have_count(1109)
    assert _shown_ids(panel)[-3:] == [e["event_id"] for e in extra]
    assert len(set(_shown_ids(panel))) == 1109
    expect(panel.get_by_test_id("load-more-events")).to_have_count(0)


def test_a_long_timeline_without_a_lifecycle_has_one_step_per_event_name(fake_mars: Any) -> None:
    page, fake = fake_mars()
    names = ["BOOT", "PING", "PING", "PING", "DATA", "PING"]
    events = [event(n, i, event_id=f"iot-{i}") for i, n in enumerate(names)]
    fake.messages["dev-1"] = [{**timeline("iot", "dev-1", events, [], "unknown"), "event_count": len(events)}]
    page.goto(fake.url("search/event?message_id=dev-1"))
    expect(page.get_by_test_id("event-row")).to_have_count(6)
    expect(page.get_by_test_id("events-shown")).to_have_text("6 of 6 events")
    steps = page.get_by_test_id("step").evaluate_all("s => s.map(x => x.dataset.step)")
    assert steps == ["BOOT", "PING", "DATA"]   # a short timeline would show six
    expect(page.get_by_test_id("no-lifecycle")).to_be_visible()


def test_app_view_chips_count_filter_paginate_and_take_live_rows(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.lifecycles["shop"] = LIFECYCLE
    statuses = ["complete", "stuck", "in_progress", "complete", "stuck", "complete", "unknown"]
    fake.app_items["shop"] = [timeline("shop", f"m{i}", [event("CREATED", -i)], [] if s == "complete" else ["ACKED"], s)
                              for i, s in enumerate(statuses)]
    # a page holds 50: make the first page end after 5 items with a cursor
    page.route(re.compile(r".*/api/messages\?app_id=shop&limit=50$"), lambda route: route.fulfill(
        status=200, content_type="application/json",
        body=json.dumps({"items": fake.app_items["shop"][:5], "cursor": "5"})))
    page.goto(fake.url("apps/shop"))

    rows = page.get_by_test_id("message-row")
    expect(rows).to_have_count(5)
    assert [rows.nth(i).get_attribute("data-message-id") for i in range(5)] == ["m0", "m1", "m2", "m3", "m4"]
    for name, count in {"all": 5, "complete": 2, "stuck": 2, "in_progress": 1, "unknown": 0}.items():
        expect(page.get_by_test_id(f"chip-{name}")).to_have_attribute("data-count", str(count))
    expect(page.get_by_test_id("chip-scope")).to_contain_text("latest 5")
    expect(page.get_by_test_id("app-lifecycle")).to_contain_text("CREATED → QUEUED")

    page.get_by_test_id("chip-stuck").click()
    expect(rows).to_have_count(2)
    assert {rows.nth(i).get_attribute("data-status") for i in range(2)} == {"stuck"}
    expect(page.get_by_test_id("chip-stuck")).to_have_attribute("aria-pressed", "true")
    assert page.url.endswith("/dev/apps/shop?status=stuck")

    page.get_by_test_id("load-more").click()
    expect(page.get_by_test_id("chip-all")).to_have_attribute("data-count", "7")
    expect(page.get_by_test_id("chip-stuck")).to_have_attribute("data-count", "2")
    expect(page.get_by_test_id("chip-complete")).to_have_attribute("data-count", "3")
    expect(page.get_by_test_id("chip-scope")).to_contain_text("latest 7")
    expect(page.get_by_test_id("load-more")).to_be_hidden()
    assert fake.api_requests("api/messages")[-1]["query"]["cursor"] == ["5"]

    # live: an update of m3 moves it to the top, a new stuck message shows under the active filter
    page.get_by_test_id("chip-all").click()
    expect(rows).to_have_count(7)
    fake.push({"type": "timeline", **timeline("shop", "m3", [event("CREATED", 1), event("ACKED", 2)], [], "stuck"),
               "new_events": []})
    expect(rows.first).to_have_attribute("data-message-id", "m3")
    expect(rows.first).to_have_class(re.compile(r"\bis-new\b"))
    expect(page.get_by_test_id("chip-complete")).to_have_attribute("data-count", "2")
    expect(page.get_by_test_id("chip-stuck")).to_have_attribute("data-count", "3")
    fake.push({"type": "timeline", **timeline("shop", "fresh-1", [event("CREATED", 9)], ["ACKED"], "in_progress"),
               "new_events": []})
    expect(rows.first).to_have_attribute("data-message-id", "fresh-1")
    expect(page.get_by_test_id("chip-all")).to_have_attribute("data-count", "8")
    assert ("shop", None) in {(f["app_id"], f.get("message_id")) for f in fake.frames("subscribe")}
    no_horizontal_scroll(page)
    screenshot(page, "mocked-app-view")

    # a row opens the message view (keyboard: its link; mouse: the whole row)
    fake.messages["m2"] = [fake.app_items["shop"][2]]
    page.locator('[data-testid="message-row"][data-message-id="m2"] td').nth(3).click()
    expect(page.get_by_test_id("timeline-panel")).to_have_count(1)
    assert "/dev/search/event?message_id=m2&app_id=shop" in page.url
    unsubscribed = fake.frames("unsubscribe")
    assert unsubscribed and unsubscribed[-1]["app_id"] == "shop" and "message_id" not in unsubscribed[-1]
    page.go_back()
    expect(rows).to_have_count(5)   # the app view again, loaded afresh (the server's first page)


def test_search_box_recent_searches_and_deep_links(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.messages["order-7"] = [timeline("shop", "order-7", [event("CREATED", 0)], [], "unknown")]
    page.goto(fake.url())
    expect(page.get_by_test_id("recent-searches-empty")).to_be_visible()
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "connected")

    page.get_by_test_id("search-input").fill("order-7")
    page.get_by_test_id("search-app").fill("shop")
    page.get_by_test_id("search-input").press("Enter")
    expect(page.get_by_test_id("timeline-panel")).to_have_count(1)
    assert page.url == fake.url("search/event?message_id=order-7&app_id=shop")
    assert page.evaluate("document.activeElement.tagName") == "H1"   # focus moves to the new view

    page.reload()   # the deep link stands on its own
    expect(page.get_by_test_id("message-id")).to_have_text("order-7")
    page.get_by_test_id("home-link").click()
    expect(page.get_by_test_id("recent-searches")).to_contain_text("order-7")
    page.get_by_test_id("recent-searches").get_by_role("link", name="order-7").click()
    expect(page.get_by_test_id("message-id")).to_have_text("order-7")
    page.go_back()
    expect(page.get_by_test_id("recent-searches")).to_be_visible()

    # keyboard only: Tab reaches the search box from the top of the page, Enter searches
    page.goto(fake.url())
    page.keyboard.press("Tab")   # skip link
    page.keyboard.press("Tab")   # brand
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.dataset.testid") == "search-input"
    page.keyboard.type("order-7")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("message-id")).to_have_text("order-7")


def test_errors_show_in_the_page(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.overrides["api/q/stats"] = "abort"
    page.goto(fake.url("search/event?message_id=nope"))
    expect(page.get_by_test_id("message-error")).to_contain_text("Not found")
    expect(page.get_by_test_id("message-error")).to_contain_text("no events for message_id 'nope'")
    expect(page.get_by_test_id("queue-error")).to_contain_text("Network error")

    fake.overrides["api/messages/boom"] = (500, {"success": False, "error": {"code": "INTERNAL", "message": "internal error"}})
    page.get_by_test_id("search-input").fill("boom")
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("message-error")).to_contain_text("Error 500")

    fake.overrides["api/messages"] = "abort"
    page.goto(fake.url("apps/shop"))
    expect(page.get_by_test_id("app-error")).to_contain_text("could not be reached")

    # a 404 for a message of a given app waits for its first event live
    page.goto(fake.url("search/event?message_id=later&app_id=shop"))
    expect(page.get_by_test_id("message-error")).to_contain_text("Waiting for its first event")
    page.wait_for_function("document.querySelector('[data-testid=live-indicator]').dataset.state === 'connected'")
    fake.push({"type": "timeline", **timeline("shop", "later", [event("CREATED", 0, event_id="first")], [], "unknown"),
               "new_events": []})
    expect(page.get_by_test_id("timeline-panel")).to_have_count(1)
    expect(page.get_by_test_id("message-error")).to_have_count(0)
    expect(page.locator('[data-event-id="first"]')).to_have_class(re.compile(r"\bis-new\b"))

    # a websocket error frame is shown, not just logged
    fake.push({"type": "error", "code": "BAD_REQUEST", "message": "app_id is required"})
    expect(page.get_by_test_id("notices")).to_contain_text("app_id is required")


def test_queue_panel_depth_in_flight_and_dead_letter_warning(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.stats["queues"][3].update(visible=12, in_flight=4, oldest_age_seconds=75)
    fake.stats["dead_letter"][0].update(visible=3)
    page.clock.install()
    page.goto(fake.url())
    panel = page.get_by_test_id("queue-panel")
    expect(panel.get_by_test_id("queue-total")).to_have_text("12 waiting · 4 in flight in 10 queues")
    expect(panel.get_by_test_id("queue-row")).to_have_count(10)
    expect(panel.get_by_test_id("queue-row").nth(3)).to_contain_text(re.compile(r"EventsQueue3\s*12\s*4\s*1 min 15 s"))
    warning = panel.get_by_test_id("dlq-warning")
    expect(warning).to_contain_text("3 messages in dead-letter queues: DeadLetterQueue (3)")
    expect(warning).to_contain_text("mars redrive")
    expect(warning).to_have_attribute("role", "alert")

    fake.stats["dead_letter"][0].update(visible=0)
    calls = len(fake.api_requests("api/q/stats"))
    page.clock.run_for(5100)   # refreshed every 5 s
    expect(panel.get_by_test_id("dlq-ok")).to_have_text("No dead letters.")
    assert len(fake.api_requests("api/q/stats")) == calls + 1


def test_reconnects_with_backoff_resubscribes_and_pings(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.lifecycles["shop"] = LIFECYCLE
    fake.messages["m-r"] = [shop_message("m-r")]
    page.clock.install()
    page.goto(fake.url("search/event?message_id=m-r&app_id=shop"))
    indicator = page.get_by_test_id("live-indicator")
    expect(indicator).to_have_attribute("data-state", "connected")
    expect(indicator).to_have_text("Live · connected")
    expect(page.get_by_test_id("panel-live")).to_have_text("Watching live.")

    page.clock.run_for(5 * 60 * 1000 + 100)   # idle sockets are closed after 10 min: ping every 5
    assert fake.frames("ping"), "no ping after 5 minutes"

    fake.sockets[-1].close(code=1011, reason="gone")
    expect(indicator).to_have_attribute("data-state", "reconnecting")
    expect(indicator).to_have_text(re.compile(r"Reconnecting in [12] s"))   # first retry: 0.5-1 s (jittered)
    page.clock.run_for(1100)
    expect(indicator).to_have_attribute("data-state", "connected")
    page.clock.run_for(5100)   # a connection that stays up resets the backoff
    assert len(fake.sockets) == 2
    again = [f for f in fake.frames("subscribe") if f["_socket"] == 1]
    assert again == [{"action": "subscribe", "app_id": "shop", "message_id": "m-r", "_socket": 1}]

    # a server that keeps refusing: the wait grows (1 s, 2 s, 4 s, ... capped at 30 s)
    page.route_web_socket(re.compile(r"^ws://mars\.test/ws.*"), lambda ws: ws.close(code=1011, reason="down"))
    retry_at = page.evaluate("window.marsDashboard.live.retryAt")
    fake.sockets[-1].close(code=1011, reason="restart")
    waits: list[float] = []
    for _ in range(7):
        retry_at = _poll(page, f"window.marsDashboard.live.retryAt > {retry_at} && window.marsDashboard.live.retryAt")
        waits.append(page.evaluate(f"{retry_at} - Date.now()"))
        expect(indicator).to_have_attribute("data-state", "reconnecting")
        page.clock.run_for(int(waits[-1]) + 50)
    assert waits[0] <= 1000 and waits[2] >= 2000 and waits[-1] >= 15000 and max(waits) <= 30000, waits
    # the retry button reconnects at once
    page.route_web_socket(re.compile(r"^ws://mars\.test/ws.*"), fake._ws)
    indicator.click()
    expect(indicator).to_have_attribute("data-state", "connected")


def test_api_key_when_auth_is_required(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.config["auth_required"] = True
    page.goto(fake.url())
    expect(page.get_by_test_id("api-key-form")).to_be_visible()
    page.get_by_test_id("api-key-input").fill("k-123")
    page.get_by_test_id("api-key-input").press("Enter")
    expect(page.get_by_test_id("api-key-form")).to_be_hidden()
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "connected")
    assert fake.ws_urls[-1].endswith("?api_key=k-123")
    page.reload()   # kept in localStorage
    expect(page.get_by_test_id("queue-total")).to_be_visible()
    assert fake.api_requests("api/q/stats")[-1]["headers"].get("x-api-key") == "k-123"
    assert fake.ws_urls[-1].endswith("?api_key=k-123")


@pytest.mark.parametrize("view", ["message", "app"])
def test_phone_width_without_sideways_scrolling(fake_mars: Any, view: str) -> None:
    page, fake = fake_mars(viewport=PHONE)
    long_id = "msg-" + "x" * 120
    fake.lifecycles["shop"] = LIFECYCLE
    tl = shop_message(long_id)
    tl["events"][0]["meta"]["trace"] = "t" * 200
    fake.messages[long_id] = [tl]
    fake.app_items["shop"] = [{k: v for k, v in tl.items() if k != "events"}]
    page.goto(fake.url("search/event?message_id=" + long_id if view == "message" else "apps/shop"))
    expect(page.get_by_test_id("timeline-panel" if view == "message" else "message-row")).to_have_count(1)
    no_horizontal_scroll(page)
    screenshot(page, f"mocked-phone-{view}")


# ------------------------------------------------------------------------------------------------ a real stack


def _post(mars: Any, app_id: str, message_id: str, name: str, created_at: str, **extra: Any) -> None:
    body = {"app_id": app_id, "message_id": message_id, "event": name, "created_at": created_at, **extra}
    resp = requests.post(mars.url("/api/event"), json=body, timeout=10)
    assert resp.status_code == 202, resp.text


def _lifecycle(mars: Any, app_id: str, events: list[str], sla: int) -> None:
    resp = requests.put(mars.url(f"/api/apps/{app_id}/lifecycle"), json={"events": events, "sla_seconds": sla}, timeout=10)
    assert resp.status_code == 200, resp.text


def _now(seconds: float = 0) -> str:
    return ts(seconds, datetime.now(UTC))


def _wait_live(page: Any) -> None:
    expect(page.get_by_test_id("live-indicator")).to_have_attribute("data-state", "connected", timeout=20_000)


def test_stack_search_shows_the_timeline_with_the_missing_step(mars: Any, new_page: Any) -> None:
    app_id, message_id = f"web-{uuid.uuid4().hex[:8]}", f"order-{uuid.uuid4().hex[:8]}"
    _lifecycle(mars, app_id, ["CREATED", "PAID", "SHIPPED", "DELIVERED"], 3600)
    _post(mars, app_id, message_id, "CREATED", _now(-30), meta={"shop": "berlin"})
    _post(mars, app_id, message_id, "PAID", _now(-20))
    _post(mars, app_id, message_id, "DELIVERED", _now(-5))
    wait_timeline(mars, message_id, events=3)

    page = new_page()
    page.goto(mars.url("/"))
    page.get_by_test_id("search-input").fill(message_id)
    page.get_by_test_id("search-submit").click()
    expect(page.get_by_test_id("timeline-panel")).to_have_count(1)
    assert page.url == mars.url(f"/search/event?message_id={message_id}")
    steps = page.get_by_test_id("step")
    expect(steps).to_have_count(4)
    assert [steps.nth(i).get_attribute("data-state") for i in range(4)] == ["done", "done", "missing", "done"]
    expect(page.locator('[data-step="SHIPPED"] [data-testid="missing-tag"]')).to_have_text("missing")
    expect(page.get_by_test_id("status-badge")).to_have_text("in progress")
    expect(page.get_by_test_id("missing-list")).to_have_text("SHIPPED")
    expect(page.get_by_test_id("event-row")).to_have_count(3)
    expect(page.get_by_test_id("event-row").first).to_contain_text("shop=berlin")
    screenshot(page, "stack-message-view")


def test_stack_new_event_appears_live_without_reload(mars: Any, new_page: Any) -> None:
    app_id, message_id = f"web-{uuid.uuid4().hex[:8]}", f"live-{uuid.uuid4().hex[:8]}"
    _lifecycle(mars, app_id, ["CREATED", "PAID", "SHIPPED"], 3600)
    _post(mars, app_id, message_id, "CREATED", _now(-10))
    wait_timeline(mars, message_id, events=1)

    page = new_page()
    page.goto(mars.url(f"/search/event?message_id={message_id}"))
    expect(page.get_by_test_id("event-row")).to_have_count(1)
    _wait_live(page)
    expect(page.get_by_test_id("panel-live")).to_have_text("Watching live.", timeout=20_000)   # subscribed
    page.evaluate("window.__sameDocument = true")

    _post(mars, app_id, message_id, "PAID", _now(), meta={"amount": "12.50"})
    row = page.locator('[data-testid="event-row"][data-event="PAID"]')
    expect(row).to_be_visible(timeout=20_000)
    expect(row).to_contain_text("amount=12.50")
    expect(page.locator('[data-step="PAID"][data-testid="step"]')).to_have_attribute("data-state", "done")
    expect(page.get_by_test_id("announcer")).to_contain_text("PAID")
    no_horizontal_scroll(page)
    screenshot(page, "stack-live-event")
    assert page.evaluate("window.__sameDocument") is True


def test_stack_long_timeline_first_page_stepper_load_more_and_live(mars: Any, new_page: Any) -> None:
    """1,050 events of one message (bulk posts of 500; few past 1,000, as one message's batches store one
    after another): the API pages it; the page shows the first 1,000, the stepper from the summary,
    "Load more" appends the other 50 (each event once), and a new event still arrives live."""
    app_id, message_id = f"web-{uuid.uuid4().hex[:8]}", f"long-{uuid.uuid4().hex[:8]}"
    _lifecycle(mars, app_id, ["CREATED", "SENT", "DONE"], 3600)
    base = datetime.now(UTC) - timedelta(minutes=5)
    names = ["CREATED"] + ["TICK"] * 1020 + ["SENT"] + ["TICK"] * 28   # SENT lies in the second page
    events = [{"app_id": app_id, "message_id": message_id, "event": name, "created_at": ts(i / 100, base)}
              for i, name in enumerate(names)]
    ids: list[str] = []
    for start in range(0, len(events), 500):
        resp = requests.post(mars.url("/api/event/bulk"), json={"events": events[start:start + 500]}, timeout=30)
        assert resp.status_code == 202, resp.text[:300]
        ids += resp.json()["event_ids"]
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline and count < len(events):
        resp = requests.get(mars.url(f"/api/messages/{message_id}"), params={"app_id": app_id, "limit": "1"}, timeout=10)
        count = resp.json()["timelines"][0]["event_count"] if resp.status_code == 200 else 0
        time.sleep(0.5)
    assert count == len(events), f"{count} of {len(events)} stored"

    page = new_page()
    page.goto(mars.url(f"/search/event?message_id={message_id}&app_id={app_id}"))
    rows = page.get_by_test_id("event-row")
    expect(rows).to_have_count(1000, timeout=30_000)   # the stack reads 1,000 events from the emulator: on a busy machine, seconds
    expect(page.get_by_test_id("events-shown")).to_have_text("1,000 of 1,050 events")
    states = page.get_by_test_id("step").evaluate_all("s => s.map(x => [x.dataset.step, x.dataset.state])")
    assert states == [["CREATED", "done"], ["SENT", "done"], ["DONE", "missing"]]
    expect(page.locator('[data-step="SENT"] [data-testid="step-unloaded"]')).to_be_visible()
    expect(page.get_by_test_id("status-badge")).to_have_text("in progress")
    _wait_live(page)
    expect(page.get_by_test_id("panel-live")).to_have_text("Watching live.", timeout=20_000)

    page.get_by_test_id("load-more-events").click()
    expect(rows).to_have_count(1050, timeout=30_000)
    expect(page.get_by_test_id("events-shown")).to_have_text("1,050 of 1,050 events")
    expect(page.get_by_test_id("load-more-events")).to_have_count(0)
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.eventId)") == ids   # each once, in order
    expect(page.locator('[data-step="SENT"][data-testid="step"] time')).to_be_visible()

    _post(mars, app_id, message_id, "DONE", _now())
    row = page.locator('[data-testid="event-row"][data-event="DONE"]')
    expect(row).to_be_visible(timeout=20_000)
    expect(page.get_by_test_id("status-badge")).to_have_text("complete")
    expect(page.locator('[data-step="DONE"][data-testid="step"]')).to_have_attribute("data-state", "done")
    expect(page.get_by_test_id("events-shown")).to_have_text("1,051 of 1,051 events")
    screenshot(page, "stack-long-timeline", full_page=False)


def test_stack_app_view_status_filter(mars: Any, new_page: Any) -> None:
    app_id = f"web-{uuid.uuid4().hex[:8]}"
    sla = 6
    _lifecycle(mars, app_id, ["CREATED", "DONE"], sla)
    _post(mars, app_id, "stuck-1", "CREATED", _now())
    stuck_sent = time.monotonic()
    wait_timeline(mars, "stuck-1", app_id=app_id, events=1)
    for m in ("done-1", "done-2"):
        _post(mars, app_id, m, "CREATED", _now(-2))
        _post(mars, app_id, m, "DONE", _now(-1))
    for m in ("done-1", "done-2"):
        wait_timeline(mars, m, app_id=app_id, events=2)
    time.sleep(max(0.0, stuck_sent + sla + 0.5 - time.monotonic()))   # stuck-1: silent for longer than the SLA
    _post(mars, app_id, "busy-1", "CREATED", _now())
    wait_timeline(mars, "busy-1", app_id=app_id, events=1)

    page = new_page()
    page.goto(mars.url(f"/apps/{app_id}"))
    rows = page.get_by_test_id("message-row")
    expect(rows).to_have_count(4)
    expect(rows.first).to_have_attribute("data-message-id", "busy-1")   # newest first
    expect(rows.last).to_have_attribute("data-message-id", "stuck-1")
    expected = {"all": 4, "complete": 2, "in_progress": 1, "stuck": 1, "unknown": 0}
    for name, count in expected.items():
        expect(page.get_by_test_id(f"chip-{name}")).to_have_attribute("data-count", str(count))
    expect(page.get_by_test_id("chip-scope")).to_contain_text("latest 4")
    page.get_by_test_id("chip-complete").click()
    expect(rows).to_have_count(2)
    assert {rows.nth(i).get_attribute("data-message-id") for i in range(2)} == {"done-1", "done-2"}
    page.get_by_test_id("chip-stuck").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-message-id", "stuck-1")
    expect(rows.first.get_by_test_id("status-badge")).to_have_text("stuck")
    page.get_by_test_id("chip-in_progress").click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-message-id", "busy-1")
    page.get_by_test_id("chip-all").click()
    expect(rows).to_have_count(4)
    screenshot(page, "stack-app-view")


def test_stack_phone_width_message_view(mars: Any, new_page: Any) -> None:
    app_id, message_id = f"web-{uuid.uuid4().hex[:8]}", "phone-" + uuid.uuid4().hex * 3
    _lifecycle(mars, app_id, ["MESSAGE_CREATED", "MESSAGE_QUEUED", "MESSAGE_SENT", "MESSAGE_DELIVERED"], 3600)
    _post(mars, app_id, message_id, "MESSAGE_CREATED", _now(-9), meta={"trace_id": uuid.uuid4().hex * 2})
    _post(mars, app_id, message_id, "MESSAGE_QUEUED", _now(-8))
    _post(mars, app_id, message_id, "MESSAGE_SENT", _now(-1))
    wait_timeline(mars, message_id, events=3)

    page = new_page(PHONE)
    page.goto(mars.url(f"/search/event?message_id={message_id}&app_id={app_id}"))
    expect(page.get_by_test_id("event-row")).to_have_count(3)
    expect(page.get_by_test_id("step")).to_have_count(4)
    no_horizontal_scroll(page)
    screenshot(page, "stack-phone-message-view")


def test_stack_live_indicator_says_connected(mars: Any, new_page: Any) -> None:
    page = new_page()
    page.goto(mars.url("/"))
    _wait_live(page)
    expect(page.get_by_test_id("live-indicator")).to_contain_text("connected")
    expect(page.get_by_test_id("queue-total")).to_contain_text("in 10 queues")
    screenshot(page, "stack-home")


def test_stack_app_view_draws_the_funnel_of_stored_events(mars: Any, new_page: Any) -> None:
    """On the stack: three messages stop at three steps; the funnel the store counted (FunnelTable, not a
    fake) is what the app view draws — reached, conversion, the time between steps, where each stalled."""
    app_id = f"web-{uuid.uuid4().hex[:8]}"
    _lifecycle(mars, app_id, ["CREATED", "PAID", "SHIPPED"], 3600)
    stops = {"m-all": ["CREATED", "PAID", "SHIPPED"], "m-paid": ["CREATED", "PAID"], "m-created": ["CREATED"]}
    for message_id, names in stops.items():
        for i, name in enumerate(names):
            _post(mars, app_id, message_id, name, _now(-60 + 20 * i))
    for message_id, names in stops.items():
        wait_timeline(mars, message_id, app_id=app_id, events=len(names))
    deadline = time.monotonic() + 20  # the store counts the funnel right after a batch's events
    while time.monotonic() < deadline:
        funnel = requests.get(mars.url(f"/api/apps/{app_id}/funnel"), timeout=10).json()
        if [r["reached"] for r in funnel["steps"]] == [3, 2, 1]:
            break
        time.sleep(0.3)

    page = new_page()
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(mars.url(f"/apps/{app_id}"))
    rows = page.get_by_test_id("funnel-step")
    expect(rows).to_have_count(3, timeout=20_000)
    got = rows.evaluate_all("rs => rs.map(r => [r.dataset.step, r.dataset.reached, r.dataset.stalled])")
    assert got == [["CREATED", "3", "1"], ["PAID", "2", "1"], ["SHIPPED", "1", "1"]]
    expect(rows.nth(1)).to_contain_text("66.7 % of CREATED")
    expect(rows.nth(1)).to_contain_text("p50 20 s")  # every PAID came 20 s after its CREATED
    expect(rows.nth(2)).to_contain_text("50.0 % of PAID")
    no_horizontal_scroll(page)
    screenshot(page, "stack-app-view-funnel", full_page=False)


def test_app_view_draws_the_funnel(fake_mars: Any) -> None:
    """Bars per step (width: the share of the first step), conversion, p50/p90/p99 and stalls; a screenshot in docs/."""
    page, fake = fake_mars()
    fake.lifecycles["shop"] = LIFECYCLE
    fake.app_items["shop"] = [timeline("shop", "m1", [event("CREATED", 0)], ["ACKED"], "in_progress")]

    def row(step: str, reached: int, after: str | None, conversion: float | None, p50: float | None, stalled: int,
            alerts: int = 0) -> dict[str, Any]:
        return {"step": step, "reached": reached, "conversion": conversion, "p50_seconds": p50,
                "p90_seconds": p50 and p50 * 4, "p99_seconds": p50 and p50 * 20, "stalled_here": stalled,
                "alerts": alerts, "after": after, "durations": reached if after else 0}

    steps = LIFECYCLE["events"]
    fake.funnels["shop"] = {"app_id": "shop", "from": "2026-11-24T00:00:00Z", "to": "2026-11-30T23:59:59Z",
                            "bucket": "day", "relative_error": 0.01, "alerts_without_step": 0, "alerts_truncated": False,
                            "steps": [row(steps[0], 2000, None, None, None, 120),
                                      *(row(s, 1880 - 400 * i, steps[i], round((1880 - 400 * i) / (2000 if i == 0 else 2280 - 400 * i), 4),
                                            30.0 * (i + 1), 300 if i < len(steps) - 2 else 1880 - 400 * i, alerts=7 if i == 1 else 0)
                                        for i, s in enumerate(steps[1:]))]}
    page.set_viewport_size({"width": 1100, "height": 900})
    page.goto(fake.url("apps/shop"))
    rows = page.get_by_test_id("funnel-step")
    expect(rows).to_have_count(len(steps))
    expect(rows.first).to_have_attribute("data-reached", "2000")
    expect(rows.first).to_contain_text("120 stalled here")
    expect(rows.nth(1)).to_contain_text(f"94.0 % of {steps[0]}")
    expect(rows.nth(1)).to_contain_text("p50 30 s")
    expect(rows.nth(2)).to_contain_text("7 alerts")
    widths = page.eval_on_selector_all(".funnel__bar", "bars => bars.map(b => b.getBoundingClientRect().width)")
    assert widths == sorted(widths, reverse=True) and widths[0] > 2 * widths[-1]
    screenshot(page, "mocked-app-view-funnel", full_page=False)  # docs/funnel-app-view.png is a copy of it
    no_horizontal_scroll(page)
    # an app without a lifecycle says so instead of a funnel
    page.goto(fake.url("apps/billing"))
    expect(page.get_by_test_id("funnel-note")).to_have_text("No lifecycle: no funnel.")


def test_app_view_lists_alerts_and_takes_alert_frames_live(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.lifecycles["shop"] = {**LIFECYCLE, "failure": ["FAILED"]}
    fake.app_items["shop"] = [timeline("shop", "m1", [event("CREATED", 0)], ["ACKED"], "in_progress")]
    old = {"type": "alert", "alert_id": "a-old", "app_id": "shop", "message_id": "m0",
           "rule": {"kind": "deadline", "step": "SENT", "after": "QUEUED"}, "state": "resolved",
           "fired_at": ts(10), "resolved_at": ts(20), "timeline_url": "search/event?message_id=m0&app_id=shop"}
    fake.alerts["shop"] = [old]
    page.goto(fake.url("apps/shop"))
    alert_rows = page.get_by_test_id("alert-row")
    expect(alert_rows).to_have_count(1)
    expect(page.get_by_test_id("alert-badge")).to_have_attribute("data-firing", "0")
    _poll(page, "document.querySelector('[data-testid=app-live]').textContent.includes('Live')")
    firing = {**old, "alert_id": "a-new", "message_id": "m1", "rule": {"kind": "failure", "step": "FAILED", "after": None},
              "state": "firing", "fired_at": ts(30), "resolved_at": None}
    fake.push(firing)
    expect(alert_rows).to_have_count(2)
    expect(alert_rows.first).to_have_attribute("data-alert-id", "a-new")
    expect(alert_rows.first).to_contain_text("failure step FAILED")
    expect(alert_rows.first).to_have_class(re.compile(r"\bis-new\b"))
    expect(page.get_by_test_id("alert-badge")).to_have_attribute("data-firing", "1")
    fake.push({**firing, "type": "timeline", "status": "failed", "missing": ["ACKED"], "events": [], "new_events": []})
    expect(page.get_by_test_id("chip-failed")).to_have_attribute("data-count", "1")
    fake.push({**old, "state": "firing", "resolved_at": None, "alert_id": "a-old"})  # the same alert: its row changes
    expect(alert_rows).to_have_count(2)
    expect(page.get_by_test_id("alert-badge")).to_have_attribute("data-firing", "2")
    no_horizontal_scroll(page)
    assert not page.evaluate("window.__xss")


def test_stack_an_alert_appears_live_in_the_app_view(mars: Any, new_page: Any) -> None:
    app_id = f"web-{uuid.uuid4().hex[:8]}"
    resp = requests.put(mars.url(f"/api/apps/{app_id}/lifecycle"), timeout=10, json={
        "events": ["CREATED", "PAID", "SHIPPED"], "sla_seconds": 0, "failure": ["FAILED"],
        "deadlines": [{"step": "SHIPPED", "after": "PAID", "within_seconds": 60}]})
    assert resp.status_code == 200, resp.text
    page = new_page()
    page.goto(mars.url(f"/apps/{app_id}"))
    _wait_live(page)
    expect(page.get_by_test_id("app-live")).to_contain_text("Live")
    expect(page.get_by_test_id("alerts-empty")).to_be_visible()
    _post(mars, app_id, "order-1", "CREATED", _now(-2))
    _post(mars, app_id, "order-1", "FAILED", _now(-1))   # a failure step: the alert fires when it is stored
    row = page.get_by_test_id("alert-row")
    expect(row).to_have_count(1, timeout=30_000)
    expect(row.first).to_have_attribute("data-state", "firing")
    expect(row.first).to_contain_text("failure step FAILED")
    expect(page.get_by_test_id("alert-badge")).to_have_text("1 firing")
    expect(page.get_by_test_id("app-lifecycle")).to_contain_text("failure FAILED · deadlines SHIPPED within")
    expect(page.locator('[data-testid="message-row"][data-message-id="order-1"]')).to_have_attribute("data-status", "failed")
    screenshot(page, "stack-app-view-alerts")  # docs/alerts-app-view.png is a copy of it
