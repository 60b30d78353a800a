"""The tree's rules, checked on the import graph (module-level and function-level imports).

- no import cycles among the collector's and the API's modules;
- ``collector.process`` (the composition root) is the only collector module that imports
  the ``api`` package;
- the ingest pipeline and the schema's upkeep import neither the tools, the daemon's wiring
  nor the API; the API uses only the parts of the collector meant for it;
- the API reads in one direction: routes and dashboard -> reports -> queries;
- sources use the sink, the readings and the stream catalogue, never the writer, the
  store, the buffer or the booking; the ingest core imports no source.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("collector", "api")

#: What the API may import from the collector: the readings and the stream catalogue, the
#: read model, the HTTP source, health, settings.
API_MAY_USE = {
    "collector.settings",
    "collector.health",
    "collector.errors",
    "collector.ingest.readings",
    "collector.ingest.streams",
    "collector.sources.http.source",
    "collector.sources.http.decode",
    "collector.readmodel.pieces",
    "collector.readmodel.fleet",
    "collector.readmodel.sessions",
    # sites, local days, balances and exports (SITES_FILE)
    "collector.settlement.sites",
    "collector.settlement.days",
    "collector.settlement.balance",
    "collector.settlement.export",
    "collector.settlement.parquet",
    "collector.db.connection",
    # the dashboard reads the rules in force to give alert values their unit
    "collector.alerts.rules",
    # the payload mappings, listed and tried (GET /v1/sources, POST /v1/sources/test)
    "collector.sources.mappings.preview",
    # the vehicle-meter link writes (shared with the OCPP sessions)
    "collector.links",
    # how chargers and their connectors' meters are named (OCPP)
    "collector.sources.ocpp.naming",
}
#: What a source may import of the ingest core: the sink and what describes an item.
SOURCES_MAY_USE = {
    "collector.ingest.sink",
    "collector.ingest.readings",
    "collector.ingest.streams",
}
#: Imports that the pipeline (ingest) and the schema's upkeep (db) must never make.
FORBIDDEN_BELOW = ("api", "collector.tools", "collector.process", "collector.service")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            found[module_name(path)] = path
    return found


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """Project modules imported anywhere in ``path`` (inside functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from api.routes import status" imports the module api.routes.status
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            module = target
            while module and module not in known:
                module = module.rpartition(".")[0]
            if module and module != name:
                out.add(module)
    return out


@functools.cache
def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(path, name, known) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_function_level_imports():
    edges = graph()
    # cli imports each command's module inside the command's function
    assert "collector.process" in edges["collector.cli"]
    assert "collector.tools.demo" in edges["collector.cli"]


def test_there_is_no_import_cycle():
    assert cycles(graph()) == []


def test_only_the_composition_root_imports_the_api():
    importers = sorted(
        name
        for name, targets in graph().items()
        if name.startswith("collector") and any(t.split(".")[0] == "api" for t in targets)
    )
    assert importers == ["collector.process"]


def test_the_pipeline_and_the_schema_depend_on_nothing_above_them():
    wrong = {
        name: sorted(t for t in targets if t.startswith(FORBIDDEN_BELOW))
        for name, targets in graph().items()
        if name.startswith(("collector.ingest", "collector.db"))
    }
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_the_api_uses_only_what_the_collector_offers_it():
    wrong = {
        name: sorted(t for t in targets if t.startswith("collector") and t not in API_MAY_USE)
        for name, targets in graph().items()
        if name.startswith("api")
    }
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_the_api_reads_in_one_direction_routes_reports_queries():
    """Routes and dashboard pages ask ``api.reports``; only reports run the queries."""
    callers = sorted(
        name
        for name, targets in graph().items()
        if not name.startswith(("api.queries", "api.reports"))
        and any(t.startswith("api.queries") for t in targets)
    )
    assert callers == []
    assert any(t.startswith("api.queries") for t in graph()["api.reports.analytics"])


def test_sources_hand_items_to_the_sink_and_touch_nothing_behind_it():
    wrong = {
        name: sorted(
            t for t in targets if t.startswith("collector.ingest") and t not in SOURCES_MAY_USE
        )
        for name, targets in graph().items()
        if name.startswith("collector.sources")
    }
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_the_ingest_core_imports_no_source():
    wrong = {
        name: sorted(t for t in targets if t.startswith("collector.sources"))
        for name, targets in graph().items()
        if name.startswith("collector.ingest")
    }
    assert {name: bad for name, bad in wrong.items() if bad} == {}


def test_cycle_detection_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_readme_code_map_lists_every_module():
    """The README's code map is the tree: every module in it, and nothing that is gone."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("### Code map", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    folder: list[str] = []
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        name = line.split()[0]
        folder = folder[:depth]
        if name.endswith("/"):
            folder.append(name.rstrip("/"))
        elif name.endswith(".py"):
            listed.add("/".join([*folder, name]))
    actual = {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if path.name not in ("__init__.py", "__main__.py")
    }
    assert sorted(actual - listed) == [], "modules missing from the README's code map"
    assert sorted(listed - actual) == [], "the README's code map names modules that are gone"
