"""The install keeps a CPU-only PyTorch: no requirement of the project or of anything it installs (its
runtime and development dependencies, followed through the installed packages' metadata) pins torch or
torchvision to a version or asks for Triton or NVIDIA's libraries, so `pip install -r requirements.txt`
after PyTorch's CPU wheels keeps them (README, "CPU-only machines")."""

from __future__ import annotations

import sys
from importlib import metadata

import pytest
from packaging.requirements import Requirement

if sys.version_info < (3, 11):
    pytest.skip("tomllib needs Python 3.11", allow_module_level=True)
import tomllib

TORCH = {"torch", "torchvision"}


def _requirements(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras] if not r.startswith("ccnet")]


def test_nothing_pins_torch_or_asks_for_the_cuda_stack(repo_root):
    stack, seen, problems = _requirements(repo_root), set(), []
    while stack:
        req = stack.pop()
        name = req.name.lower()
        if name in TORCH:
            if any(spec.operator not in (">=", ">") for spec in req.specifier):
                problems.append(f"{req} pins {name}: a CPU build installed first would be replaced")
            continue
        if name == "triton" or name.startswith("nvidia-"):
            problems.append(f"{req} asks for the CUDA stack")
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:  # an optional dependency that is not installed here
            continue
        stack += [r for r in map(Requirement, requires) if not r.marker or r.marker.evaluate({"extra": ""})]
    assert problems == []
    assert "hydra-core" in seen and "timm" in seen
