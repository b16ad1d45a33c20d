"""`python -m bench.grpc_cost`: where a gRPC collectEvent's time goes, in CPU per call of each process.

Throughput on this shared 2-core machine moves ±30 % from run to run; CPU per call does not, and it
bounds throughput: a call can go no faster than (the CPU every process spends on it) / (the cores).
Measured, with the triggers paused (no drain shares the machine):
- the no-op MarsGrpc server (`mars bench grpc`'s baseline) and the load client;
- the shim (`mars up`'s process) and the emulator process that holds SQS, for the same calls;
- the shim's send path alone: `mars_common.queues.send_batch`, the function the shim's batcher calls,
  from this process with batches of 1, 2, 5 and 10 events (CPU per event here and in the emulator).
The shim's own gRPC + validation cost is its CPU per call less what its sends cost.
"""

from __future__ import annotations

import asyncio
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from bench.common import machine, progress, start_stack
from mars import bench_grpc

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(pattern: str) -> int:
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False).stdout.split()
    if len(found) != 1:
        raise RuntimeError(f"expected one process matching {pattern!r}, found {found}")
    return int(found[0])


def send_path(queue_url: str, emulator: int, calls: int = 60) -> dict[int, tuple[float, float]]:
    """CPU per event (this process, the emulator) of send_batch with batches of 1, 2, 5 and 10."""
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    from mars_common.events import parse_event
    from mars_common.queues import send_batch

    out: dict[int, tuple[float, float]] = {}
    run = f"{time.time_ns():x}"
    for size in (1, 2, 5, 10):
        events = [[(i, parse_event({"app_id": "bench-grpc", "message_id": f"{run}-{size}-{c}-{i}",
                                    "event": "MESSAGE_CREATED", "created_at": "2026-11-26T10:00:00Z"}))
                   for i in range(size)] for c in range(calls)]
        send_batch(queue_url, events[0])  # warm the client
        mine, emu = own_cpu(), cpu_seconds(emulator)
        for batch in events[1:]:
            failures = send_batch(queue_url, batch)
            if failures:
                raise RuntimeError(f"send_batch failed: {failures[:3]}")
        n = (calls - 1) * size
        out[size] = ((own_cpu() - mine) / n * 1000, (cpu_seconds(emulator) - emu) / n * 1000)
    return out


def main() -> int:
    print(f"machine: {machine()}")
    stack = start_stack(Path(tempfile.mkdtemp(prefix="mars-grpc-cost-")), "--warm", "1")
    try:
        stack.set_triggers(False)
        target = stack.state["outputs"]["GrpcEndpoint"]
        shim = child(f"grpc_shim.*--port {target.rsplit(':', 1)[1]}")
        emulator = child(f"samlocal.emulator.*--port {stack.state['endpoint'].rsplit(':', 1)[1]}")
        os.environ["AWS_ENDPOINT_URL"] = stack.state["endpoint"]
        os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
        noop_process, noop = bench_grpc.noop_server()
        try:
            count, concurrency = 3000, 50
            asyncio.run(bench_grpc.load(noop, 300, concurrency))
            asyncio.run(bench_grpc.load(target, 300, concurrency))
            progress(f"{count} collectEvent calls at concurrency {concurrency}: no-op server, then the shim (x2)")
            for round_ in (1, 2):
                mine, server = own_cpu(), cpu_seconds(noop_process.pid)
                base = asyncio.run(bench_grpc.load(noop, count, concurrency))
                noop_ms = (cpu_seconds(noop_process.pid) - server) / count * 1000
                noop_client = (own_cpu() - mine) / count * 1000
                mine, shim_0, emu_0 = own_cpu(), cpu_seconds(shim), cpu_seconds(emulator)
                got = asyncio.run(bench_grpc.load(target, count, concurrency))
                shim_ms = (cpu_seconds(shim) - shim_0) / count * 1000
                emu_ms = (cpu_seconds(emulator) - emu_0) / count * 1000
                shim_client = (own_cpu() - mine) / count * 1000
                print(f"round {round_}: no-op {base.rps:6.0f} req/s p99 {base.pct(99):6.1f} ms | CPU/call: server "
                      f"{noop_ms:.3f} ms, client {noop_client:.3f} ms")
                print(f"         shim  {got.rps:6.0f} req/s p99 {got.pct(99):6.1f} ms | CPU/call: shim {shim_ms:.3f} ms, "
                      f"emulator {emu_ms:.3f} ms, client {shim_client:.3f} ms | req/s ratio {got.rps / base.rps:.2f}")
                bound = (os.cpu_count() or 1) * 1000 / (shim_ms + emu_ms + shim_client)
                print(f"         the cores bound the shim at {bound:.0f} req/s; the no-op at "
                      f"{(os.cpu_count() or 1) * 1000 / (noop_ms + noop_client):.0f} req/s")
        finally:
            noop_process.kill()
        progress("the shim's send path alone (send_batch from this process)")
        for size, (mine_ms, emu_ms) in send_path(stack.queue_urls[0], emulator).items():
            print(f"send_batch of {size:2d}: CPU per event {mine_ms:.3f} ms here (botocore), {emu_ms:.3f} ms in the emulator")
    finally:
        stack.stop()
    stopped = [line for line in stack.log.read_text().splitlines() if '"grpc shim stopped"' in line]
    print(f"the shim's batches over the whole run: {stopped[-1] if stopped else 'no stop line in the log'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
