"""Train CCNet: ``python tools/train.py [overrides]`` (or ``torchrun --nproc_per_node=N tools/train.py``).

A thin Hydra entry around :func:`ccnet.engine.train`; configuration lives in ``configs/train.yaml``.
See docs/training.md for examples. Exit status: 0 done, 2 a wrong setting or file (one message, no
traceback), 3 stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.pth (``resume=auto`` continues).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from ccnet.engine import train
from ccnet.engine.run_dir import hold_work_dir
from ccnet.engine.settings import config_changes
from ccnet.engine.signals import TrainingStopped, write_stop_report
from ccnet.errors import exit_on_user_error, run_hydra_main
from ccnet.utils.outputs import discard_if_empty_on_failure

log = logging.getLogger("train")


def log_changed_settings(cfg: DictConfig) -> None:
    """One look at what this run changes: the settings that differ from configs/train.yaml with the
    same model and dataset (the presets' recipes and the command line's overrides)."""
    choices = HydraConfig.get().runtime.choices
    groups = [f"{g}={choices[g]}" for g in ("model", "dataset") if choices.get(g)]
    baseline = hydra.compose(config_name="train", overrides=groups)
    changes = config_changes(OmegaConf.to_container(cfg, resolve=True), OmegaConf.to_container(baseline, resolve=True))
    log.info(
        "settings that differ from configs/train.yaml with %s (all of them: %s/config.yaml):\n  %s",
        " ".join(groups),
        cfg.work_dir,
        "\n  ".join(changes) if changes else "(none)",
    )


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # Hydra's output dir is the work dir: ${work_dir} for a run, ${work_dir}/<job number> in multirun.
    cfg.work_dir = HydraConfig.get().runtime.output_dir
    main_process = int(os.environ.get("RANK", 0)) == 0  # torchrun's rank; the process group comes later
    cleanup = (
        discard_if_empty_on_failure(cfg.work_dir, default_root=Path("work_dirs"))
        if main_process
        else contextlib.nullcontext()
    )
    # The lock comes first: a second run in this work_dir stops before writing a line into it.
    with exit_on_user_error(log, FileNotFoundError), hold_work_dir(Path(cfg.work_dir).resolve(), main_process), cleanup:
        if main_process:
            log_changed_settings(cfg)
        try:
            return train(cfg)["val/mIoU"]  # a float, so Hydra sweepers can optimise it
        except TrainingStopped as stopped:
            log.warning("%s", stopped)
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:  # one report per machine: each has its launcher
                write_stop_report(stopped)
            raise SystemExit(stopped.exit_code) from None


if __name__ == "__main__":
    run_hydra_main(main, "train")
