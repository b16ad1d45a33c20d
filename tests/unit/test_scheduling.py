"""tests/scheduling.py: the waiting lane `make test` gives xdist. Driven as xdist's controller drives a
scheduler (add_node, add_node_collection, schedule, mark_test_complete), with workers that record
what they are sent."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests import scheduling


class Worker:
    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []
        self.shutting_down = False

    def send_runtest_some(self, indices: list[int]) -> None:
        self.sent.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True


def config(workers: int) -> Any:
    """What xdist's schedulers read of pytest's config for `-n workers --dist loadfile --no-loadscope-reorder`."""
    values = {"tx": [f"{workers}*popen"], "dist": "loadfile"}
    return SimpleNamespace(getvalue=values.get, option=SimpleNamespace(loadscopereorder=False))


HEAVY = ["tests/unit/test_funnel.py", "tests/unit/test_api.py", "tests/unit/test_store.py"]
WAITING = list(scheduling.WAITING[:2])


def collection(modules: list[str], tests: int = 3) -> list[str]:
    return [f"{m}::test_{n}" for m in modules for n in range(tests)]


def run(workers: int, waiting: int, modules: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Schedules `modules` to completion; the modules each worker ran, in order."""
    monkeypatch.setenv("MARS_WAITING_WORKERS", str(waiting))
    cfg = config(workers)
    sched = scheduling.scheduler(cfg, None)
    assert isinstance(sched, scheduling.WaitingLaneScheduling)
    nodes = [Worker(f"gw{n}") for n in range(workers)]
    items = sorted(collection(modules), key=scheduling.order)
    for node in nodes:
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, items)
    sched.schedule()
    ran: dict[str, list[str]] = {node.gateway.id: [] for node in nodes}
    done = {node.gateway.id: 0 for node in nodes}
    while any(done[n.gateway.id] < len(n.sent) for n in nodes):
        for node in nodes:  # each worker runs the next test it was sent, as the controller hears of it
            if done[node.gateway.id] < len(node.sent):
                index = node.sent[done[node.gateway.id]]
                done[node.gateway.id] += 1
                module = items[index].split("::")[0]
                if module not in ran[node.gateway.id]:
                    ran[node.gateway.id].append(module)
                sched.mark_test_complete(node, index)
            if node.shutting_down and done[node.gateway.id] == len(node.sent) and node in sched.nodes:
                sched.remove_node(node)  # as the controller does when a worker has finished
    assert not sched.workqueue and not sched.has_pending, "tests left unrun"
    assert all(node.shutting_down for node in nodes), "a worker was never told to stop"
    assert not sched.nodes, "a worker was never removed"
    return ran


def test_the_lane_worker_runs_only_waiting_modules_and_the_others_run_them_last(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = run(3, 1, HEAVY + WAITING, monkeypatch)
    assert set(ran["gw2"]) <= set(WAITING) and ran["gw2"], ran
    assert sorted(m for mods in ran.values() for m in mods) == sorted(HEAVY + WAITING), ran  # each module once
    for name in ("gw0", "gw1"):
        mods = ran[name]
        waited = [i for i, m in enumerate(mods) if m in WAITING]
        assert all(i > j for i in waited for j, m in enumerate(mods) if m not in WAITING), mods


def test_a_lane_with_no_waiting_module_stops_at_once_and_the_rest_still_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = run(3, 1, HEAVY, monkeypatch)
    assert ran["gw2"] == [], ran
    assert sorted(ran["gw0"] + ran["gw1"]) == sorted(HEAVY)


def test_the_cpu_workers_share_the_work_after_the_lane_has_finished(monkeypatch: pytest.MonkeyPatch) -> None:
    heavy = [f"tests/unit/test_m{n}.py" for n in range(8)]
    ran = run(3, 1, heavy + WAITING[:1], monkeypatch)
    assert ran["gw2"] == WAITING[:1] and len(ran["gw0"]) == len(ran["gw1"]) == 4, ran


def test_only_waiting_modules_are_shared_by_every_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    ran = run(3, 1, WAITING + list(scheduling.WAITING[2:5]), monkeypatch)
    assert sum(len(m) for m in ran.values()) == 5 and ran["gw2"], ran


def test_a_worker_started_in_place_of_a_crashed_one_takes_cpu_work(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARS_WAITING_WORKERS", "1")
    sched = scheduling.scheduler(config(3), None)
    assert sched is not None
    assert [sched._in_lane(Worker(f"gw{n}")) for n in range(5)] == [False, False, True, False, False]


def test_the_order_puts_the_slowest_then_the_waiting_then_the_rest() -> None:
    items = ["tests/unit/test_store.py::a", f"{scheduling.WAITING[0]}::b", f"{scheduling.SLOWEST_FIRST[0]}::c"]
    assert sorted(items, key=scheduling.order) == [items[2], items[1], items[0]]


def test_no_lane_unless_asked_for_with_loadfile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARS_WAITING_WORKERS", raising=False)
    assert scheduling.scheduler(config(3), None) is None
    monkeypatch.setenv("MARS_WAITING_WORKERS", "1")
    other = config(3)
    other.getvalue = {"dist": "load"}.get
    assert scheduling.scheduler(other, None) is None
    monkeypatch.setenv("MARS_WAITING_WORKERS", "one")
    with pytest.raises(ValueError, match="MARS_WAITING_WORKERS"):
        scheduling.scheduler(config(3), None)


def test_no_module_is_both_slowest_and_waiting_and_every_listed_module_exists() -> None:
    assert not set(scheduling.SLOWEST_FIRST) & set(scheduling.WAITING)
    root = Path(scheduling.__file__).parents[1]
    missing = [m for m in (*scheduling.SLOWEST_FIRST, *scheduling.WAITING) if not (root / m).is_file()]
    assert not missing, missing
