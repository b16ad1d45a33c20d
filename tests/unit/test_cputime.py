"""tests/cputime.py: the CPU of a run, its orphans included, as `make test` prints it at its end.

Each case runs the tool in a process of its own: it makes itself a child subreaper, which a pytest
worker must not become (its stacks' orphans would come back to it and never be reaped)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.cputime import Account, _descendants, running

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^== CPU of (?P<label>.+?): (?P<cpu>[\d,.]+) s \(user [\d,.]+ \+ sys [\d,.]+; (?P<counted>[^)]+)\) "
                  r"in (?P<min>\d+) min (?P<sec>\d+) s on (?P<cores>\d+) cores?", re.M)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_CHILD_SUBREAPER is Linux's")

# A command whose CPU is burnt by a grandchild that outlives its parent: re-parented, it is counted by
# no one's `time` — the case of an execution environment outliving its stack's fork server.
ORPHAN = textwrap.dedent("""
    import os, sys, time
    burn, linger, status = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    if os.fork() == 0:
        parent = os.getpid()
        if os.fork() == 0:
            deadline = time.monotonic() + 5
            print(os.getpid(), flush=True)
            devnull = os.open(os.devnull, os.O_WRONLY)  # the test reads the pipe to its end
            os.dup2(devnull, 1), os.dup2(devnull, 2)
            while os.getppid() == parent and time.monotonic() < deadline:
                time.sleep(0.01)  # until our parent is gone and we are re-parented
            start = time.process_time()
            while time.process_time() - start < burn:
                pass
            time.sleep(linger)
            os._exit(0)
        os._exit(0)
    os.wait()
    sys.exit(status)
""")


def cputime(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tests.cputime", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def orphan(burn: float, linger: float, status: int = 0) -> list[str]:
    return [sys.executable, "-c", ORPHAN, str(burn), str(linger), str(status)]


def parse(out: str) -> re.Match[str]:
    match = LINE.search(out)
    assert match, out
    return match


def test_an_orphans_cpu_is_counted_where_time_misses_it() -> None:
    got = cputime("--label", "orphan", "--", *orphan(0.6, 0, status=3))
    assert got.returncode == 3, got.stderr  # the command's status
    line = parse(got.stdout)
    assert line["label"] == "orphan" and line["counted"] == "every process it started"
    assert float(line["cpu"].replace(",", "")) >= 0.55, got.stdout
    assert "still running" not in got.stdout

    # The same command under a plain parent's accounting (what `time` reads): the orphan is missed.
    plain = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import resource, subprocess, sys, time
        subprocess.run(sys.argv[1:])
        time.sleep(1.5)  # the orphan burns meanwhile, re-parented to init
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        print(r.ru_utime + r.ru_stime)
    """), *orphan(0.6, 0)], capture_output=True, text=True, timeout=60)
    assert float(plain.stdout.split()[-1]) < 0.3, plain.stdout


def test_a_process_still_running_after_the_grace_is_named_and_left_not_waited_for() -> None:
    started = time.monotonic()
    got = cputime("--grace", "2", "--", *orphan(0.2, 30))
    try:
        assert got.returncode == 0, got.stderr
        assert time.monotonic() - started < 20  # not the orphan's 30 s
        leaked_pid = int(got.stdout.split()[0])  # the orphan printed its pid first
        assert re.search(rf"^== still running 2 s after the command ended \(leaked by it, left running\): "
                         rf"pid {leaked_pid}, [\d.]+ s of CPU so far: .*-c", got.stdout, re.M), got.stdout
        assert float(parse(got.stdout)["cpu"].replace(",", "")) >= 0.15  # its CPU so far, from /proc
    finally:
        for pid in re.findall(r"pid (\d+),", got.stdout):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_command_killed_by_a_signal_exits_as_a_shell_says_so() -> None:
    got = cputime("--", sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert got.returncode == 128 + signal.SIGKILL
    parse(got.stdout)


def test_no_command_is_a_usage_error() -> None:
    got = cputime("--label", "x")
    assert got.returncode == 2 and "no command given" in got.stderr


def test_the_line_puts_the_cpu_beside_five_minutes_of_the_cores() -> None:
    account = Account(returncode=0, cpu_s=1299.4, user_s=1150.0, sys_s=149.4, wall_s=668.0, cores=2,
                      subreaper=True, leaked=())
    assert account.line("make test") == (
        "== CPU of make test: 1,299.4 s (user 1,150.0 + sys 149.4; every process it started) in 11 min 8 s "
        "on 2 cores (97% of them busy); 5 minutes on 2 cores is 600 s of CPU")
    one = Account(0, 1.0, 1.0, 0.0, 1.0, 1, False, ()).line("x")
    assert "reaped processes only" in one and "on 1 core (100% of them busy); 5 minutes on 1 core is 300 s" in one


def test_a_sigterm_ends_the_whole_run_not_only_its_command() -> None:
    # The command's child outlives it unless signalled (as pytest outlives a killed make).
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-m", "tests.cputime", "--grace", "30", "--", sys.executable, "-c", script],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_descendants(proc.pid)) < 2:
            time.sleep(0.05)
        tree = _descendants(proc.pid)
        assert len(tree) == 2, tree  # the command and its child
        started = time.monotonic()
        proc.terminate()
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - started < 10, out  # not the command's 60 s, nor the grace's 30
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert "still running" not in out
        assert not [pid for pid in tree if running(pid)]
    finally:
        proc.kill()




def test_ctrl_c_to_the_group_ends_the_command_and_the_run_is_still_reported() -> None:
    # What a terminal does on Ctrl-C: SIGINT to the whole foreground group, the tool included.
    proc = subprocess.Popen([sys.executable, "-m", "tests.cputime", "--", sys.executable, "-c", "import time; time.sleep(60)"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not _descendants(proc.pid):
            time.sleep(0.05)
        assert _descendants(proc.pid)
        time.sleep(0.3)  # the command's interpreter is up (its default SIGINT: KeyboardInterrupt)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        # the command died of it (Python re-raises an uncaught KeyboardInterrupt as SIGINT): 128 + 2; the
        # tool outlived it and reported the run
        assert proc.returncode == 128 + signal.SIGINT and "KeyboardInterrupt" in err, err
        parse(out)
    finally:
        proc.kill()
