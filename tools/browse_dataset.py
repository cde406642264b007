"""Write N dataset samples, as the network sees them, as "image | colourised label" PNGs (configs/browse.yaml).

python tools/browse_dataset.py dataset=folder dataset.root=DIR num_samples=8 output_dir=outputs/browse
python tools/browse_dataset.py dataset=cityscapes dataset.root=data/cityscapes split=val
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from ccnet.apps.browse import browse
from ccnet.errors import exit_on_user_error, run_hydra_main
from ccnet.utils.outputs import discard_if_empty_on_failure, hold_folder

log = logging.getLogger("browse")


@hydra.main(version_base="1.3", config_path="../configs", config_name="browse")
def main(cfg: DictConfig) -> None:
    output_dir = HydraConfig.get().runtime.output_dir
    with (
        exit_on_user_error(log, FileNotFoundError),
        hold_folder(output_dir, "browse"),
        discard_if_empty_on_failure(output_dir, default_root=Path("outputs")),
    ):
        browse(cfg)


if __name__ == "__main__":
    run_hydra_main(main, "browse")
