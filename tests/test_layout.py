"""The package's layering, read from the source with ``ast`` (imports inside functions included).

    categorical.py            imports nothing else from thunderdlm
    models/                   never the processes
    processes/                never the sampling loop, the trainer, the API, evaluation or the judges
    judges/                   never the API (a run judge loads through loading.py)

and the imports that run at import time (module level) form no circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "thunderdlm"

FORBIDDEN = {   # (folder or file under thunderdlm/, modules it must not import, prefix-wise)
    "processes": ("thunderdlm.sampling", "thunderdlm.train", "thunderdlm.api", "thunderdlm.evaluate",
                  "thunderdlm.judges", "thunderdlm.loading", "thunderdlm.cli"),
    "judges": ("thunderdlm.api", "thunderdlm.cli"),
    "models": ("thunderdlm.processes",),
    "categorical.py": ("thunderdlm",),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(node: ast.AST) -> set[str]:
    """The modules one import statement may load: ``from a import b`` is ``a`` and, when b is a
    submodule, ``a.b`` (both are returned; callers match names, not files)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return set()


def all_imports(tree: ast.AST) -> set[str]:
    """Every import anywhere in the module, functions and classes included. A ``thunderdlm.load``
    attribute counts as importing the API (the package's ``load`` goes through it)."""
    found = set().union(*(imported(node) for node in ast.walk(tree)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name)
                and node.value.id == "thunderdlm"):
            found.add("thunderdlm.api")
    return found


def is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ast.unparse(test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")


def import_time_imports(tree: ast.Module) -> set[str]:
    """The imports that run when the module is imported: module-level statements, looking inside
    ``if`` / ``try`` / ``with`` blocks but not into functions, classes or ``if TYPE_CHECKING:``."""
    found, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or is_type_checking(node):
            continue
        found |= imported(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo.extend(getattr(node, field, []))
    return found


def sources() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(trees: dict[str, ast.Module]) -> list[str]:
    found = []
    for name, tree in trees.items():
        for where, banned in FORBIDDEN.items():
            scope = "thunderdlm." + where.removesuffix(".py").replace("/", ".")
            if not under(name, scope):
                continue
            for target in sorted(all_imports(tree)):
                if any(under(target, b) for b in banned) and not under(target, scope):
                    found.append(f"{name} imports {target}")
    return found


def import_cycle(trees: dict[str, ast.Module]) -> list[str] | None:
    """One circle of import-time imports between thunderdlm modules, or None. Importing a submodule
    first imports every package above it, so ``a.b.c`` also leads to ``a.b`` and ``a`` (except the
    packages above the importer itself, which are already being imported when it runs)."""
    def ancestors(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}

    def edges(name: str) -> set[str]:
        out = set().union(*(ancestors(t) for t in import_time_imports(trees[name])))
        return {m for m in out - ancestors(name) if m in trees}

    graph = {name: edges(name) for name in trees}
    state: dict[str, int] = {}          # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_every_layer_imports_only_what_lies_below_it():
    assert violations(sources()) == []


def test_import_time_imports_form_no_circle():
    cycle = import_cycle(sources())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("module, source, expected", [
    ("thunderdlm.processes.discrete.masked",
     "def step():\n    from thunderdlm.sampling.categorical import draw_tokens\n",
     "thunderdlm.processes.discrete.masked imports thunderdlm.sampling.categorical"),
    ("thunderdlm.processes.forcing.sampler", "import thunderdlm.train\n",
     "thunderdlm.processes.forcing.sampler imports thunderdlm.train"),
    ("thunderdlm.judges.run", "def load_run_judge(path):\n    from thunderdlm import api\n",
     "thunderdlm.judges.run imports thunderdlm.api"),
    ("thunderdlm.judges.run", "import thunderdlm\n\ndef f(p):\n    return thunderdlm.load(p)\n",
     "thunderdlm.judges.run imports thunderdlm.api"),
    ("thunderdlm.categorical", "from thunderdlm.errors import SamplingError\n",
     "thunderdlm.categorical imports thunderdlm.errors"),
    ("thunderdlm.models.gpt", "class GPT:\n    def f(self):\n        import thunderdlm.processes.base\n",
     "thunderdlm.models.gpt imports thunderdlm.processes.base"),
])
def test_the_checks_catch_a_forbidden_import(module, source, expected):
    """The checks are live: re-adding such an import (late imports included) is reported."""
    trees = {module: ast.parse(source)}
    assert any(v.startswith(expected) for v in violations(trees)), violations(trees)


def test_the_circle_check_catches_a_package_circle():
    """``run_config`` → ``train.config`` → ``train/__init__`` → ``train.trainer`` → ``run_config``: the
    circle an eager ``train/__init__.py`` would make."""
    trees = {"thunderdlm": ast.parse(""),
             "thunderdlm.run_config": ast.parse("from thunderdlm.train.config import TrainConfig\n"),
             "thunderdlm.train": ast.parse("from thunderdlm.train.trainer import Trainer\n"),
             "thunderdlm.train.config": ast.parse(""),
             "thunderdlm.train.trainer": ast.parse("from thunderdlm.run_config import RunConfig\n"),
             "thunderdlm.train.lazy": ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                "    from thunderdlm.run_config import RunConfig\n")}
    assert import_cycle(trees) is not None
    del trees["thunderdlm.train"], trees["thunderdlm.train.trainer"]
    assert import_cycle(trees) is None
