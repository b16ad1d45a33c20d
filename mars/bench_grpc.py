"""`mars bench grpc`: a ghz-style load test of the gRPC shim (ghz itself cannot be installed here).

Measured beside a no-op MarsGrpc server in the same process and run (the ratio says what the shim
and the queues cost over gRPC itself), with Mars's published figure for reference.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from mars.proto import stubs

MARS_PUBLISHED = "Mars (Elixir), ghz -n 100000 on a MacBook Pro: 3,537.88 req/s, p99 4.60 ms, average 2.74 ms"


@dataclass
class Result:
    count: int
    total_s: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    @property
    def rps(self) -> float:
        return self.count / self.total_s if self.total_s else 0.0

    def pct(self, p: float) -> float:
        values = sorted(self.latencies_ms)
        return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else float("nan")


async def load(target: str, count: int, concurrency: int, app_id: str = "bench-grpc") -> Result:
    """`count` collectEvent calls, `concurrency` in flight at a time, over one HTTP/2 channel."""
    pb2, pb2_grpc = stubs()
    result = Result(count, 0.0)
    next_i = 0
    run = f"{time.time_ns():x}"
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb2_grpc.MarsGrpcStub(channel)

        async def worker() -> None:
            nonlocal next_i
            while next_i < count:
                i = next_i
                next_i += 1
                request = pb2.EventRequest(app_id=app_id, message_id=f"{run}-{i}", event="MESSAGE_CREATED",
                                           created_at="2026-11-26T10:00:00Z")
                start = time.perf_counter()
                try:
                    await stub.collectEvent(request, timeout=30)
                    result.statuses["OK"] += 1
                except grpc.aio.AioRpcError as exc:
                    result.statuses[exc.code().name] += 1
                result.latencies_ms.append((time.perf_counter() - start) * 1000)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.total_s = time.perf_counter() - start
    return result


def _noop_servicer() -> Any:
    """MarsGrpc that answers at once: the cost of gRPC itself on this machine."""
    pb2, pb2_grpc = stubs()

    class Noop(pb2_grpc.MarsGrpcServicer):  # type: ignore[name-defined]
        async def collectEvent(self, request: Any, context: Any) -> Any:  # noqa: N802 - Mars's rpc name
            return pb2.EventResponse(success=True)

    return Noop()


async def _serve_noop(port: int) -> None:
    _pb2, pb2_grpc = stubs()
    server = grpc.aio.server()
    pb2_grpc.add_MarsGrpcServicer_to_server(_noop_servicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def noop_server() -> tuple[subprocess.Popen[bytes], str]:
    """The no-op server in a process of its own, as the shim is: the load generator is not its rival."""
    from samlocal.stack import free_port, wait_for_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "mars.bench_grpc", "--noop", str(port)],
                               cwd=Path(__file__).resolve().parent.parent, start_new_session=True)
    wait_for_port("127.0.0.1", port, 30, process)
    return process, f"127.0.0.1:{port}"


def ghz_summary(result: Result, title: str) -> str:
    lat = result.latencies_ms
    lines = [title, "", "Summary:", f"  Count:\t{result.count}", f"  Total:\t{result.total_s:.2f} s",
             f"  Slowest:\t{max(lat):.2f} ms", f"  Fastest:\t{min(lat):.2f} ms",
             f"  Average:\t{statistics.fmean(lat):.2f} ms", f"  Requests/sec:\t{result.rps:.2f}", "",
             "Response time histogram:"]
    low, high = min(lat), max(lat)
    step = (high - low) / 10 or 1.0
    buckets = Counter(min(9, int((v - low) / step)) for v in lat)
    peak = max(buckets.values())
    for b in range(10):
        n = buckets.get(b, 0)
        lines.append(f"  {low + step * (b + 1):8.3f} [{n}]\t|{'∎' * round(40 * n / peak)}")
    lines += ["", "Latency distribution:"]
    lines += [f"  {p}% in {result.pct(p):.2f} ms" for p in (10, 25, 50, 75, 90, 95, 99)]
    lines += ["Status code distribution:"] + [f"  [{code}]   {n} responses" for code, n in result.statuses.items()]
    return "\n".join(lines)


async def compare(target: str, noop: str, count: int, concurrency: int) -> tuple[Result, Result]:
    await load(noop, min(200, count), concurrency)  # warm both paths
    await load(target, min(200, count), concurrency)
    baseline = await load(noop, count, concurrency)
    shim = await load(target, count, concurrency)
    return shim, baseline


def report(target: str, count: int, concurrency: int, send_ceiling: float | None = None) -> dict[str, Any]:
    from samlocal.stack import terminate

    process, noop = noop_server()
    try:
        shim, baseline = asyncio.run(compare(target, noop, count, concurrency))
    finally:
        terminate(process)
    print(ghz_summary(shim, f"gRPC shim {target}: collectEvent, {count} calls, concurrency {concurrency}"))
    print()
    print(f"no-op MarsGrpc server, same run:  {baseline.rps:8.1f} req/s, p99 {baseline.pct(99):.2f} ms")
    print(f"shim / no-op:                     {shim.rps / baseline.rps:8.2f}")
    if send_ceiling:
        print(f"shim / emulator SendMessage ceiling ({send_ceiling:.0f} req/s): {shim.rps / send_ceiling:.2f}")
    print(f"for reference, {MARS_PUBLISHED}")
    return {"rps": shim.rps, "p99_ms": shim.pct(99), "noop_rps": baseline.rps, "noop_p99_ms": baseline.pct(99),
            "statuses": dict(shim.statuses)}


if __name__ == "__main__":  # python -m mars.bench_grpc --noop PORT: the baseline server
    if len(sys.argv) == 3 and sys.argv[1] == "--noop":
        asyncio.run(_serve_noop(int(sys.argv[2])))
