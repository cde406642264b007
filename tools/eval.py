"""Evaluate a CCNet checkpoint: mIoU / per-class IoU, optional prediction PNGs (configs/eval.yaml).

    python tools/eval.py checkpoint=PATH [dataset=cityscapes dataset.root=DIR] [eval.mode=slide ...]
    torchrun --nproc_per_node=N tools/eval.py checkpoint=PATH ...

Exit status: 0 done; 2 a user mistake, reported in one message (a wrong setting, a missing or
broken file, NaN weights, a split without labelled pixels, an output that would replace a file
eval did not write).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ccnet import dist
from ccnet.apps.eval import run_eval
from ccnet.errors import exit_on_user_error, run_hydra_main
from ccnet.utils.outputs import discard_if_empty_on_failure, hold_folder

log = logging.getLogger("eval")


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    output_dir = hydra_cfg.runtime.output_dir
    main_process = int(os.environ.get("RANK", 0)) == 0  # the process group starts inside run_eval
    hold = hold_folder(output_dir, "eval", key="output_dir") if main_process else contextlib.nullcontext()
    cleanup = (
        discard_if_empty_on_failure(output_dir, default_root=Path("outputs"))
        if main_process
        else contextlib.nullcontext()
    )
    try:
        with exit_on_user_error(log, FileNotFoundError), hold, cleanup:
            run_eval(
                cfg, model_group=choices.get("model") is not None, dataset_group=choices.get("dataset") is not None
            )
    finally:
        dist.destroy_distributed()


if __name__ == "__main__":
    run_hydra_main(main, "eval")
