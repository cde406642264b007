"""Smoke test of the data-loading benchmark (``tools/benchmark.py data``) on tiny generated images; its
--data-dir files replace only files an earlier benchmark wrote there."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccnet.apps.benchmarks import data as data_benchmark
from ccnet.data.cityscapes import label_ids_to_train_ids
from ccnet.utils.manifest import OutputConflictError


def _args(data_dir: Path) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    data_benchmark.add_arguments(parser)
    return parser.parse_args(
        [
            "--workers",
            "1",
            "--num-images",
            "2",
            "--image-size",
            "64",
            "128",
            "--crop-size",
            "32",
            "--batch-size",
            "2",
            "--num-batches",
            "2",
            "--data-dir",
            str(data_dir),
            "--force",
        ]
    )


def test_run_times_the_training_pipeline(tmp_path: Path, capsys) -> None:
    args = _args(tmp_path)
    result = data_benchmark.run(args)
    json.dumps(result)  # the CLI writes it as JSON
    assert result["crop_size"] == [32, 32] and result["image_size"] == [64, 128]
    assert [row["workers"] for row in result["results"]] == [1]
    assert result["results"][0]["images_per_s"] > 0
    assert set(result["stage_ms_per_image"]) == {"decode_image", "decode_and_map_label", "transform"}
    assert "images/s" in capsys.readouterr().out
    # The generated files are valid Cityscapes pairs: every label id is one of the table's.
    images = sorted(tmp_path.rglob("*_leftImg8bit.png"))
    labels = sorted(tmp_path.rglob("*_gtFine_labelIds.png"))
    assert len(images) == len(labels) == 2
    assert Image.open(images[0]).size == (128, 64)
    label_ids = np.asarray(Image.open(labels[0]))
    assert (label_ids_to_train_ids(label_ids) != 255).any() and label_ids.max() <= 33


def test_data_dir_files_replace_their_own_but_never_a_file_of_the_user(tmp_path: Path, capsys) -> None:
    stem = "leftImg8bit/train/bench/bench_000001_000019_leftImg8bit.png"
    data_benchmark.run(_args(tmp_path / "kept"))
    data_benchmark.run(_args(tmp_path / "kept"))  # the same command again: its own files
    assert f"benchmark {stem}" in (tmp_path / "kept" / "manifest.txt").read_text().splitlines()
    mine = tmp_path / "mine" / stem
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's photo")
    with pytest.raises(
        OutputConflictError,
        match=r"bench_000001_000019_leftImg8bit\.png \(exists, and no earlier "
        r"benchmark run wrote it here\).*\(--data-dir=\.\.\.\)",
    ):
        data_benchmark.run(_args(tmp_path / "mine"))
    assert mine.read_bytes() == b"the user's photo"
    assert [p for p in (tmp_path / "mine").rglob("*") if p.is_file()] == [mine]
