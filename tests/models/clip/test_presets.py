"""Every preset is a complete config.json; its parameter counts match OpenCLIP's published figures."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel

import hfmm
from hfmm.models.clip.configuration_clip import PRESETS_DIR

# OpenCLIP's published (vision, text) parameter counts in millions; ViT-e-14 from its own dimensions (see preset).
PUBLISHED = {
    "ViT-B-32": (87.85, 63.43),
    "ViT-B-16": (86.19, 63.43),
    "ViT-L-14": (303.97, 123.65),
    "ViT-L-14-336": (304.29, 123.65),
    "ViT-H-14": (632.08, 354.03),
    "ViT-H-16": (632.23, 354.03),
    "ViT-g-14": (1012.65, 354.03),
    "ViT-bigG-14": (1844.91, 694.66),
    "ViT-e-14": (3807.72, 773.37),
    "convnext_base": (88.09, 63.43),
    "convnext_large_d": (199.77, 152.00),
    "convnext_xxlarge": (846.54, 354.03),
}


def test_every_architecture_has_a_preset():
    assert sorted(PUBLISHED) == hfmm.available_presets()


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_on_meta_device(name):
    preset = json.loads((PRESETS_DIR / f"{name}.json").read_text())
    config = AutoConfig.for_model(**preset)
    assert type(config) is hfmm.HfmmCLIPConfig and config.source_checkpoint
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    counts = {"vision": 0, "text": 0}
    for param_name, param in model.named_parameters():
        tower = "vision" if param_name.startswith(("vision_model.", "visual_projection.")) else "text"
        counts[tower] += param.numel() if param_name != "logit_scale" else 0
    vision, text = PUBLISHED[name]
    assert abs(counts["vision"] / 1e6 - vision) <= 1e-3 * vision
    assert abs(counts["text"] / 1e6 - text) <= 1e-3 * text


def test_from_preset_overrides_and_preprocessing():
    config = hfmm.HfmmCLIPConfig.from_preset("ViT-L-14", projection_dim=256)
    assert config.projection_dim == 256
    assert config.vision_config.image_mean == [0.5, 0.5, 0.5]  # laion2b_s32b_b82k uses Inception mean/std
    assert hfmm.HfmmCLIPConfig.from_preset("ViT-L-14-336").vision_config.hidden_act == "quick_gelu"
    assert hfmm.HfmmCLIPConfig.from_preset("convnext_xxlarge").vision_config.image_size == 256
