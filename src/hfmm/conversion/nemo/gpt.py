"""Megatron GPT language models (NeMo's `MegatronGPTModel`, megatron-core `GPTModel`) as transformers causal LMs
(research/nemo_formats.md §4.4, research/megatron_cpu.md §3-4).

The transformers architecture is the one that computes the same function:
- RMSNorm + SwiGLU + full RoPE (LLaMA-2, Vicuna): `LlamaForCausalLM`;
- LayerNorm or `layernorm1p` + SwiGLU, any rotary fraction (NVGPT-2B, NeMo's GPT-2B-001): `StableLmForCausalLM`
  (gated SiLU MLP, LayerNorm with bias, `partial_rotary_factor`); `layernorm1p` stores γ−1, so γ = w + 1 is written;
- `layernorm1p` + squared ReLU, any rotary fraction (Nemotron-3/4): `NemotronForCausalLM` (its `LayerNorm1P` adds the
  1 itself, so the weights are copied).
Anything else (biases, tied embeddings, RoPE scaling, RMSNorm with partial rotary...) is refused, named.

Megatron's fused QKV is per query group `[q x heads/groups, k, v]`; SwiGLU's fc1 is `[gate; up]` and, under tensor
parallelism, each rank holds its own `[gate_r; up_r]`. The vocabulary padding (to a multiple of 128 x TP) is trimmed.
"""

import re
from collections.abc import Mapping

import torch
from transformers import LlamaConfig, NemotronConfig, PreTrainedConfig, StableLmConfig

from hfmm.conversion.common.key_maps import same
from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.nemo.megatron import (
    COLUMN,
    REPLICATED,
    ROW,
    SWIGLU,
    MegatronRule,
    split_gqa_qkv,
    split_swiglu,
    trim_vocab_padding,
)

GATED = {"swiglu", "fast-swiglu"}
SQUARED_RELU = "squared-relu"

# megatron-core names (local spec / Transformer Engine) and NeMo's legacy names; the LayerNorm modules of each layer
MCORE = ("decoder.layers", "linear_qkv", "linear_proj", "linear_fc1", "linear_fc2", "input_layernorm",
         "pre_mlp_layernorm", "decoder.final_layernorm")  # fmt: skip
LEGACY = ("encoder.layers", "query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h", "input_layernorm",
          "post_attention_layernorm", "encoder.final_layernorm")  # fmt: skip


def plus_one(tensor: torch.Tensor) -> torch.Tensor:
    """`layernorm1p`'s stored γ−1 as a plain LayerNorm's γ (NeMo adds the 1 in the same precision at run time)."""
    return tensor + 1


def text_config_from_nemo(cfg: Mapping, source: str) -> PreTrainedConfig:
    """The transformers config of a NeMo 1 Megatron GPT section (`model_config.yaml`; NeMo's defaults where a key is
    absent): LLaMA, StableLM or Nemotron, whichever computes the same function; anything else is refused, named."""
    normalization = cfg.get("normalization", "layernorm")
    activation = cfg.get("activation", "gelu")
    rotary = float(cfg.get("rotary_percentage", 1.0))
    if cfg.get("position_embedding_type", "learned_absolute") != "rope":
        raise CheckpointError(
            f"{source}: position_embedding_type={cfg.get('position_embedding_type', 'learned_absolute')!r}; only RoPE "
            "language models are converted."
        )
    if cfg.get("bias", True):
        raise CheckpointError(f"{source}: bias=True; the converted language models' linear layers have no biases.")
    if cfg.get("share_embeddings_and_output_weights", True):
        raise CheckpointError(f"{source}: tied input/output embeddings are not supported for NeVA's language model.")
    if cfg.get("megatron_legacy", False):
        raise CheckpointError(f"{source}: megatron_legacy=True QKV layout is not supported for GPT language models.")
    if cfg.get("seq_len_interpolation_factor") not in (None, 1, 1.0):
        raise CheckpointError(f"{source}: seq_len_interpolation_factor (RoPE scaling) is not supported yet.")
    if cfg.get("rotary_interleaved", False):
        raise CheckpointError(f"{source}: rotary_interleaved=True (interleaved RoPE) is not supported.")
    heads = cfg["num_attention_heads"]
    common = dict(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["ffn_hidden_size"],
        num_hidden_layers=cfg["num_layers"],
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("num_query_groups") or heads,
        max_position_embeddings=cfg.get("max_position_embeddings") or cfg.get("encoder_seq_length", 4096),
        tie_word_embeddings=False,
    )
    if (cfg.get("kv_channels") or cfg["hidden_size"] // heads) * heads != cfg["hidden_size"]:
        raise CheckpointError(f"{source}: kv_channels x heads != hidden_size is not supported.")
    rope = {"rope_type": "default", "rope_theta": float(cfg.get("rotary_base", 10000.0))}
    eps = float(cfg.get("layernorm_epsilon", 1e-5))
    if activation in GATED and normalization == "rmsnorm":
        if rotary != 1.0:
            raise CheckpointError(
                f"{source}: rotary_percentage={rotary} with RMSNorm: LLaMA rotates every channel and no other "
                "transformers architecture converted here pairs RMSNorm with partial rotary."
            )
        return LlamaConfig(**common, rms_norm_eps=eps, rope_parameters=rope, attention_bias=False, mlp_bias=False)
    if activation in GATED and normalization in ("layernorm", "layernorm1p"):
        return StableLmConfig(
            **common, hidden_act="silu", layer_norm_eps=eps, rope_parameters=rope | {"partial_rotary_factor": rotary},
            use_qkv_bias=False, qk_layernorm=False, use_parallel_residual=False, hidden_dropout=0.0,
        )  # fmt: skip
    if activation == SQUARED_RELU and normalization == "layernorm1p":
        return NemotronConfig(
            **common, hidden_act="relu2", norm_eps=eps, rope_parameters=rope | {"partial_rotary_factor": rotary},
            attention_bias=False, mlp_bias=False, head_dim=cfg["hidden_size"] // heads,
        )  # fmt: skip
    raise CheckpointError(
        f"{source}: normalization={normalization!r} with activation={activation!r} has no exact transformers "
        "equivalent here (converted: rmsnorm + swiglu -> LLaMA, layernorm/layernorm1p + swiglu -> StableLM, "
        "layernorm1p + squared-relu -> Nemotron)."
    )


def gpt_rules(text: PreTrainedConfig, vocab_size: int, prefix: str = "", *, legacy: bool) -> dict[str, MegatronRule]:
    """regex -> (target(s), transform, TP rule) for a Megatron GPT's keys under `prefix` (legacy or megatron-core
    names) to the `model.language_model.*` / `lm_head.weight` names of a NeVA holding `text`'s architecture."""
    heads, groups = text.num_attention_heads, text.num_key_value_heads
    layer = "model.language_model.layers.{0}."
    qkv = tuple(layer + f"self_attn.{name}_proj.weight" for name in "qkv")
    block, qkv_name, proj, fc1, fc2, ln1, ln2, final = LEGACY if legacy else MCORE
    p = re.escape(prefix + ("language_model." if legacy else ""))
    b = rf"{p}{re.escape(block)}\.(\d+)\."
    norm_weight = plus_one if text.model_type == "stablelm" else same  # LLaMA: RMSNorm; Nemotron adds the 1 itself

    def trim(tensor):
        return trim_vocab_padding(tensor, vocab_size)

    def fused(tensor):
        return split_gqa_qkv(tensor, heads, groups)

    if text.model_type == "nemotron":  # squared ReLU: fc1 is `up` alone, column-parallel
        mlp_in = (layer + "mlp.up_proj.weight", same, COLUMN)
    else:
        mlp_in = ((layer + "mlp.gate_proj.weight", layer + "mlp.up_proj.weight"), split_swiglu, SWIGLU)
    rules = {
        rf"{p}embedding\.word_embeddings\.weight": ("model.language_model.embed_tokens.weight", trim, COLUMN),
        rf"{b}self_attention\.{qkv_name}\.weight": (qkv, fused, COLUMN),
        rf"{b}self_attention\.{proj}\.weight": (layer + "self_attn.o_proj.weight", same, ROW),
        rf"{b}mlp\.{fc1}\.weight": mlp_in,
        rf"{b}mlp\.{fc2}\.weight": (layer + "mlp.down_proj.weight", same, ROW),
        rf"{p}output_layer\.weight": ("lm_head.weight", trim, COLUMN),
        rf"{p}rotary_pos_emb\.inv_freq": None,
    }
    norms = {
        rf"{b}{ln1}\.": layer + "input_layernorm.",
        rf"{b}{ln2}\.": layer + "post_attention_layernorm.",
        # Transformer Engine names: the norms fused into the following linear layer
        rf"{b}self_attention\.{qkv_name}\.layer_norm_": layer + "input_layernorm.",
        rf"{b}mlp\.{fc1}\.layer_norm_": layer + "post_attention_layernorm.",
        rf"{p}{re.escape(final)}\.": "model.language_model.norm.",
    }
    for pattern, target in norms.items():
        rules[pattern + "weight"] = (target + "weight", norm_weight, REPLICATED)
        if text.model_type != "llama":  # LayerNorm's bias (RMSNorm has none: a bias key is then left unmatched)
            rules[pattern + "bias"] = (target + "bias", same, REPLICATED)
    return rules
