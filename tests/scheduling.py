"""How `make test` spreads the suite's modules over pytest-xdist workers (issue 16).

A module is one unit of work (`--dist loadfile`: its module-scoped stack starts once, on one worker; each
worker starts the session stacks `mars` and `mars_auth` when its first test needs them). Two lists, both
read from the module table every run prints (`build/test-modules.tsv`: wall and CPU per module):

- SLOWEST_FIRST: the modules that take longest are handed out first, so a run does not end waiting on
  one of them alone.
- WAITING: modules whose wall time is timers — retry schedules, visibility timeouts, key caches, a
  server's idle limits — not CPU (their CPU is under a third of their wall time). Run one after another
  on the CPU workers, their waits left cores idle; the last `MARS_WAITING_WORKERS` workers take only
  these, beside the CPU workers (each of which still takes one when nothing else is left).
"""

from __future__ import annotations

import os
from typing import Any

from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

SLOWEST_FIRST = (  # `make test` of 2026-12-01 (its "slowest modules" table), the WAITING ones left out
    "tests/integration/test_long_timeline.py",
    "tests/unit/test_funnel.py",
    "tests/browser/test_dashboard.py",
    "tests/unit/test_moto_own_suite.py",
    "tests/unit/test_long_timelines.py",
    "tests/localstack/test_on_localstack.py",
    "tests/integration/test_openapi_contract.py",
    "tests/unit/test_moto_patches.py",
    "tests/integration/test_otlp.py",
    "tests/integration/test_pipeline.py",
    "tests/integration/test_faults_and_template.py",
    "tests/integration/test_sam_apps.py",
    "tests/faults/test_faults.py",
    "tests/unit/test_api.py",
    "tests/unit/test_alerts.py",
)

WAITING = (  # wall s / CPU s in that run; longest first
    "tests/integration/test_destinations.py",  # 34.7 / 3.7: delivery retries, the DLQ
    "tests/security/test_attacks_on_a_stack.py",  # 33.6 / 5.4: a revoked key's cache (30 s)
    "tests/integration/test_local_runtime.py",  # 29.9 / 6.1: timeouts, retries, visibility
    "tests/integration/test_trace_export.py",  # 25.9 / 7.9: an exporter's retries
    "tests/integration/test_redrive.py",  # 24.9 / 4.4: receives until the DLQ
    "tests/unit/test_sqs_poller.py",  # 17.2 / 4.3: long polls
    "tests/unit/test_httpserver.py",  # 12.4 / 1.9: idle and slow clients' limits
    "tests/unit/test_soak_calibrate.py",  # 6.6 / 0.3
    "tests/unit/test_invoker.py",  # 3.7 / 1.4: function timeouts
    "tests/unit/test_apigw_rest.py",  # 3.6 / 0.9: integration timeouts
)


_RANK = {module: n for n, module in enumerate((*SLOWEST_FIRST, *WAITING))}


def order(nodeid: str) -> int:
    """Where a test's module goes in the collection order: the slowest first, then the waiting ones,
    then the rest as collected (a stable sort keeps their order)."""
    return _RANK.get(nodeid.split("::")[0], len(_RANK))


class WaitingLaneScheduling(LoadFileScheduling):
    """xdist's `loadfile` scheduling, but for `waiting` workers (the last ones) that take only WAITING
    modules and stop when none is left; the others take the rest first, in collection order, then
    WAITING ones too."""

    def __init__(self, config: Any, log: Any = None, waiting: int = 1) -> None:
        super().__init__(config, log)
        self.waiting_workers = waiting

    def _in_lane(self, node: Any) -> bool:
        """The last `waiting_workers` of more than that many (gw0, gw1, …): of the workers the run asked for,
        not of `self.nodes`, which loses each worker that finishes. A worker xdist starts in place of one
        that crashed gets the next id (gw3 of 3): it takes CPU work, whichever one it replaces."""
        count, index = self.numnodes, int(node.gateway.id.removeprefix("gw"))
        return count > self.waiting_workers and count - self.waiting_workers <= index < count

    def _next_scope(self, node: Any) -> str | None:
        waiting = next((scope for scope in self.workqueue if scope in WAITING), None)
        if self._in_lane(node):
            return waiting
        return next((scope for scope in self.workqueue if scope not in WAITING), waiting)

    def _assign_work_unit(self, node: Any) -> None:
        scope = self._next_scope(node)
        if scope is None:  # a lane worker with no waiting module left: done once its queued tests ran
            if not node.shutting_down:
                node.shutdown()
            return
        self.workqueue.move_to_end(scope, last=False)  # the unit xdist's own assignment pops next
        super()._assign_work_unit(node)


def scheduler(config: Any, log: Any) -> WaitingLaneScheduling | None:
    """The waiting lane when `make test` asks for one (MARS_WAITING_WORKERS) with `--dist loadfile` and
    more workers than that; None (xdist's own) otherwise."""
    try:
        waiting = int(os.environ.get("MARS_WAITING_WORKERS") or 0)
    except ValueError:
        raise ValueError(f"MARS_WAITING_WORKERS={os.environ['MARS_WAITING_WORKERS']!r}: want a number") from None
    if waiting <= 0 or config.getvalue("dist") != "loadfile":
        return None
    return WaitingLaneScheduling(config, log, waiting)
