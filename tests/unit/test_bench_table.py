"""docs/BENCHMARKS.md's current table is exactly what bench/table.py renders from the recorded runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

from bench import table

CELL = re.compile(r"^(—|[\d,.]+( \((\*\*)?\d+\.\d\d(\*\*)?(, \d+ connections|; p99 \d+|; \d+\.\d×)?\))?|"
                  r"(\d+: [\d,.]+)( / \d+: [\d,.]+)*|\d+ / \d+ / \d+|\d+\.\d|\d\.\d{3} \(minimum \d\.\d{3}\))$")


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
