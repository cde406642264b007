"""Shared test fixtures: the real Cityscapes sample, the configs directory, a small thread budget."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
CITYSCAPES_SAMPLE = REPO.parent / "shared" / "fixtures" / "cityscapes_sample"
CITYSCAPES_STEM = "frankfurt_000000_000294"  # the sample's image

# CI and developer machines have 2 cores; more intra-op threads only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))

# Without a GPU the Triton kernels' tests (tests/models/cca/test_triton_kernels.py) run in Triton's CPU
# interpreter, which must be chosen before anything (torchvision does) first imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_stay_in_the_session_folder(tmp_path_factory):
    """Every temporary file of the suite and of the processes it starts (torch.compile's cache, torchrun's
    logs, tempfile users) goes below pytest's session folder, which pytest removes after a passing run."""
    folder = tmp_path_factory.mktemp("system_tmp")
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    os.environ.update(
        TMPDIR=str(folder), TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor"), TRITON_CACHE_DIR=str(folder / "triton")
    )
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    tempfile.tempdir = None


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


def _perturbed_prediction(gt: np.ndarray) -> np.ndarray:
    """Ground-truth label ids with a band of wrong classes, a void (0) patch and a parking (9) patch."""
    pred = gt.copy()
    pred[:, 100:140] = 26  # car
    pred[10:30, 10:60] = 0  # unlabeled: a void prediction
    pred[90:110, 200:250] = 9  # parking: ignoreInEval, void as a prediction
    return pred


@pytest.fixture()
def sample_folders(cityscapes_sample, tmp_path):
    """(prediction folder, gtFine/val folder): the sample's label ids with wrong, void and parking
    patches written as a Cityscapes test-server prediction."""
    gt_dir = cityscapes_sample / "gtFine" / "val"
    gt = np.asarray(Image.open(gt_dir / "frankfurt" / f"{CITYSCAPES_STEM}_gtFine_labelIds.png"))
    pred_dir = tmp_path / "pred" / "frankfurt"
    pred_dir.mkdir(parents=True)
    Image.fromarray(_perturbed_prediction(gt)).save(pred_dir / f"{CITYSCAPES_STEM}_leftImg8bit.png")
    return tmp_path / "pred", gt_dir
