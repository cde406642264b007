"""The house's structure (docs/design.md, "Layers" and "Package map"): imports only point down a layer,
no module imports itself back through others (no cycles, also inside a package), no module reaches for
another's private names, and the package map names every module. Every ``import`` counts, also those
inside functions; ``tools/`` and ``scripts/`` are checked too."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

REPO = Path(__file__).resolve().parents[1]
# The layers of docs/design.md, lowest first. A module may import from its own room, other rooms of its
# layer (except FORBIDDEN_SIDEWAYS) and lower layers.
LAYERS: Dict[str, int] = {
    "ccnet.errors": 1,
    "ccnet.checkpoint": 1,
    "ccnet.dist": 1,
    "ccnet.utils": 1,
    "ccnet.run_name": 1,
    "ccnet.models": 2,
    "ccnet.data": 2,
    "ccnet.engine": 3,
    "ccnet.evaluation": 3,
    "ccnet.convert": 4,
    "ccnet.api": 4,
    "ccnet.apps": 5,  # the applications: never imported by the library (layers 1-4)
    "tools": 6,
    "scripts": 6,
}
FORBIDDEN_SIDEWAYS = {
    ("ccnet.models", "ccnet.data"),
    ("ccnet.data", "ccnet.models"),
    ("ccnet.evaluation", "ccnet.engine"),
}
SOURCES = ("ccnet", "tools", "scripts")


def module_name(path: Path, root: Path = REPO) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def python_files(root: Path = REPO) -> Iterator[Path]:
    for source in SOURCES:
        yield from sorted((root / source).rglob("*.py"))


def imports(path: Path, root: Path = REPO) -> List[Tuple[int, str, List[str]]]:
    """``(line, module, names)`` of every import of this project's modules in ``path``; relative
    imports are resolved, ``from ccnet import dist`` counts as an import of ``ccnet.dist``."""
    found = []
    package = module_name(path, root).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path, root)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([target] if target else []))
            if target.split(".")[0] not in SOURCES:
                continue
            names = [a.name for a in node.names]
            submodules = [n for n in names if _is_module(f"{target}.{n}", root)]
            if len(submodules) < len(names):  # ``from ccnet import dist`` imports ccnet.dist, not ccnet's names
                found.append((node.lineno, target, [n for n in names if n not in submodules]))
            found += [(node.lineno, f"{target}.{n}", []) for n in submodules]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] in SOURCES]
    return found


def _is_module(name: str, root: Path = REPO) -> bool:
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def room(module: str) -> str:
    """The layer entry a module belongs to (``ccnet.models.cca.lean`` -> ``ccnet.models``)."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return module


def upward_imports(root: Path = REPO) -> List[str]:
    problems = []
    for path in python_files(root):
        module = module_name(path, root)
        if module == "ccnet":
            continue  # the package's face may re-export from any layer
        here = room(module)
        for line, target, _ in imports(path, root):
            there = room(target)
            if there == "ccnet" or there == here:
                continue
            if there not in LAYERS:
                problems.append(f"{path}:{line}: {target} is in no layer (add it to tests/test_layers.py)")
            elif LAYERS[there] > LAYERS[here] or (here, there) in FORBIDDEN_SIDEWAYS:
                problems.append(
                    f"{path}:{line}: {here} (layer {LAYERS[here]}) imports {target} (layer {LAYERS[there]})"
                )
    return problems


def import_cycles(root: Path = REPO) -> List[List[str]]:
    """Every cycle of explicit imports between modules (a package's ``__init__`` is the package)."""
    graph: Dict[str, Set[str]] = {}
    for path in python_files(root):
        module = module_name(path, root)
        graph[module] = {t for _, t, _ in imports(path, root) if _is_module(t, root) and t != module}
    cycles, state = [], {}  # state: 1 on the current path, 2 finished

    def visit(node: str, trail: List[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(trail[trail.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    return cycles


def private_imports(root: Path = REPO) -> List[str]:
    """Imports of another module's ``_private`` names (a package may use its own ``__init__``'s)."""
    return [
        f"{path}:{line}: imports {name} from {target}"
        for path in python_files(root)
        for line, target, names in imports(path, root)
        for name in names
        if name.startswith("_") and not name.startswith("__") and target != module_name(path, root)
    ]


def test_every_module_is_in_a_layer():
    rooms = {room(module_name(p)) for p in python_files()}
    assert rooms - {"ccnet"} <= set(LAYERS), rooms - set(LAYERS)


def test_imports_only_point_down():
    assert upward_imports() == []


def test_no_import_cycles_also_inside_a_package():
    assert import_cycles() == []


def test_no_module_imports_another_modules_private_names():
    assert private_imports() == []


def test_the_package_map_names_every_module():
    """docs/design.md's map lists each module by its file name under its folder's entry."""
    text = (REPO / "docs" / "design.md").read_text()
    map_text = text[text.index("## Package map") : text.index("## ", text.index("## Package map") + 3)]
    missing = [
        str(p.relative_to(REPO))
        for p in python_files()
        if p.name != "__init__.py" and not re.search(rf"\b{re.escape(p.stem)}(\.py)?\b", map_text)
    ]
    assert missing == []


def test_the_checks_catch_what_they_should(tmp_path):
    for folder in ("ccnet/models/cca", "ccnet/evaluation", "ccnet/engine", "tools", "scripts"):
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "ccnet" / "models" / "bad.py").write_text("def f():\n    from ccnet.engine.trainer import train\n")
    (tmp_path / "ccnet" / "evaluation" / "worse.py").write_text("from ccnet.engine import losses\n")
    (tmp_path / "ccnet" / "engine" / "trainer.py").write_text("")
    (tmp_path / "ccnet" / "engine" / "losses.py").write_text("")
    (tmp_path / "ccnet" / "models" / "cca" / "a.py").write_text("from ccnet.models.cca.b import _helper\n")
    (tmp_path / "ccnet" / "models" / "cca" / "b.py").write_text("def g():\n    from ccnet.models.cca import a\n")
    (tmp_path / "tools" / "t.py").write_text("from scripts import s\n")
    (tmp_path / "scripts" / "s.py").write_text("")
    (tmp_path / "ccnet" / "apps").mkdir()
    (tmp_path / "ccnet" / "apps" / "report.py").write_text("")
    (tmp_path / "ccnet" / "engine" / "uses_an_app.py").write_text("from ccnet.apps import report\n")
    problems = upward_imports(tmp_path)
    assert len(problems) == 3 and "ccnet.models (layer 2) imports ccnet.engine.trainer (layer 3)" in problems[2]
    assert "ccnet.engine (layer 3) imports ccnet.apps.report (layer 5)" in problems[0]
    assert import_cycles(tmp_path) == [["ccnet.models.cca.a", "ccnet.models.cca.b", "ccnet.models.cca.a"]]
    assert private_imports(tmp_path) == [
        f"{tmp_path / 'ccnet/models/cca/a.py'}:1: imports _helper from ccnet.models.cca.b"
    ]
