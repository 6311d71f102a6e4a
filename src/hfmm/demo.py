"""`hfmm demo` / `make demo`: a tiny CLIP from a preset, saved, reloaded through the Auto classes, run on photos.

The weights are random (nothing can be downloaded here), so the ranking is arbitrary; what the demo shows is the
whole path a user takes: preset -> model + processor -> `save_pretrained` -> `AutoModel` -> zero-shot pipeline.
The training issue turns this into a demo that learns.
"""

from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModel, pipeline

from hfmm.models.clip import HfmmCLIPConfig, HfmmCLIPModel
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket", "a horse"]


def sample_photos() -> dict[str, Image.Image]:
    """Real photos shipped with scikit-image (a dev dependency)."""
    try:
        from skimage import data
    except ImportError as error:
        raise ValueError("The demo's photos come from scikit-image: pip install 'hfmm[dev]'.") from error
    return {name: Image.fromarray(getattr(data, name)()) for name in ("astronaut", "chelsea", "coffee", "rocket")}


def tiny_config(preset: str) -> HfmmCLIPConfig:
    """The preset's architecture with both towers shrunk to 2 layers and narrow widths."""
    config = HfmmCLIPConfig.from_preset(preset)
    vision, text = config.vision_config, config.text_config
    if vision.model_type == "hfmm_clip_vision_model":
        vision.hidden_size, vision.intermediate_size, vision.num_attention_heads, vision.num_hidden_layers = (
            64,
            256,
            4,
            2,
        )
    text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_hidden_layers = 64, 256, 4, 2
    config.projection_dim = 32
    return config


def run_clip_demo(out: Path, preset: str = "ViT-B-32") -> None:
    torch.manual_seed(0)
    config = tiny_config(preset)
    model = HfmmCLIPModel(config).eval()
    processor = HfmmCLIPProcessor.from_vision_config(config.vision_config)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"saved a tiny {preset} CLIP ({model.num_parameters() / 1e6:.1f}M parameters) to {out}")

    reloaded = AutoModel.from_pretrained(out)
    print(f"AutoModel.from_pretrained({str(out)!r}) -> {type(reloaded).__name__}")
    classifier = pipeline("zero-shot-image-classification", model=str(out))
    for name, image in sample_photos().items():
        best = classifier(image, candidate_labels=LABELS)[0]
        print(f"  {name:10s} -> {best['label']!r} ({best['score']:.3f}; random weights, so any label)")
