"""`convert/transformers_to_hfmm.py`: transformers `CLIPModel` folders into hfmm, exactly; the round trip through
`to_transformers.py` gives back bit-identical weights."""

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_clip_config
from safetensors.torch import load_file
from transformers import AutoModel, CLIPConfig, CLIPImageProcessorPil, CLIPModel

from hfmm import HfmmCLIPModel
from hfmm.conversion.commands import to_transformers, transformers_to_hfmm
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor, HfmmCLIPTokenizer

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def native_clip(**text_overrides) -> CLIPModel:
    """A tiny random transformers CLIP, towers with different activations, 1-D parameters off their init values."""
    config = CLIPConfig(
        text_config=TOWER | {"hidden_act": "gelu"} | text_overrides,
        vision_config=TOWER | {"hidden_act": "quick_gelu", "image_size": 30, "patch_size": 2},
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1:
                param.add_(0.1 * torch.randn_like(param))
        model.logit_scale.fill_(3.1)
    return model


def save_native(model: CLIPModel, path: Path, **save_kwargs) -> Path:
    model.save_pretrained(path, **save_kwargs)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    processor.resample = 2  # bilinear
    processor.save_pretrained(path)
    HfmmCLIPTokenizer.from_package().save_pretrained(path)  # CLIP's BPE vocabulary
    return path


def ids() -> torch.Tensor:
    tokenizer = HfmmCLIPTokenizer.from_package()
    texts = ["a photo of a cat", "a dog on a skateboard, wow!!"]
    return tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("eos_token_id", [49407, 2], ids=["eos 49407", "legacy eos 2"])
def test_outputs_equal_clipmodel(tmp_path, eos_token_id):
    native = native_clip(eos_token_id=eos_token_id)
    src = save_native(native, tmp_path / "src")
    assert transformers_to_hfmm.main([str(src), str(tmp_path / "dst")]) == 0
    model = AutoModel.from_pretrained(tmp_path / "dst").eval()
    assert isinstance(model, HfmmCLIPModel)
    assert model.config.vision_config.hidden_act == "quick_gelu" and model.config.text_config.hidden_act == "gelu"
    assert model.config.text_config.eos_token_id == 49407
    vision = model.config.vision_config
    assert (vision.image_mean, vision.image_std, vision.interpolation) == ([0.5] * 3, [0.25] * 3, "bilinear")
    pixels = torch.randn(2, 3, 30, 30)
    with torch.no_grad():
        ours, theirs = model(input_ids=ids(), pixel_values=pixels), native(input_ids=ids(), pixel_values=pixels)
    for name in ("image_embeds", "text_embeds", "logits_per_image"):
        assert (getattr(ours, name) - getattr(theirs, name)).abs().max() <= 1e-5, name


def test_round_trip_is_bit_identical(tmp_path):
    """hfmm -> to_transformers.py -> transformers_to_hfmm.py: the same tensors and the same config."""
    model = HfmmCLIPModel(tiny_clip_config(vision={"hidden_act": "quick_gelu", "interpolation": "bilinear"})).eval()
    model.save_pretrained(tmp_path / "hfmm")
    HfmmCLIPProcessor.from_vision_config(model.config.vision_config).save_pretrained(tmp_path / "hfmm")
    assert to_transformers.main([str(tmp_path / "hfmm"), str(tmp_path / "native")]) == 0
    assert transformers_to_hfmm.main([str(tmp_path / "native"), str(tmp_path / "back")]) == 0
    before, after = (
        load_file(tmp_path / "hfmm" / "model.safetensors"),
        load_file(tmp_path / "back" / "model.safetensors"),
    )
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    config_before = json.loads((tmp_path / "hfmm" / "config.json").read_text())
    config_after = json.loads((tmp_path / "back" / "config.json").read_text())
    for tower in ("vision_config", "text_config"):
        assert config_before.pop(tower) == config_after.pop(tower), tower
    assert config_before == config_after


def test_sharded_bin_source_and_sharded_destination(tmp_path):
    native = native_clip()
    src = tmp_path / "src"
    save_native(native, src)
    (src / "model.safetensors").unlink()
    state_dict = native.state_dict()
    keys = sorted(state_dict)
    halves = {
        "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
        "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
    }
    for name, part in halves.items():
        torch.save({key: state_dict[key] for key in part}, src / name)
    weight_map = {key: name for name, part in halves.items() for key in part}
    index = {"metadata": {"total_size": sum(t.numel() * 4 for t in state_dict.values())}, "weight_map": weight_map}
    (src / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    argv = [str(src), str(tmp_path / "dst"), "--max-shard-size", "20KB"]
    assert transformers_to_hfmm.main(argv) == 0
    assert (tmp_path / "dst" / "model.safetensors.index.json").is_file()
    model = AutoModel.from_pretrained(tmp_path / "dst").eval()
    with torch.no_grad():
        ours = model.get_text_features(ids()).pooler_output
        theirs = native.get_text_features(input_ids=ids()).pooler_output
    assert (ours - theirs).abs().max() <= 1e-5


def run_failing(tmp_path, capsys, src, *args) -> str:
    assert transformers_to_hfmm.main([str(src), str(tmp_path / "dst"), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and not (tmp_path / "dst").exists() and not list(tmp_path.glob(".dst.tmp-*"))
    return err


def test_refusals(tmp_path, capsys):
    src = save_native(native_clip(), tmp_path / "src")
    (tmp_path / "dst").mkdir()
    assert transformers_to_hfmm.main([str(src), str(tmp_path / "dst")]) == 1
    assert "exists; pass --force" in capsys.readouterr().err
    (tmp_path / "dst").rmdir()
    hfmm_folder = tmp_path / "hfmm"
    HfmmCLIPModel(tiny_clip_config()).save_pretrained(hfmm_folder)
    assert "model_type='hfmm_clip', not a transformers CLIPModel ('clip') (already an hfmm folder)" in run_failing(
        tmp_path, capsys, hfmm_folder
    )
    vocab = json.loads((src / "tokenizer.json").read_text())
    vocab["model"]["vocab"]["hello</w>"], vocab["model"]["vocab"]["a</w>"] = 320, 3306
    (src / "tokenizer.json").write_text(json.dumps(vocab))
    assert "tokenizer vocabulary is not CLIP's BPE vocabulary" in run_failing(tmp_path, capsys, src)


def test_missing_key(tmp_path, capsys):
    native = native_clip()
    src = save_native(native, tmp_path / "src")
    state_dict = load_file(src / "model.safetensors")
    del state_dict["vision_model.encoder.layers.1.mlp.fc2.bias"]
    from safetensors.torch import save_file

    save_file(state_dict, src / "model.safetensors")
    err = run_failing(tmp_path, capsys, src)
    assert "first transformers CLIPModel key 'vision_model.encoder.layers.1.mlp.fc2.bias'" in err


def test_preprocessing_from_a_clip_processor_saved_by_the_installed_transformers(tmp_path):
    """Issue 15 item 4 (CLIP side): transformers 5's `CLIPProcessor.save_pretrained` nests the image processor in
    `processor_config.json`; its settings are read, not replaced by OpenAI's defaults."""
    from transformers import CLIPProcessor, CLIPTokenizer

    src = tmp_path / "src"
    native_clip().save_pretrained(src)
    HfmmCLIPTokenizer.from_package().save_pretrained(tmp_path / "vocab")
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}, image_mean=[0.5] * 3, image_std=[0.25] * 3
    )
    image_processor.resample = 2  # bilinear
    CLIPProcessor(image_processor, CLIPTokenizer.from_pretrained(tmp_path / "vocab")).save_pretrained(src)
    assert not (src / "preprocessor_config.json").exists()
    assert transformers_to_hfmm.main([str(src), str(tmp_path / "dst")]) == 0
    vision = AutoModel.from_pretrained(tmp_path / "dst").config.vision_config
    assert (vision.image_mean, vision.image_std, vision.interpolation) == ([0.5] * 3, [0.25] * 3, "bilinear")
