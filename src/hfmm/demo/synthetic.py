"""Generated image-caption data for the demo: coloured shapes at five positions, rendered with Pillow.

Each image is one shape (`SHAPES`) of one colour (`COLOURS`) around one position (`POSITIONS`) on a dark, lightly
noisy background, with jitter in size, placement, colour and background brightness; its caption names all three
("a red circle on the left"). The eight colours are far apart in RGB (at least ~95 apart after jitter), so colour is
learnable zero-shot by a tiny CLIP; shapes and positions give the captions enough variety for a contrastive loss.
Everything is deterministic given the seed (same seed, same PNG bytes).

    >>> csv_path = make_shapes_dataset("demo_data", 2000, seed=0, split="train")  # demo_data/train.csv
    >>> folder = make_colour_imagefolder("demo_data/colours", 400, seed=1)  # demo_data/colours/<colour>/*.png
"""

import csv
import itertools
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {
    "red": (230, 25, 25),
    "orange": (255, 140, 0),
    "yellow": (250, 230, 30),
    "green": (30, 180, 40),
    "cyan": (0, 210, 220),
    "blue": (30, 60, 230),
    "purple": (150, 40, 200),
    "white": (245, 245, 245),
}
POSITIONS = {  # centre of the shape, as fractions of the image (x, y)
    "left": (0.27, 0.5),
    "right": (0.73, 0.5),
    "top": (0.5, 0.27),
    "bottom": (0.5, 0.73),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Zero-shot prompts for colour classification, in the captions' own words: one per shape, averaged per class.
ZERO_SHOT_TEMPLATES = tuple(f"a {{}} {shape}" for shape in SHAPES)

_SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled, for smooth edges
_COLOUR_JITTER = 12  # per channel, uniform in [-12, 12]
_NOISE_STD = 6.0  # per-pixel Gaussian noise of the background and shape


def caption(colour: str, shape: str, position: str) -> str:
    """The caption of an image: `"a red circle on the left"`."""
    return f"a {colour} {shape} {POSITION_PHRASES[position]}"


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    # triangle: apex up, centred on its bounding box
    return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]


def render(colour: str, shape: str, position: str, rng: random.Random, size: int = IMAGE_SIZE) -> Image.Image:
    """
    One RGB image of a `colour` `shape` around `position`, with size, placement, colour and background jitter.

    Args:
        colour (`str`): a key of `COLOURS`.
        shape (`str`): one of `SHAPES`.
        position (`str`): a key of `POSITIONS`.
        rng (`random.Random`): source of the jitter (and of the noise seed).
        size (`int`, *optional*, defaults to 64): image side in pixels.
    """
    big = size * _SUPERSAMPLE
    background = rng.randint(35, 75)
    canvas = Image.new("RGB", (big, big), (background,) * 3)
    fx, fy = POSITIONS[position]
    r = big * rng.uniform(0.13, 0.19)  # half the shape's side: 26%-38% of the image
    cx, cy = big * fx + rng.uniform(-0.05, 0.05) * big, big * fy + rng.uniform(-0.05, 0.05) * big
    fill = tuple(min(255, max(0, c + rng.randint(-_COLOUR_JITTER, _COLOUR_JITTER))) for c in COLOURS[colour])
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r), fill=fill)
    pixels = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, _NOISE_STD, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))


def _clear_pngs(folder: Path) -> None:
    """Removes PNGs left by an earlier run in a folder this module writes (nothing else is touched)."""
    for stale in folder.glob("*.png"):
        stale.unlink()


def _balanced_combos(n: int, rng: random.Random) -> list[tuple[str, str, str]]:
    """`n` (colour, shape, position) triples: every triple once per round of 160, in shuffled order."""
    combos = list(itertools.product(COLOURS, SHAPES, POSITIONS))
    drawn = []
    while len(drawn) < n:
        rng.shuffle(combos)
        drawn += combos
    return drawn[:n]


def make_shapes_dataset(out_dir: str | Path, n: int, seed: int, *, split: str = "train") -> Path:
    """
    Renders `n` captioned images to `out_dir/<split>/NNNNN.png` and lists them in `out_dir/<split>.csv`.

    The CSV has the columns `image` (path relative to `out_dir`), `caption`, `colour`, `shape` and `position`;
    `hfmm.training.clip.data` reads it with the default `image_column="image"`, `caption_column="caption"`. All 160
    colour/shape/position triples appear equally often (up to the last partial round). PNGs of an earlier run in
    `out_dir/<split>` are removed first.

    Args:
        out_dir (`str` or `Path`): output folder (created).
        n (`int`): number of images.
        seed (`int`): random seed; the same seed gives the same files.
        split (`str`, *optional*, defaults to `"train"`): name of the image folder and of the CSV.

    Returns:
        `Path`: the CSV file.
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}.")
    out_dir = Path(out_dir)
    images = out_dir / split
    images.mkdir(parents=True, exist_ok=True)
    _clear_pngs(images)
    rng = random.Random(seed)
    rows = []
    for index, (colour, shape, position) in enumerate(_balanced_combos(n, rng)):
        name = f"{split}/{index:05d}.png"
        render(colour, shape, position, rng).save(out_dir / name)
        rows.append(
            {
                "image": name,
                "caption": caption(colour, shape, position),
                "colour": colour,
                "shape": shape,
                "position": position,
            }
        )
    csv_path = out_dir / f"{split}.csv"
    with open(csv_path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path


def make_colour_imagefolder(out_dir: str | Path, n: int, seed: int) -> Path:
    """
    Renders `n` images into one class folder per colour, `out_dir/<colour>/NNNN.png`, for zero-shot evaluation.

    Colours take turns (`n // 8` or one more image each); shapes and positions are random. Use a seed other than the
    training set's for held-out images. PNGs of an earlier run in the class folders are removed first.

    Args:
        out_dir (`str` or `Path`): output folder (created).
        n (`int`): total number of images, at least one per colour (8).
        seed (`int`): random seed; the same seed gives the same files.

    Returns:
        `Path`: `out_dir`, an image folder whose class names are the colour names.
    """
    if n < len(COLOURS):
        raise ValueError(f"n must be at least {len(COLOURS)} (one image per colour), got {n}.")
    out_dir = Path(out_dir)
    names = list(COLOURS)
    for colour in names:
        (out_dir / colour).mkdir(parents=True, exist_ok=True)
        _clear_pngs(out_dir / colour)
    rng = random.Random(seed)
    for index in range(n):
        colour = names[index % len(names)]
        image = render(colour, rng.choice(SHAPES), rng.choice(list(POSITIONS)), rng)
        image.save(out_dir / colour / f"{index // len(names):04d}.png")
    return out_dir
