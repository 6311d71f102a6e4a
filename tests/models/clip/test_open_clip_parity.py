"""hfmm's CLIP towers against OpenCLIP's own forward, on random weights of the real architectures."""

import open_clip
import pytest
import torch
from reference_models import hfmm_twin, open_clip_model

CASES = [
    ("ViT-B-32", False),  # exact GELU (LAION checkpoints)
    ("ViT-B-32", True),  # quick_gelu (OpenAI, laion400m)
    ("ViT-L-14-336", True),
    ("ViT-g-14", False),  # mlp_ratio 4.3637 -> intermediate 6144, head width 88
    ("convnext_base", False),
    ("convnext_large_d", False),  # MLP projection head
    ("convnext_xxlarge", False),  # LayerNorm eps 1e-5 everywhere, 256 px
]


@pytest.mark.parametrize("name, quick_gelu", CASES)
def test_embeddings_match_open_clip(name, quick_gelu):
    reference, cfg = open_clip_model(name, quick_gelu=quick_gelu)
    model = hfmm_twin(reference, cfg, quick_gelu=quick_gelu)
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    texts = ["a photo of a cat", "Ünïcödé &amp; emoji 🐈 " * 3, "x" * 400]
    ids = open_clip.get_tokenizer("ViT-B-32")(texts)
    with torch.no_grad():
        ref_image, ref_text = reference.encode_image(pixels), reference.encode_text(ids)
        image = model.get_image_features(pixels).pooler_output
        text = model.get_text_features(ids).pooler_output
        logits = model(ids, pixels).logits_per_image
        ref_logits = (
            reference.logit_scale.exp()
            * torch.nn.functional.normalize(ref_image, dim=-1)
            @ (torch.nn.functional.normalize(ref_text, dim=-1).t())
        )
    assert (image - ref_image).abs().max() <= 1e-5
    assert (text - ref_text).abs().max() <= 1e-5
    assert (logits - ref_logits).abs().max() <= 1e-4  # logits are scaled by exp(logit_scale) = 14.3


def test_wrong_activation_is_detected():
    """The activation matters: converting a quick_gelu model as gelu moves the features far beyond tolerance."""
    reference, cfg = open_clip_model("ViT-B-32", quick_gelu=True)
    model = hfmm_twin(reference, cfg, quick_gelu=False)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        diff = (model.get_image_features(pixels).pooler_output - reference.encode_image(pixels)).abs().max()
    assert diff > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ViT-B-32", "convnext_base"])
def test_full_size_embeddings_match_open_clip(name):
    reference, cfg = open_clip_model(name, layers=None)
    model = hfmm_twin(reference, cfg, shrunk=False)
    pixels = torch.randn(2, 3, 224, 224)
    ids = open_clip.get_tokenizer("ViT-B-32")(["a diagram", "a dog on a skateboard"])
    with torch.no_grad():
        assert (model.get_image_features(pixels).pooler_output - reference.encode_image(pixels)).abs().max() <= 1e-5
        assert (model.get_text_features(ids).pooler_output - reference.encode_text(ids)).abs().max() <= 1e-5
