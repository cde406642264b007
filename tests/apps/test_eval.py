"""The console table and metrics.json of tools/eval.py (ccnet/apps/eval.py): a metric that is
not defined is printed as a dash with its reason, never as 'nan', and written as JSON null."""

from __future__ import annotations

import json
import math

from ccnet.apps.eval import format_table, json_safe

NAN = math.nan


def test_a_table_without_missing_values_has_no_notes():
    results = {"IoU": [0.5, 0.25], "Acc": [1.0, 0.125], "mIoU": 0.375, "mAcc": 0.5625, "aAcc": 0.75, "num_images": 3}
    assert format_table(["road", "sky"], results).splitlines() == [
        "class    IoU    Acc",
        "--------------------",
        "road   50.00 100.00",
        "sky    25.00  12.50",
        "--------------------",
        "mIoU 37.50  mAcc 56.25  aAcc 75.00  (3 images)",
    ]


def test_undefined_metrics_are_dashes_with_their_reason():
    # car: absent from ground truth and prediction; bus: predicted but absent from the ground truth
    results = {
        "IoU": [0.5, NAN, 0.0],
        "Acc": [0.75, NAN, NAN],
        "mIoU": 0.25,
        "mAcc": 0.75,
        "aAcc": 0.75,
        "num_images": 2,
    }
    lines = format_table(["road", "car", "bus"], results).splitlines()
    assert lines[2:5] == ["road   50.00  75.00", "car        —      —", "bus     0.00      —"]
    assert lines[-2:] == [
        "— IoU: class absent from ground truth and prediction, left out of mIoU",
        "— Acc: class absent from ground truth, left out of mAcc",
    ]
    assert "nan" not in "\n".join(lines).lower()


def test_nothing_scored_says_so():
    results = {"IoU": [NAN], "Acc": [NAN], "mIoU": NAN, "mAcc": NAN, "aAcc": NAN, "num_images": 1}
    lines = format_table(["road"], results).splitlines()
    assert lines[4] == "mIoU —  mAcc —  aAcc —  (1 images)"
    assert lines[-1] == "— mIoU/mAcc/aAcc: no labelled pixel was scored"


def test_metrics_json_writes_undefined_values_as_null():
    payload = {"mIoU": 0.25, "per_class": {"car": {"IoU": NAN, "Acc": NAN}}, "list": [1.0, NAN]}
    expected = {"mIoU": 0.25, "per_class": {"car": {"IoU": None, "Acc": None}}, "list": [1.0, None]}
    assert json.loads(json.dumps(json_safe(payload), allow_nan=False)) == expected
