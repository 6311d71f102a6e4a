"""NeMo CLIP -> hfmm: config mapping and exhaustive templated key maps (Megatron's layouts: `megatron.py`).

NeMo's `MegatronCLIPModel` comes in two implementations (research/nemo_formats.md §2), told apart by `mcore_gpt`:

- legacy (`vision_encoder.backbone.*`, `text_encoder.language_model.*`; `query_key_value`, `dense_h_to_4h`): its
  fused QKV rows are `[q; k; v]` with `megatron_legacy: True` (per TP rank: `[q_r; k_r; v_r]`) and per head
  `[q_h; k_h; v_h]` otherwise;
- megatron-core (`vision_encoder.decoder.*`, `text_encoder.decoder.*`; `linear_qkv` with the LayerNorms fused in under
  Transformer Engine): QKV per head, always.

Every source key must match exactly one anchored rule of the map; the rule names the hfmm key(s), the tensor
transform and how tensor-parallel shards are merged. An unknown key, a missing key or a shape mismatch is an error
that names the key.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from hfmm.conversion.common.key_maps import as_vector, build_model, same
from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.nemo.archive import target_name
from hfmm.conversion.nemo.megatron import (
    COLUMN,
    REPLICATED,
    ROW,
    STRIDED_QKV,
    MegatronRule,
    TensorParallelShards,
    split_qkv,
    split_qkv_per_head,
    split_rules,
    trim_vocab_padding,
)
from hfmm.models.clip import HfmmCLIPConfig, HfmmCLIPModel
from hfmm.models.clip.configuration_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

Tower = Literal["vision", "text"]

# --- activation (research/nemo_formats.md §2.5) --------------------------------------------------------------------

_QUICK = ("ApproxGELUActivation", "quick_gelu")
_TANH = ("openai_gelu", "gelu_impl", "fast_gelu")


def mcore_activation(function: str, fusion: bool, tower: Tower) -> str:
    """hfmm's `hidden_act` for a megatron-core MLP with `activation_func` named `function` (NeMo 1:
    `activation_to_func(activation, openai_gelu)`; NeMo 2: the function's name) and `bias_activation_fusion`."""
    if function == "gelu":  # fused, megatron-core's bias_gelu_impl is the tanh approximation
        return "gelu_pytorch_tanh" if fusion else "gelu"
    if function in _QUICK + _TANH:
        if fusion:
            raise CheckpointError(
                f"{tower}: megatron-core refuses bias_activation_fusion with activation {function!r} in a non-gated "
                "MLP, so no such model runs; the config is inconsistent."
            )
        return "quick_gelu" if function in _QUICK else "gelu_pytorch_tanh"
    raise CheckpointError(f"{tower}: activation {function!r} is not supported (gelu, approx-gelu/quick_gelu, openai).")


def legacy_activation(activation: str, openai_gelu: bool, fusion: bool, tower: Tower) -> str:
    """hfmm's `hidden_act` for NeMo's legacy `ParallelMLP` (`nemo/collections/nlp/modules/common/megatron/mlp.py`)."""
    if fusion:
        if activation == "gelu":  # fused_bias_gelu: the tanh approximation (openai_gelu is the same function)
            return "gelu_pytorch_tanh"
        raise CheckpointError(
            f"{tower}: activation {activation!r} with bias_activation_fusion: True, for which NeMo's legacy MLP applies "
            "neither the bias nor the activation; hfmm cannot represent that model."
        )
    if openai_gelu:
        return "gelu_pytorch_tanh"
    if activation == "approx-gelu":
        return "quick_gelu"
    return "gelu"


def nemo1_activation(tower_cfg: Mapping, mcore: bool, tower: Tower) -> str:
    activation = tower_cfg.get("activation", "gelu")
    if activation not in ("gelu", "approx-gelu"):
        raise CheckpointError(
            f"{tower}: activation {activation!r} is not supported by hfmm's CLIP (gelu, approx-gelu)."
        )
    openai_gelu = bool(tower_cfg.get("openai_gelu", False))
    if mcore:
        function = "openai_gelu" if openai_gelu else ("gelu" if activation == "gelu" else "ApproxGELUActivation")
        return mcore_activation(function, bool(tower_cfg.get("bias_activation_fusion", True)), tower)
    # the legacy vision backbone defaults the fusion off, the legacy text model on
    fusion = bool(tower_cfg.get("bias_activation_fusion", tower == "text"))
    return legacy_activation(activation, openai_gelu, fusion, tower)


# --- config --------------------------------------------------------------------------------------------------------


@dataclass
class TowerLayout:
    """What the key map of one tower needs: heads (QKV split), QKV layout and the patch geometry."""

    num_heads: int
    megatron_legacy: bool = False
    patch_size: int = 0
    num_channels: int = 3


@dataclass
class NemoCLIPLayout:
    """The implementation (`mcore`), tower layouts and tower module names of a NeMo CLIP checkpoint."""

    mcore: bool
    vision: TowerLayout
    text: TowerLayout
    towers: tuple[str, str] = ("vision_encoder", "text_encoder")  # NeMo 2: ("vision_model", "text_model")


def _check(tower: Tower, name: str, value, allowed) -> None:
    if value not in allowed:
        raise CheckpointError(
            f"{tower}: {name}={value!r} is not supported by hfmm's CLIP (supported: {list(allowed)})."
        )


def _require(cfg: Mapping, key: str, tower: Tower):
    if cfg.get(key) is None:
        raise CheckpointError(f"{tower}: the model config has no `{key}`.")
    return cfg[key]


def _common_tower(cfg: Mapping, tower: Tower) -> dict:
    hidden, heads = _require(cfg, "hidden_size", tower), _require(cfg, "num_attention_heads", tower)
    kv_channels = cfg.get("kv_channels")
    if kv_channels not in (None, hidden // heads):
        raise CheckpointError(f"{tower}: kv_channels={kv_channels} != hidden_size / num_attention_heads.")
    _check(tower, "normalization", str(cfg.get("normalization", "layernorm")).lower(), ("layernorm",))
    for name, default in (("bias", True), ("layerscale", False), ("gated_linear_unit", False)):
        if name in cfg and bool(cfg[name]) != default:
            raise CheckpointError(f"{tower}: {name}={cfg[name]!r} is not supported by hfmm's CLIP.")
    if cfg.get("num_query_groups") not in (None, heads):
        raise CheckpointError(f"{tower}: grouped-query attention (num_query_groups) is not supported.")
    return {
        "hidden_size": hidden,
        "intermediate_size": _require(cfg, "ffn_hidden_size", tower),
        "num_hidden_layers": _require(cfg, "num_layers", tower),
        "num_attention_heads": heads,
        "layer_norm_eps": float(cfg.get("layernorm_epsilon", 1e-5)),
        "attention_dropout": float(cfg.get("attention_dropout", 0.0)),
        "drop_path_rate": float(cfg.get("drop_path_rate", 0.0)),
    }


def _image_fields(cfg: Mapping, img_h: int, img_w: int, tower: Tower) -> dict:
    if img_h != img_w:
        raise CheckpointError(f"{tower}: img_h={img_h} != img_w={img_w}; hfmm's ViT takes square images.")
    return {
        "image_size": img_h,
        "image_mean": list(cfg.get("image_mean") or OPENAI_CLIP_MEAN),
        "image_std": list(cfg.get("image_std") or OPENAI_CLIP_STD),
    }


def config_from_nemo1(cfg: Mapping, *, patch_bias: bool) -> tuple[HfmmCLIPConfig, NemoCLIPLayout, list[str]]:
    """hfmm config and key-map layout of a NeMo 1 `model_config.yaml` (`model:` section) of a `MegatronCLIPModel`."""
    notes = []
    if cfg.get("use_siglip"):
        raise CheckpointError("model config: use_siglip: SigLIP NeMo checkpoints are not supported.")
    for section in ("vision", "text"):
        if not isinstance(cfg.get(section), Mapping):
            raise CheckpointError(f"model config: no `{section}` section; is this a NeMo CLIP checkpoint?")
    mcore = bool(cfg.get("mcore_gpt", False))
    vision, text = cfg["vision"], cfg["text"]
    class_tokens = vision.get("class_token_length")  # NeMo builds no class token when it is absent
    if class_tokens is None or class_tokens < 1:
        raise CheckpointError("vision: class_token_length < 1 (no class token) is not supported by hfmm's ViT.")
    global_average_pool = bool(vision.get("global_average_pool", False))
    if mcore and global_average_pool:
        notes.append("global_average_pool is ignored, as NeMo's megatron-core CLIP ignores it (pools token 0).")
        global_average_pool = False
    if not mcore and not vision.get("preprocess_layernorm", False):
        raise CheckpointError("vision: preprocess_layernorm: False; hfmm's ViT always applies a pre-LayerNorm.")
    _check("vision", "position_embedding_type", vision.get("position_embedding_type", "learned_absolute"),
           ("learned_absolute", "learned_parameters"))  # fmt: skip
    _check("text", "position_embedding_type", text.get("position_embedding_type", "learned_absolute"),
           ("learned_absolute", "learned_parameters"))  # fmt: skip
    projection = cfg.get("output_dim", vision.get("output_dim"))
    for tower in (vision, text):
        if tower.get("output_dim", projection) != projection:
            raise CheckpointError(f"model config: output_dim differs between the towers ({tower['output_dim']}).")
    vision_config = {
        **_common_tower(vision, "vision"),
        **_image_fields(vision, vision.get("img_h", 224), vision.get("img_w", 224), "vision"),
        "patch_size": vision.get("patch_dim", 16),
        "num_channels": vision.get("num_channels", 3),
        "hidden_act": nemo1_activation(vision, mcore, "vision"),
        "class_token_length": class_tokens,
        "global_average_pool": global_average_pool,
        "patch_embedding_bias": patch_bias,
        "drop_patch_rate": 0.0 if mcore else float(vision.get("drop_patch_rate", 0.0)),
    }
    context = text.get("encoder_seq_length", 512) if mcore else text.get("max_position_embeddings", 77)
    text_config = {
        **_common_tower(text, "text"),
        "max_position_embeddings": context,
        "hidden_act": nemo1_activation(text, mcore, "text"),
    }
    layout = NemoCLIPLayout(
        mcore,
        TowerLayout(vision["num_attention_heads"], bool(vision.get("megatron_legacy", False)) and not mcore,
                    vision_config["patch_size"], vision_config["num_channels"]),
        TowerLayout(text["num_attention_heads"], bool(text.get("megatron_legacy", False)) and not mcore),
    )  # fmt: skip
    return _clip_config(vision_config, text_config, projection), layout, notes


def config_from_nemo2(model_yaml: Mapping) -> tuple[HfmmCLIPConfig, NemoCLIPLayout, list[str]]:
    """hfmm config and key-map layout of a NeMo 2 `context/model.yaml` of `nemo.collections.vlm.CLIPModel`."""
    config = model_yaml.get("config", {})
    vision, text = config.get("vision_transformer_config"), config.get("text_transformer_config")
    if not isinstance(vision, Mapping) or not isinstance(text, Mapping):
        raise CheckpointError(
            f"context/model.yaml: {model_yaml.get('_target_')!r} has no vision/text_transformer_config; is this a "
            "NeMo 2 CLIP checkpoint?"
        )
    _check("vision", "vision_model_type", vision.get("vision_model_type", "clip"), ("clip",))
    if not vision.get("add_class_token", True) or vision.get("class_token_len", 8) < 1:
        raise CheckpointError("vision: a ViT without class token is not supported by hfmm.")

    def activation(cfg: Mapping, tower: Tower) -> str:
        return mcore_activation(
            target_name(cfg.get("activation_func", "gelu")), bool(cfg.get("bias_activation_fusion", False)), tower
        )

    for tower, cfg in (("vision", vision), ("text", text)):
        if not cfg.get("add_bias_linear", True):
            raise CheckpointError(f"{tower}: add_bias_linear: False is not supported by hfmm's CLIP.")
    vision_config = {
        **_common_tower(vision, "vision"),
        **_image_fields({}, vision.get("img_h", 224), vision.get("img_w", 224), "vision"),
        "patch_size": vision.get("patch_dim", 16),
        "hidden_act": activation(vision, "vision"),
        "class_token_length": vision.get("class_token_len", 8),
    }
    text_config = {
        **_common_tower(text, "text"),
        "max_position_embeddings": text.get("max_seq_length", 1024),
        "hidden_act": activation(text, "text"),
    }
    projection = vision.get("output_dim", 512)
    if text.get("output_dim", 512) != projection:
        raise CheckpointError(f"context/model.yaml: output_dim differs between the towers ({text.get('output_dim')}).")
    layout = NemoCLIPLayout(
        True,
        TowerLayout(vision["num_attention_heads"], patch_size=vision_config["patch_size"]),
        TowerLayout(text["num_attention_heads"]),
        towers=("vision_model", "text_model"),
    )
    return _clip_config(vision_config, text_config, projection), layout, []


def _clip_config(vision_config: dict, text_config: dict, projection_dim) -> HfmmCLIPConfig:
    try:
        return HfmmCLIPConfig(vision_config=vision_config, text_config=text_config, projection_dim=projection_dim)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"model config: {' '.join(str(error).split())}") from error


# --- tensor transforms ---------------------------------------------------------------------------------------------


def class_tokens(tensor: torch.Tensor) -> torch.Tensor:
    """`(1, K, hidden)` -> hfmm's `(hidden,)` for one class token, `(K, hidden)` for several."""
    tokens = tensor.reshape(-1, tensor.shape[-1])
    return tokens[0].clone() if tokens.shape[0] == 1 else tokens.clone()


def linear_patch_to_conv(tensor: torch.Tensor, patch_size: int, num_channels: int) -> torch.Tensor:
    """NeMo <= 1.23's `linear_encoder.weight` over `(p1 p2 c)`-flattened patches -> a conv kernel `(o, c, p1, p2)`."""
    return tensor.reshape(tensor.shape[0], patch_size, patch_size, num_channels).permute(0, 3, 1, 2).contiguous()


# --- key maps ------------------------------------------------------------------------------------------------------


def layer_rules(layout: TowerLayout, mcore: bool) -> dict[str, tuple]:
    """Rules of one transformer layer: source suffix -> (hfmm suffix(es), transform, TP rule). Group `{0}` of the
    full key is the layer index, so the suffix's own groups start at `{1}`."""
    if mcore or not layout.megatron_legacy:
        qkv = (partial(split_qkv_per_head, num_heads=layout.num_heads), COLUMN)
    else:
        qkv = (split_qkv, STRIDED_QKV)
    q_k_v = ("self_attn.q_proj.{1}", "self_attn.k_proj.{1}", "self_attn.v_proj.{1}")
    if mcore:  # local-spec names, and Transformer Engine's with the LayerNorms fused into linear_qkv / linear_fc1
        return {
            r"input_layernorm\.(weight|bias)": ("layer_norm1.{1}", same, REPLICATED),
            r"self_attention\.linear_qkv\.layer_norm_(weight|bias)": ("layer_norm1.{1}", same, REPLICATED),
            r"self_attention\.linear_qkv\.(weight|bias)": (q_k_v, *qkv),
            r"self_attention\.linear_proj\.weight": ("self_attn.out_proj.weight", same, ROW),
            r"self_attention\.linear_proj\.bias": ("self_attn.out_proj.bias", same, REPLICATED),
            r"pre_mlp_layernorm\.(weight|bias)": ("layer_norm2.{1}", same, REPLICATED),
            r"mlp\.linear_fc1\.layer_norm_(weight|bias)": ("layer_norm2.{1}", same, REPLICATED),
            r"mlp\.linear_fc1\.(weight|bias)": ("mlp.fc1.{1}", same, COLUMN),
            r"mlp\.linear_fc2\.weight": ("mlp.fc2.weight", same, ROW),
            r"mlp\.linear_fc2\.bias": ("mlp.fc2.bias", same, REPLICATED),
        }
    return {
        r"input_layernorm\.(weight|bias)": ("layer_norm1.{1}", same, REPLICATED),
        r"self_attention\.query_key_value\.(weight|bias)": (q_k_v, *qkv),
        r"self_attention\.dense\.weight": ("self_attn.out_proj.weight", same, ROW),
        r"self_attention\.dense\.bias": ("self_attn.out_proj.bias", same, REPLICATED),
        r"post_attention_layernorm\.(weight|bias)": ("layer_norm2.{1}", same, REPLICATED),
        r"mlp\.dense_h_to_4h\.(weight|bias)": ("mlp.fc1.{1}", same, COLUMN),
        r"mlp\.dense_4h_to_h\.weight": ("mlp.fc2.weight", same, ROW),
        r"mlp\.dense_4h_to_h\.bias": ("mlp.fc2.bias", same, REPLICATED),
    }


def block_rules(src_prefix: str, dst_prefix: str, block: dict) -> dict:
    """The layer rules of `block` under `src_prefix.{i}.` -> `dst_prefix.{i}.`."""
    rules = {}
    for pattern, (target, fn, tp) in block.items():
        targets = tuple(f"{dst_prefix}.{{0}}.{t}" for t in (target if isinstance(target, tuple) else (target,)))
        rules[rf"{src_prefix}\.(\d+)\.{pattern}"] = (targets if len(targets) > 1 else targets[0], fn, tp)
    return rules


def nemo_key_map(layout: NemoCLIPLayout, vocab_size: int) -> dict[str, MegatronRule]:
    """The exhaustive key map of a NeMo CLIP checkpoint (keys without `model.`/`module.`) onto `HfmmCLIPModel`.

    NeMo 1 names the towers `vision_encoder`/`text_encoder`, NeMo 2 `vision_model`/`text_model`. Rows of the word
    embeddings beyond `vocab_size` (TP vocabulary padding) are dropped.
    """
    vision, text = (re.escape(name) for name in layout.towers)
    vision_block, text_block = layer_rules(layout.vision, layout.mcore), layer_rules(layout.text, layout.mcore)
    tokens = (
        "text_model.embeddings.token_embedding.weight",
        partial(trim_vocab_padding, vocab_size=vocab_size),
        COLUMN,
    )
    common = {
        rf"{vision}\.head\.weight": ("visual_projection.weight", same, REPLICATED),
        rf"{text}\.head\.weight": ("text_projection.weight", same, REPLICATED),
        r"logit_scale": ("logit_scale", as_vector, REPLICATED),
    }
    if layout.mcore:
        return {
            rf"{vision}\.class_token": ("vision_model.embeddings.class_embedding", class_tokens, REPLICATED),
            rf"{vision}\.conv1\.weight": ("vision_model.embeddings.patch_embedding.weight", same, REPLICATED),
            rf"{vision}\.position_embeddings\.weight": ("vision_model.embeddings.position_embedding.weight", same,
                                                        REPLICATED),
            rf"{vision}\.ln_pre\.(weight|bias)": ("vision_model.pre_layrnorm.{0}", same, REPLICATED),
            **block_rules(rf"{vision}\.decoder\.layers", "vision_model.encoder.layers", vision_block),
            rf"{vision}\.final_layernorm\.(weight|bias)": ("vision_model.post_layernorm.{0}", same, REPLICATED),
            rf"{text}\.embedding\.word_embeddings\.weight": tokens,
            rf"{text}\.embedding\.position_embeddings\.weight": ("text_model.embeddings.position_embedding.weight",
                                                                 same, REPLICATED),
            **block_rules(rf"{text}\.decoder\.layers", "text_model.encoder.layers", text_block),
            rf"{text}\.final_layernorm\.(weight|bias)": ("text_model.final_layer_norm.{0}", same, REPLICATED),
            **common,
        }  # fmt: skip
    patch = partial(linear_patch_to_conv, patch_size=layout.vision.patch_size, num_channels=layout.vision.num_channels)
    backbone, language = rf"{vision}\.backbone", rf"{text}\.language_model"
    vision_positions = ("vision_model.embeddings.position_embedding.weight", same, REPLICATED)
    text_positions = ("text_model.embeddings.position_embedding.weight", same, REPLICATED)
    return {
        rf"{backbone}\.cls_token": ("vision_model.embeddings.class_embedding", class_tokens, REPLICATED),
        rf"{backbone}\.conv1\.weight": ("vision_model.embeddings.patch_embedding.weight", same, REPLICATED),
        rf"{backbone}\.linear_encoder\.weight": ("vision_model.embeddings.patch_embedding.weight", patch, REPLICATED),
        rf"{backbone}\.linear_encoder\.bias": ("vision_model.embeddings.patch_embedding.bias", same, REPLICATED),
        rf"{backbone}\.position_embeddings": vision_positions,  # position_embedding_type: learned_parameters
        rf"{backbone}\.position_embeddings\.weight": vision_positions,  # learned_absolute
        rf"{backbone}\.preprocess_layernorm\.(weight|bias)": ("vision_model.pre_layrnorm.{0}", same, REPLICATED),
        **block_rules(rf"{backbone}\.transformer\.layers", "vision_model.encoder.layers", vision_block),
        rf"{backbone}\.transformer\.final_layernorm\.(weight|bias)": ("vision_model.post_layernorm.{0}", same,
                                                                      REPLICATED),
        rf"{language}\.embedding\.word_embeddings\.weight": tokens,
        rf"{language}\.embedding\.position_embeddings": text_positions,
        rf"{language}\.embedding\.position_embeddings\.weight": text_positions,
        **block_rules(rf"{language}\.encoder\.layers", "text_model.encoder.layers", text_block),
        rf"{language}\.encoder\.final_layernorm\.(weight|bias)": ("text_model.final_layer_norm.{0}", same,
                                                                  REPLICATED),
        **common,
    }  # fmt: skip


def assemble_model(
    shards: list[Mapping[str, torch.Tensor]], config: HfmmCLIPConfig, layout: NemoCLIPLayout, *, progress: bool = False
) -> HfmmCLIPModel:
    """
    `HfmmCLIPModel(config)` built on the meta device and given the NeMo weights, TP-merged and mapped key by key.

    Args:
        shards (`list[Mapping[str, torch.Tensor]]`):
            The state dict of every tensor-parallel rank in rank order (one for merged checkpoints), keys without the
            `model.`/`module.` prefixes.
        config ([`HfmmCLIPConfig`]):
            The target architecture (`config_from_nemo1`/`config_from_nemo2`, vocabulary size set).
        layout ([`NemoCLIPLayout`]):
            Implementation, tower names and QKV layouts.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar over the tensors.
    """
    key_map, tp_rules = split_rules(nemo_key_map(layout, config.text_config.vocab_size), source="NeMo CLIP")
    return build_model(HfmmCLIPModel, config, TensorParallelShards(shards, tp_rules), key_map, progress=progress)
