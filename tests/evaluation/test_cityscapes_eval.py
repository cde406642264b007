"""Cityscapes label-id folder evaluation: against the official cityscapesScripts evaluation (when
installed) and against the sample's own gtFine_labelTrainIds file (always); the comparison script's files
never written over a file it did not write."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ccnet.evaluation.cityscapes_eval import evaluate_label_id_folders, match_files
from ccnet.utils.manifest import HEADER
from tests.conftest import CITYSCAPES_STEM as STEM


def test_matches_pixel_count_reference(sample_folders):
    pred_dir, gt_dir = sample_folders
    result = evaluate_label_id_folders(pred_dir, gt_dir, threads=1)
    # Independent reference: the label-id -> train-id table of cityscapesScripts' labels.py written
    # out here, and per-class pixel counts. (The sample's labelTrainIds file was downscaled separately
    # from its labelIds file and differs in 77 pixels, so it cannot serve as the reference.)
    to_train = {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }
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
    spec = importlib.util.spec_from_file_location(
        "compare_cityscapes_eval", repo_root / "scripts" / "compare_cityscapes_eval.py"
    )
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


def test_compare_script_replaces_its_own_files_but_never_a_file_it_did_not_write(repo_root, tmp_path, monkeypatch):
    script = _load_compare_script(repo_root)
    monkeypatch.setattr(script, "official_installed", lambda: True)
    # the official evaluation is not under test here (and may not be installed): a stand-in result
    monkeypatch.setattr(
        script,
        "compare",
        lambda root, tol, threads: {
            "num_images": len(list((root / "results").rglob("*.png"))),
            "mIoU_ccnet": 0.5,
            "mIoU_official": 0.5,
            "max_abs_diff": 0.0,
            "seconds": {},
            "speedup_vs_official_as_shipped": {},
            "speedup_vs_official_class_only": {},
        },
    )
    command = [
        "--images",
        "2",
        "--height",
        "16",
        "--width",
        "32",
        "--root",
        str(tmp_path / "gen"),
        "--json",
        str(tmp_path / "out" / "compare.json"),
    ]
    for _ in range(2):  # the same command twice: the second replaces the first's files
        assert script.main(command)["num_images"] == 2
    assert json.loads((tmp_path / "out" / "compare.json").read_text())["size"] == [16, 32]
    assert (tmp_path / "out" / "manifest.txt").read_text() == HEADER + "compare_cityscapes_eval compare.json\n"
    assert sorted((tmp_path / "gen" / "manifest.txt").read_text().splitlines()[1:]) == sorted(
        f"compare_cityscapes_eval {folder}/{city}/{city}_{i:06d}_000019_{suffix}.png"
        for i, city in enumerate(["frankfurt", "lindau"])
        for folder, suffix in (
            ("gtFine/val", "gtFine_labelIds"),
            ("gtFine/val", "gtFine_instanceIds"),
            ("results", "leftImg8bit"),
        )
    )

    # through the real command: a file of the user's at --json, then at a generated path
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "compare.json").write_text("the user's results")
    gt = mine / "gen" / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000019_gtFine_labelIds.png"
    gt.parent.mkdir(parents=True)
    gt.write_bytes(b"the user's ground truth")
    refused = {
        ("--root", str(mine / "fresh"), "--json", str(mine / "compare.json")): mine / "compare.json",
        ("--root", str(mine / "gen")): gt,
    }
    for options, path in refused.items():
        proc = subprocess.run(
            [
                sys.executable,
                str(repo_root / "scripts" / "compare_cityscapes_eval.py"),
                "--images",
                "2",
                "--height",
                "16",
                "--width",
                "32",
                *options,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        output = (proc.stdout + proc.stderr).strip()
        assert proc.returncode == 2 and "Traceback" not in output and len(output.splitlines()) == 1, output
        assert f"{path} (exists, and no earlier compare_cityscapes_eval run wrote it here)" in output
    assert (mine / "compare.json").read_text() == "the user's results" and gt.read_bytes() == b"the user's ground truth"
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*") if p.is_file()) == [
        "compare.json",
        "gen/gtFine/val/frankfurt/frankfurt_000000_000019_gtFine_labelIds.png",
    ]
