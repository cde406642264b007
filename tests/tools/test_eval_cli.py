"""tools/eval.py: config resolution, metrics.json, saved predictions, unlabelled splits, errors (one
message, status 2, also from DataLoader workers; broken input is refused, never scored), outputs that
never replace a user's files, and (command line) a trained checkpoint on the Cityscapes sample and 2
torchrun processes == 1 process."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from ccnet.apps import eval as eval_app
from ccnet.apps.eval import run_eval
from ccnet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ccnet.data import DatasetError
from ccnet.engine import train
from ccnet.errors import ConfigError, user_message
from ccnet.evaluation.loading import CheckpointMismatchError
from ccnet.utils.manifest import OutputConflictError
from tests.data.datagen import folder_cfg, random_image, write_image, write_label
from tests.evaluation.helpers import load_yaml, make_checkpoint

# label id -> train id of cityscapesScripts' labels.py, written out independently of ccnet.data
TO_TRAIN = {
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
SAMPLE_STEM = "frankfurt_000000_000294"


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def eval_cfg(configs_dir, *overrides):
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        return compose("eval", overrides=["eval.num_workers=0", "device=cpu", *overrides])


def run_cli(repo_root, tool, *args, nproc=0):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = (
        [sys.executable] if not nproc else [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    )
    proc = subprocess.run(
        [*launcher, str(repo_root / "tools" / tool), *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def synthetic_cfg(configs_dir, **changes):
    return {**load_yaml(configs_dir, "dataset", "synthetic"), "image_size": 64, "min_gap": 16, "num_val": 5, **changes}


def iou_by_hand(pred: np.ndarray, gt: np.ndarray, k: int):
    valid = gt != 255
    out = []
    for c in range(k):
        tp = np.sum(valid & (gt == c) & (pred == c))
        union = np.sum(valid & ((gt == c) | (pred == c)))
        out.append(tp / union if union else math.nan)
    return out


def test_metrics_json_and_every_format_from_stored_config(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    save = tmp_path / "out" / "predictions"
    cfg = eval_cfg(
        configs_dir,
        f"checkpoint={ckpt}",
        f"output_dir={tmp_path / 'out'}",
        "formats=[color,trainid,overlay]",
        "eval.flip=true",
    )
    result = run_eval(cfg)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["num_images"] == result["num_images"] == 5 and metrics["split"] == "val"
    assert list(metrics["per_class"]) == ["background", "red", "green", "blue", "yellow"]
    # Re-score the written trainid PNGs against the dataset's labels by hand.
    from ccnet.data import build_dataset

    ds = build_dataset(synthetic_cfg(configs_dir), "val")
    preds = [np.asarray(Image.open(save / "trainid" / "val" / f"{i:06d}.png")) for i in range(5)]
    labels = [ds[i][1].numpy() for i in range(5)]
    expected = iou_by_hand(np.concatenate([p.ravel() for p in preds]), np.concatenate([g.ravel() for g in labels]), 5)
    got = [v["IoU"] for v in metrics["per_class"].values()]
    assert [None if math.isnan(e) else pytest.approx(e) for e in expected] == got
    for i, p in enumerate(preds):
        color = np.asarray(Image.open(save / "color" / "val" / f"{i:06d}.png"))
        assert np.array_equal(color, np.asarray(ds.palette, dtype=np.uint8)[p])
        assert np.asarray(Image.open(save / "overlay" / "val" / f"{i:06d}.png")).shape == (64, 64, 3)


def test_plots_next_to_metrics_json_and_the_confusion_matrix(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    out = tmp_path / "out"
    result = run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={out}", "formats=trainid"))
    # the returned confusion matrix, counted by hand from the written predictions and the labels
    from ccnet.data import build_dataset

    ds = build_dataset(synthetic_cfg(configs_dir), "val")
    expected = np.zeros((5, 5), dtype=np.int64)
    for i in range(5):
        pred = np.asarray(Image.open(out / "predictions" / "val" / f"{i:06d}.png")).astype(np.int64)
        gt = ds[i][1].numpy()
        valid = gt != 255
        np.add.at(expected, (gt[valid], pred[valid]), 1)
    assert result["confusion"].shape == (5, 5) and np.array_equal(result["confusion"], expected)
    assert (out / "metrics.json").is_file()
    for name, min_height in (("per_class_iou.png", 150), ("confusion_matrix.png", 300)):
        with Image.open(out / name) as plot:
            assert plot.format == "PNG" and plot.width >= 300 and min_height <= plot.height <= 2000
        assert 5_000 < (out / name).stat().st_size < 500_000


def test_legend_true_puts_a_class_legend_under_eval_overlays(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    for legend in ("false", "true"):
        run_eval(
            eval_cfg(
                configs_dir,
                f"checkpoint={ckpt}",
                f"output_dir={tmp_path / legend}",
                "formats=[overlay,color]",
                f"legend={legend}",
            )
        )
    predictions = tmp_path / "true" / "predictions"
    with (
        Image.open(tmp_path / "false" / "predictions" / "overlay" / "val" / "000000.png") as plain,
        Image.open(predictions / "overlay" / "val" / "000000.png") as framed,
        Image.open(predictions / "color" / "val" / "000000.png") as color,
    ):
        assert plain.size == color.size == (64, 64)  # masks keep the input's size
        assert framed.width == 64 and framed.height > 64  # the legend band below the overlay
        assert np.array_equal(np.asarray(framed)[:64], np.asarray(plain))


def test_dataset_group_and_key_overrides_merge_over_checkpoint(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    # a single key replaces the stored value ...
    cfg = eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path}", "+dataset.num_val=2")
    assert run_eval(cfg)["num_images"] == 2
    # ... a group replaces what it defines (num_val 200 -> shrunk again by a key)
    cfg = eval_cfg(
        configs_dir,
        f"checkpoint={ckpt}",
        f"output_dir={tmp_path}",
        "dataset=synthetic",
        "dataset.num_val=3",
        "dataset.image_size=64",
        "dataset.min_gap=16",
    )
    assert run_eval(cfg, dataset_group=True)["num_images"] == 3


def test_checkpoint_without_config_needs_groups(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir), store_config=False)
    with pytest.raises(CheckpointMismatchError, match="stores no 'model' config.*model="):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path}"))
    tiny = [
        "model.tiny_widths=[8,16,32]",
        "model.head_channels=16",
        "model.bottleneck_channels=16",
        "model.aux_channels=8",
    ]
    cfg = eval_cfg(
        configs_dir,
        f"checkpoint={ckpt}",
        f"output_dir={tmp_path}",
        "model=ccnet_tiny",
        "dataset=synthetic",
        "dataset.num_val=2",
        "dataset.image_size=64",
        "dataset.min_gap=16",
        *tiny,
    )
    assert run_eval(cfg, model_group=True, dataset_group=True)["num_images"] == 2  # num_classes via ${dataset...}


def test_class_count_mismatch_and_bad_settings_are_explained(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    with pytest.raises(CheckpointMismatchError, match="predicts 5 classes but dataset 'synthetic' has 4"):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path}", "+dataset.num_classes=4"))
    with pytest.raises(ConfigError, match="eval.mode"):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path}", "eval.mode=sliding"))
    with pytest.raises(ConfigError, match="eval.num_workers must be an integer >= 0"):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path}", "eval.num_workers=-2"))
    with pytest.raises(ConfigError, match="formats='colour': expected one or more distinct formats"):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path}", "formats=colour"))
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        run_eval(eval_cfg(configs_dir, f"checkpoint={tmp_path / 'none.pth'}", f"output_dir={tmp_path}"))


def test_a_checkpoint_with_a_nan_weight_is_not_scored(configs_dir, tmp_path):
    ckpt = load_checkpoint(make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir)))
    name = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][name] = torch.full_like(ckpt["model"][name], float("nan"))
    bad = save_checkpoint(ckpt, tmp_path / "nan.pth")
    expected = f"checkpoint {bad} holds NaN or inf in 1 tensor(s), e.g. ['{name}']: "
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        run_eval(eval_cfg(configs_dir, f"checkpoint={bad}", f"output_dir={tmp_path / 'out'}"))
    assert not (tmp_path / "out" / "metrics.json").exists()


def test_eval_outputs_never_replace_a_users_files(configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"mIoU": 0.99, "note": "my own"}')  # a user's own file
    with pytest.raises(
        OutputConflictError, match=f"1 file\\(s\\).*{out / 'metrics.json'} \\(exists, and no earlier eval run wrote it"
    ):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={out}"))
    assert (out / "metrics.json").read_text() == '{"mIoU": 0.99, "note": "my own"}'

    (out / "metrics.json").unlink()
    (out / "predictions" / "val").mkdir(parents=True)
    (out / "predictions" / "val" / "000003.png").write_bytes(b"a user's picture")
    with pytest.raises(OutputConflictError, match="1 file.*predictions/val/000003.png \\(exists"):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={out}", "formats=trainid"))
    assert not (out / "metrics.json").exists() and len(list((out / "predictions").rglob("*.png"))) == 1

    (out / "predictions" / "val" / "000003.png").unlink()
    first = run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={out}", "formats=trainid"))
    again = run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={out}", "formats=trainid"))
    assert again["mIoU"] == first["mIoU"]  # its own files: replaced
    recorded = sorted((out / "manifest.txt").read_text().splitlines()[1:])
    assert recorded == sorted(
        ["eval metrics.json", "eval per_class_iou.png", "eval confusion_matrix.png"]
        + [f"eval predictions/val/{i:06d}.png" for i in range(5)]
    )


def folder_dataset(root: Path, labels: list) -> dict:
    """A folder dataset with one 24x32 image per label under images/val and masks/val."""
    rng = np.random.default_rng(0)
    for i, label in enumerate(labels):
        write_image(root / "images" / "val" / f"{i}.png", random_image(rng, 24, 32))
        write_label(root / "masks" / "val" / f"{i}.png", label)
    return folder_cfg(root, val_split="val", num_classes=3)


def test_a_split_without_any_labelled_pixel_is_refused_before_inference(configs_dir, tmp_path, monkeypatch):
    dataset = folder_dataset(tmp_path / "data", [np.full((24, 32), 255, np.uint8)] * 2)  # every pixel ignored
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, dataset)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded for a split that cannot be scored")

    monkeypatch.setattr(eval_app, "load_model", no_model)
    with pytest.raises(
        DatasetError,
        match=r"the evaluation split 'val' \(2 images\) has no labelled pixel: every "
        r"label is 255 \(ignore\).*Check split, the mask files",
    ):
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}"))


def test_a_worker_process_error_is_one_message_naming_the_file(configs_dir, tmp_path):
    invalid = np.zeros((24, 32), np.uint8)
    invalid[0, :2] = [7, 9]  # not a class of 3, not ignore
    dataset = folder_dataset(tmp_path / "data", [np.ones((24, 32), np.uint8)] * 3 + [invalid])
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, dataset)
    with pytest.raises(DatasetError) as failed:
        run_eval(eval_cfg(configs_dir, f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", "eval.num_workers=2"))
    message = user_message(failed.value)
    assert "DataLoader worker" in str(failed.value) and "Traceback" in str(failed.value)  # what torch hands over
    assert message.startswith(f"Label {tmp_path / 'data' / 'masks' / 'val' / '3.png'} contains invalid values [7, 9]")
    assert message.endswith("(in DataLoader worker process 1)") and "Traceback" not in message


@pytest.mark.slow  # a tool run with DataLoader workers
def test_cli_truncated_image_in_a_worker_is_one_line_and_status_2(repo_root, configs_dir, tmp_path):
    dataset = folder_dataset(tmp_path / "data", [np.ones((24, 32), np.uint8)] * 4)
    broken = tmp_path / "data" / "images" / "val" / "2.png"
    broken.write_bytes(broken.read_bytes()[:120])  # a truncated PNG
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, dataset)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root / "tools" / "eval.py"),
            f"checkpoint={ckpt}",
            "device=cpu",
            "eval.num_workers=2",
            f"output_dir={out}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert output.count(f"Cannot decode image {broken}") == 1 and "(in DataLoader worker process 0)" in output
    assert not out.exists()  # it wrote nothing, so its folder is gone


def make_cityscapes_test_split(root: Path) -> list:
    names = []
    for city, n in (("berlin", 2), ("bonn", 1)):
        folder = root / "leftImg8bit" / "test" / city
        folder.mkdir(parents=True)
        for i in range(n):
            name = f"{city}_{i:06d}_000019_leftImg8bit.png"
            rng = np.random.default_rng(i)
            Image.fromarray(rng.integers(0, 255, (40, 72, 3), dtype=np.uint8)).save(folder / name)
            names.append(Path(city) / name)
    return names


def test_unlabelled_test_split_writes_cityscapes_submission(configs_dir, tmp_path):
    cs = load_yaml(configs_dir, "dataset", "cityscapes")
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, cs)
    names = make_cityscapes_test_split(tmp_path / "cs")
    common = [f"checkpoint={ckpt}", f"output_dir={tmp_path / 'out'}", f"dataset.root={tmp_path / 'cs'}", "split=test"]
    with pytest.raises(ConfigError, match="has no labels.*formats=\\[cityscapes\\]"):
        run_eval(eval_cfg(configs_dir, *common))
    result = run_eval(eval_cfg(configs_dir, *common, "formats=cityscapes"))
    assert result == {"num_images": 3, "classes": result["classes"]} and len(result["classes"]) == 19
    assert not (tmp_path / "out" / "metrics.json").exists()
    sub = tmp_path / "out" / "predictions"
    written = sorted(p.relative_to(sub) for p in sub.rglob("*.png"))
    assert written == sorted(names)  # <city>/<name>_leftImg8bit.png, as the test server expects
    for p in written:
        ids = np.asarray(Image.open(sub / p))
        assert ids.shape == (40, 72) and set(np.unique(ids)) <= set(TO_TRAIN)  # label ids of the 19 classes


@pytest.mark.slow
def test_trained_checkpoint_on_cityscapes_sample_through_cli(repo_root, configs_dir, cityscapes_sample, tmp_path):
    # A root whose train and val splits both link to the sample's val images: training on the same
    # folder as validation through dataset.train_split=val would make the val split augmented too.
    root = tmp_path / "cityscapes"
    for kind in ("leftImg8bit", "gtFine"):
        (root / kind).mkdir(parents=True)
        for split in ("train", "val"):
            (root / kind / split).symlink_to(cityscapes_sample / kind / "val", target_is_directory=True)
    work = tmp_path / "run"
    overrides = [
        "dataset=cityscapes",
        f"dataset.root={root}",
        "dataset.base_size=[128,256]",
        "dataset.ratio_range=[0.5,1.0]",
        "train.crop_size=[64,64]",
        "dataset.cat_max_ratio=1.0",
        "model.tiny_widths=[8,16,32]",
        "model.head_channels=16",
        "model.bottleneck_channels=16",
        "model.aux_channels=8",
        "train.batch_size=2",
        "train.max_iters=3",
        "train.num_workers=0",
        "eval.num_workers=0",
        "train.device=cpu",
        "train.log_interval=1",
        "train.eval_interval=0",
    ]
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    with open_dict(cfg):
        cfg.work_dir = str(work)
    train(cfg)  # in process: one interpreter start less than tools/train.py
    ckpt = work / "checkpoints" / "last.pth"
    save = tmp_path / "eval" / "predictions"
    proc = run_cli(
        repo_root,
        "eval.py",
        f"checkpoint={ckpt}",
        f"output_dir={tmp_path / 'eval'}",
        "device=cpu",
        "eval.num_workers=0",
        "formats=[trainid,cityscapes]",
    )
    assert "mIoU" in proc.stdout and "road" in proc.stdout  # the per-class table
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["dataset"] == "cityscapes" and metrics["num_images"] == 1
    # the same checkpoint scored by the trainer's final validation
    final = [json.loads(line) for line in (work / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["val/mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-9)
    # and by hand from the written prediction and the sample's label ids
    gt_ids = np.asarray(
        Image.open(cityscapes_sample / "gtFine" / "val" / "frankfurt" / f"{SAMPLE_STEM}_gtFine_labelIds.png")
    )
    gt = np.vectorize(lambda v: TO_TRAIN.get(int(v), 255))(gt_ids)
    pred = np.asarray(Image.open(save / "trainid" / "frankfurt" / f"{SAMPLE_STEM}_leftImg8bit.png"))
    expected = iou_by_hand(pred, gt, 19)
    assert [None if math.isnan(e) else pytest.approx(e) for e in expected] == [
        v["IoU"] for v in metrics["per_class"].values()
    ]
    sub = np.asarray(Image.open(save / "cityscapes" / "frankfurt" / f"{SAMPLE_STEM}_leftImg8bit.png"))
    assert np.array_equal(np.vectorize(lambda v: TO_TRAIN[int(v)])(sub), pred)  # label ids <-> train ids


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(repo_root, configs_dir, tmp_path):
    ckpt = make_checkpoint(tmp_path / "ck.pth", configs_dir, synthetic_cfg(configs_dir))
    common = [f"checkpoint={ckpt}", "device=cpu", "eval.num_workers=0", "formats=trainid"]
    run_eval(eval_cfg(configs_dir, *common, f"output_dir={tmp_path / 'one'}"))
    run_cli(repo_root, "eval.py", *common, f"output_dir={tmp_path / 'two'}", nproc=2)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["num_images"] == 5 and one == two  # exactly equal, per class too
    pngs = [
        sorted(p.relative_to(tmp_path / run).as_posix() for p in (tmp_path / run / "predictions").rglob("*.png"))
        for run in ("one", "two")
    ]
    assert all(
        (tmp_path / run / plot).is_file()
        for run in ("one", "two")  # rank 0's plots beside metrics.json
        for plot in ("per_class_iou.png", "confusion_matrix.png")
    )
    # both ranks wrote their shard, under output_dir/predictions, and recorded it in the one manifest
    assert pngs[0] == pngs[1] == [f"predictions/val/{i:06d}.png" for i in range(5)]
    recorded = sorted((tmp_path / "two" / "manifest.txt").read_text().splitlines()[1:])
    assert recorded == sorted(
        [f"eval {name}" for name in pngs[0]]
        + ["eval confusion_matrix.png", "eval metrics.json", "eval per_class_iou.png"]
    )
    for name in pngs[0]:
        a = np.asarray(Image.open(tmp_path / "one" / name))
        assert np.array_equal(a, np.asarray(Image.open(tmp_path / "two" / name)))
