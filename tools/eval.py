"""Evaluate a CCNet checkpoint: mIoU / per-class IoU, optional prediction PNGs (configs/eval.yaml).

    python tools/eval.py checkpoint=PATH [dataset=cityscapes dataset.root=DIR] [eval.mode=slide ...]
    torchrun --nproc_per_node=N tools/eval.py checkpoint=PATH ...
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ccnet import dist
from ccnet.errors import exit_on_user_error, run_hydra_main
from ccnet.evaluation.runner import run_eval
from ccnet.utils.outputs import discard_if_empty_on_failure

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    try:
        with exit_on_user_error(log, FileNotFoundError), discard_if_empty_on_failure(hydra_cfg.runtime.output_dir):
            run_eval(cfg, model_group=choices.get("model") is not None,
                     dataset_group=choices.get("dataset") is not None)
    finally:
        dist.destroy_distributed()


if __name__ == "__main__":
    run_hydra_main(main)
