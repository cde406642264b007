"""Legend bands (read back pixel by pixel) and the default palette (distinct, deterministic)."""

from __future__ import annotations

import itertools
from typing import Dict, Set, Tuple

import numpy as np
import pytest

from ccnet.data.folder import generate_palette
from ccnet.utils.visualize import add_legend, colorize, distinct_palette, legend_entries

# Saturated, never grey: the legend's text, outlines and band are all grey (r == g == b), so any
# non-grey pixel of the band belongs to a colour square.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
]
NAMES = [f"class name {i}" for i in range(len(PALETTE))]
FONT = 11  # squares are 11 px: 9 x 9 inside their 1-px outline


def picture_of(classes, height=40, width=240, ignore=False) -> Tuple[np.ndarray, np.ndarray]:
    """A label of vertical stripes of the given classes (and ignored rows on top), and its colours."""
    label = np.zeros((height, width), dtype=np.int64)
    for i, c in enumerate(classes):
        label[:, i * width // len(classes) :] = c
    if ignore:
        label[:5] = 255
    return label, colorize(label, PALETTE)


def band_colours(out: np.ndarray, height: int) -> Dict[Tuple[int, int, int], int]:
    """Pixel count per colour of the legend band (everything below the first ``height`` rows)."""
    colours, counts = np.unique(out[height:].reshape(-1, 3), axis=0, return_counts=True)
    return {tuple(int(v) for v in c): int(n) for c, n in zip(colours, counts)}


def swatches(out: np.ndarray, height: int) -> Set[Tuple[int, int, int]]:
    return {c for c, n in band_colours(out, height).items() if len(set(c)) > 1}


def ink(out: np.ndarray, height: int) -> int:
    """Dark grey pixels of a white band: text (anti-aliased black on white), not the 128-grey outlines."""
    band = out[height:].astype(int)
    grey = (band[..., 0] == band[..., 1]) & (band[..., 1] == band[..., 2])
    return int((grey & (band[..., 0] < 110)).sum())


def test_squares_show_exactly_the_classes_present_and_the_picture_is_unchanged() -> None:
    label, image = picture_of([1, 4, 7])
    out = add_legend(image, PALETTE, NAMES, [label], font_size=FONT)
    assert out.shape[1:] == image.shape[1:] and out.shape[0] > image.shape[0]
    np.testing.assert_array_equal(out[:40], image)
    assert swatches(out, 40) == {PALETTE[1], PALETTE[4], PALETTE[7]}
    counts = band_colours(out, 40)
    assert all(counts[PALETTE[c]] >= (FONT - 2) ** 2 for c in (1, 4, 7))  # whole squares, not specks
    # classes of a second map (e.g. the prediction) join those of the first
    pred, _ = picture_of([7, 9])
    assert swatches(add_legend(image, PALETTE, NAMES, [label, pred], font_size=FONT), 40) == {
        PALETTE[c] for c in (1, 4, 7, 9)
    }


def test_class_names_are_written() -> None:
    label, image = picture_of(list(range(10)))  # every class present: no note, only names can leave ink
    named = add_legend(image, PALETTE, NAMES, [label], font_size=FONT)
    unnamed = add_legend(image, PALETTE, [""] * len(PALETTE), [label], font_size=FONT)
    assert ink(unnamed, 40) == 0
    assert ink(named, 40) > 10 * 50  # "class name 0" etc.: dozens of dark pixels per name


def test_ignore_is_labelled_with_its_black_square_only_when_present() -> None:
    label, image = picture_of([3], ignore=True)
    entries, note = legend_entries(PALETTE, NAMES, [label])
    assert entries == [(NAMES[3], PALETTE[3]), ("ignore", (0, 0, 0))]
    assert note == "+9 of 10 classes absent"
    # on the dark band neither text nor background is black: black pixels are the ignore square
    dark = add_legend(image, PALETTE, NAMES, [label], dark=True, font_size=FONT)
    assert band_colours(dark, 40).get((0, 0, 0), 0) >= (FONT - 2) ** 2
    assert swatches(dark, 40) == {PALETTE[3]}
    without, _ = picture_of([3])
    assert (0, 0, 0) not in band_colours(add_legend(image, PALETTE, NAMES, [without], dark=True, font_size=FONT), 40)


def test_many_classes_show_the_present_ones_and_count_the_hidden() -> None:
    many = distinct_palette(150)
    names = [f"c{i}" for i in range(150)]
    label = np.zeros((40, 240), dtype=np.int64)
    label[:, 80:], label[:, 160:] = 42, 149
    entries, note = legend_entries(many, names, [label])
    assert [name for name, _ in entries] == ["c0", "c42", "c149"]
    assert note == "+147 of 150 classes absent"
    image = colorize(label, many)
    out = add_legend(image, many, names, [label], font_size=FONT)
    assert swatches(out, 40) <= {many[0], many[42], many[149]} and {many[42], many[149]} <= swatches(out, 40)
    # the same three classes without hidden ones: the only extra ink above is the hidden-count note
    alone = add_legend(
        image,
        [many[0], many[42], many[149]],
        ["c0", "c42", "c149"],
        [np.select([label == 42, label == 149], [1, 2], 0)],
        font_size=FONT,
    )
    assert ink(out, 40) > ink(alone, 40) + 100


def test_too_many_present_classes_keep_the_largest() -> None:
    label = np.repeat(np.arange(10), np.arange(1, 11))[None]  # class c covers c + 1 pixels
    entries, note = legend_entries(PALETTE, NAMES, [label], max_entries=3)
    assert [name for name, _ in entries] == [NAMES[7], NAMES[8], NAMES[9]]
    assert note == "+7 smaller classes not listed"
    entries, note = legend_entries(PALETTE, NAMES, None, max_entries=4)
    assert len(entries) == 4 and note == "+6 more classes"


def test_entries_wrap_onto_more_rows_on_a_narrow_picture() -> None:
    label, image = picture_of(list(range(10)), width=120)
    out = add_legend(image, PALETTE, NAMES, [label], font_size=FONT)
    assert swatches(out, 40) == set(PALETTE)  # nothing cut off at the right edge
    wide_label, wide_image = picture_of(list(range(10)), width=2000)
    one_row = add_legend(wide_image, PALETTE, NAMES, [wide_label], font_size=FONT)
    assert swatches(one_row, 40) == set(PALETTE)
    assert out.shape[0] - 40 >= 8 * (one_row.shape[0] - 40)  # entries of ~90 px in 120 px: one per row


def test_legend_errors() -> None:
    with pytest.raises(ValueError, match="3 colours for 4 classes"):
        legend_entries(PALETTE[:3], NAMES[:4])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB image"):
        add_legend(np.zeros((4, 4), np.uint8), PALETTE, NAMES)


def min_distance(colours) -> float:
    """Smallest Euclidean RGB distance between two of ``colours`` (a plain double loop)."""
    return min(float(np.linalg.norm(np.subtract(a, b, dtype=float))) for a, b in itertools.combinations(colours, 2))


def test_default_palette_is_distinct_readable_and_deterministic() -> None:
    palette = generate_palette(255)
    assert palette == distinct_palette(255) == generate_palette(255)  # deterministic
    assert generate_palette(19) == palette[:19]  # a class keeps its colour when classes are added
    r, g, b = palette[0]
    assert r == g == b and 40 <= r <= 80  # class 0 (background): dark grey, apart from black "ignore"
    # The first 20 colours (the written-out Glasbey sequence; the old VOC map had 50 between class 0's
    # black and sky's dark red): at least 55 apart (of 441 between black and white) and 70 from black.
    assert min_distance(palette[:20]) >= 55
    assert min(np.linalg.norm(c) for c in palette[:20]) >= 70
    # Colours derived beyond the list: still all distinct, at least 35 apart, never black.
    assert len(set(palette)) == 255 and min_distance(palette) >= 35
    assert min(np.linalg.norm(c) for c in palette) >= 35
    # saturated: apart from class 0, none of the listed colours is a grey
    assert all(len(set(c)) > 1 for c in palette[1:32])
