"""Train CCNet: ``python tools/train.py [overrides]`` (or ``torchrun --nproc_per_node=N tools/train.py``).

A thin Hydra entry around :func:`ccnet.engine.train`; configuration lives in ``configs/train.yaml``.
See docs/training.md for examples. Exit status: 0 done, 1 a wrong setting or file (one message, no
traceback), 3 stopped by SIGTERM/SIGINT/SIGUSR1 after writing last.pth (``resume=auto`` continues).
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ccnet.engine import train
from ccnet.engine.signals import TrainingStopped
from ccnet.errors import exit_on_user_error

log = logging.getLogger("train")


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    # Hydra's output dir is the work dir: ${work_dir} for a run, ${work_dir}/<job number> in multirun.
    cfg.work_dir = HydraConfig.get().runtime.output_dir
    with exit_on_user_error(log):
        try:
            return train(cfg)["val/mIoU"]  # a float, so Hydra sweepers can optimise it
        except TrainingStopped as stopped:
            log.warning("%s", stopped)
            raise SystemExit(stopped.exit_code) from None


if __name__ == "__main__":
    main()
