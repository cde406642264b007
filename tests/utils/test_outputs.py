"""A failed run leaves no folder behind that holds nothing but its own log; anything else is kept."""

from __future__ import annotations

import pytest

from ccnet.utils.outputs import discard_if_empty_on_failure


def test_only_an_empty_failed_run_folder_is_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").touch()  # created by Hydra before the tool's code runs
    with pytest.raises(ValueError), discard_if_empty_on_failure(run):
        (run / "config.yaml").write_text("a: 1\n")
        (run / "train.log").write_text("ERROR ...\n")
        raise ValueError("a wrong setting")
    assert not run.exists()

    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "train.log").write_text("an earlier run's log\n")  # not ours: the folder stays
    with pytest.raises(ValueError), discard_if_empty_on_failure(kept):
        raise ValueError("again")
    assert (kept / "train.log").read_text() == "an earlier run's log\n"

    result = tmp_path / "result"
    with pytest.raises(KeyboardInterrupt), discard_if_empty_on_failure(result):
        (result / "checkpoints").mkdir(parents=True)  # a result: the folder stays
        raise KeyboardInterrupt
    assert (result / "checkpoints").is_dir()

    fine = tmp_path / "fine"
    with discard_if_empty_on_failure(fine):  # no failure: nothing is touched
        fine.mkdir()
        (fine / "train.log").touch()
    assert (fine / "train.log").exists()
