"""Run a command and say how much CPU every process it started used, orphans included.

`time` (and `getrusage(RUSAGE_CHILDREN)`) counts a process's CPU only when its own parent reaps it. A
process whose parent exits first — a function's execution environment outliving its fork server when a
stack stops, a daemon that double-forks — is re-parented to init and counted by no one: `time make test`
missed about a quarter of the suite's CPU that way (issue 16, measured against /proc). Here this
process makes itself the child subreaper of everything under it (Linux's PR_SET_CHILD_SUBREAPER), so
those orphans come back to it, are reaped here and counted.

    python -m tests.cputime [--grace S] [--label TEXT] -- COMMAND ...

prints, when COMMAND ends, one line: its CPU (user + sys of every process it started), the wall time,
the cores, and the CPU a 5-minute run could use on them; exits with COMMAND's status. Processes still
alive `--grace` seconds after COMMAND ended (leaked by it) are named, their CPU so far counted from
/proc, and left running: a run that leaks a process says so rather than waiting on it forever.
Ctrl-C is the command's to handle (the terminal sends it to the whole group); a SIGTERM or SIGHUP
sent to this process is sent on to every process under it.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
FIVE_MINUTES = 300.0
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Leaked:
    pid: int
    cpu_s: float
    cmdline: str


@dataclass(frozen=True)
class Account:
    returncode: int
    cpu_s: float  # every reaped descendant, and the leaked ones' CPU so far
    user_s: float
    sys_s: float
    wall_s: float
    cores: int
    subreaper: bool
    leaked: tuple[Leaked, ...]

    def line(self, label: str) -> str:
        budget = self.cores * FIVE_MINUTES
        busy = self.cpu_s / (self.wall_s * self.cores) if self.wall_s > 0 else 0.0
        minutes, seconds = divmod(round(self.wall_s), 60)
        counted = "every process it started" if self.subreaper else "its reaped processes only (no subreaper here)"
        on = f"{self.cores} core" if self.cores == 1 else f"{self.cores} cores"
        return (f"== CPU of {label}: {self.cpu_s:,.1f} s (user {self.user_s:,.1f} + sys {self.sys_s:,.1f}; "
                f"{counted}) in {minutes} min {seconds} s on {on} ({busy:.0%} of them busy); "
                f"5 minutes on {on} is {budget:,.0f} s of CPU")


def become_subreaper() -> bool:
    """True when orphans of our descendants will be re-parented to this process (Linux ≥ 3.4)."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _parents() -> dict[int, int]:
    """Every live process's parent, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            found[int(entry)] = int(stat[1])
    return found


def _children(of: int) -> list[int]:
    """Live processes whose parent is `of` (orphans re-parented to us included)."""
    return [pid for pid, parent in _parents().items() if parent == of]


def _descendants(of: int) -> list[int]:
    parents = _parents()
    found: list[int] = []
    frontier = {of}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found += frontier
    return found


def _terminate_tree(signum: int, _frame: object) -> None:
    """A SIGTERM or SIGHUP for the run ends all of it: make, killed alone, leaves its recipes' processes
    (pytest, its workers, their stacks) running; ours are all under us, orphans included."""
    for pid in _descendants(os.getpid()):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat's fields after the command name (which may hold spaces and parentheses); None
    when the process is gone (or there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU of a process and of the children it reaped, from /proc; None when it is gone."""
    stat = _stat(pid)
    # utime, stime, cutime, cstime: fields 14-17 of stat(5), 12-15 after the command name
    return None if stat is None else sum(int(v) for v in stat[11:15]) / _TICKS


def _leaked(pid: int) -> Leaked | None:
    cpu = cpu_seconds(pid) if running(pid) else None  # a zombie: the next wait reaps and counts it
    if cpu is None:
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = "?"
    return Leaked(pid, cpu, cmdline)


def run(command: list[str], grace_s: float = 10.0) -> Account:
    subreaper = become_subreaper()
    start = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Ctrl-C reaches the whole foreground group: the command decides what it means; we keep reaping.
    # Handlers, not SIG_IGN, which the command would inherit through exec (handlers are reset there);
    # set before the command starts, so no signal finds us without them.
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, _terminate_tree)
    signal.signal(signal.SIGHUP, _terminate_tree)
    child = subprocess.Popen(command)
    returncode: int | None = None
    while returncode is None:
        pid, status = os.wait()  # the command, or an orphan re-parented to us
        if pid == child.pid:
            returncode = os.waitstatus_to_exitcode(status)
            child.returncode = returncode  # Popen must not wait for a pid we reaped
    ended = time.monotonic()
    deadline = ended + grace_s
    while True:  # the orphans still running when the command ended: reap them as they end
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            ended = time.monotonic()  # the run lasts until its last process ends
        elif time.monotonic() >= deadline:
            break
        else:
            time.sleep(0.05)
    wall = ended - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    leaked = tuple(found for pid in _children(os.getpid()) if (found := _leaked(pid)) is not None)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return Account(returncode, user + system + sum(p.cpu_s for p in leaked), user, system, wall, cores(),
                   subreaper, leaked)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cputime", description=__doc__.split("\n\n")[0])
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds to wait for orphans once the command ended (default 10)")
    parser.add_argument("--label", default=None, help="what to call the command in the report")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given (python -m tests.cputime -- COMMAND ...)")
    account = run(command, args.grace)
    for proc in account.leaked:
        print(f"== still running {args.grace:g} s after the command ended (leaked by it, left running): "
              f"pid {proc.pid}, {proc.cpu_s:.1f} s of CPU so far: {proc.cmdline[:200]}", flush=True)
    print(account.line(args.label or " ".join(" ".join(command).split())[:120]), flush=True)
    # killed by signal N: the shell's convention, 128 + N
    return account.returncode if account.returncode >= 0 else 128 - account.returncode


if __name__ == "__main__":
    sys.exit(main())
