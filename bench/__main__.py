"""`python -m bench` (make bench): every Mars benchmark, with its ratio to a baseline of the same run."""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import pipeline, table
from .common import machine


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--record", action="store_true",
                        help="save the run in bench/runs/ (make bench does; `python -m bench.table` renders them)")
    args = parser.parse_args()
    sizes = (pipeline.Sizes(events=1000, backlog=1000, seconds=3, grpc_calls=500, drain_seconds=5) if args.quick
             else pipeline.Sizes())
    info = machine()
    started = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['platform']}, Python {info['python']}, "
          f"moto {info['moto']}, load {info['loadavg']}, commit {info['commit'] or 'unknown'}", flush=True)
    res = pipeline.run(sizes)
    f = res.figures
    b, d = res.notes["b"], res.notes["d"]
    per_event, minimum, invokes, min_invokes = pipeline.calls_per_event(b, sizes.events_per_message)
    rows = [
        ("(a) emulator ceiling, pipeline calls", f["pipeline_ceiling_eps"], "events/s", "baseline", None),
        ("(a) emulator ceiling, SendMessage (peak)", f["send_ceiling_rps"], "req/s", "baseline", None),
        ("(b) HTTP bulk ingest → stored", f["bulk_eps"], "events/s", "(b)/(a)", f["bulk_eps"] / f["pipeline_ceiling_eps"]),
        ("(c) HTTP single events, front door (peak)", f["single_rps"], "req/s", "(c)/send", f["single_rps"] / f["send_ceiling_rps"]),
        ("(c'') (c) on the stack that carried (b)", f["single_rps_after_b"], "req/s", "(c'')/send",
         f["single_rps_after_b"] / f["send_ceiling_rps"]),
        ("(c') the same while the pipeline drains", f["single_rps_draining"], "req/s", "(c')/send",
         f["single_rps_draining"] / f["send_ceiling_rps"]),
        (f"(d) (b) with {sizes.backlog} waiting", f["backlog_eps"], "events/s", "(d)/(b)", f["backlog_eps"] / f["bulk_eps"]),
        ("(a) emulator ceiling, single-event pipeline", f["single_pipeline_ceiling_eps"], "events/s", "baseline", None),
        (f"(e) single events → stored, {sizes.drain_seconds:g} s draining", f["single_stored_eps"], "events/s", "(e)/(a)",
         f["single_stored_eps"] / f["single_pipeline_ceiling_eps"]),
        ("seed's wrk -t4 -c100 -d10s /api/create_event", f["seed_wrk_rps"], "req/s", "seed/send",
         f["seed_wrk_rps"] / f["send_ceiling_rps"]),
    ]
    print(f"\n{'figure':44} {'value':>10} {'unit':9} {'ratio':>8}  goal")
    for name, value, unit, label, ratio in rows:
        if ratio is None:
            ratio_text = f"{'':8}  {label}"
        elif label.startswith("(c')"):
            ratio_text = f"{ratio:8.2f}  {label} (no goal: the emulator also drains)"
        elif label.startswith("seed"):  # (c'') has issue 16's goal, as the table says
            ratio_text = f"{ratio:8.2f}  {label} (informational)"
        else:
            ratio_text = f"{ratio:8.2f}  {label} ≥ 0.80 {'✓' if ratio >= 0.8 else '✗'}"
        print(f"{name:44} {value:10.1f} {unit:9} {ratio_text}")
    def sweep(key: str) -> str:
        return ", ".join(f"{n}: {v:.0f}" for n, v in res.notes[key].items())

    print(f"(a) SendMessage req/s by client threads: {sweep('a_send_sweep')}; "
          f"(c) req/s by connections: {sweep('c_sweep')}")
    for key, label in (("c_latency_ms", "(c)  "), ("c_after_b_latency_ms", "(c'')"), ("c_draining_latency_ms", "(c') ")):
        lat = res.notes[key]
        print(f"{label} latency ms: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  p99 {lat['p99']:.1f}  "
              f"({res.notes['c_connections']} connections, {lat['count']} requests, {lat['errors']} failed"
              + "".join(f", {kind} {n}" for kind, n in lat.get("error_kinds", {}).items())
              + f", load generator: {lat['load']})")
    e, seed = res.notes["e"], res.notes["seed_wrk"]
    print(f"(e) {e['accepted']} events accepted ({e['front_door_rps']:.0f} req/s, p50 {e['p50']:.1f} ms, p99 "
          f"{e['p99']:.1f} ms), all stored after {e.get('drained_seconds', e['seconds'])} s and read by the live path "
          f"after {e['seconds']} s; AWS calls: "
          + ", ".join(f"{k} {v}" for k, v in sorted(e["calls"].items())))
    print(f"seed's wrk command: {res.figures['seed_wrk_rps']:.0f} req/s, latency p50 {seed['p50']:.1f} ms, p90 "
          f"{seed['p90']:.1f} ms, p99 {seed['p99']:.1f} ms, {seed['errors']} failed (Mars's README: 8–11 k req/s "
          "on a laptop with in-memory queues)")
    print(f"(b) {b['events']} events accepted in {b['accept_seconds']} s, all stored after {b['seconds']} s")
    print(f"(d) {d['events']} + {d['backlog']} waiting, all stored after {d['seconds']} s")
    print(f"(b) AWS API calls per event: {per_event:.3f} (minimum possible {minimum:.3f}); "
          f"Lambda invokes per event: {invokes:.3f} (minimum {min_invokes:.3f})")
    print("    by operation: " + ", ".join(f"{k} {v}" for k, v in sorted(b["calls"].items())))
    print("\n(c) by hand against `make up` (apt-get install wrk; Mars's README): "
          + " ".join(pipeline.wrk_command("http://127.0.0.1:4000", res.notes["c_connections"], sizes.seconds))
          .replace(f"{pipeline.ROOT}/", ""))
    run = {"date": started, "machine": info, "sizes": vars(sizes), "figures": f, "notes": res.notes,
           "calls_per_event": per_event, "calls_minimum": minimum}
    if args.record and not args.quick:
        print(f"recorded: {table.record(run).relative_to(table.ROOT)}")
    if args.json:
        print(json.dumps(run, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
