"""The paper's presets end to end at their real sizes (ccnet/apps/rehearse.py, tools/rehearse_presets.py):
full-size generated images in the real layouts, the real ``tools/train.py experiment=<preset>``, two
training steps at the preset's crop, its validation protocol on one image. Batch 1 on CI's CPUs. A rerun
replaces an earlier rehearsal's files (its run folder included) and never a file it did not write."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest

import ccnet.apps.rehearse
from ccnet.apps.rehearse import PRESETS, rehearse
from ccnet.utils.manifest import OutputConflictError
from tools.rehearse_presets import main

EXPECTED = {  # model, crop, validation protocol
    "cityscapes_r101_official": ("ccnet_r101_official on cityscapes", [769, 769], "slide [769, 769] stride [513, 513]"),
    "cityscapes_r101_769_80k": ("ccnet_r101 on cityscapes", [769, 769], "slide [769, 769] stride [513, 513]"),
    "ade20k_r101_512_80k": ("ccnet_r101 on ade20k", [512, 512], "whole, test_size [512, 2048]"),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_trains_and_validates_at_real_size(preset: str, tmp_path: Path) -> None:
    # The attention panel runs the model once more on the whole image: ~35 s per Cityscapes preset on CI's
    # CPUs, so CI draws it at ADE's size only (tools/rehearse_presets.py draws it for all three).
    extra = ["train.vis_images=0"] if preset.startswith("cityscapes") else []
    result = rehearse(preset, tmp_path, iterations=2, batch_size=1, device="cpu", extra=extra)
    assert result.status == "pass", result.detail
    model, crop, protocol = EXPECTED[preset]
    assert (result.crop_size, result.eval_protocol) == (crop, protocol)
    assert result.batch_size == 1 and len(result.step_s) == 2 and all(s > 0 for s in result.step_s)
    assert result.val_images == 1 and result.val_time_s > 0 and 0.0 <= result.val_miou <= 1.0
    assert result.peak_rss_gib > 1.0  # a ResNet-101 at 512-769 px cannot train in less
    log = (tmp_path / preset / "run" / "train.log").read_text()
    assert f"training {model}: 2 iterations, batch 1" in log and "model.weights is null" in log
    shutil.rmtree(tmp_path / preset / "run" / "checkpoints")  # ~1 GB per Cityscapes preset


def test_a_run_that_fails_is_reported_with_its_console(tmp_path: Path) -> None:
    result = rehearse("ade20k_r101_512_80k", tmp_path, extra=["train.crop_size=[0, 0]"], timeout_s=120)
    assert result.status == "fail" and "exited with 2" in result.detail
    assert "train.crop_size must be null or a positive integer" in result.detail  # the tool's one-line error
    assert "Traceback" not in (tmp_path / "ade20k_r101_512_80k" / "console.log").read_text()
    assert str(tmp_path / "ade20k_r101_512_80k" / "console.log") in result.detail


def test_tool_reports_a_killed_run_and_exits_1(tmp_path: Path, capsys) -> None:
    out = tmp_path / "rehearsal"
    for _ in range(2):  # the same command twice: the second replaces the first's files
        assert main(["ade20k_r101_512_80k", "--timeout", "1", "--out-dir", str(out)]) == 1
        report = json.loads((out / "rehearsal.json").read_text())
        (row,) = report["rehearsals"]
        assert row["status"] == "fail" and row["detail"].startswith("killed after 1 s")
        assert "FAILED: ade20k_r101_512_80k" in capsys.readouterr().out
    recorded = (out / "manifest.txt").read_text().splitlines()[1:]
    assert len(recorded) == len(set(recorded))  # each file once
    data = "ade20k_r101_512_80k/data/ADEChallengeData2016"
    assert {
        "rehearse rehearsal.json",
        "rehearse ade20k_r101_512_80k/console.log",
        *(
            f"rehearse {data}/{kind}/{split}/ADE_{split[:5]}_{n:08d}.{ext}"
            for split, count in (("training", 2), ("validation", 1))
            for n in range(1, count + 1)
            for kind, ext in (("images", "jpg"), ("annotations", "png"))
        ),
    } <= set(recorded)


def test_tool_never_replaces_a_file_it_did_not_write(tmp_path: Path, caplog) -> None:
    out = tmp_path / "rehearsal"
    mine = out / "ade20k_r101_512_80k" / "console.log"
    mine.parent.mkdir(parents=True)
    mine.write_text("the user's notes")
    with caplog.at_level(logging.ERROR, logger="rehearse"), pytest.raises(SystemExit) as exit_:
        main(["ade20k_r101_512_80k", "--timeout", "1", "--out-dir", str(out)])
    assert exit_.value.code == 2
    assert caplog.messages == [
        f"refusing to write into {out}: 1 file(s) this run would write are not its own to "
        f"replace: {mine} (exists, and no earlier rehearse run wrote it here). Nothing was "
        "written. Give the run a folder of its own (--out-dir=...) or move those files away"
    ]
    assert mine.read_text() == "the user's notes"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "rehearsal",
        "rehearsal/ade20k_r101_512_80k",
        "rehearsal/ade20k_r101_512_80k/console.log",
    ]


def test_a_rerun_removes_the_earlier_rehearsals_run_but_never_a_file_of_the_user(tmp_path: Path, monkeypatch) -> None:
    # a stand-in for tools/train.py: fills its work_dir like a run that saved a checkpoint, then fails
    child = (
        "import pathlib, sys; w = pathlib.Path(sys.argv[1]) / 'checkpoints'; w.mkdir(parents=True); "
        "(w / 'last.pth').write_text(sys.argv[2]); sys.exit(3)"
    )
    stamps = iter(["first", "second", "third"])
    monkeypatch.setattr(
        ccnet.apps.rehearse,
        "train_command",
        lambda preset, data, work_dir, *args, **kwargs: [sys.executable, "-c", child, str(work_dir), next(stamps)],
    )
    last = tmp_path / "ade20k_r101_512_80k" / "run" / "checkpoints" / "last.pth"
    for stamp in ("first", "second"):
        result = rehearse("ade20k_r101_512_80k", tmp_path, timeout_s=60)
        assert result.status == "fail" and "exited with 3" in result.detail
        assert last.read_text() == stamp  # the earlier run's folder was removed, not refused
    (last.parent / "notes.txt").write_text("the user's notes")
    with pytest.raises(OutputConflictError, match=r"notes\.txt \(exists, and no earlier rehearse run wrote it"):
        rehearse("ade20k_r101_512_80k", tmp_path, timeout_s=60)
    assert (last.parent / "notes.txt").read_text() == "the user's notes" and last.read_text() == "second"


def test_tool_rejects_an_unknown_preset(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["cityscapes_r50"])
    assert "unknown preset(s) cityscapes_r50" in capsys.readouterr().err
