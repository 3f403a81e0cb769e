"""The import graph of the code base (issue 18, part 5).

* No import circles anywhere in ``mlp_platform``, ``assets`` and ``sensors``: every import counts, at
  module level, inside a function (a lazy import hides a circle, it does not remove it) or under
  ``if TYPE_CHECKING:`` (a circle of types is still two modules that need each other).
* Layers: the library never imports the orchestration (``assets``, ``sensors``); the model runtime
  imports none of its users (serving, batch, evaluation, monitoring, rollout, lifecycle); the online
  path (``mlp_platform.serving``, ``mlp_platform.runtime``) imports neither dagster nor dbt, checked
  by importing the app in a fresh interpreter.
* Configuration: only ``mlp_platform/settings.py`` reads the environment in the serving and runtime
  packages.

Reverted fix: the lazy import of the Redis backend back in ``online_store.store_from_url`` (or the
rollout machine importing ``lifecycle`` again, or ``monitoring.drift``'s kernels back out of
``monitoring.statistics``) makes the circle test fail and name the modules (checked once each).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mlp_platform", "assets", "sensors")


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(tree: ast.AST) -> list[tuple[str, list[str]]]:
    """(module, names) of every import in the module, wherever it stands."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((a.name, []) for a in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (``from pkg import sub`` counts pkg and pkg.sub)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for module, names in _imports(ast.parse(path.read_text(), filename=str(path))):
            for target in (module, *(f"{module}.{n}" for n in names)):
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def test_the_circle_finder_finds_circles():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\nelse:\n    import z\ndef f():\n    from w import v\n")
    assert sorted(m for m, _ in _imports(tree)) == ["w", "x", "y", "z"]  # type-only and lazy imports count


def test_no_import_circles_anywhere():
    graph = import_graph()
    assert len(graph) > 50 and "mlp_platform.serving.service" in graph
    assert circles(graph) == []


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_the_library_never_imports_the_orchestration():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if t.split(".")[0] in ("assets", "sensors"))
           for m, targets in graph.items() if m.startswith("mlp_platform")}
    assert {m: t for m, t in bad.items() if t} == {}


def test_the_model_runtime_is_below_its_users():
    graph = import_graph()
    users = ("mlp_platform.serving", "mlp_platform.batch", "mlp_platform.evaluation", "mlp_platform.monitoring",
             "mlp_platform.rollout", "mlp_platform.lifecycle", "mlp_platform.cli")
    runtime = [m for m in graph if m.startswith("mlp_platform.runtime")]
    assert {"mlp_platform.runtime.scorer", "mlp_platform.runtime.fast_scorer", "mlp_platform.runtime.loading"} <= set(runtime)
    for module in runtime:
        above = sorted(t for t in _reaches(graph, module) if t.startswith(users))
        assert above == [], f"{module} reaches {above}"
    # and its users take it from there: batch scoring, evaluation and the service
    for user in ("mlp_platform.batch.scoring", "mlp_platform.evaluation.gates", "mlp_platform.serving.service"):
        assert any(t.startswith("mlp_platform.runtime") for t in graph[user]), user


def test_only_the_settings_module_reads_the_environment_on_the_online_path():
    offenders = []
    for name, path in _modules().items():
        if not name.startswith(("mlp_platform.serving", "mlp_platform.runtime")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_the_online_path_imports_neither_dagster_nor_dbt():
    code = ("import sys, json\n"
            "import mlp_platform.serving.app, mlp_platform.runtime.loading, mlp_platform.serving.online_store_redis\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    top = set(json.loads(out.stdout))
    assert "mlp_platform" in top
    assert not top & {"dagster", "dbt", "dagster_dbt", "mlflow", "evidently", "sklearn"}, sorted(top)
