"""Cityscapes label-id folder evaluation: against the official cityscapesScripts evaluation (when
installed) and against the sample's own gtFine_labelTrainIds file (always)."""

from __future__ import annotations

import importlib.util
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from ccnet.evaluation.cityscapes_eval import evaluate_label_id_folders, match_files
from tests.conftest import CITYSCAPES_STEM as STEM


def test_matches_pixel_count_reference(sample_folders):
    pred_dir, gt_dir = sample_folders
    result = evaluate_label_id_folders(pred_dir, gt_dir, threads=1)
    # Independent reference: the label-id -> train-id table of cityscapesScripts' labels.py written
    # out here, and per-class pixel counts. (The sample's labelTrainIds file was downscaled separately
    # from its labelIds file and differs in 77 pixels, so it cannot serve as the reference.)
    to_train = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    lookup = np.vectorize(lambda v: to_train.get(int(v), 255))
    train_gt = lookup(np.asarray(Image.open(gt_dir / "frankfurt" / f"{STEM}_gtFine_labelIds.png")))
    pred = lookup(np.asarray(Image.open(next(pred_dir.rglob("*.png")))))
    valid = train_gt != 255
    for c in range(19):
        tp = np.sum(valid & (train_gt == c) & (pred == c))
        fn = np.sum(valid & (train_gt == c) & (pred != c))
        fp = np.sum(valid & (train_gt != c) & (pred == c))
        expected = tp / (tp + fp + fn) if tp + fp + fn else math.nan
        assert result["IoU"][c] == pytest.approx(expected, nan_ok=True), result["classes"][c]
    assert result["num_images"] == 1
    assert 0 < result["mIoU"] < 1


def test_missing_and_duplicate_predictions_are_reported(sample_folders, tmp_path):
    pred_dir, gt_dir = sample_folders
    with pytest.raises(FileNotFoundError, match=f"no prediction {STEM}"):
        match_files(tmp_path / "empty", gt_dir)
    shutil.copy(next(pred_dir.rglob("*.png")), pred_dir / f"{STEM}_other.png")
    with pytest.raises(ValueError, match="several predictions"):
        match_files(pred_dir, gt_dir)


def _load_compare_script(repo_root):
    spec = importlib.util.spec_from_file_location("compare_cityscapes_eval",
                                                  repo_root / "scripts" / "compare_cityscapes_eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_equals_official_cityscapes_evaluation(repo_root, sample_folders, tmp_path):
    pytest.importorskip("cityscapesscripts", reason="official evaluation not installed: pip install cityscapesscripts")
    script = _load_compare_script(repo_root)
    root = tmp_path / "generated"
    script.make_folder(root, num_images=3, height=96, width=192)
    # also the real sample: its gt (labelIds + instanceIds) and the perturbed prediction
    pred_dir, gt_dir = sample_folders
    for name in (f"{STEM}_gtFine_labelIds.png", f"{STEM}_gtFine_instanceIds.png"):
        shutil.copy(gt_dir / "frankfurt" / name, root / "gtFine" / "val" / "frankfurt" / name)
    shutil.copy(next(pred_dir.rglob("*.png")), root / "results" / "frankfurt")
    result = script.compare(root, tol=1e-6, threads=2)
    assert result["num_images"] == 4
    assert result["max_abs_diff"] <= 1e-6
