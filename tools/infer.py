"""Segment an image, a folder or a glob with a CCNet checkpoint; writes colour masks and overlays
(configs/infer.yaml).

    python tools/infer.py checkpoint=PATH input=IMAGE_OR_FOLDER_OR_GLOB [output_dir=DIR] [device=cpu]
"""

from __future__ import annotations

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ccnet.errors import exit_on_user_error, run_hydra_main
from ccnet.evaluation.predict import run_infer
from ccnet.utils.outputs import discard_if_empty_on_failure

log = logging.getLogger("infer")


@hydra.main(version_base="1.3", config_path="../configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    with exit_on_user_error(log, FileNotFoundError), discard_if_empty_on_failure(hydra_cfg.runtime.output_dir):
        run_infer(cfg, model_group=choices.get("model") is not None, dataset_group=choices.get("dataset") is not None)


if __name__ == "__main__":
    run_hydra_main(main)
