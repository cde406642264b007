"""tools/infer.py: masks and overlays for a file, a folder or a glob; unreadable images skipped and
reported; no output ever replaces an input or a file infer did not write; clear errors for a
checkpoint whose class count does not match the palette and for missing settings."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from ccnet.apps.infer import list_inputs, run_infer
from ccnet.checkpoint import load_checkpoint
from ccnet.data.cityscapes import PALETTE
from ccnet.errors import ConfigError
from ccnet.evaluation.loading import CheckpointMismatchError
from ccnet.evaluation.writers import FORMATS
from ccnet.models import build_model
from ccnet.utils.manifest import OutputConflictError
from ccnet.utils.outputs import discard_if_empty_on_failure, hold_folder
from tests.evaluation.helpers import load_yaml, make_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 44, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (26, 40, 3), dtype=np.uint8)).save(folder / "sub" / "b.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture()
def cityscapes_ckpt(configs_dir, tmp_path):
    return make_checkpoint(tmp_path / "ck.pth", configs_dir, load_yaml(configs_dir, "dataset", "cityscapes"))


def infer_cfg(configs_dir, *overrides):
    with initialize_config_dir(config_dir=str(configs_dir), version_base="1.3"):
        return compose("infer", overrides=["device=cpu", *overrides])


def test_list_inputs_file_folder_glob(photos):
    assert list_inputs(str(photos / "a.png")) == ([photos / "a.png"], photos)
    assert list_inputs(str(photos)) == ([photos / "a.png", photos / "sub" / "b.jpg"], photos)
    assert list_inputs(str(photos / "**" / "*.jpg")) == ([photos / "sub" / "b.jpg"], photos)
    with pytest.raises(FileNotFoundError, match="no files match"):
        list_inputs(str(photos / "*.bmp"))
    with pytest.raises(FileNotFoundError, match="neither"):
        list_inputs(str(photos / "missing.png"))


def test_masks_match_the_model_run_by_hand(configs_dir, photos, cityscapes_ckpt, tmp_path):
    out = tmp_path / "out"
    written = run_infer(
        infer_cfg(
            configs_dir,
            f"checkpoint={cityscapes_ckpt}",
            f"input={photos}",
            f"output_dir={out}",
            "formats=[color,trainid,overlay]",
        )
    ).written
    assert [sorted(w) for w in written] == [["color", "overlay", "trainid"]] * 2
    assert written[1]["trainid"] == out / "trainid" / "sub" / "b.png"
    # Reference: the checkpoint's model on the image normalised here with ImageNet statistics.
    ckpt = load_checkpoint(cityscapes_ckpt)
    model = build_model(ckpt["config"]["model"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    for source, files in zip((photos / "a.png", photos / "sub" / "b.jpg"), written):
        rgb = np.asarray(Image.open(source).convert("RGB"))
        x = torch.from_numpy(((rgb / 255.0 - mean) / std).transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            expected = model(x)["out"].argmax(1)[0].numpy()
        ids = np.asarray(Image.open(files["trainid"]))
        assert np.array_equal(ids, expected)
        assert np.array_equal(np.asarray(Image.open(files["color"])), np.asarray(PALETTE, dtype=np.uint8)[ids])
        blend = np.asarray(Image.open(files["overlay"])).astype(float)
        assert np.abs(blend - (0.5 * rgb + 0.5 * np.asarray(PALETTE)[ids])).max() <= 1.0


def test_legend_true_reaches_infer_overlays(configs_dir, photos, cityscapes_ckpt, tmp_path):
    [written] = run_infer(
        infer_cfg(
            configs_dir,
            f"checkpoint={cityscapes_ckpt}",
            f"input={photos / 'a.png'}",
            f"output_dir={tmp_path / 'out'}",
            "formats=[overlay]",
            "legend=true",
        )
    ).written
    with Image.open(written["overlay"]) as framed:
        assert framed.width == 44 and framed.height > 30


def test_unreadable_images_are_skipped_and_reported(configs_dir, photos, cityscapes_ckpt, tmp_path, caplog):
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (photos / "sub" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="ccnet"):
        result = run_infer(
            infer_cfg(
                configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={out}", "formats=trainid"
            )
        )
    assert [w["trainid"] for w in result.written] == [out / "a.png", out / "sub" / "b.png"]
    assert [p for p, _ in result.skipped] == [photos / "broken.png", photos / "sub" / "empty.jpg"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub/b.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # one per skipped file, then the closing line
    assert warnings[0].startswith(f"skipped: cannot read image {photos / 'broken.png'}: ")
    assert (
        warnings[1].startswith(f"skipped: cannot read image {photos / 'sub' / 'empty.jpg'}: ")
        and "empty (0 bytes)" in warnings[1]
    )
    assert warnings[2] == f"wrote 2 of 4 images (trainid) to {out}; skipped 2 unreadable: broken.png, sub/empty.jpg"


def test_class_count_must_match_palette(configs_dir, photos, cityscapes_ckpt, tmp_path):
    cfg = infer_cfg(
        configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={tmp_path}", "dataset=ade20k"
    )
    with pytest.raises(CheckpointMismatchError, match="predicts 19 classes but the 'ade20k' palette has 150 colours"):
        run_infer(cfg, dataset_group=True)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("device=gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("formats=[color,mask]", "formats=['color', 'mask']: expected one or more distinct formats"),
        ("eval.crop_batch=0", "eval.crop_batch must be an integer >= 1, got 0"),
    ],
)
def test_a_wrong_setting_is_a_config_error_naming_it(configs_dir, photos, cityscapes_ckpt, tmp_path, setting, message):
    with pytest.raises(ConfigError) as refused:
        run_infer(
            infer_cfg(
                configs_dir,
                f"checkpoint={cityscapes_ckpt}",
                f"input={photos}",
                f"output_dir={tmp_path / 'out'}",
                setting,
            )
        )
    assert message in str(refused.value) and not (tmp_path / "out").exists()


def files_of(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("form", ["folder", "file", "glob"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_format_writes_over_an_input(configs_dir, photos, cityscapes_ckpt, fmt, form):
    """output_dir = the inputs' folder with one format: a.png's prediction would be a.png itself."""
    spec = {"folder": photos, "file": photos / "a.png", "glob": photos / "**" / "*.*g"}[form]
    before = files_of(photos)
    with pytest.raises(OutputConflictError) as refused:
        run_infer(
            infer_cfg(
                configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={spec}", f"output_dir={photos}", f"formats={fmt}"
            )
        )
    message = str(refused.value)
    assert f"refusing to write into {photos}: 1 file(s)" in message
    assert f"{photos / 'a.png'} (an input of this run)" in message and "output_dir=..." in message
    assert files_of(photos) == before  # inputs byte-identical, nothing written (not even sub/b.png)


def test_an_output_reaching_an_input_through_a_symlink_is_refused(configs_dir, photos, cityscapes_ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "color").symlink_to(photos, target_is_directory=True)  # out/color/a.png is photos/a.png
    before = files_of(photos)
    with pytest.raises(OutputConflictError, match=r"1 file\(s\).*color/a\.png \(an input of this run\)"):
        run_infer(
            infer_cfg(
                configs_dir,
                f"checkpoint={cityscapes_ckpt}",
                f"input={photos}",
                f"output_dir={out}",
                "formats=[color,trainid]",
            )
        )
    assert files_of(photos) == before and not (out / "trainid").exists()


def test_a_later_run_replaces_its_own_outputs_and_no_one_elses(configs_dir, photos, cityscapes_ckpt, tmp_path):
    out = tmp_path / "out"
    common = [f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={out}", "formats=trainid"]
    run_infer(infer_cfg(configs_dir, *common))
    first = files_of(out)
    lines = (out / "manifest.txt").read_text().splitlines()
    assert lines[0].startswith("# ccnet output manifest") and lines[1:] == ["infer a.png", "infer sub/b.png"]
    (out / "a.png").write_bytes(b"spoiled")  # its own file: replaced by the next run
    again = run_infer(infer_cfg(configs_dir, *common))
    assert len(again.written) == 2 and files_of(out) == first  # same predictions, manifest not grown

    # A user's file where a new input's prediction would go is refused, even if another tool wrote it.
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photos / "c.png")
    (out / "c.png").write_bytes(b"the user's own file")
    with open(out / "manifest.txt", "a") as manifest:
        manifest.write("eval c.png\n")
    before = files_of(out)
    with pytest.raises(OutputConflictError) as refused:
        run_infer(infer_cfg(configs_dir, *common))
    assert (
        f"1 file(s) this run would write are not its own to replace: {out / 'c.png'} (exists, and no earlier "
        "infer run wrote it here)" in str(refused.value)
    )
    assert files_of(out) == before  # nothing replaced, not even infer's own a.png

    # A manifest.txt that ccnet did not write is neither trusted nor appended to.
    (out / "c.png").unlink()
    (out / "manifest.txt").write_text("infer a.png\ninfer sub/b.png\n")
    with pytest.raises(
        OutputConflictError,
        match="manifest.txt \\(a file of the manifest's name that ccnet did not write\\).*a.png \\(exists",
    ):
        run_infer(infer_cfg(configs_dir, *common))
    assert (out / "manifest.txt").read_text() == "infer a.png\ninfer sub/b.png\n"


def test_an_output_dir_inside_the_input_folder_is_not_read_back_as_input(
    configs_dir, photos, cityscapes_ckpt, tmp_path
):
    out = photos / "seg"
    common = [f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={out}", "formats=[color,trainid]"]
    first = run_infer(infer_cfg(configs_dir, *common))
    again = run_infer(infer_cfg(configs_dir, *common))  # the first run's 4 PNGs now lie under the input folder
    assert [sorted(w.values()) for w in again.written] == [sorted(w.values()) for w in first.written]
    assert len(again.written) == 2 and not again.skipped
    nested = tmp_path / "nested"  # a folder whose every image lies in its subfolder output_dir
    (nested / "seg").mkdir(parents=True)
    shutil.copy(photos / "a.png", nested / "seg" / "a.png")
    with pytest.raises(FileNotFoundError, match="lies in output_dir"):
        run_infer(
            infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={nested}", f"output_dir={nested / 'seg'}")
        )


def test_a_failed_run_that_wrote_nothing_leaves_no_folder(configs_dir, photos, cityscapes_ckpt, tmp_path):
    """What tools/infer.py does when no input can be read: exit 2 inside the folder's lock and clean-up."""
    for image in photos.rglob("*.*g"):
        image.write_bytes(b"not an image")
    out = tmp_path / "out"
    with pytest.raises(SystemExit), hold_folder(out, "infer"), discard_if_empty_on_failure(out):
        result = run_infer(
            infer_cfg(configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={out}")
        )
        assert (out / "manifest.txt").is_file() and result.written == [] and len(result.skipped) == 2
        raise SystemExit(2)
    assert not out.exists()


def run_tool(repo_root, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(repo_root / "tools" / "infer.py"), *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_single_image_and_glob(repo_root, configs_dir, photos, tmp_path):
    synthetic = {**load_yaml(configs_dir, "dataset", "synthetic"), "image_size": 64, "min_gap": 16}
    ckpt = make_checkpoint(tmp_path / "syn.pth", configs_dir, synthetic)
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # skipped and reported: status 2
    proc = run_tool(
        repo_root,
        f"checkpoint={ckpt}",
        f"input={photos / '*.png'}",
        f"output_dir={tmp_path / 'out'}",
        "formats=color",
        "eval.flip=true",
        "device=auto",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"wrote 1 of 2 images (color) to {tmp_path / 'out'}; skipped 1 unreadable: broken.png" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    color = np.asarray(Image.open(tmp_path / "out" / "a.png"))  # one format: no subfolder; glob root: photos/
    assert color.shape == (30, 44, 3)
    assert {tuple(c) for c in color.reshape(-1, 3)} <= {
        (0, 0, 0),
        (220, 40, 40),
        (40, 200, 60),
        (50, 80, 230),
        (230, 210, 40),
    }  # the synthetic palette


def test_cli_refuses_to_write_over_the_inputs(repo_root, photos, cityscapes_ckpt):
    before = files_of(photos)
    proc = run_tool(
        repo_root,
        f"checkpoint={cityscapes_ckpt}",
        f"input={photos}",
        f"output_dir={photos}",
        "formats=overlay",
        "device=cpu",
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    assert output.count("refusing to write") == 1 and f"{photos / 'a.png'} (an input of this run)" in output
    assert files_of(photos) == before  # the photos untouched, and no infer.log or run.lock left among them


@pytest.mark.parametrize("missing", ["checkpoint", "input", None])
def test_cli_missing_setting_or_held_folder_is_one_line(repo_root, photos, cityscapes_ckpt, tmp_path, missing):
    out = tmp_path / "out"
    given = {"checkpoint": f"checkpoint={cityscapes_ckpt}", "input": f"input={photos}"}
    args = [v for k, v in given.items() if k != missing]
    if missing is None:  # every setting given, but another live process holds the output folder
        out.mkdir()
        holder = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(out / "run.lock")], stdout=subprocess.PIPE, text=True
        )
        assert holder.stdout.readline() == "held\n"
    try:
        proc = run_tool(repo_root, *args, f"output_dir={out}", "device=cpu")
    finally:
        if missing is None:
            holder.kill()
            holder.wait()
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in output
    expected = (
        f"the setting {missing} is required but not set: add {missing}=... to the command line"
        if missing
        else f"{out} is in use by another run"
    )
    assert output.count(expected) == 1
    assert out.exists() == (missing is None)  # a refused run removes the folder it created


HOLD_LOCK = (
    "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(120)"
)


def test_output_layout_is_what_the_docs_show(configs_dir, photos, cityscapes_ckpt, tmp_path):
    """docs/evaluation.md: a file x.jpg -> out/color/x.png; a folder's sub/x.jpg -> out/color/sub/x.png."""
    out = tmp_path / "single"
    written = run_infer(
        infer_cfg(
            configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos / 'sub' / 'b.jpg'}", f"output_dir={out}"
        )
    ).written
    assert written == [{"color": out / "color" / "b.png", "overlay": out / "overlay" / "b.png"}]
    out = tmp_path / "folder"
    written = run_infer(
        infer_cfg(
            configs_dir, f"checkpoint={cityscapes_ckpt}", f"input={photos}", f"output_dir={out}", "formats=[trainid]"
        )
    ).written
    assert [w["trainid"] for w in written] == [out / "a.png", out / "sub" / "b.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png")) == ["a.png", "sub/b.png"]


def test_a_failed_run_with_the_default_output_dir_leaves_no_empty_outputs_folder(repo_root, photos, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    proc = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "infer.py"), f"checkpoint={tmp_path / 'no.pth'}", f"input={photos}"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "checkpoint not found" in proc.stdout + proc.stderr
    assert list(work.iterdir()) == []  # neither outputs/infer/<time>/ nor the outputs/infer/ above it
