"""docs/BENCHMARKS.md's current table is exactly what bench/table.py renders from the recorded runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import table

CELL = re.compile(r"^(—|[\d,.]+( \((\*\*)?\d+\.\d\d(\*\*)?(, \d+ connections|; p99 \d+|; \d+\.\d×)?\))?|"
                  r"(\d+: [\d,.]+)( / \d+: [\d,.]+)*|\d+ / \d+ / \d+|\d+\.\d|\d\.\d{3} \(minimum \d\.\d{3}\)|"
                  r"[\d,.]+ \(retracted: [^|]+\)|[0-9a-f]{7,40}(\+dirty)?)$")


def test_the_doc_holds_the_rendering_of_the_recorded_runs() -> None:
    assert table.block() == table.render(table.load()), "run `python -m bench.table` (make bench does)"


def test_every_recorded_cell_is_a_figure_not_a_stray_string() -> None:
    runs = table.load()
    assert runs, "no run recorded in bench/runs/"
    for run in runs:
        for figure, cell in table.rows(run):
            assert CELL.match(cell), f"{run['name']}: {figure}: {cell!r}"


def test_render_and_update_round_trip(tmp_path: Path) -> None:
    runs = table.load()
    doc = tmp_path / "B.md"
    doc.write_text(f"intro\n{table.START}\ngarbled | 759 (**0.88**, 16 connections)32\n{table.END}\nrest\n")
    results = tmp_path / "runs"
    for run in runs[-2:]:
        run = {k: v for k, v in run.items() if k != "name"}
        table.record(json.loads(json.dumps(run)), results)
    assert table.update(doc, results)
    text = doc.read_text()
    assert "garbled" not in text and text.startswith("intro\n") and text.endswith("rest\n")
    assert table.block(doc) == table.render(table.load(results))
    assert not table.update(doc, results)  # idempotent


def test_a_retracted_figure_is_shown_with_its_reason_and_never_counted_for_its_goal() -> None:
    runs = [r for r in table.load() if "single_stored_eps" in r["figures"]][-1:]
    assert runs, "no run with (e) recorded"
    run = json.loads(json.dumps(runs[0]))
    run["figures"]["single_stored_eps"] = run["figures"]["single_pipeline_ceiling_eps"] * 5  # would meet the goal
    counted = table.render([run])
    assert "(e)/(a) ≥ 0.8 ✓" in counted
    run["notes"]["retracted"] = {"single_stored_eps": "its baseline was wrong"}
    shown = table.render([run])
    assert "(retracted: its baseline was wrong)" in shown and "(e)/(a) ≥ 0.8 (no run counts)" in shown
