"""Write the criss-cross attention of one pixel, loop by loop, as heat-map overlays (CCNet, arXiv 1811.11721).

Loop 1 attends over the pixel's row and column (a cross); loop 2's effective map, the composition
of both loops, covers the whole image. Examples::

    # a trained quickstart checkpoint on a synthetic validation scene (default pixel: a shape that
    # needs two hops to reach its key)
    python tools/visualize_attention.py --checkpoint work_dirs/ccnet_tiny_synthetic/checkpoints/last.pth
    # any image and pixel (row, column)
    python tools/visualize_attention.py --checkpoint ckpt.pth --image frankfurt.png --pixel 512 1024

Writes ``input.png`` (the pixel circled) and ``loop1.png``, ``loop2.png``, ... to ``--output-dir``
(default ``outputs/attention_maps``), replacing only pictures an earlier run wrote there (recorded in
its ``manifest.txt``). A user mistake (a missing checkpoint or image, a pixel outside the image, such a
file in the way) is one message with exit status 2.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from ccnet.apps.attention import attention_input
from ccnet.dist import resolve_device
from ccnet.errors import ConfigError, exit_on_user_error
from ccnet.evaluation.loading import CheckpointMismatchError, load_checkpoint_for_eval, load_model
from ccnet.models.attention_maps import rcca_attention_maps
from ccnet.utils.manifest import OutputManifest
from ccnet.utils.visualize import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    add_colorbar,
    add_headings,
    denormalize,
    heat_overlay,
    mark_pixel,
)

log = logging.getLogger("visualize_attention")
TOOL = "attention"  # the name its pictures are recorded under in --output-dir/manifest.txt


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="checkpoint written by tools/train.py")
    parser.add_argument(
        "--image",
        type=Path,
        default=None,
        help="RGB image file; default: validation image --index of the checkpoint's dataset",
    )
    parser.add_argument("--index", type=int, default=0, help="validation index when --image is not given")
    parser.add_argument(
        "--pixel",
        type=int,
        nargs=2,
        metavar=("ROW", "COL"),
        default=None,
        help="pixel to explain; default: a two-hop shape pixel (synthetic) or the image centre",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("outputs/attention_maps"),
        help="output folder (default outputs/attention_maps)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Path]:
    """Write the overlays; returns the written paths.

    Raises:
        UserError: a missing or damaged checkpoint (``CheckpointError``), one without a stored config
            (``CheckpointMismatchError``), a bad option (``ConfigError``: ``--pixel`` outside the image,
            ``--image``, ``--index``, ``--device``), or a picture's path holding a file no earlier run
            wrote there (``OutputConflictError``; nothing is written).
    """
    args = parse_args(argv)
    checkpoint, config = load_checkpoint_for_eval(args.checkpoint)
    if config is None or "model" not in config:
        raise CheckpointMismatchError(
            f"{args.checkpoint} holds no config (model and dataset); use a checkpoint written by tools/train.py"
        )
    device = resolve_device(args.device, key="--device")
    model = load_model(config["model"], checkpoint, args.checkpoint, device)
    dataset_cfg = config.get("dataset") or {}
    image, default_pixel = attention_input(dataset_cfg, args.image, args.index)
    height, width = image.shape[-2:]
    pixel = tuple(args.pixel) if args.pixel is not None else default_pixel or (height // 2, width // 2)
    if not (0 <= pixel[0] < height and 0 <= pixel[1] < width):
        raise ConfigError(
            f"--pixel {pixel[0]} {pixel[1]} lies outside the {height}x{width} image: expected a row "
            f"in 0..{height - 1} and a column in 0..{width - 1}"
        )
    maps = rcca_attention_maps(model, image.to(device), pixel)

    from PIL import Image

    rgb = denormalize(image, dataset_cfg.get("mean") or IMAGENET_MEAN, dataset_cfg.get("std") or IMAGENET_STD)
    where = f"pixel (row {pixel[0]}, column {pixel[1]})"
    pictures = [add_headings(mark_pixel(rgb, pixel), [f"input: {where} circled"])] + [
        add_colorbar(
            add_headings(
                heat_overlay(rgb, heat, pixel),
                [f"loop {k}: " + ("its row and column" if k == 1 else "the whole image, in two hops")],
            ),
            "0",
            "max",
            f"attention of the {where} over the image",
        )
        for k, heat in enumerate(maps, start=1)
    ]
    written = [args.output_dir / "input.png"] + [args.output_dir / f"loop{k}.png" for k in range(1, len(maps) + 1)]
    manifest = OutputManifest(args.output_dir, TOOL)
    manifest.claim(written, inputs=[args.checkpoint, *([args.image] if args.image else [])], key="--output-dir")
    for picture, path in zip(pictures, written):
        Image.fromarray(picture).save(path)
        manifest.record(path)
    print(f"pixel (row {pixel[0]}, col {pixel[1]}): wrote {', '.join(str(p) for p in written)}")
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with exit_on_user_error(log):
        main()
