"""`make soak`'s overload soak (bench/soak.py) in miniature, so its code cannot rot: a short calibration
and a 5 s open-loop burst at a small fixed rate on the shared stack, then the report's invariants."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import soak
from tests.integration.conftest import RunningStack


def test_soak_smoke_nothing_lost_nothing_duplicated_and_recovered(mars: RunningStack) -> None:
    state = json.loads((Path(mars.state_dir) / f"{mars.stack_name}.json").read_text())
    said: list[str] = []
    report = soak.run(soak.Target.from_state(state), seconds=5, rate=100, calibrate_seconds=3, keep=200, batch=10,
                      timeout=20, workers=16, recover_timeout=60, say=said.append)

    assert report["drain_rate_eps"] > 0, said
    assert report["requests"] >= 45 and report["offered"] >= report["requests"] * 10  # ~10 requests/s for 5 s
    assert report["accepted"] == report["offered"], report  # 100 events/s is far below what the stack takes
    assert report["recovered"] and report["recovery_seconds"] is not None, report
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["unexpected"] == 0, report
    assert report["stored_events"] >= report["accepted_events"] > report["accepted"]  # + the calibration's
    assert report["probes"] > 0 and report["probes_not_stored"] == 0 and report["max_lag_s"] is not None
    assert report["windows"] and report["windows"][0]["offered_eps"] > 0
    assert soak.ok(report)
    json.dumps(report)  # what main() writes to build/soak-report.json
    text = soak.render(report)
    for needle in ("drain rate", "accepted", "lost                        0", "duplicates                  0"):
        assert needle in text, text


def test_soak_verdict_fails_on_loss_or_duplicates() -> None:
    good: dict[str, Any] = {"recovered": True, "lost": 0, "duplicates": 0, "unexpected": 0}
    assert soak.ok(good)
    for key, value in (("recovered", False), ("lost", 1), ("duplicates", 1), ("unexpected", 2)):
        assert not soak.ok({**good, key: value})
