"""tools/selfcheck.py on the CPU (what CI runs): every check passes, the JSON report holds the rows,
and a failing check is reported and sets the exit status without stopping the others."""

from __future__ import annotations

import json

import ccnet.selfcheck as selfcheck
from tools.selfcheck import main


def test_selfcheck_passes_on_the_cpu(tmp_path, capsys):
    assert main(["--device", "cpu", "--out", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["machine"]["torch"]
    statuses = {row["check"]: row["status"] for row in report["rows"]}
    assert statuses["attention lean float32"] == "pass" and statuses["slide evaluation"] == "pass"
    assert sum(name.startswith("train ") and status == "pass" for name, status in statuses.items()) == 4
    assert "all checks passed" in capsys.readouterr().out


def test_a_failing_check_sets_the_exit_status(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("kernel gave NaN")

    monkeypatch.setattr(selfcheck, "check_slide_evaluation", broken)
    assert main(["--device", "cpu", "--out", str(tmp_path / "report.json")]) == 1
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [row for row in report["rows"] if row["status"] == "fail"]
    assert [row["check"] for row in failed] == ["slide evaluation"]
    assert "RuntimeError: kernel gave NaN" in failed[0]["detail"]
    assert any(row["check"] == "attention benchmark" for row in report["rows"])  # later checks still ran
    assert "FAILED: slide evaluation" in capsys.readouterr().out
