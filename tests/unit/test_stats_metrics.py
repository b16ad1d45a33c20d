"""`mars stats --metrics`: the EMF lines of a stack's log summed per metric and dimension set."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mars import cli, emf


def emf_line(service: str, values: dict[str, Any], units: dict[str, str] | None = None,
             dims: dict[str, str] | None = None) -> str:
    dims = {"service": service, **(dims or {})}
    return json.dumps({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{
        "Namespace": "Mars", "Dimensions": [list(dims)],
        "Metrics": [{"Name": k, "Unit": (units or {}).get(k, "Count")} for k in values]}]}, **dims, **values})


LOG = "\n".join([
    '{"level":"INFO","msg":"invoke","function":"mars-local-StoreFunction"}',  # the runtime's lines: skipped
    emf_line("mars-store", {"EventsStored": [3.0], "StoreLatency": [2.0, 4.0]}, {"StoreLatency": "Milliseconds"}),
    "a line that is not JSON",
    '{"_aws": "broken"}',
    emf_line("mars-store", {"EventsStored": [2.0], "StoreLatency": [6.0]}, {"StoreLatency": "Milliseconds"}),
    emf_line("mars-api", {"IngestRejected": [1.0]}, dims={"reason": "VALIDATION_ERROR"}),
    emf_line("mars-api", {"IngestRejected": 1}, dims={"reason": "VALIDATION_ERROR"}),  # a bare number is valid EMF
    emf_line("mars-api", {"IngestRejected": [1.0]}, dims={"reason": "INVALID_JSON"}),
]) + "\n"


def test_lines_are_summed_per_metric_and_dimension_values() -> None:
    rows = {(s.metric, tuple(sorted(s.dimensions.items()))): s.as_dict() for s in emf.summarize(LOG.splitlines())}
    stored = rows[("EventsStored", (("service", "mars-store"),))]
    assert (stored["sum"], stored["samples"]) == (5, 2)
    latency = rows[("StoreLatency", (("service", "mars-store"),))]
    assert (latency["unit"], latency["samples"], latency["average"], latency["max"]) == ("Milliseconds", 3, 4, 6)
    assert rows[("IngestRejected", (("reason", "VALIDATION_ERROR"), ("service", "mars-api")))]["sum"] == 2
    assert rows[("IngestRejected", (("reason", "INVALID_JSON"), ("service", "mars-api")))]["sum"] == 1
    assert len(rows) == 4


def test_a_metric_is_counted_once_per_dimension_set_it_is_published_with() -> None:
    line = json.dumps({"_aws": {"Timestamp": 1, "CloudWatchMetrics": [{"Namespace": "Mars",
                       "Dimensions": [["service"], ["service", "reason"]], "Metrics": [{"Name": "X", "Unit": "Count"}]}]},
                       "service": "s", "reason": "r", "X": [2]})
    got = sorted((tuple(sorted(s.dimensions)), s.as_dict()["sum"]) for s in emf.summarize([line]))
    assert got == [(("reason", "service"), 2), (("service",), 2)]


def test_mars_stats_metrics_prints_a_table_or_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "stack.log"
    log.write_text(LOG)
    assert cli.main(["stats", "--metrics", "--log", str(log)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAMESPACE", "METRIC", "DIMENSIONS", "UNIT", "SUM", "SAMPLES", "AVERAGE", "MAX"]
    assert any(line.split()[:5] == ["Mars", "EventsStored", "service=mars-store", "Count", "5"] for line in out)
    assert cli.main(["stats", "--metrics", "--log", str(log), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"namespace": "Mars", "metric": "IngestRejected", "unit": "Count",
            "dimensions": {"service": "mars-api", "reason": "INVALID_JSON"},
            "sum": 1, "samples": 1, "average": 1, "min": 1, "max": 1} in rows


def test_mars_stats_metrics_reads_the_running_stacks_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "mars-local.log"
    log.write_text(LOG)
    # a running stack's state (this process stands in for `mars up`)
    (tmp_path / "mars-local.json").write_text(json.dumps({"pid": os.getpid(), "stack": "mars-local", "outputs": {},
                                                          "log": str(log)}))
    assert cli.main(["stats", "--metrics", "--json", "--state-dir", str(tmp_path)]) == 0
    assert {r["metric"] for r in json.loads(capsys.readouterr().out)} == {"EventsStored", "StoreLatency", "IngestRejected"}


def test_without_a_stack_or_a_log_it_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stats", "--metrics", "--state-dir", str(tmp_path)]) == 2
    assert "no local stack 'mars-local' is running" in capsys.readouterr().err
    assert cli.main(["stats", "--metrics", "--log", str(tmp_path / "missing.log")]) == 1
    assert "cannot read the log" in capsys.readouterr().err


def test_a_log_without_metrics_is_said_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "quiet.log"
    log.write_text('{"level":"INFO","msg":"stack ready"}\n')
    assert cli.main(["stats", "--metrics", "--log", str(log)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "no metrics (EMF lines)" in captured.err
    assert cli.main(["stats", "--metrics", "--log", str(log), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
