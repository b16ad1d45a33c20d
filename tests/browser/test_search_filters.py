"""The app view's search filters (docs/SEARCH.md) round-trip through the page's URL: applied, they are in
the query string and sent to GET api/messages; a reload (or a shared link) shows and sends them again."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import screenshot
from tests.browser.test_dashboard import LIFECYCLE, event, no_horizontal_scroll, timeline


def test_app_view_filters_round_trip_through_the_url(fake_mars: Any) -> None:
    page, fake = fake_mars()
    fake.lifecycles["shop"] = LIFECYCLE
    fake.app_items["shop"] = [
        timeline("shop", "sent-1", [event("CREATED", -3), event("SENT", -2)], ["DELIVERED", "ACKED"], "in_progress"),
        timeline("shop", "created-1", [event("CREATED", -1)], ["QUEUED", "SENT", "DELIVERED", "ACKED"], "stuck"),
        timeline("shop", "sent-2", [event("CREATED", -5), event("SENT", -4)], ["DELIVERED", "ACKED"], "stuck"),
    ]
    page.goto(fake.url("apps/shop"))
    rows = page.get_by_test_id("message-row")
    expect(rows).to_have_count(3)

    page.get_by_test_id("filter-event").fill("SENT")
    page.get_by_test_id("filter-from").fill("2026-11-30T00:00:00Z")
    page.get_by_test_id("filter-meta").fill("carrier=dhl region=eu")
    page.get_by_test_id("filter-alert").check()
    page.get_by_test_id("filter-apply").click()
    expect(rows).to_have_count(2)
    assert [rows.nth(i).get_attribute("data-message-id") for i in range(2)] == ["sent-1", "sent-2"]
    sent = fake.api_requests("api/messages")[-1]["query"]
    assert {k: v[0] for k, v in sent.items() if k not in ("app_id", "limit")} == {
        "event": "SENT", "from": "2026-11-30T00:00:00Z", "alert": "firing", "meta.carrier": "dhl", "meta.region": "eu"}
    assert "event=SENT" in page.url and "meta.carrier=dhl" in page.url and "alert=firing" in page.url
    expect(page.get_by_test_id("app-live")).to_contain_text("paused")

    # the status chip keeps the search in the URL; a reload shows and sends both again
    page.get_by_test_id("chip-stuck").click()
    expect(rows).to_have_count(1)
    assert "status=stuck" in page.url and "event=SENT" in page.url
    before = len(fake.api_requests("api/messages"))
    page.reload()
    expect(rows).to_have_count(1)
    expect(page.get_by_test_id("filter-event")).to_have_value("SENT")
    expect(page.get_by_test_id("filter-from")).to_have_value("2026-11-30T00:00:00Z")
    expect(page.get_by_test_id("filter-meta")).to_have_value("carrier=dhl region=eu")
    expect(page.get_by_test_id("filter-alert")).to_be_checked()
    expect(page.get_by_test_id("chip-stuck")).to_have_attribute("aria-pressed", "true")
    again = fake.api_requests("api/messages")[before:]
    assert again and again[-1]["query"]["meta.region"] == ["eu"] and again[-1]["query"]["event"] == ["SENT"]
    no_horizontal_scroll(page)
    screenshot(page, "mocked-app-search-filters")

    # a shared link with `missing` opens filtered; Clear drops every filter from the URL
    page.goto(fake.url("apps/shop?missing=QUEUED"))
    expect(rows).to_have_count(1)
    expect(page.get_by_test_id("filter-missing")).to_have_value("QUEUED")
    page.get_by_test_id("filter-clear").click()
    expect(rows).to_have_count(3)
    assert page.url.endswith("/apps/shop")
