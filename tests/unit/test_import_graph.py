"""The project's import graph has no cycle: every module can be read after the ones it imports.

Built by grimp from the code's own import statements (those inside functions too, which is where
a cycle hides behind a lazy import): the Mars CLI (`mars`), the local runtime (`samlocal`), the Lambda
layer (`mars_common`) and the gRPC shim (`grpc_shim`)."""

from __future__ import annotations

import grimp
import pytest

PACKAGES = ("mars", "samlocal", "mars_common", "grpc_shim")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*PACKAGES, include_external_packages=False)


def cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """Each import a → b for which b also reaches a, with the chain back."""
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back:
                found.append((importer, *back))
    return found


def test_the_import_graph_has_no_cycle(graph: grimp.ImportGraph) -> None:
    assert cycles(graph) == []


def test_the_check_sees_a_cycle_through_a_lazy_import(graph: grimp.ImportGraph) -> None:
    graph.add_import(importer="mars.stacks", imported="mars.cli")  # as if stacks imported cli inside a function
    try:
        assert ("mars.cli", "mars.stacks", "mars.cli") in cycles(graph)
    finally:
        graph.remove_import(importer="mars.stacks", imported="mars.cli")


def test_one_module_finds_a_running_stack_and_its_outputs(graph: grimp.ImportGraph) -> None:
    """The commands reach stacks through mars.stacks, never through each other."""
    for command in ("mars.keys", "mars.redrive"):
        assert not graph.find_shortest_chain(importer=command, imported="mars.cli"), command
    assert not graph.direct_import_exists(importer="mars.keys", imported="mars.redrive")
    assert not graph.direct_import_exists(importer="mars.redrive", imported="mars.keys")


def test_the_runtime_imports_nothing_of_mars(graph: grimp.ImportGraph) -> None:
    """docs/LOCAL.md: the runtime runs any SAM app; it imports nothing of Mars."""
    assert not [m for m in graph.find_upstream_modules("samlocal", as_package=True)
                if m.split(".")[0] in ("mars", "mars_common", "grpc_shim")]
