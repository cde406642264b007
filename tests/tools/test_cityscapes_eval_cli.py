"""tools/cityscapes_eval.py: the per-class table on stdout and the metrics as JSON, written again over its own
file but never over a file it did not write (one line, exit status 2, through the real command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ccnet.utils.manifest import HEADER
from tools.cityscapes_eval import main

TOOL = Path(__file__).resolve().parents[2] / "tools" / "cityscapes_eval.py"


def test_cli_prints_table_and_writes_json(sample_folders, tmp_path, capsys):
    pred_dir, gt_dir = sample_folders
    results = main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--threads", "2", "--out", str(tmp_path / "m.json")])
    assert "mIoU" in capsys.readouterr().out
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["mIoU"] == results["mIoU"] and len(written["IoU"]) == 19


@pytest.mark.slow  # tool runs in child processes
def test_out_replaces_its_own_file_but_never_one_it_did_not_write(sample_folders, tmp_path):
    pred_dir, gt_dir = sample_folders
    command = [sys.executable, str(TOOL), "--pred", str(pred_dir), "--gt", str(gt_dir), "--threads", "1"]
    out = tmp_path / "metrics" / "m.json"
    for _ in range(2):  # the same command twice: the second replaces the first's file
        proc = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["num_images"] == 1
    assert (out.parent / "manifest.txt").read_text() == HEADER + "cityscapes_eval m.json\n"

    mine = tmp_path / "mine.json"
    mine.write_text("the user's metrics")
    proc = subprocess.run([*command, "--out", str(mine)], capture_output=True, text=True, timeout=120)
    output = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and "Traceback" not in output and "mIoU" not in output  # refused before scoring
    assert output == (
        f"refusing to write into {tmp_path}: 1 file(s) this run would write are not its own to replace: "
        f"{mine} (exists, and no earlier cityscapes_eval run wrote it here). Nothing was written. "
        "Choose another --out or move that file away"
    )
    assert mine.read_text() == "the user's metrics"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics", "mine.json", "pred"]
