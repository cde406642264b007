"""Tiny datasets and models for evaluation tests: predictions are chosen by the test, not learned."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import torch
from torch import nn


class EchoModel(nn.Module):
    """Predicts the class written in input channel 0: logits ``-(k - x0)^2`` peak at ``k = x0``.

    A test decides the prediction map by writing it into the image, so expected metrics follow from
    hand-made (prediction, label) pairs. A dropout layer makes eval/train mode observable."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("classes", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))
        self.drop = nn.Dropout(p=0.5)

    def forward(self, x: torch.Tensor):
        return {"out": self.drop(-((self.classes - x[:, :1]) ** 2))}


class PairDataset(torch.utils.data.Dataset):
    """Items ``(image, label)`` with the wanted prediction encoded in image channel 0; sizes vary."""

    def __init__(self, num_classes: int = 4, n: int = 7, has_labels: bool = True, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.num_classes = num_classes
        self.ignore_index = 255
        self.has_labels = has_labels
        self.classes = [f"c{i}" for i in range(num_classes)]
        self.palette = [(40 * i, 255 - 40 * i, (97 * i) % 256) for i in range(num_classes)]
        self.mean, self.std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
        self.items: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.preds: List[torch.Tensor] = []
        for i in range(n):
            h, w = 5 + i % 3, 6 + (2 * i) % 5
            label = torch.randint(0, num_classes, (h, w), generator=g)
            label[torch.rand(h, w, generator=g) < 0.15] = 255
            pred = torch.where(
                torch.rand(h, w, generator=g) < 0.6,
                label.clamp(max=num_classes - 1),
                torch.randint(0, num_classes, (h, w), generator=g),
            )
            image = torch.rand(3, h, w, generator=g)
            image[0] = pred.float()
            self.items.append((image, label if has_labels else torch.full_like(label, 255)))
            self.preds.append(pred)
        self.image_paths = [Path("fake") / f"img_{i:03d}.png" for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


TINY_MODEL = {"tiny_widths": [8, 16, 32], "head_channels": 16, "bottleneck_channels": 16, "aux_channels": 8}


def load_yaml(configs_dir: Path, group: str, name: str) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(configs_dir / group / f"{name}.yaml"), resolve=False)


def make_checkpoint(path: Path, configs_dir: Path, dataset_cfg: dict, seed: int = 0, store_config: bool = True) -> Path:
    """A narrow ccnet_tiny with random weights for ``dataset_cfg``, saved like the trainer saves:
    ``{"model", "config": {"model", "dataset"}, "iteration"}``."""
    from ccnet.checkpoint import save_checkpoint
    from ccnet.models import build_model

    model_cfg = {
        **load_yaml(configs_dir, "model", "ccnet_tiny"),
        **TINY_MODEL,
        "num_classes": dataset_cfg["num_classes"],
    }
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    state = {"model": model.state_dict(), "iteration": 0}
    if store_config:
        state["config"] = {"model": model_cfg, "dataset": dataset_cfg}
    save_checkpoint(state, path)
    return path
