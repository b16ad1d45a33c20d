"""The current figures table of docs/BENCHMARKS.md, rendered from recorded runs, never typed by hand.

`make bench` records each run as `bench/runs/<date>-<time>.json` (`python -m bench --record`)
and then runs `python -m bench.table`, which rewrites the table between the markers below from the
last RUNS recordings. tests/unit/test_bench_table.py checks the committed table is exactly that.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "runs"
DOC = ROOT / "docs" / "BENCHMARKS.md"
START, END = "<!-- bench-table:start (python -m bench.table) -->", "<!-- bench-table:end -->"
RUNS = 3  # columns: the latest recorded runs
GOAL = 0.8


def load(directory: Path = RESULTS) -> list[dict[str, Any]]:
    """Every recorded run, oldest first (file names sort by date and time)."""
    return [dict(json.loads(p.read_text()), name=p.stem) for p in sorted(directory.glob("*.json"))]


def record(run: dict[str, Any], directory: Path = RESULTS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{run['date']}.json"
    path.write_text(json.dumps(run, indent=1, sort_keys=True, default=str) + "\n")
    return path


def _num(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.3f}"


def _ratio(value: float, goal: bool) -> str:
    return f"**{value:.2f}**" if goal and value >= GOAL else f"{value:.2f}"


def rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, cell) for one run, in the table's order."""
    f, n = run["figures"], run["notes"]
    send, pipeline = f["send_ceiling_rps"], f["pipeline_ceiling_eps"]
    lat = n["c_latency_ms"]
    later: list[tuple[str, str]] = []  # figures that runs before 2026-11-30 afternoon did not have
    if "single_stored_eps" in f:
        e_cell = f"{_num(f['single_stored_eps'])} ({_ratio(f['single_stored_eps'] / f['single_pipeline_ceiling_eps'], True)})"
        if "single_stored_eps" in n.get("retracted", {}):  # measured, then found wrong: shown, never counted
            e_cell = f"{_num(f['single_stored_eps'])} (retracted: {n['retracted']['single_stored_eps']})"
        later += [("(a) single-event pipeline ceiling, events/s", _num(f["single_pipeline_ceiling_eps"])),
                  ("(e) single events → stored, 30 s draining, events/s", e_cell),
                  ("seed's `wrk -t4 -c100 -d10s /api/create_event`, req/s (p99 ms)",
                   f"{_num(f['seed_wrk_rps'])} ({_ratio(f['seed_wrk_rps'] / send, False)}; p99 {n['seed_wrk']['p99']:.0f})")]
    if "grpc" in n:
        g = n["grpc"]
        later.append(("gRPC shim, req/s (÷ no-op; p99 ÷ no-op's)",
                      f"{_num(g['rps'])} ({_ratio(g['rps'] / g['noop_rps'], True)}; {g['p99_ms'] / g['noop_p99_ms']:.1f}×)"))
    return [
        ("(a) pipeline ceiling, events/s", _num(pipeline)),
        ("(a) SendMessage ceiling (peak), req/s", _num(send)),
        ("(b) bulk ingest, events/s", f"{_num(f['bulk_eps'])} ({_ratio(f['bulk_eps'] / pipeline, True)})"),
        ("(c) single events (peak), req/s",
         f"{_num(f['single_rps'])} ({_ratio(f['single_rps'] / send, True)}, {n['c_connections']} connections)"),
        ("(c) req/s by connections", " / ".join(f"{c}: {_num(v)}" for c, v in n["c_sweep"].items())),
        ("(c'') (c) on the stack that carried (b), req/s",
         f"{_num(f['single_rps_after_b'])} ({_ratio(f['single_rps_after_b'] / send, True)})"),
        ("(c') while draining, req/s", f"{_num(f['single_rps_draining'])} ({_ratio(f['single_rps_draining'] / send, False)})"),
        ("(d) with a backlog waiting, events/s", f"{_num(f['backlog_eps'])} ({_ratio(f['backlog_eps'] / f['bulk_eps'], True)})"),
        *later,
        ("(c) latency p50 / p90 / p99, ms", f"{lat['p50']:.0f} / {lat['p90']:.0f} / {lat['p99']:.0f}"),
        ("AWS calls per event during (b)", f"{run['calls_per_event']:.3f} (minimum {run['calls_minimum']:.3f})"),
        # other work on the machine moves every figure: the 1-minute load when the run started
        ("load average at the start", f"{run['machine']['loadavg'][0]:.1f}"),
        ("commit measured", run["machine"].get("commit") or "—"),  # recorded since 2026-12-01
    ]


GOALS = {"(b) bulk ingest, events/s": ("(b)/(a)", lambda r: r["figures"]["bulk_eps"] / r["figures"]["pipeline_ceiling_eps"]),
         "(c) single events (peak), req/s": ("(c)/send", lambda r: r["figures"]["single_rps"] / r["figures"]["send_ceiling_rps"]),
         "(c'') (c) on the stack that carried (b), req/s":
             ("(c'')/send", lambda r: r["figures"]["single_rps_after_b"] / r["figures"]["send_ceiling_rps"]),
         "(d) with a backlog waiting, events/s": ("(d)/(b)", lambda r: r["figures"]["backlog_eps"] / r["figures"]["bulk_eps"]),
         "(e) single events → stored, 30 s draining, events/s":
             ("(e)/(a)", lambda r: r["figures"]["single_stored_eps"] / r["figures"]["single_pipeline_ceiling_eps"]),
         "gRPC shim, req/s (÷ no-op; p99 ÷ no-op's)":
             ("shim/no-op", lambda r: r["notes"]["grpc"]["rps"] / r["notes"]["grpc"]["noop_rps"])}
# the figures each goal needs: a run recorded before a figure existed does not count for its goal
NEEDS = {"(e) single events → stored, 30 s draining, events/s": "single_stored_eps"}


def render(runs: list[dict[str, Any]]) -> str:
    shown = runs[-RUNS:]
    if not shown:
        return "No run recorded yet: `make bench` records one."
    header = ["figure", *(r["name"] for r in shown), "goal"]
    table = [header, ["---"] * len(header)]
    per_run = [dict(rows(r)) for r in shown]
    for figure, _ in rows(shown[-1]):
        goal = ""
        if figure in GOALS:
            label, ratio = GOALS[figure]
            met = [ratio(r) >= GOAL for r in shown if NEEDS.get(figure, "") in ("", *r["figures"])
                   and NEEDS.get(figure, "") not in r["notes"].get("retracted", {})]
            goal = f"{label} ≥ {GOAL} " + ("(no run counts)" if not met else "✓" if all(met)
                                           else f"✗ (missed in {met.count(False)} of {len(met)} runs)")
        elif figure.startswith("(a)"):
            goal = "baseline"
        table.append([figure, *(cells.get(figure, "—") for cells in per_run), goal])
    machines = sorted({f"{r['machine']['cores']} cores, {r['machine']['cpu']}, {r['machine']['platform']}, "
                       f"Python {r['machine']['python']}, moto {r['machine']['moto']}" for r in shown})
    lines = ["| " + " | ".join(row) + " |" for row in table]
    return "\n".join([*lines, "", "Machine: " + "; ".join(machines) + "."])


def update(doc: Path = DOC, directory: Path = RESULTS) -> bool:
    """Rewrites the block between the markers; True if it changed."""
    text = doc.read_text()
    head, start, rest = text.partition(START)
    _old, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{doc}: the markers {START!r} … {END!r} are missing")
    new = f"{head}{START}\n{render(load(directory))}\n{END}{tail}"
    doc.write_text(new)
    return new != text


def block(doc: Path = DOC) -> str:
    """What the doc holds between the markers."""
    return doc.read_text().partition(START)[2].partition(END)[0].strip("\n")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.table", description=__doc__)
    parser.parse_args()
    changed = update()
    print(f"{DOC.relative_to(ROOT)}: {'updated' if changed else 'already current'} from {RESULTS.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
