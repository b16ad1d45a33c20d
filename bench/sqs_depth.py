"""FIFO SQS throughput vs queue depth: stock moto 5.2.5 vs samlocal.emulator.patches.

    python -m bench.sqs_depth [--depths 0,1000,2000,5000] [--seconds 3]

Starts two emulators as subprocesses on free loopback ports:

* patched: ``python -m samlocal.emulator --port 0`` (the real launcher);
* unpatched: this script in ``--switchable-server`` mode, i.e. ``samlocal.emulator.serve``
  whose SQS code can be switched between patched and stock moto from stdin.

For each depth (ascending) a FIFO queue is pre-filled to that depth with
SendMessageBatch (10 per call, 100 message groups, unique dedup ids), then for a
few seconds the script alternates a SendMessageBatch of 10 and a
ReceiveMessage(10) + DeleteMessageBatch, so the depth stays put, timing each kind.

Why the unpatched server switches: stock moto fills a FIFO queue in O(depth^2)
(each send counts every message several times; ~11 msg/s at depth 750 on a
2-CPU box), so pre-filling it to 5,000 through the API would take about an hour.
Its pre-fill therefore runs with the patches on; the server is then switched to
stock moto (``moto_patches.revert()``, which restores moto's own methods and list
storage, the same state a stock pre-fill would have left) before anything is
measured.  Every measurement loop is bounded by time and count; a single stock
call at a deep queue can still take a few seconds.  Prints, never asserts.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import boto3
from botocore.config import Config

from bench.common import machine

REPO = Path(__file__).resolve().parents[1]
GROUPS = 100
BODY = "x" * 200


# --------------------------------------------------------------------------
# Switchable server (subprocess side)
# --------------------------------------------------------------------------


def switchable_server() -> int:
    """Serve on a free port; stdin lines "patched"/"stock" switch the SQS code."""
    from samlocal.emulator import patches as moto_patches
    from samlocal.emulator import server as emulator

    emulator.configure_json_logging()
    emu = emulator.serve("127.0.0.1", 0, patched=True, metrics_interval=0)
    for line in sys.stdin:
        command = line.strip()
        if command == "stock":
            moto_patches.revert()
        elif command == "patched":
            moto_patches.apply()
        elif command == "quit":
            break
        print(f"ok {command} applied={moto_patches.is_applied()}", flush=True)
    emu.stop()
    return 0


# --------------------------------------------------------------------------
# Driver side
# --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[str]
    url: str

    def switch(self, mode: str) -> None:
        if self.proc.stdin is None or self.proc.stdout is None:
            return
        self.proc.stdin.write(mode + "\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline().strip()
        if not reply.startswith(f"ok {mode}"):
            raise RuntimeError(f"{self.name}: unexpected reply {reply!r}")

    def stop(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except OSError:
                pass
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


def start_server(name: str, args: list[str], switchable: bool) -> Server:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        stdin=subprocess.PIPE if switchable else subprocess.DEVNULL,
        stdout=subprocess.PIPE if switchable else subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    try:
        info = json.loads(line)
    except json.JSONDecodeError as exc:
        proc.kill()
        raise RuntimeError(f"{name} emulator did not start: {line!r}") from exc
    threading.Thread(target=_drain, args=(proc.stderr,), daemon=True).start()
    return Server(name, proc, f"http://127.0.0.1:{info['port']}")


def sqs_client(url: str) -> Any:
    return boto3.client(
        "sqs",
        region_name="us-east-1",
        endpoint_url=url,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(retries={"max_attempts": 1}, read_timeout=120),
    )


class Filler:
    """SendMessageBatch of 10 with unique dedup ids, groups round-robin."""

    def __init__(self) -> None:
        self.seq = 0

    def entries(self, n: int = 10) -> list[dict[str, str]]:
        out = []
        for i in range(n):
            self.seq += 1
            out.append(
                {
                    "Id": str(i),
                    "MessageBody": BODY,
                    "MessageGroupId": f"g{self.seq % GROUPS}",
                    "MessageDeduplicationId": f"{self.seq}-{uuid.uuid4().hex}",
                }
            )
        return out


def depth_of(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def prefill(sqs: Any, url: str, filler: Filler, count: int, budget_s: float) -> None:
    deadline = time.monotonic() + budget_s
    sent = 0
    while sent < count and time.monotonic() < deadline:
        n = min(10, count - sent)
        sqs.send_message_batch(QueueUrl=url, Entries=filler.entries(n))
        sent += n


@dataclass
class Result:
    depth: int
    send_rate: float
    recv_rate: float
    rounds: int


def measure(sqs: Any, url: str, filler: Filler, seconds: float, max_rounds: int) -> tuple[float, float, int]:
    """Alternate send-batch and receive+delete-batch; rates in messages/s."""
    send_time = recv_time = 0.0
    sent = deleted = rounds = 0
    start = time.perf_counter()
    while rounds < max_rounds and (rounds == 0 or time.perf_counter() - start < seconds):
        t0 = time.perf_counter()
        resp = sqs.send_message_batch(QueueUrl=url, Entries=filler.entries())
        send_time += time.perf_counter() - t0
        sent += len(resp.get("Successful", []))

        t0 = time.perf_counter()
        msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=60).get("Messages", [])
        if msgs:
            entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
            resp = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
            deleted += len(resp.get("Successful", []))
        recv_time += time.perf_counter() - t0
        rounds += 1
    return sent / send_time, deleted / recv_time if recv_time else 0.0, rounds


def run_server(server: Server, depths: list[int], seconds: float, max_rounds: int, prefill_budget: float) -> list[Result]:
    sqs = sqs_client(server.url)
    queue = sqs.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:8]}.fifo", Attributes={"FifoQueue": "true"})
    url = queue["QueueUrl"]
    filler = Filler()
    results = []
    for depth in depths:
        server.switch("patched")
        current = depth_of(sqs, url)
        t0 = time.monotonic()
        prefill(sqs, url, filler, max(0, depth - current), prefill_budget)
        reached = depth_of(sqs, url)
        fill_s = time.monotonic() - t0
        server.switch("stock")
        send_rate, recv_rate, rounds = measure(sqs, url, filler, seconds, max_rounds)
        print(
            f"  {server.name:9} depth {reached:>6}: send {send_rate:8.1f}/s  recv+del {recv_rate:8.1f}/s"
            f"  ({rounds} rounds; pre-fill {fill_s:.1f}s)",
            flush=True,
        )
        results.append(Result(reached, send_rate, recv_rate, rounds))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", default="0,1000,2000,5000")
    parser.add_argument("--seconds", type=float, default=3.0, help="measurement time per depth (patched)")
    parser.add_argument("--unpatched-seconds", type=float, default=4.0, help="measurement time per depth (unpatched)")
    parser.add_argument("--max-rounds", type=int, default=2000, help="cap on send/receive rounds per depth")
    parser.add_argument("--prefill-budget", type=float, default=30.0, help="max seconds of pre-fill per depth")
    parser.add_argument("--switchable-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.switchable_server:
        return switchable_server()

    depths = sorted({int(d) for d in args.depths.split(",") if d.strip()})
    started = time.monotonic()
    print(f"machine: {machine()}")
    patched = start_server("patched", ["-m", "samlocal.emulator", "--host", "127.0.0.1", "--port", "0", "--metrics-interval", "0"], False)
    unpatched = start_server("unpatched", ["-m", "bench.sqs_depth", "--switchable-server"], True)
    try:
        print("measuring (FIFO queue, 100 groups, SendMessageBatch of 10 / ReceiveMessage 10 + DeleteMessageBatch):")
        res_p = run_server(patched, depths, args.seconds, args.max_rounds, args.prefill_budget)
        res_u = run_server(unpatched, depths, args.unpatched_seconds, args.max_rounds, args.prefill_budget)
    finally:
        patched.stop()
        unpatched.stop()

    print()
    header = (
        f"{'depth':>6} | {'unpatched send/s':>16} | {'patched send/s':>14} | {'ratio':>7} | "
        f"{'unpatched recv+del/s':>20} | {'patched recv+del/s':>18} | {'ratio':>7}"
    )
    print(header)
    print("-" * len(header))
    for u, p in zip(res_u, res_p, strict=True):
        depth = str(p.depth) if p.depth == u.depth else f"{p.depth}/{u.depth}"
        print(
            f"{depth:>6} | {u.send_rate:16.1f} | {p.send_rate:14.1f} | {p.send_rate / u.send_rate:6.1f}x | "
            f"{u.recv_rate:20.1f} | {p.recv_rate:18.1f} | {p.recv_rate / max(u.recv_rate, 1e-9):6.1f}x"
        )
    print()
    print(f"machine: {machine()}")
    print(f"total run time: {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
