"""Write the criss-cross attention of one pixel, loop by loop, as heat-map overlays (CCNet, arXiv 1811.11721).

Loop 1 attends over the pixel's row and column (a cross); loop 2's effective map, the composition
of both loops, covers the whole image. Examples::

    # a trained quickstart checkpoint on a synthetic validation scene (default pixel: a shape that
    # needs two hops to reach its key)
    python tools/visualize_attention.py --checkpoint work_dirs/ccnet_tiny_synthetic/checkpoints/last.pth
    # any image and pixel (row, column)
    python tools/visualize_attention.py --checkpoint ckpt.pth --image frankfurt.png --pixel 512 1024

Writes ``input.png`` (the pixel circled) and ``loop1.png``, ``loop2.png``, ... to ``--out``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ccnet.evaluation.loading import load_checkpoint_for_eval, load_model, resolve_device
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD, denormalize, heat_overlay, mark_pixel
from ccnet.models.attention_maps import rcca_attention_maps


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--image", type=Path, default=None,
                        help="RGB image file; default: validation scene --index of the checkpoint's synthetic dataset")
    parser.add_argument("--index", type=int, default=0, help="validation index when --image is not given")
    parser.add_argument("--pixel", type=int, nargs=2, metavar=("ROW", "COL"), default=None,
                        help="pixel to explain; default: a two-hop shape pixel (synthetic) or the image centre")
    parser.add_argument("--out", type=Path, default=Path("attention_maps"), help="output folder")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    return parser.parse_args(argv)


def _load_input(args: argparse.Namespace, dataset_cfg: dict) -> Tuple[torch.Tensor, Optional[Tuple[int, int]]]:
    """The normalised image and, for a synthetic scene, a default pixel inside a two-hop shape."""
    mean = tuple(dataset_cfg.get("mean") or IMAGENET_MEAN)
    std = tuple(dataset_cfg.get("std") or IMAGENET_STD)
    if args.image is not None:
        from PIL import Image

        if not args.image.is_file():
            raise FileNotFoundError(f"--image {args.image} does not exist")
        rgb = np.asarray(Image.open(args.image).convert("RGB"), dtype=np.float32) / 255.0
        image = (torch.from_numpy(rgb).permute(2, 0, 1) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        return image.float(), None
    if dataset_cfg.get("name") != "synthetic":
        raise ValueError(f"the checkpoint was trained on dataset {dataset_cfg.get('name')!r}: pass --image PATH "
                         f"(only the synthetic set is generated without files)")
    from ccnet.data.synthetic import build_synthetic

    dataset = build_synthetic(dataset_cfg, "val")
    if not 0 <= args.index < len(dataset):
        raise ValueError(f"--index {args.index} out of range: the synthetic validation set has {len(dataset)} scenes")
    image, _ = dataset[args.index]
    stride = dataset.cfg.feature_stride
    diagonal = [box for box, kind in dataset.sample(args.index).shapes if kind == "diagonal"]
    if not diagonal:
        return image, None
    r0, c0, r1, c1 = diagonal[0]
    return image, ((r0 + r1) * stride // 2, (c0 + c1) * stride // 2)


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the overlays; returns the written paths."""
    args = parse_args(argv)
    checkpoint, config = load_checkpoint_for_eval(args.checkpoint)
    if config is None or "model" not in config:
        raise ValueError(f"{args.checkpoint} holds no config (model and dataset); use a checkpoint written by "
                         f"tools/train.py")
    device = resolve_device(args.device)
    model = load_model(config["model"], checkpoint, args.checkpoint, device)
    dataset_cfg = config.get("dataset") or {}
    image, default_pixel = _load_input(args, dataset_cfg)
    height, width = image.shape[-2:]
    pixel = tuple(args.pixel) if args.pixel is not None else default_pixel or (height // 2, width // 2)
    if not (0 <= pixel[0] < height and 0 <= pixel[1] < width):
        raise ValueError(f"--pixel {pixel[0]} {pixel[1]} lies outside the {height}x{width} image")
    maps = rcca_attention_maps(model, image.to(device), pixel)

    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    rgb = denormalize(image, dataset_cfg.get("mean") or IMAGENET_MEAN, dataset_cfg.get("std") or IMAGENET_STD)
    written = [args.out / "input.png"]
    Image.fromarray(mark_pixel(rgb, pixel)).save(written[0])
    for loop, heat in enumerate(maps, start=1):
        written.append(args.out / f"loop{loop}.png")
        Image.fromarray(heat_overlay(rgb, heat, pixel)).save(written[-1])
    print(f"pixel (row {pixel[0]}, col {pixel[1]}): wrote {', '.join(str(p) for p in written)}")
    return written


if __name__ == "__main__":
    main()
