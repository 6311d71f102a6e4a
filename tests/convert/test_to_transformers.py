"""`convert/to_transformers.py`: a native `CLIPModel` checkpoint that matches hfmm, or a refusal naming why."""

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip_config
from transformers import CLIPModel, CLIPTokenizer

from hfmm import HfmmCLIPConfig, HfmmCLIPModel
from hfmm.conversion.transformers_clip import to_transformers_model, unsupported_features
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

SCRIPT = Path(__file__).resolve().parents[2] / "convert" / "to_transformers.py"
spec = importlib.util.spec_from_file_location("to_transformers", SCRIPT)
to_transformers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(to_transformers)


def save(model, path):
    model.save_pretrained(path)
    HfmmCLIPProcessor.from_vision_config(model.config.vision_config).save_pretrained(path)
    return path


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_export_matches_hfmm(tmp_path, act):
    model = HfmmCLIPModel(tiny_clip_config(vision={"hidden_act": act}, text={"hidden_act": act})).eval()
    src = save(model, tmp_path / "src")
    assert to_transformers.main([str(src), str(tmp_path / "dst")]) == 0
    native = CLIPModel.from_pretrained(tmp_path / "dst").eval()
    assert native.config.vision_config.hidden_act == act
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "dst")
    ours_tok = HfmmCLIPProcessor.from_vision_config(model.config.vision_config).tokenizer
    for text in ("wow!! a cat", "a photo of a dog, 3 years old"):
        assert tokenizer(text)["input_ids"] == ours_tok(text)["input_ids"]
    ids = tokenizer(["a photo of a cat", "a dog"], padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        ours = model(**ids, pixel_values=pixels)
        theirs = native(**ids, pixel_values=pixels)
    assert (ours.image_embeds - theirs.image_embeds).abs().max() <= 1e-5
    assert (ours.text_embeds - theirs.text_embeds).abs().max() <= 1e-5
    assert (ours.logits_per_image - theirs.logits_per_image).abs().max() <= 1e-4
    assert not list(tmp_path.glob(".dst.tmp-*"))


@pytest.mark.parametrize(
    "config, feature",
    [
        (tiny_clip_config(vision={"class_token_length": 8}), "class_token_length=8"),
        (tiny_clip_config(vision={"global_average_pool": True}), "global_average_pool"),
        (tiny_clip_config(vision={"patch_embedding_bias": True}), "patch-embedding bias"),
        (tiny_clip_config(logit_bias_init_value=-10.0), "logit bias"),
        (
            HfmmCLIPConfig(
                vision_config={
                    "model_type": "hfmm_convnext_vision_model",
                    "timm_model_name": "convnext_atto",
                    "hidden_size": 320,
                },
                text_config=tiny_clip_config().text_config,
            ),
            "hfmm_convnext_vision_model image tower",
        ),
    ],
)
def test_refuses_what_clipmodel_cannot_hold(tmp_path, config, feature):
    assert any(feature in problem for problem in unsupported_features(config))
    with pytest.raises(ValueError, match="CLIPModel cannot represent"):
        to_transformers_model(HfmmCLIPModel(config))
    src = save(HfmmCLIPModel(config), tmp_path / "src")
    assert to_transformers.main([str(src), str(tmp_path / "dst")]) == 1
    assert not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.tmp-*"))


def test_existing_destination_needs_force(tmp_path):
    src = save(HfmmCLIPModel(tiny_clip_config()), tmp_path / "src")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    assert to_transformers.main([str(src), str(tmp_path / "dst")]) == 1
    assert (tmp_path / "dst" / "keep.txt").read_text() == "mine"
    assert to_transformers.main([str(src), str(tmp_path / "dst"), "--force"]) == 0
    assert (tmp_path / "dst" / "model.safetensors").is_file() and not (tmp_path / "dst" / "keep.txt").exists()
