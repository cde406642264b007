"""tools/cityscapes_eval.py: the per-class table on stdout and the metrics as JSON."""

from __future__ import annotations

import json

from tools.cityscapes_eval import main


def test_cli_prints_table_and_writes_json(sample_folders, tmp_path, capsys):
    pred_dir, gt_dir = sample_folders
    results = main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--threads", "2", "--out", str(tmp_path / "m.json")])
    assert "mIoU" in capsys.readouterr().out
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["mIoU"] == results["mIoU"] and len(written["IoU"]) == 19
