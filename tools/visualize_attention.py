"""Write the criss-cross attention of one pixel, loop by loop, as heat-map overlays (CCNet, arXiv 1811.11721).

Loop 1 attends over the pixel's row and column (a cross); loop 2's effective map, the composition
of both loops, covers the whole image. Examples::

    # a trained quickstart checkpoint on a synthetic validation scene (default pixel: a shape that
    # needs two hops to reach its key)
    python tools/visualize_attention.py --checkpoint work_dirs/ccnet_tiny_synthetic/checkpoints/last.pth
    # any image and pixel (row, column)
    python tools/visualize_attention.py --checkpoint ckpt.pth --image frankfurt.png --pixel 512 1024

Writes ``input.png`` (the pixel circled) and ``loop1.png``, ``loop2.png``, ... to ``--output-dir``
(default ``outputs/attention_maps``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional, Sequence

from ccnet.dist import resolve_device
from ccnet.evaluation.attention import attention_input
from ccnet.evaluation.loading import load_checkpoint_for_eval, load_model
from ccnet.models.attention_maps import rcca_attention_maps
from ccnet.utils.visualize import IMAGENET_MEAN, IMAGENET_STD, denormalize, heat_overlay, mark_pixel


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by tools/train.py")
    parser.add_argument("--image", type=Path, default=None,
                        help="RGB image file; default: validation image --index of the checkpoint's dataset")
    parser.add_argument("--index", type=int, default=0, help="validation index when --image is not given")
    parser.add_argument("--pixel", type=int, nargs=2, metavar=("ROW", "COL"), default=None,
                        help="pixel to explain; default: a two-hop shape pixel (synthetic) or the image centre")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/attention_maps"),
                        help="output folder (default outputs/attention_maps)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the overlays; returns the written paths."""
    args = parse_args(argv)
    checkpoint, config = load_checkpoint_for_eval(args.checkpoint)
    if config is None or "model" not in config:
        raise ValueError(f"{args.checkpoint} holds no config (model and dataset); use a checkpoint written by "
                         f"tools/train.py")
    device = resolve_device(args.device, key="--device")
    model = load_model(config["model"], checkpoint, args.checkpoint, device)
    dataset_cfg = config.get("dataset") or {}
    image, default_pixel = attention_input(dataset_cfg, args.image, args.index)
    height, width = image.shape[-2:]
    pixel = tuple(args.pixel) if args.pixel is not None else default_pixel or (height // 2, width // 2)
    if not (0 <= pixel[0] < height and 0 <= pixel[1] < width):
        raise ValueError(f"--pixel {pixel[0]} {pixel[1]} lies outside the {height}x{width} image")
    maps = rcca_attention_maps(model, image.to(device), pixel)

    from PIL import Image

    args.output_dir.mkdir(parents=True, exist_ok=True)
    rgb = denormalize(image, dataset_cfg.get("mean") or IMAGENET_MEAN, dataset_cfg.get("std") or IMAGENET_STD)
    written = [args.output_dir / "input.png"]
    Image.fromarray(mark_pixel(rgb, pixel)).save(written[0])
    for loop, heat in enumerate(maps, start=1):
        written.append(args.output_dir / f"loop{loop}.png")
        Image.fromarray(heat_overlay(rgb, heat, pixel)).save(written[-1])
    print(f"pixel (row {pixel[0]}, col {pixel[1]}): wrote {', '.join(str(p) for p in written)}")
    return written


if __name__ == "__main__":
    main()
