"""`convert/to_transformers.py`: a native `CLIPModel` checkpoint that matches hfmm, or a refusal naming why."""

import pytest
import torch
from conftest import tiny_clip_config
from transformers import CLIPModel, CLIPTokenizer

from hfmm import HfmmCLIPConfig, HfmmCLIPModel
from hfmm.conversion.commands import to_transformers
from hfmm.conversion.transformers.clip_mapping import to_transformers_model, unsupported_features
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor


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


# Runs with transformers alone: any import of hfmm fails, so remote code or a registered class cannot help.
WITHOUT_HFMM = """
import importlib.abc, json, sys
import numpy as np, skimage.data
from PIL import Image


class NoHfmm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "hfmm" or name.startswith("hfmm."):
            raise ImportError("hfmm is not installed here")


sys.meta_path.insert(0, NoHfmm())
from transformers import AutoModel, AutoProcessor

folder, out = sys.argv[1], sys.argv[2]
AutoModel.from_pretrained(folder)
images = [Image.fromarray(getattr(skimage.data, name)()) for name in ("chelsea", "astronaut", "coffee")]
pixels = {}
for backend in ("default", "pil"):
    processor = AutoProcessor.from_pretrained(folder, **({} if backend == "default" else {"backend": backend}))
    pixels[backend] = processor(images=images, return_tensors="np")["pixel_values"]
ids = processor(text=["a photo of a cat", "wow!! a dog"])["input_ids"]
np.savez(out, **pixels)
print(json.dumps({"processor": type(processor).__name__, "ids": ids}))
assert not any(name == "hfmm" or name.startswith("hfmm.") for name in sys.modules)
"""


def test_export_loads_with_auto_processor_without_hfmm_and_matches_open_clip_pixels(tmp_path):
    """Items 1-2 of issue 15: transformers' `AutoProcessor` loads the export with no hfmm and no remote code; with
    `backend="pil"` its pixels are OpenCLIP's on scikit-image's RGB photos, and the default (torchvision) backend
    stays within the drift the README states (its uint8 bicubic rounds a grey level or two away from Pillow's)."""
    import json
    import subprocess
    import sys

    import numpy as np
    import open_clip
    import skimage.data
    from PIL import Image

    model = HfmmCLIPModel(tiny_clip_config(vision={"image_size": 224, "patch_size": 32})).eval()
    src = save(model, tmp_path / "src")
    assert to_transformers.main([str(src), str(tmp_path / "dst")]) == 0
    assert not (tmp_path / "dst" / "processing_clip.py").exists()  # nothing to trust: the export is native
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_HFMM, str(tmp_path / "dst"), str(tmp_path / "pixels.npz")],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["processor"] == "CLIPProcessor"
    ours = HfmmCLIPProcessor.from_vision_config(model.config.vision_config)
    assert result["ids"] == [ours.tokenizer(text)["input_ids"] for text in ("a photo of a cat", "wow!! a dog")]
    vision = model.config.vision_config
    reference = open_clip.image_transform(224, is_train=False, mean=vision.image_mean, std=vision.image_std)
    photos = [Image.fromarray(getattr(skimage.data, name)()) for name in ("chelsea", "astronaut", "coffee")]
    expected = np.stack([reference(photo).numpy() for photo in photos])
    pixels = np.load(tmp_path / "pixels.npz")
    assert np.abs(pixels["pil"] - expected).max() == 0.0
    grey_level = 1 / 255 / min(vision.image_std)
    assert np.abs(pixels["default"] - expected).max() <= 2 * grey_level + 1e-6


def test_output_folders_respect_the_umask(tmp_path):
    """Item 11 of issue 15: `tempfile.mkdtemp` makes 0o700 folders; the renamed output must follow the umask."""
    import os
    import stat

    src = save(HfmmCLIPModel(tiny_clip_config()), tmp_path / "src")
    previous = os.umask(0o022)
    try:
        assert to_transformers.main([str(src), str(tmp_path / "dst")]) == 0
    finally:
        os.umask(previous)
    assert stat.filemode((tmp_path / "dst").stat().st_mode) == "drwxr-xr-x"


def test_existing_destination_is_refused_before_the_source_is_read(tmp_path, capsys):
    """Item 15 of issue 15: the destination is checked first; an unreadable source would fail any later check."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{ not json")
    (src / "model.safetensors").write_bytes(b"\0garbage")
    (tmp_path / "dst").mkdir()
    assert to_transformers.main([str(src), str(tmp_path / "dst")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'dst'} exists; pass --force to overwrite it."
