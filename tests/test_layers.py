"""Imports only point down (docs/design.md, "Layers"): plumbing <- models, data <- engine, evaluation
<- applications (convert, export, benchmarks) <- tools. Every ``import`` in ccnet/, also those inside
functions, is checked; a module may use its own layer (with the exceptions below) or lower ones."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parents[1]
LAYERS: Dict[str, int] = {
    "ccnet.errors": 0, "ccnet.checkpoint": 0, "ccnet.dist": 0, "ccnet.utils": 0, "ccnet.run_name": 0,
    "ccnet.models": 1, "ccnet.data": 1,
    "ccnet.engine": 2, "ccnet.evaluation": 2,
    "ccnet.convert": 3, "ccnet.export": 3, "ccnet.benchmarks": 3, "ccnet.api": 3, "ccnet.selfcheck": 3,
    "ccnet.rehearse": 3,
}
# Same-layer imports that are not allowed: models and data are independent, evaluation never needs engine.
FORBIDDEN_SIDEWAYS = {("ccnet.models", "ccnet.data"), ("ccnet.data", "ccnet.models"),
                      ("ccnet.evaluation", "ccnet.engine")}


def _room(module: str) -> str:
    """The layer entry a dotted module name belongs to (``ccnet.models.cca`` -> ``ccnet.models``)."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return module


def _imports(path: Path) -> List[Tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ccnet"):
            found.append((node.lineno, node.module))
            if node.module == "ccnet":  # from ccnet import dist, ...
                found += [(node.lineno, f"ccnet.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("ccnet")]
    return found


def upward_imports(root: Path = REPO / "ccnet") -> List[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts).removesuffix(".__init__")
        if module == "ccnet":
            continue  # the package's face may re-export from any layer
        room = _room(module)
        for line, target in _imports(path):
            other = _room(target)
            if other == "ccnet" or other == room:
                continue
            if other not in LAYERS:
                problems.append(f"{path}:{line}: {target} is in no layer (add it to tests/test_layers.py)")
            elif LAYERS[other] > LAYERS[room] or (room, other) in FORBIDDEN_SIDEWAYS:
                problems.append(f"{path}:{line}: {room} (layer {LAYERS[room]}) imports {target} "
                                f"(layer {LAYERS[other]})")
    return problems


def test_every_ccnet_module_is_in_a_layer():
    rooms = {_room(".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"))
             for p in (REPO / "ccnet").rglob("*.py")}
    assert rooms - {"ccnet"} <= set(LAYERS), rooms - set(LAYERS)


def test_imports_only_point_down():
    assert upward_imports() == []


def test_the_check_catches_an_upward_import(tmp_path):
    (tmp_path / "ccnet" / "models").mkdir(parents=True)
    (tmp_path / "ccnet" / "models" / "bad.py").write_text("def f():\n    from ccnet.engine.trainer import train\n")
    (tmp_path / "ccnet" / "evaluation").mkdir()
    (tmp_path / "ccnet" / "evaluation" / "worse.py").write_text("from ccnet.engine import losses\n")
    problems = upward_imports(tmp_path / "ccnet")
    assert len(problems) == 2 and "ccnet.models (layer 1) imports ccnet.engine.trainer (layer 2)" in problems[1]
