"""Write the synthetic long-range dataset (configs/dataset/synthetic.yaml) as PNG files.

    python tools/write_synthetic.py --out data/synthetic                      # 20000 train, 200 val scenes
    python tools/write_synthetic.py --out data/synthetic_folder --limit 1000  # at most 1000 per split

The files are ``images/<split>/NNNNNN.png`` (RGB) and ``masks/<split>/NNNNNN.png`` (class indices),
the same pixels the in-memory dataset yields, in the folder dataset's per-split layout:
``python tools/train.py dataset=folder dataset.root=data/synthetic dataset.num_classes=5``. A file
that no earlier run wrote into ``--out`` (recorded in its ``manifest.txt``) is never replaced; a user
mistake (such a file, a missing or invalid --config) is one message with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf

from ccnet.data.synthetic import SPLITS, SyntheticConfig, write_to_disk
from ccnet.errors import ConfigError, exit_on_user_error

log = logging.getLogger("write_synthetic")
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dataset" / "synthetic.yaml"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder (images/ and masks/ are created)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="dataset YAML with the generator settings")
    parser.add_argument("--splits", nargs="+", default=["train", "val"], choices=SPLITS)
    parser.add_argument("--limit", type=int, default=None, help="at most this many samples per split")
    parser.add_argument("--seed", type=int, default=None, help="override the config's seed")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    with exit_on_user_error(log):
        if not args.config.is_file():
            raise ConfigError(f"synthetic dataset config not found at {args.config}; pass --config PATH")
        mapping = OmegaConf.to_container(OmegaConf.load(args.config), resolve=True)
        if args.seed is not None:
            mapping["seed"] = args.seed
        count = write_to_disk(SyntheticConfig.from_mapping(mapping), args.out, args.splits, args.limit)
    print(f"wrote {count} samples to {args.out}/images and {args.out}/masks")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
