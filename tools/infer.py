"""Segment an image, a folder or a glob with a CCNet checkpoint; writes colour masks and overlays
(configs/infer.yaml).

    python tools/infer.py checkpoint=PATH input=IMAGE_OR_FOLDER_OR_GLOB [output_dir=DIR] [device=cpu]

Exit status: 0 every image written; 2 a user mistake (one message: a wrong setting or file, an
output that would replace a file infer did not write), or some inputs were unreadable and skipped
(the others are written; the last line names the skipped ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ccnet.apps.infer import run_infer
from ccnet.errors import EXIT_USER_ERROR, exit_on_user_error, run_hydra_main
from ccnet.utils.outputs import discard_if_empty_on_failure, hold_folder

log = logging.getLogger("infer")


@hydra.main(version_base="1.3", config_path="../configs", config_name="infer")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    choices = hydra_cfg.runtime.choices
    output_dir = hydra_cfg.runtime.output_dir
    with (
        exit_on_user_error(log, FileNotFoundError),
        hold_folder(output_dir, "infer", key="output_dir"),
        discard_if_empty_on_failure(output_dir, default_root=Path("outputs")),
    ):
        result = run_infer(
            cfg, model_group=choices.get("model") is not None, dataset_group=choices.get("dataset") is not None
        )
        if result.skipped:  # inside: a run that could read no input leaves no folder
            raise SystemExit(EXIT_USER_ERROR)


if __name__ == "__main__":
    run_hydra_main(main, "infer")
