"""hfmm.demo.synthetic: the demo's generated shapes and colour folders."""

import csv
import itertools
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from hfmm.demo.synthetic import (
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    ZERO_SHOT_TEMPLATES,
    caption,
    make_colour_imagefolder,
    make_shapes_dataset,
)
from hfmm.evaluation import load_classification_data


def shape_colour(path) -> np.ndarray:
    """Mean colour of the pixels that differ clearly from the grey background."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).reshape(-1, 3)
    background = np.median(pixels, axis=0)
    foreground = np.abs(pixels - background).max(axis=1) > 60
    return pixels[foreground].mean(axis=0)


def test_shapes_dataset_rows_images_and_captions(tmp_path):
    path = make_shapes_dataset(tmp_path, 160, seed=0)
    assert path == tmp_path / "train.csv"
    rows = list(csv.DictReader(open(path)))
    assert len(rows) == 160 and list(rows[0]) == ["image", "caption", "colour", "shape", "position"]
    # Every colour/shape/position triple exactly once in a round of 160.
    assert Counter((r["colour"], r["shape"], r["position"]) for r in rows) == Counter(
        itertools.product(COLOURS, SHAPES, POSITIONS)
    )
    for row in rows[:24]:
        assert row["caption"] == caption(row["colour"], row["shape"], row["position"])
        picture = Image.open(tmp_path / row["image"])
        assert picture.size == (IMAGE_SIZE, IMAGE_SIZE) and picture.mode == "RGB"
        assert np.abs(shape_colour(tmp_path / row["image"]) - COLOURS[row["colour"]]).max() < 30
    assert caption("red", "circle", "left") == "a red circle on the left"


def test_shape_is_where_the_caption_says(tmp_path):
    path = make_shapes_dataset(tmp_path, 40, seed=3, split="val")
    for row in csv.DictReader(open(path)):
        pixels = np.asarray(Image.open(tmp_path / row["image"]), dtype=np.float32)
        foreground = np.abs(pixels - np.median(pixels.reshape(-1, 3), axis=0)).max(axis=2) > 60
        ys, xs = np.nonzero(foreground)
        fx, fy = POSITIONS[row["position"]]
        assert abs(xs.mean() / IMAGE_SIZE - fx) < 0.1 and abs(ys.mean() / IMAGE_SIZE - fy) < 0.1


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    first = make_shapes_dataset(tmp_path / "a", 12, seed=7)
    again = make_shapes_dataset(tmp_path / "b", 12, seed=7)
    other = make_shapes_dataset(tmp_path / "c", 12, seed=8)
    assert first.read_text() == again.read_text() != other.read_text()
    for name in (f"train/{i:05d}.png" for i in range(12)):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    make_shapes_dataset(tmp_path / "a", 5, seed=7)  # a smaller rerun leaves no stale images behind
    assert len(list((tmp_path / "a" / "train").glob("*.png"))) == 5


def test_colour_imagefolder_is_balanced_and_readable_for_zero_shot(tmp_path):
    folder = make_colour_imagefolder(tmp_path / "colours", 20, seed=1)
    counts = {colour: len(list((folder / colour).glob("*.png"))) for colour in COLOURS}
    assert sorted(counts.values()) == [2] * 4 + [3] * 4
    data = load_classification_data(folder)
    assert data.classnames == sorted(COLOURS) and len(data.paths) == 20
    for path, label in zip(data.paths, data.labels):
        assert np.abs(shape_colour(path) - COLOURS[data.classnames[label]]).max() < 30
    assert all(template.format("red").startswith("a red ") for template in ZERO_SHOT_TEMPLATES)


def test_colours_are_far_apart():
    distances = [np.linalg.norm(np.subtract(a, b)) for a, b in itertools.combinations(COLOURS.values(), 2)]
    assert min(distances) > 90


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n must be positive"):
        make_shapes_dataset(tmp_path, 0, seed=0)
    with pytest.raises(ValueError, match="at least 8"):
        make_colour_imagefolder(tmp_path, 7, seed=0)
