"""The task contract: every task module and class provides what the driver calls, and the
driver calls nothing else (no probing of tasks with getattr / hasattr / inspect)."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from textloop.tasks import TASK_MODULES, task_module
from textloop.tasks.base import Task

SRC = Path(__file__).resolve().parents[1] / "src" / "textloop"


@pytest.mark.parametrize("name", sorted(TASK_MODULES))
def test_every_task_module_declares_the_contract(name: str) -> None:
    module = task_module(name)
    assert module.METRIC_NAMES and all(isinstance(m, str) for m in module.METRIC_NAMES)
    assert set(module.LOWER_IS_BETTER) <= set(module.METRIC_NAMES)
    assert isinstance(module.LORA_DEFAULT, bool)
    assert callable(module.build_splits) and callable(module.task_from_state)
    task_classes = [
        v
        for v in vars(module).values()
        if isinstance(v, type) and dataclasses.is_dataclass(v) and Task in v.__mro__[1:]
    ]
    assert task_classes, f"{module.__name__} has no Task subclass"
    for cls in task_classes:  # the optional hooks come from Task, the flags are booleans
        assert isinstance(cls.token_weighted, bool) and isinstance(cls.can_scale_temperature, bool)
        for hook in ("loss_tokens", "fit_temperature", "save_extras", "report_section"):
            assert callable(getattr(cls, hook))


def _probes(path: Path) -> list[str]:
    """Calls of getattr / hasattr / inspect.* in a module, as 'line: source'."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if (isinstance(f, ast.Name) and f.id in ("getattr", "hasattr")) or (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Name)
            and f.value.id == "inspect"
        ):
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def test_the_driver_does_not_probe_tasks() -> None:
    probes = _probes(SRC / "training" / "run.py") + _probes(SRC / "training" / "setup.py")
    # the model (not the task) is asked for its input embeddings, fresh-head modules and width
    allowed = (
        "getattr(model, 'get_input_embeddings'",
        "hasattr(model, name)",
    )
    assert [p for p in probes if not any(a in p for a in allowed)] == []


def _import_graph() -> dict[str, set[str]]:
    """textloop module -> the textloop modules it imports, function-level imports included."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("textloop"):
                for alias in node.names:  # `from pkg import module` names the module itself
                    target = f"{node.module}.{alias.name}"
                    graph[name].add(target if target in modules else str(node.module))
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name in modules)
        graph[name] &= set(modules)
        graph[name].discard(name)
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles_between_modules() -> None:
    assert _circles(_import_graph()) == []


def test_the_circle_check_sees_a_circle() -> None:
    graph = _import_graph()
    graph["textloop.data.table"].add("textloop.data.readers")  # readers imports table
    assert any({"textloop.data.readers", "textloop.data.table"} <= set(c) for c in _circles(graph))


# The layers of ARCHITECTURE.md, top to bottom: a module imports only from its own folder, its
# own layer's other folders (sideways; folder circles are refused below) or the layers under it.
LAYERS = {
    "__init__": 7,  # the curated public API and `python -m textloop`
    "__main__": 7,
    "cli": 6,
    "serving": 5,
    "continual": 5,
    "tuning": 5,  # hyper-parameter search over the training driver
    "training": 4,
    "evaluation": 4,
    "runs": 4,  # a finished run loaded back: task + model + config
    "tasks": 3,
    "data": 2,
    "models": 2,
    "artifacts": 2,
    "config": 1,
    "config_io": 1,
    "config_tasks": 1,
    "errors": 0,
    "fileio": 0,
    "collectives": 0,
}


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    found = []
    for module, targets in graph.items():
        for target in targets:
            a, b = _folder(module), _folder(target)
            assert a in LAYERS and b in LAYERS, f"place {a!r} or {b!r} in LAYERS"
            if LAYERS[b] > LAYERS[a]:
                found.append(f"{module} -> {target}")
    return sorted(found)


def _folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {_folder(m): set() for m in graph}
    for module, targets in graph.items():
        folders[_folder(module)].update(
            _folder(t) for t in targets if _folder(t) != _folder(module)
        )
    return folders


def test_imports_run_down_the_layers_without_folder_circles() -> None:
    graph = _import_graph()
    assert _upward(graph) == []
    assert _circles(_folder_graph(graph)) == []


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = _import_graph()
    graph["textloop.tasks.lm.task"].add("textloop.training.distributed")  # tasks -> training
    assert _upward(graph) == ["textloop.tasks.lm.task -> textloop.training.distributed"]
    graph["textloop.artifacts.registry"].add("textloop.runs")  # 2 -> 4, and runs -> artifacts
    assert "textloop.artifacts.registry -> textloop.runs" in _upward(graph)
    assert any({"artifacts", "runs"} <= set(c) for c in _circles(_folder_graph(graph)))
