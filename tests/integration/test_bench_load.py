"""Benchmark (c)'s load generator against the shared stack, so `make bench` cannot measure a broken
request: wrk with bench/single.lua sends valid events, each a new message, and every one is stored."""

from __future__ import annotations

import shutil
import subprocess
import uuid

import pytest
import requests

from bench import pipeline
from tests.integration.conftest import RunningStack, wait_timeline

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make system-deps)")


def test_wrk_script_posts_valid_unique_events_that_are_stored(mars: RunningStack) -> None:
    run = uuid.uuid4().hex[:8]
    cmd = pipeline.wrk_command(mars.api, connections=4, seconds=1, run=run)
    rps, latency = pipeline.parse_wrk(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                                     timeout=60).stdout)
    assert latency["errors"] == 0 and latency["count"] > 0 and rps > 0, latency
    assert 0 < latency["p50"] <= latency["p99"]
    mars.wait_drained()
    ids: list[str] = []
    params = {"app_id": f"single-{run}", "limit": "100"}
    while True:
        page = requests.get(mars.url("/api/messages"), params=params, timeout=10).json()
        ids += [m["message_id"] for m in page["items"]]
        if not page["cursor"]:
            break
        params["cursor"] = page["cursor"]
    # wrk counts the answers it read by the deadline; requests still in flight were stored too.
    assert len(ids) == len(set(ids)) >= latency["count"]
    timeline = wait_timeline(mars, ids[-1], app_id=f"single-{run}")["timelines"][0]
    assert [e["event"] for e in timeline["events"]] == ["CREATED"]
