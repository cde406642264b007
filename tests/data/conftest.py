"""Fixtures of the data tests: small generated datasets written under ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.data.datagen import block_label, random_image, write_image, write_label


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """Folder dataset: 6 images (40x48, png/jpg) with 3-class block masks, splits/train.txt and val.txt."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mydata"
    names = [f"img_{i}" for i in range(6)]
    for i, name in enumerate(names):
        write_image(root / "images" / f"{name}.{'png' if i % 2 else 'jpg'}", random_image(rng, 40, 48))
        write_label(root / "masks" / f"{name}.png", block_label(40, 48))
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (root / "splits" / "val.txt").write_text("# validation\n" + "\n".join(n + ".png" for n in names[4:]) + "\n")
    return root
