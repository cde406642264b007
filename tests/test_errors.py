"""ccnet/errors.py: a user's mistake is one message, also when a DataLoader worker raised it, when a
required setting is unset, when the file system refuses a write, or when Hydra itself finds it."""

from __future__ import annotations

import errno
import logging
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from ccnet.data.base import DatasetError
from ccnet.errors import EXIT_USER_ERROR, exit_on_user_error, user_message


class Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        if index == 2:
            raise DatasetError("Cannot decode image /data/2.png: truncated.\nRe-copy it.")
        return torch.zeros(1)


def test_an_error_from_a_dataloader_worker_keeps_only_its_own_message():
    with pytest.raises(DatasetError) as info:
        list(torch.utils.data.DataLoader(Broken(), num_workers=1))
    assert "Traceback" in str(info.value)  # what torch hands over: the worker's whole traceback
    assert user_message(info.value) == (
        "Cannot decode image /data/2.png: truncated.\nRe-copy it. (in DataLoader worker process 0)"
    )


def test_the_tools_print_one_line_and_exit_2(caplog):
    log = logging.getLogger("tool")
    cases = [
        (
            lambda: OmegaConf.create({"checkpoint": "???"}).checkpoint,
            "the setting checkpoint is required but not set: add checkpoint=... to the command line",
        ),
        (lambda: (_ for _ in ()).throw(DatasetError("bad label in x.png")), "bad label in x.png"),
        (
            lambda: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system", "/ro/run/config.yaml")),
            "cannot write /ro/run/config.yaml: read-only file system.",
        ),
    ]
    for raise_it, message in cases:
        caplog.clear()
        with pytest.raises(SystemExit) as exit_info, exit_on_user_error(log):
            raise_it()
        assert exit_info.value.code == EXIT_USER_ERROR
        assert len(caplog.records) == 1 and caplog.records[0].getMessage().startswith(message)
    with pytest.raises(MissingMandatoryValue):  # outside the context it stays an exception
        print(OmegaConf.create({"checkpoint": "???"})["checkpoint"])
    with pytest.raises(ZeroDivisionError), exit_on_user_error(log):  # a bug keeps its traceback
        print(1 / 0)


@pytest.mark.slow  # three tool runs
@pytest.mark.parametrize(
    "args, message",
    [
        (["trian.lr=0.1"], "trian.lr is not a setting of train: did you mean train.lr"),
        (["work_dir=/proc/version/run"], "cannot write /proc/version/run: not a directory."),
        (["work_dir=/sys/kernel/run"], "cannot write /sys/kernel/run: "),  # EPERM for root, EACCES for others
    ],
)
def test_hydras_own_errors_are_one_message_with_status_2(repo_root, args, message):
    proc = subprocess.run(
        [sys.executable, str(repo_root / "tools" / "train.py"), *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == EXIT_USER_ERROR, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
