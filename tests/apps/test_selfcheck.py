"""tools/selfcheck.py on the CPU (what CI runs): every check passes, the JSON report holds the rows,
a failing check is reported and sets the exit status without stopping the others, and the report never
replaces a file that no self-check wrote."""

from __future__ import annotations

import json
import logging

import pytest

import ccnet.apps.selfcheck as selfcheck
import tools.selfcheck
from ccnet.utils.manifest import HEADER
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


def test_the_report_replaces_its_own_file_but_never_a_file_no_selfcheck_wrote(tmp_path, monkeypatch, caplog, capsys):
    runs = []

    def one_check(device, compile_on_cpu=False):  # the file handling is under test here, not the checks
        runs.append(device)
        report = selfcheck.Report(printer=lambda line: None)
        report.rows.append(selfcheck.Row("attention lean float32", "pass", "ok"))
        return report

    monkeypatch.setattr(tools.selfcheck, "run_selfcheck", one_check)
    out = tmp_path / "reports" / "cpu.json"
    for _ in range(2):  # the same command twice: the second replaces the first's report
        assert main(["--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["rows"][0]["check"] == "attention lean float32"
    assert (out.parent / "manifest.txt").read_text() == HEADER + "selfcheck cpu.json\n"

    mine = tmp_path / "mine.json"
    mine.write_text("the user's report")
    with caplog.at_level(logging.ERROR, logger="selfcheck"), pytest.raises(SystemExit) as exit_:
        main(["--device", "cpu", "--out", str(mine)])
    assert exit_.value.code == 2 and len(runs) == 2  # refused before any check ran
    assert caplog.messages == [
        f"refusing to write into {tmp_path}: 1 file(s) this run would write are not its own "
        f"to replace: {mine} (exists, and no earlier selfcheck run wrote it here). Nothing was "
        "written. Choose another --out or move that file away"
    ]
    assert mine.read_text() == "the user's report" and sorted(p.name for p in tmp_path.iterdir()) == [
        "mine.json",
        "reports",
    ]
    with pytest.raises(SystemExit) as exit_:  # a bad option: one line, status 2
        main(["--device", "tpu", "--out", str(tmp_path / "x.json")])
    assert exit_.value.code == 2 and caplog.messages[-1].startswith("--device must be auto, cpu, cuda or cuda:N")
