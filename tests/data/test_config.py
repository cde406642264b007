"""Dataset config rules: the training input size, and the warning for crops far larger than the images."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ccnet.data import crop_cost_warning, train_input_size


def test_train_input_size_rule():
    assert train_input_size({"name": "synthetic", "image_size": 128}) == (128, 128)
    assert train_input_size({"name": "folder", "crop_size": [512, 256]}) == (512, 256)
    assert train_input_size({"name": "folder", "crop_size": [512, 256]}, 64) == (64, 64)
    assert train_input_size({"name": "folder"}) is None


def test_crop_much_larger_than_the_images_is_named_with_its_cost(tmp_path):
    paths = []
    for i, (h, w) in enumerate([(128, 128), (128, 128), (120, 160)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(paths[-1])
    message = crop_cost_warning(paths, (512, 512))
    assert message is not None and "512x512 is 16.0x the median image area (128x128)" in message
    assert "about 16x what the images need" in message and "train.crop_size=[128,128]" in message
    assert crop_cost_warning(paths, (128, 160)) is None  # about the images' size: fine
    assert crop_cost_warning(paths, None) is None
