"""Shared test fixtures: the real Cityscapes sample, the configs directory, a small thread budget."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CITYSCAPES_SAMPLE = REPO.parent / "shared" / "fixtures" / "cityscapes_sample"

# CI and developer machines have 2 cores; more intra-op threads only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))

# Without a GPU the Triton kernels' tests (tests/models/test_cca_triton.py) run in Triton's CPU
# interpreter, which must be chosen before anything (torchvision does) first imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny models gain nothing from two, and on a shared 2-core
    machine a second thread spinning at OpenMP barriers makes every step several times slower.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def configs_dir() -> Path:
    return CONFIGS


@pytest.fixture(scope="session")
def cityscapes_sample() -> Path:
    """Root of the real Cityscapes sample (``leftImg8bit/`` and ``gtFine/``) kept in ``../shared``.

    It is third-party data that lives beside the repository, not in it; tests that need it skip
    when it is absent (e.g. a clone without the shared folder).
    """
    if not (CITYSCAPES_SAMPLE / "leftImg8bit").is_dir():
        pytest.skip(f"Cityscapes sample not found at {CITYSCAPES_SAMPLE} (third-party data kept in ../shared)")
    return CITYSCAPES_SAMPLE
