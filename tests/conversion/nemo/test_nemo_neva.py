"""convert/nemo_neva_to_hfmm.py against real megatron-core GPT language models (CPU, gloo, TP 1 and 2).

`nemo_neva_megatron.py` builds NeMo's NeVA from megatron-core 0.16.1's `GPTModel` (GQA and MHA; LLaMA-style RMSNorm,
SwiGLU, RoPE, and NVGPT-style layernorm1p with half the channels rotated, SwiGLU or squared ReLU) with a transformers
CLIP tower and a linear or MLP projector, saves it as NeMo 1 `.nemo` folders (megatron-core and legacy names;
`model_weights.ckpt` and `mp_rank_XX/`; a stage-1 file with only the projector), and records megatron's own logits on
the merged embeddings and its 20 greedy tokens. The converted hfmm NeVA must give the same logits (≤ 1e-5) and the
same 20 greedy tokens.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from nemo_fixtures import pack_nemo
from nemo_neva_megatron import VARIANTS
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from hfmm import NevaForConditionalGeneration
from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.nemo.megatron import split_gqa_qkv
from hfmm.conversion.nemo.neva import convert_nemo_neva_checkpoint

HERE = Path(__file__).resolve().parent
SCRIPT = HERE.parents[2] / "convert" / "nemo_neva_to_hfmm.py"


@pytest.fixture(scope="module")
def megatron(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("neva_megatron")
    run = subprocess.run(
        [sys.executable, str(HERE / "nemo_neva_megatron.py"), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return out


def hfmm_logits(folder: Path, reference: dict) -> tuple[torch.Tensor, NevaForConditionalGeneration, torch.Tensor]:
    model = NevaForConditionalGeneration.from_pretrained(folder).eval()
    ids = reference["ids"].clone()
    ids[0, reference["positions"]] = model.config.image_token_id
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=reference["pixels"]).logits
    return logits, model, ids


def greedy_tokens(model, ids, pixels, original: int) -> torch.Tensor:
    """20 greedy tokens with the KV cache, over the tokenizer's ids and without stopping at end-of-sequence, as the
    megatron reference decodes (it knows no EOS)."""
    model.generation_config.eos_token_id = None
    suppress = list(range(original, model.config.text_config.vocab_size))
    return model.generate(
        input_ids=ids, pixel_values=pixels, max_new_tokens=20, do_sample=False, suppress_tokens=suppress
    )


def assert_matches_reference(model, reference: dict, greedy: bool = True) -> None:
    """Logits within 1e-5 of megatron's saved reference (over the tokenizer's vocabulary) and, with `greedy`, the
    same 20 greedy tokens; the reference marks image positions with -1."""
    ids = reference["ids"].clone()
    ids[ids == -1] = model.config.image_token_id
    original = model.config.image_token_id
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=reference["pixels"]).logits
    assert (logits[..., :original] - reference["logits"][..., :original]).abs().max() <= 1e-5
    if greedy:
        tokens = greedy_tokens(model, ids, reference["pixels"], original)
        assert torch.equal(tokens[:, ids.shape[1] :], reference["greedy"])


def check_against_megatron(folder: Path, reference: dict) -> None:
    logits, model, ids = hfmm_logits(folder, reference)
    theirs = reference["logits"]
    vocab = logits.shape[-1] if logits.shape[-1] < theirs.shape[-1] else theirs.shape[-1]
    original = min(vocab, model.config.image_token_id)  # rows past the tokenizer: NeMo's padding / new tokens
    assert (logits[..., :original] - theirs[..., :original]).abs().max() <= 1e-5
    # 20 greedy tokens (KV cache), over the tokenizer's ids as megatron's reference
    greedy = greedy_tokens(model, ids, reference["pixels"], original)
    assert torch.equal(greedy[:, ids.shape[1] :], reference["greedy"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, layout, architecture",
    [("tp1_gqa_linear", "nemo.tar.gz", "llama"), ("tp2_mha_mlp", "nemo", "llama"), ("tp2_gqa_dist", "nemo", "llama"),
     ("tp2_gqa_dist", "dist", "llama"), ("tp2_nvgpt_swiglu", "nemo", "stablelm"),
     ("tp1_nvgpt_relu2", "nemo", "nemotron")],
)  # fmt: skip
def test_nemo_neva_matches_megatron(megatron, tmp_path, name, layout, architecture):
    """LLaMA-style GPTs become LLaMA; NVGPT-style ones (layernorm1p, half the channels rotated) become StableLM (SwiGLU)
    or Nemotron (squared ReLU), the transformers architectures that compute the same function."""
    spec = VARIANTS[name]
    variant = megatron / name
    reference = torch.load(variant / "reference.pt", weights_only=True)
    src = variant / layout
    if layout == "nemo.tar.gz":  # a gzip .nemo archive, as NeMo before 1.7 wrote them
        src = pack_nemo(variant / "nemo", tmp_path / "neva.nemo", gzip=True)
        layout = "nemo"
    result = convert_nemo_neva_checkpoint(
        src, tmp_path / "neva", vision=variant / "clip", tokenizer=variant / "tokenizer"
    )
    expected = {"nemo": "TP=2" if spec["tp"] == 2 else "model_weights.ckpt", "dist": "torch_dist"}[layout]
    assert expected in result.weights
    check_against_megatron(tmp_path / "neva", reference)
    model = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva")
    assert model.config.text_config.model_type == architecture
    assert model.config.projector_type == spec["projector"]
    assert model.config.use_im_start_end == spec["im"]
    assert model.config.conv_template == "llama_2"


@pytest.mark.slow
def test_stage1_projector_file_with_llm_and_vision(megatron, tmp_path):
    variant = megatron / "tp2_gqa_stage1"
    reference = torch.load(variant / "reference.pt", weights_only=True)
    with pytest.raises(CheckpointError, match="does not carry the language model.*--llm"):
        convert_nemo_neva_checkpoint(variant / "nemo", tmp_path / "neva", vision=variant / "clip",
                                     tokenizer=variant / "tokenizer")  # fmt: skip
    assert not (tmp_path / "neva").exists()
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(variant / "nemo"), str(tmp_path / "neva"), "--llm", str(variant / "gpt"),
         "--vision", str(variant / "clip"), "--tokenizer", str(variant / "tokenizer")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    check_against_megatron(tmp_path / "neva", reference)


@pytest.mark.slow
def test_stage1_file_with_a_transformers_llm_folder(megatron, tmp_path):
    """--llm as a transformers `LlamaForCausalLM` folder (with its tokenizer, so no --tokenizer): the same megatron
    GPT, saved by transformers with the tokenizer's vocabulary, gives megatron's logits and greedy tokens."""
    variant = megatron / "tp2_gqa_stage1"
    reference = torch.load(variant / "reference.pt", weights_only=True)
    convert_nemo_neva_checkpoint(variant / "nemo", tmp_path / "via_nemo", llm=variant / "gpt", vision=variant / "clip",
                                 tokenizer=variant / "tokenizer")  # fmt: skip
    neva = NevaForConditionalGeneration.from_pretrained(tmp_path / "via_nemo")
    tokenizer = AutoTokenizer.from_pretrained(variant / "tokenizer")
    config = LlamaConfig(**{**neva.config.text_config.to_dict(), "vocab_size": len(tokenizer)})
    llama = LlamaForCausalLM(config)
    state = {f"model.{k}": v for k, v in neva.model.language_model.state_dict().items()}
    state["lm_head.weight"] = neva.lm_head.weight
    llama.load_state_dict({k: v[: len(tokenizer)] if "embed" in k or "lm_head" in k else v for k, v in state.items()})
    llama.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    result = convert_nemo_neva_checkpoint(variant / "nemo", tmp_path / "neva", llm=tmp_path / "llama",
                                          vision=variant / "clip")  # fmt: skip
    assert any("language model from" in note for note in result.notes)
    check_against_megatron(tmp_path / "neva", reference)


@pytest.mark.slow
def test_lora_file_is_merged_into_its_base(megatron, tmp_path):
    """NeMo 1 PEFT (LoRA on the fused QKV, scale alpha/dim = 2) with its base GPT given as --llm; the reference is
    megatron's forward with the adapters merged into the QKV weights."""
    variant = megatron / "tp1_lora"
    reference = torch.load(variant / "reference.pt", weights_only=True)
    common = dict(vision=variant / "clip", tokenizer=variant / "tokenizer")
    with pytest.raises(CheckpointError, match="LoRA adapters.*--llm"):
        convert_nemo_neva_checkpoint(variant / "nemo", tmp_path / "neva", **common)
    result = convert_nemo_neva_checkpoint(variant / "nemo", tmp_path / "neva", llm=variant / "gpt", **common)
    assert any("merged LoRA adapters of 2 layers" in note for note in result.notes)
    check_against_megatron(tmp_path / "neva", reference)
    merged = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva")
    base = torch.load(variant / "gpt" / "model_weights.ckpt", weights_only=True)
    q_merged = merged.model.language_model.layers[0].self_attn.q_proj.weight
    q_base = split_gqa_qkv(base["model.decoder.layers.0.self_attention.linear_qkv.weight"], 4, 2)[0]
    assert (q_merged - q_base).abs().max() > 1e-2  # the adapters changed the weights


def test_missing_vision_and_refused_language_models_are_clear_errors(tmp_path):
    """No --vision, and Megatron GPTs no transformers architecture here computes exactly: refused, naming why."""
    from nemo_neva_megatron import nemo_config, save

    config = nemo_config(dict(tp=1, groups=2, projector="linear", names="mcore", parts=("projector",), im=False))
    save(tmp_path / "nemo", config, {"model.embedding.word_embeddings.adapter_layer.mm_projector_adapter."
                                     "mm_projector.weight": torch.zeros(64, 32)}, 1, 0)  # fmt: skip
    with pytest.raises(CheckpointError, match="--vision"):
        convert_nemo_neva_checkpoint(tmp_path / "nemo", tmp_path / "out")
    refused = {
        "rotary_percentage=0.5 with RMSNorm": {"rotary_percentage": 0.5},
        "normalization='layernorm' with activation='squared-relu' has no exact": {
            "normalization": "layernorm", "activation": "squared-relu"},
        "activation='gelu' has no exact": {"normalization": "layernorm1p", "activation": "gelu"},
        "position_embedding_type='learned_absolute'": {"position_embedding_type": "learned_absolute"},
        "bias=True": {"bias": True},
    }  # fmt: skip
    for message, change in refused.items():
        save(tmp_path / "refused", {**config, **change}, {}, 1, 0)
        with pytest.raises(CheckpointError, match=re.escape(message)):
            convert_nemo_neva_checkpoint(tmp_path / "refused", tmp_path / "out", vision=tmp_path)
    assert not (tmp_path / "out").exists()


def test_gqa_split_undoes_megatrons_per_group_interleave():
    heads, groups, head_dim = 4, 2, 3
    q = torch.arange(heads * head_dim).float().reshape(heads * head_dim, 1)
    k, v = (
        -torch.arange(groups * head_dim).float().reshape(-1, 1) - 1,
        100 + torch.arange(groups * head_dim).float().reshape(-1, 1),
    )
    fused = []
    for g in range(groups):  # [q_g0, q_g1, k_g, v_g] per group
        fused += [q[(2 * g + h) * head_dim : (2 * g + h + 1) * head_dim] for h in range(2)]
        fused += [k[g * head_dim : (g + 1) * head_dim], v[g * head_dim : (g + 1) * head_dim]]
    out = split_gqa_qkv(torch.cat(fused), heads, groups)
    assert torch.equal(out[0], q) and torch.equal(out[1], k) and torch.equal(out[2], v)


@pytest.fixture(scope="module")
def nemo2_neva(tmp_path_factory) -> Path:
    """NeMo 2: megatron-core's `LLaVAModel` (CLIP ViT, MLP projector, LLaMA-style GPT) at TP=2, saved as `weights/`
    (torch_dist) + `context/model.yaml` + `context/nemo_tokenizer/`, and its own outputs in `reference.pt`."""
    out = tmp_path_factory.mktemp("megatron")
    run = subprocess.run(
        [sys.executable, str(HERE / "nemo2_neva_megatron.py"), str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return out


@pytest.mark.slow
def test_nemo2_neva_matches_megatron_llava_model(nemo2_neva, tmp_path):
    """megatron-core's own forward (one image token expanded inside the model) is the truth."""
    out = nemo2_neva
    result = convert_nemo_neva_checkpoint(out / "nemo2", tmp_path / "neva")  # tokenizer: context/nemo_tokenizer/
    assert "torch_dist" in result.weights
    model = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva").eval()
    reference = torch.load(out / "reference.pt", weights_only=True)
    assert_matches_reference(model, reference)
    assert model.config.vision_feature_layer == -1 and model.config.projector_type == "mlp2x_gelu"


@pytest.mark.slow
def test_nemo2_neva_tokenizer_folder_named_in_the_context(nemo2_neva, tmp_path):
    """Issue 15 item 5: NeMo 2 copies a local tokenizer folder to `context/<folder name>/` and records that name as
    `tokenizer.pretrained_model_name`; the converter finds it there without --tokenizer."""
    import shutil

    import yaml

    folder = tmp_path / "nemo2"
    shutil.copytree(nemo2_neva / "nemo2", folder)
    (folder / "context" / "nemo_tokenizer").rename(folder / "context" / "llama_tok")
    model_yaml = yaml.safe_load((folder / "context" / "model.yaml").read_text())
    model_yaml["tokenizer"]["pretrained_model_name"] = "llama_tok"
    (folder / "context" / "model.yaml").write_text(yaml.safe_dump(model_yaml))
    convert_nemo_neva_checkpoint(folder, tmp_path / "neva")
    converted = AutoTokenizer.from_pretrained(tmp_path / "neva")
    source = AutoTokenizer.from_pretrained(folder / "context" / "llama_tok")
    text = "What colour is the square? The square is red."
    assert converted(text)["input_ids"] == source(text)["input_ids"]
    reference = torch.load(nemo2_neva / "reference.pt", weights_only=True)
    model = NevaForConditionalGeneration.from_pretrained(tmp_path / "neva").eval()
    assert_matches_reference(model, reference, greedy=False)
