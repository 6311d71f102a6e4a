"""Evaluation data with known answers: flat-colour images in class folders or captioned in a CSV, and a stand-in
CLIP whose embeddings are the colours themselves."""

import csv
from pathlib import Path

import torch
from conftest import tiny_clip_config
from PIL import Image
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPooling

from hfmm import HfmmCLIPModel
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

PRIMARIES = {
    "red": (1, 0, 0),
    "green": (0, 1, 0),
    "blue": (0, 0, 1),
    "yellow": (1, 1, 0),
    "cyan": (0, 1, 1),
    "magenta": (1, 0, 1),
}


def tiny_processor() -> HfmmCLIPProcessor:
    return HfmmCLIPProcessor.from_vision_config(tiny_clip_config().vision_config)


def tiny_clip() -> HfmmCLIPModel:
    """A real, randomly initialised tiny CLIP (seed 0), in eval mode."""
    torch.manual_seed(0)
    return HfmmCLIPModel(tiny_clip_config()).eval()


class ColourOracle(nn.Module):
    """
    A stand-in CLIP whose embeddings are known: an image embeds as its mean RGB in [0, 1], a text as the RGB of the
    colour word it contains. Zero-shot and retrieval answers are then known exactly.
    """

    def __init__(self, processor):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # device and dtype
        self.mean = torch.tensor(processor.image_processor.image_mean)[None, :, None, None]
        self.std = torch.tensor(processor.image_processor.image_std)[None, :, None, None]
        self.words = [
            (processor.tokenizer(name, add_special_tokens=False)["input_ids"], torch.tensor(rgb, dtype=torch.float32))
            for name, rgb in PRIMARIES.items()
        ]

    def get_image_features(self, pixel_values):
        rgb = (pixel_values * self.std + self.mean).mean(dim=(2, 3))  # (B, 3)
        return BaseModelOutputWithPooling(pooler_output=rgb)

    def get_text_features(self, input_ids, **kwargs):
        rows = [
            sum((rgb for word, rgb in self.words if contains(ids.tolist(), word)), torch.zeros(3)) for ids in input_ids
        ]
        return BaseModelOutputWithPooling(pooler_output=torch.stack(rows))


def contains(ids: list[int], word: list[int]) -> bool:
    return any(ids[i : i + len(word)] == word for i in range(len(ids) - len(word) + 1))


def flat_image(colour: str, size: tuple[int, int] = (30, 30)) -> Image.Image:
    return Image.new("RGB", size, tuple(255 * c for c in PRIMARIES[colour]))


def colour_folder(root: Path, colours: dict[str, list[str]]) -> Path:
    """root/<class>/<i>.png, each image a flat colour (by name) — a class folder may hold another colour's image."""
    for label, names in colours.items():
        (root / label).mkdir(parents=True)
        for i, name in enumerate(names):
            flat_image(name, (36, 30)).save(root / label / f"{i}.png")
    return root


def caption_csv(root: Path, pairs: list[tuple[str, str]]) -> Path:
    """Flat-colour images named by colour, and an image,caption CSV (an image may appear on several rows)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["image", "caption"])
        for colour, text in pairs:
            flat_image(colour).save(root / "images" / f"{colour}.png")
            writer.writerow([f"images/{colour}.png", text])
    return root / "captions.csv"
