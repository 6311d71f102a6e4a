"""Evaluation data: labelled images (zero-shot), captioned images (retrieval), a dataset's name and split, and
reading image files with unreadable ones skipped.

Relative image paths in a CSV/JSONL file are resolved against the file's folder.
"""

import csv
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "validation", "test", "eval")


@dataclasses.dataclass
class LabelledImages:
    """Images with class indices, for zero-shot classification."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    name: str
    split: str


@dataclasses.dataclass
class CaptionedImages:
    """Distinct images and their captions (`caption_images[i]` is the index of caption i's image), for retrieval."""

    paths: list[Path]
    captions: list[str]
    caption_images: list[int]
    name: str
    split: str


def dataset_identity(path: str | Path) -> tuple[str, str]:
    """
    `(name, split)` of a dataset path: `data/colours/test` -> `("colours", "test")`, `data/shapes/test.csv` ->
    `("shapes", "test")`; otherwise the folder or file stem and `"test"`.
    """
    path = Path(path).expanduser().resolve()
    stem = path.stem if path.is_file() else path.name
    if stem.lower() in SPLIT_NAMES:
        return path.parent.name, stem
    return stem, "test"


def read_rows(path: str | Path, *, csv_separator: str = ",") -> list[dict]:
    """Rows of a CSV (header row, `csv_separator`) or JSONL file, as dicts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"Evaluation data {path} does not exist.")
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path) as file:
            rows = [json.loads(line) for line in file if line.strip()]
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file, delimiter=csv_separator))
    else:
        raise ValueError(f"Evaluation data {path} must be a .csv/.tsv or .jsonl file (or a folder for zero-shot).")
    if not rows:
        raise ValueError(f"Evaluation data {path} holds no rows.")
    return rows


def _column(rows: list[dict], column: str, path: Path) -> list:
    if column not in rows[0]:
        raise ValueError(f"{path} has no column {column!r}; its columns are {list(rows[0])}.")
    return [row[column] for row in rows]


def _resolve(root: Path, value) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _class_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class subfolders (expected <folder>/<class name>/<image files>).")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    # Folder names become prompt words: "great_white_shark" -> "great white shark".
    return paths, labels, [name.replace("_", " ") for name in classes]


def _label_table(path: Path, image_column: str, label_column: str, csv_separator: str):
    rows = read_rows(path, csv_separator=csv_separator)
    images = [_resolve(path.parent, value) for value in _column(rows, image_column, path)]
    raw = [str(value).strip() for value in _column(rows, label_column, path)]
    if all(value.isdigit() for value in raw):  # class indices: names must come from `classnames`
        return images, [int(value) for value in raw], None
    classes = sorted(set(raw))
    index = {name: i for i, name in enumerate(classes)}
    return images, [index[value] for value in raw], classes


def _class_names(path: Path, labels: list[int], found: list[str] | None, given: Sequence[str] | None) -> list[str]:
    """The prompt names of the classes: `given` (checked against the `found` ones), else `found`."""
    names = found
    if given is not None:
        if found is not None and len(given) != len(found):
            raise ValueError(f"{path} has {len(found)} classes {found} but {len(given)} classnames were given.")
        names = [str(name) for name in given]
    if names is None:
        raise ValueError(f"{path} has integer labels: pass `classnames` (one name per class index).")
    if max(labels) >= len(names):
        raise ValueError(f"{path} has labels up to {max(labels)} but only {len(names)} classnames were given.")
    return names


def load_classification_data(
    dataset_path: str | Path,
    *,
    classnames: Sequence[str] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    csv_separator: str = ",",
) -> LabelledImages:
    """
    Images and labels from a folder of class subfolders, or a CSV/JSONL file with `image` and `label` columns.

    Class order: sorted folder names, or sorted string labels, or the integer labels themselves (0, 1, ...).
    `classnames` replaces the names used in prompts (one per class, in that order); integer labels require it.
    Folder names have `_` replaced by spaces.
    """
    path = Path(dataset_path).expanduser()
    if path.is_dir():
        images, labels, names = _class_folder(path)
    elif path.exists():
        images, labels, names = _label_table(path, image_column, label_column, csv_separator)
    else:
        raise ValueError(f"Zero-shot data {path} does not exist (a folder of class folders, or a CSV/JSONL file).")
    if not images:
        raise ValueError(f"{path} holds no images (folders: files with extensions {IMAGE_EXTENSIONS}).")
    names = _class_names(path, labels, names, classnames)
    return LabelledImages(images, labels, names, *dataset_identity(path))


def load_retrieval_data(
    dataset_path: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    csv_separator: str = ",",
) -> CaptionedImages:
    """
    Captioned images from a CSV/JSONL file with one (image path, caption) pair per row; rows that repeat an image
    path give that image several captions. Relative paths are resolved against the file's folder.
    """
    path = Path(dataset_path).expanduser()
    rows = read_rows(path, csv_separator=csv_separator)
    images = [_resolve(path.parent, value) for value in _column(rows, image_column, path)]
    captions = ["" if value is None else str(value) for value in _column(rows, caption_column, path)]
    distinct: dict[Path, int] = {}
    caption_images = [distinct.setdefault(image, len(distinct)) for image in images]
    return CaptionedImages(list(distinct), captions, caption_images, *dataset_identity(path))


def load_images(paths: Sequence[Path]) -> tuple[list[Image.Image], list[int]]:
    """The readable images among `paths`, decoded as stored (no mode conversion), and their indices in `paths`; each
    unreadable file is skipped with a warning."""
    images, kept = [], []
    for index, path in enumerate(paths):
        try:
            image = Image.open(path)
            image.load()
        except Exception as error:  # decoders raise many types; an unreadable file is skipped, not fatal
            logger.warning("Skipping unreadable image %s: %s: %s", path, type(error).__name__, error)
            continue
        images.append(image)
        kept.append(index)
    return images, kept
