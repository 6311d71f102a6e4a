"""NeMo CLIP config -> hfmm config: NeMo's activation rules, refused settings, the tokenizer and the vocabulary padding."""

from pathlib import Path

import pytest
import torch
import yaml
from nemo_fixtures import deep_update, hf_clip_tokenizer_files
from nemo_tiny import TINY_CFG, tiny_legacy_state_dict, tiny_open_clip, write_tiny_nemo
from transformers import AutoModel, AutoTokenizer

import hfmm  # noqa: F401  (registers the Auto classes)
from hfmm.conversion.commands import nemo_clip_to_hfmm
from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.nemo.clip_mapping import config_from_nemo2, legacy_activation, mcore_activation, nemo1_activation
from hfmm.models.clip.processing_clip import HfmmCLIPTokenizer


@pytest.mark.parametrize(
    "activation, openai_gelu, fusion, expected",
    [
        ("gelu", False, False, "gelu"),
        ("gelu", False, True, "gelu_pytorch_tanh"),  # fused_bias_gelu is the tanh approximation
        ("gelu", True, False, "gelu_pytorch_tanh"),  # openai_gelu takes precedence
        ("gelu", True, True, "gelu_pytorch_tanh"),
        ("approx-gelu", False, False, "quick_gelu"),
        ("approx-gelu", True, False, "gelu_pytorch_tanh"),
    ],
)
def test_legacy_activation(activation, openai_gelu, fusion, expected):
    assert legacy_activation(activation, openai_gelu, fusion, "vision") == expected


def test_legacy_fused_approx_gelu_is_refused():
    """NeMo's legacy MLP applies neither bias nor activation for a fused non-gelu activation; hfmm refuses it."""
    with pytest.raises(CheckpointError, match="neither the bias nor the activation"):
        legacy_activation("approx-gelu", False, True, "text")


@pytest.mark.parametrize(
    "function, fusion, expected",
    [("gelu", False, "gelu"), ("gelu", True, "gelu_pytorch_tanh"), ("ApproxGELUActivation", False, "quick_gelu"),
     ("quick_gelu", False, "quick_gelu"), ("openai_gelu", False, "gelu_pytorch_tanh")],
)  # fmt: skip
def test_mcore_activation(function, fusion, expected):
    assert mcore_activation(function, fusion, "vision") == expected


@pytest.mark.parametrize("function", ["ApproxGELUActivation", "openai_gelu"])
def test_mcore_refuses_what_megatron_refuses(function):
    with pytest.raises(CheckpointError, match="megatron-core refuses bias_activation_fusion"):
        mcore_activation(function, True, "vision")


def test_nemo1_defaults_differ_by_implementation():
    """Without `bias_activation_fusion` in the config: megatron-core and the legacy text model default it on (tanh
    GELU), the legacy vision backbone off (exact GELU)."""
    assert nemo1_activation({}, True, "vision") == nemo1_activation({}, True, "text") == "gelu_pytorch_tanh"
    assert nemo1_activation({}, False, "text") == "gelu_pytorch_tanh"
    assert nemo1_activation({}, False, "vision") == "gelu"


def test_nemo2_activation_from_target():
    tower = {"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 4}
    model_yaml = {"config": {
        "vision_transformer_config": {**tower, "class_token_len": 8, "patch_dim": 8, "img_h": 32, "img_w": 32,
                                      "activation_func": {"_target_": "torch.nn.functional.gelu", "_call_": False},
                                      "bias_activation_fusion": True},
        "text_transformer_config": {**tower, "max_seq_length": 77, "activation_func": {
            "_target_": "nemo.collections.nlp.modules.common.megatron.utils.ApproxGELUActivation", "_call_": False}},
    }}  # fmt: skip
    config, layout, _ = config_from_nemo2(model_yaml)
    assert (config.vision_config.hidden_act, config.text_config.hidden_act) == ("gelu_pytorch_tanh", "quick_gelu")
    assert config.vision_config.class_token_length == 8 and layout.towers == ("vision_model", "text_model")


def refuse(folder: Path, tmp_path: Path, capsys, expected: str) -> None:
    assert nemo_clip_to_hfmm.main([str(folder), str(tmp_path / "hfmm")]) == 1
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "hfmm").exists()


@pytest.mark.parametrize(
    "vision, expected",
    [
        ({"img_w": 64}, "img_h=32 != img_w=64"),
        ({"kv_channels": 16}, "kv_channels=16"),
        ({"normalization": "layernorm1p"}, "normalization='layernorm1p'"),
        ({"preprocess_layernorm": False}, "always applies a pre-LayerNorm"),
        ({"class_token_length": 0}, "no class token"),
        ({"class_token_length": None}, "no class token"),  # NeMo then builds no class token
        ({"hidden_size": None}, "vision: the model config has no `hidden_size`"),
        ({"activation": "swiglu"}, "activation 'swiglu'"),
        ({"activation": "approx-gelu", "bias_activation_fusion": True}, "neither the bias nor the activation"),
    ],
)
def test_unsupported_config_is_refused(tmp_path, capsys, vision, expected):
    folder = write_tiny_nemo(tmp_path / "src")
    config_file = folder / "model_config.yaml"
    config = deep_update(yaml.safe_load(config_file.read_text()), vision=vision)
    config_file.write_text(yaml.safe_dump(config))
    refuse(folder, tmp_path, capsys, expected)


def converted_tokenizer(folder: Path, tmp_path: Path):
    dst = tmp_path / "hfmm"
    assert nemo_clip_to_hfmm.main([str(folder), str(dst)]) == 0
    return AutoTokenizer.from_pretrained(dst), dst


def test_tokenizer_files_carried_by_the_archive(tmp_path):
    """NeMo 1 registers tokenizer files as artifacts (`nemo:<uuid>_vocab.json`); the converter uses them (HF's special
    token spelling included). The files swap two ids, to prove they are the ones read."""
    folder = write_tiny_nemo(tmp_path / "src")
    hf_clip_tokenizer_files(folder, prefix="0f1e2d_")
    config = yaml.safe_load((folder / "model_config.yaml").read_text())
    config["tokenizer"].update(vocab_file="nemo:0f1e2d_vocab.json", merge_file="nemo:0f1e2d_merges.txt")
    (folder / "model_config.yaml").write_text(yaml.safe_dump(config))
    tokenizer, _ = converted_tokenizer(folder, tmp_path)
    assert tokenizer("a cat")["input_ids"] == HfmmCLIPTokenizer.from_package()("a dog")["input_ids"]


def test_default_tokenizer_is_hfmms_clip_bpe(tmp_path):
    tokenizer, dst = converted_tokenizer(write_tiny_nemo(tmp_path / "src"), tmp_path)
    texts = ["a photo of a cat", "Ünïcödé &amp; emoji 🐈"]
    reference = HfmmCLIPTokenizer.from_package()
    assert tokenizer(texts)["input_ids"] == reference(texts)["input_ids"]


@pytest.mark.parametrize(
    "tokenizer, expected",
    [({"library": "sentencepiece", "model": "nemo:abc_tokenizer.model"}, "SentencePiece"),
     ({"library": "huggingface", "type": "bert-base-uncased"}, "not a CLIP tokenizer")],
)  # fmt: skip
def test_tokenizers_hfmm_cannot_reproduce(tmp_path, capsys, tokenizer, expected):
    folder = write_tiny_nemo(tmp_path / "src")
    config = yaml.safe_load((folder / "model_config.yaml").read_text())
    config["tokenizer"].update(tokenizer)
    (folder / "model_config.yaml").write_text(yaml.safe_dump(config))
    refuse(folder, tmp_path, capsys, expected)


def test_vocabulary_padding_is_dropped(tmp_path):
    """NeMo pads the word embeddings to a multiple of 128 x TP rows (here 49408 -> 49664 at TP=4)."""
    state_dict = tiny_legacy_state_dict()
    key = "model.text_encoder.language_model.embedding.word_embeddings.weight"
    state_dict[key] = torch.cat([state_dict[key], torch.randn(256, TINY_CFG["text_cfg"]["width"])])
    _, dst = converted_tokenizer(write_tiny_nemo(tmp_path / "src", state_dict), tmp_path)
    model = AutoModel.from_pretrained(dst)
    assert model.config.text_config.vocab_size == 49408
    expected = tiny_open_clip().token_embedding.weight
    torch.testing.assert_close(model.text_model.embeddings.token_embedding.weight, expected, rtol=0, atol=0)


@pytest.mark.parametrize("wrapping", ["megatron_amp_O2", "lightning", "bf16"])
def test_weight_file_variants(tmp_path, wrapping):
    """`model.module.` keys (megatron_amp_O2), a Lightning checkpoint's `state_dict`, and bf16 weights (kept bf16)."""
    state_dict = tiny_legacy_state_dict()
    if wrapping == "megatron_amp_O2":
        state_dict = {key.replace("model.", "model.module.", 1): value for key, value in state_dict.items()}
    elif wrapping == "lightning":
        state_dict = {"state_dict": state_dict, "epoch": 3, "global_step": 100}
    else:
        state_dict = {key: value.to(torch.bfloat16) for key, value in state_dict.items()}
    _, dst = converted_tokenizer(write_tiny_nemo(tmp_path / "src", state_dict), tmp_path)
    model, reference = AutoModel.from_pretrained(dst).eval(), tiny_open_clip()
    images = torch.randn(2, 3, 32, 32)
    input_ids = HfmmCLIPTokenizer.from_package()(["a cat", "two dogs"], padding="max_length")["input_ids"]
    if wrapping == "bf16":  # compared in fp32: exact bf16 weights, without bf16 op-order noise
        assert model.dtype == torch.bfloat16 and model.config.dtype == torch.bfloat16
        model, reference = model.float(), reference.to(torch.bfloat16).float()
    with torch.no_grad():
        torch.testing.assert_close(model.get_image_features(pixel_values=images).pooler_output,
                                   reference.encode_image(images), atol=1e-5, rtol=0)  # fmt: skip
        torch.testing.assert_close(model.get_text_features(input_ids=torch.tensor(input_ids)).pooler_output,
                                   reference.encode_text(torch.tensor(input_ids)), atol=1e-5, rtol=0)  # fmt: skip
