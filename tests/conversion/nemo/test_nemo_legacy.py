"""Legacy NeMo CLIP (`query_key_value`, `dense_h_to_4h`) -> hfmm, with open_clip's forward as the ground truth.

The `.nemo` files are written the way NeMo's own `convert_external_clip_to_nemo.py` writes an OpenCLIP model
(research/nemo_formats.md §3.1) and split into TP shards by NeMo's `compute_tp_splits` rules (nemo_fixtures.py), so
nothing here relies on hfmm's reading of the layouts; open_clip computes every reference embedding.
"""

from pathlib import Path

import pytest
import torch
from nemo_fixtures import (
    legacy_config,
    open_clip_to_legacy_nemo,
    pack_nemo,
    split_tp,
    with_prefix,
    write_nemo_folder,
)
from reference_models import open_clip_model
from transformers import AutoModel, AutoProcessor

import hfmm  # noqa: F401  (registers the Auto classes)
from hfmm.conversion.commands import nemo_clip_to_hfmm

ARCH = "ViT-S-32"  # 6 heads, widths 384: the real head layout with a small vocabulary-dominated size
TEXTS = ["a photo of a cat", "a diagram of a rocket engine, drawn in ink", "x" * 200]
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return open_clip_model(ARCH, layers=2)


@pytest.fixture(scope="module")
def quick_reference():
    return open_clip_model(ARCH, layers=2, quick_gelu=True, seed=1)


def pipeline_split(shard: dict) -> list[dict]:
    """Two pipeline stages as NeMo numbers them: layers local to each stage, the embeddings on the first, the final
    norms, heads and `logit_scale` on the last (`tp_rank_XX_pp_rank_YYY`)."""
    first, last = {}, {}
    for key, value in shard.items():
        if ".layers.0." in key or "embedding" in key or "cls_token" in key or "conv1" in key or "preprocess" in key:
            first[key] = value
        else:
            last[key.replace(".layers.1.", ".layers.0.")] = value
    return [first, last]


def write_legacy(tmp_path: Path, model, cfg, *, megatron_legacy, quick_gelu=False, tp=1, pp=1, patch_bias=None,
                 form="tar", **vision) -> Path:  # fmt: skip
    heads = cfg["vision_cfg"]["width"] // 64
    state_dict = open_clip_to_legacy_nemo(model.state_dict(), vision_heads=heads, text_heads=cfg["text_cfg"]["heads"],
                                          megatron_legacy=megatron_legacy, patch_bias=patch_bias)  # fmt: skip
    config = legacy_config(cfg, megatron_legacy=megatron_legacy, quick_gelu=quick_gelu, tp=tp, **vision)
    shards = split_tp(with_prefix(state_dict), tp, megatron_legacy=megatron_legacy) if tp > 1 else [with_prefix(
        state_dict)]  # fmt: skip
    if pp > 1:
        folders = {f"tp_rank_{t:02d}_pp_rank_{p:03d}": stage for t, shard in enumerate(shards)
                   for p, stage in enumerate(pipeline_split(shard))}  # fmt: skip
    elif tp > 1:
        folders = {f"mp_rank_{t:02d}": shard for t, shard in enumerate(shards)}
    else:
        folders = {"": shards[0]}
    folder = write_nemo_folder(tmp_path / "extracted", config, folders)
    if form == "folder":
        return folder
    return pack_nemo(folder, tmp_path / "clip.nemo", gzip=form == "gzip")


def convert(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "hfmm"
    assert nemo_clip_to_hfmm.main([str(src), str(dst)]) == 0
    return dst


@torch.no_grad()
def assert_matches(dst: Path, reference, *, image_reference=None):
    model, processor = AutoModel.from_pretrained(dst).eval(), AutoProcessor.from_pretrained(dst)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    input_ids = processor(text=TEXTS)["input_ids"]
    image = model.get_image_features(pixel_values=images).pooler_output
    text = model.get_text_features(input_ids=input_ids).pooler_output
    expected_image = (image_reference or reference.encode_image)(images)
    torch.testing.assert_close(image, expected_image, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(text, reference.encode_text(input_ids), atol=TOLERANCE, rtol=0)
    assert model.logit_scale.item() == pytest.approx(reference.logit_scale.item())
    return model


@pytest.mark.parametrize(
    "megatron_legacy, tp, pp, form",
    [(True, 1, 1, "tar"), (True, 2, 1, "gzip"), (False, 2, 1, "folder"), (True, 2, 2, "tar"), (False, 1, 2, "folder")],
)
def test_legacy_layouts_match_open_clip(reference, tmp_path, megatron_legacy, tp, pp, form):
    model, cfg = reference
    src = write_legacy(tmp_path, model, cfg, megatron_legacy=megatron_legacy, tp=tp, pp=pp, form=form)
    converted = assert_matches(convert(src, tmp_path), model)
    assert converted.config.vision_config.hidden_act == converted.config.text_config.hidden_act == "gelu"


def test_approx_gelu_is_quick_gelu(quick_reference, tmp_path):
    model, cfg = quick_reference
    src = write_legacy(tmp_path, model, cfg, megatron_legacy=True, quick_gelu=True, tp=2)
    converted = assert_matches(convert(src, tmp_path), model)
    assert converted.config.vision_config.hidden_act == "quick_gelu"


def test_old_patch_embedding_with_bias(reference, tmp_path):
    """NeMo <= 1.23's `linear_encoder` (a Linear with bias over `(p1 p2 c)`-flattened patches). NeMo adds the bias to
    every patch token before the position embeddings, so open_clip with the bias folded into its patch positions
    is the reference."""
    model, cfg = reference
    bias = 0.5 * torch.randn(cfg["vision_cfg"]["width"], generator=torch.Generator().manual_seed(2))
    src = write_legacy(tmp_path, model, cfg, megatron_legacy=True, tp=2, patch_bias=bias)
    folded = open_clip_model(ARCH, layers=2)[0]
    folded.load_state_dict(model.state_dict())
    with torch.no_grad():
        folded.visual.positional_embedding[1:] += bias
    converted = assert_matches(convert(src, tmp_path), folded)
    assert converted.config.vision_config.patch_embedding_bias


def test_global_average_pool(reference, tmp_path):
    """NeMo's legacy `global_average_pool`: the mean of every token (class token included) after the final
    LayerNorm, then the head; open_clip's `pool_type="none"` gives those projected tokens."""
    model, cfg = reference
    src = write_legacy(tmp_path, model, cfg, megatron_legacy=False, global_average_pool=True)
    model.visual.pool_type = "none"
    try:
        converted = assert_matches(
            convert(src, tmp_path), model, image_reference=lambda x: model.encode_image(x).mean(1)
        )
    finally:
        model.visual.pool_type = "tok"
    assert converted.config.vision_config.global_average_pool


def test_strided_qkv_needs_regrouping(reference, tmp_path):
    """Negative control: read as if `megatron_legacy` were False, the same TP=2 shards give other embeddings."""
    model, cfg = reference
    src = write_legacy(tmp_path, model, cfg, megatron_legacy=True, tp=2, form="folder")
    config_file = src / "model_config.yaml"
    config_file.write_text(config_file.read_text().replace("megatron_legacy: true", "megatron_legacy: false"))
    with pytest.raises(AssertionError, match="Tensor-likes are not close"):
        assert_matches(convert(src, tmp_path), model)
