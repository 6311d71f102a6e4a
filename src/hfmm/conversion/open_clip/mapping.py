"""OpenCLIP -> hfmm: architecture configs and an exhaustive, templated state-dict key map.

Every OpenCLIP key must match exactly one anchored rule below; an unknown key is an error that names it.
"""

from collections.abc import Mapping

import torch

from hfmm.conversion.common.key_maps import KeyMap, Rule, as_vector, same, split_rows, transpose
from hfmm.models.clip import HfmmCLIPConfig, HfmmSigLIPConfig
from hfmm.models.clip.configuration_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

# OpenCLIP config keys hfmm reads; any other key is refused by name unless it holds the value listed in the
# `_DEFAULTS` tables (OpenCLIP 3.3's dataclass defaults, which is what hfmm implements) or only matters for a feature
# that is off (`_IRRELEVANT`).
_VISION_KEYS = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "patch_dropout"}
_TIMM_KEYS = {
    "timm_model_name",
    "timm_model_pretrained",
    "timm_pool",
    "timm_proj",
    "timm_drop",
    "timm_drop_path",
    "image_size",
}
_TEXT_KEYS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio"}
_BLOCK_DEFAULTS = {
    "ls_init_value": None,
    "act_kwargs": None,
    "norm_kwargs": None,
    "block_type": None,
    "qk_norm": False,
    "scaled_cosine_attn": False,
    "scale_heads": False,
    "scale_attn_inner": False,
    "scale_attn": False,
    "scale_fc": False,
    "output_tokens": False,
    "final_ln_after_pool": False,
}
_VISION_DEFAULTS = _BLOCK_DEFAULTS | {
    "attentional_pool": False,
    "no_ln_pre": False,
    "pos_embed_type": "learnable",
    "pool_type": "tok",
    "timm_model_name": None,
    "timm_proj_bias": False,
}
_TEXT_DEFAULTS = _BLOCK_DEFAULTS | {
    "hf_model_name": None,
    "hf_tokenizer_name": None,
    "tokenizer_mode": None,
    "tokenizer_kwargs": None,
    "embed_cls": False,
    "pad_id": 0,
    "no_causal_mask": False,
    "pool_type": "argmax",
    "proj_bias": False,
    "proj_type": "linear",
}
_IRRELEVANT = {
    "attn_pooler_queries",
    "attn_pooler_heads",
    "eos_id",
    "hf_model_pretrained",
    "hf_proj_type",
    "hf_pooler_type",
}
# `nonscalar_logit_scale` only changes the shape of `logit_scale` (hfmm's is always `(1,)`); the other two are run-time
# options of OpenCLIP's constructor.
_TOP_KEYS = {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text", "init_logit_scale", "init_logit_bias"}
_TOP_KEYS |= {"nonscalar_logit_scale", "cast_dtype", "output_dict"}


def _refuse_unknown(section: str, cfg: Mapping, allowed: set, defaults: Mapping) -> None:
    unknown = sorted(
        key for key in set(cfg) - allowed - _IRRELEVANT if key not in defaults or cfg[key] != defaults[key]
    )
    if unknown:
        found = ", ".join(f"{key}={cfg[key]!r}" for key in unknown)
        raise ValueError(f"OpenCLIP {section} options {found} have no hfmm equivalent; cannot convert this model.")


def _vision_config(vision_cfg: Mapping, act: str, preprocess: Mapping) -> dict:
    image = {
        "image_size": vision_cfg.get("image_size", 224),
        "image_mean": list(preprocess.get("mean", OPENAI_CLIP_MEAN)),
        "image_std": list(preprocess.get("std", OPENAI_CLIP_STD)),
        "interpolation": preprocess.get("interpolation", "bicubic"),
        "resize_mode": preprocess.get("resize_mode", "shortest"),
    }
    if vision_cfg.get("timm_model_name"):
        _refuse_unknown("vision_cfg", vision_cfg, _TIMM_KEYS, _VISION_DEFAULTS)
        if vision_cfg.get("timm_pool", "avg") not in ("", "avg"):
            raise ValueError(f"timm_pool={vision_cfg['timm_pool']!r} is not supported (only average pooling).")
        return {
            "model_type": "hfmm_convnext_vision_model",
            "timm_model_name": vision_cfg["timm_model_name"],
            "hidden_size": _timm_num_features(vision_cfg["timm_model_name"]),
            "projection_type": vision_cfg.get("timm_proj", "linear"),
            "drop_path_rate": vision_cfg.get("timm_drop_path") or 0.0,
            **image,
        }
    _refuse_unknown("vision_cfg", vision_cfg, _VISION_KEYS, _VISION_DEFAULTS)
    width = vision_cfg["width"]
    return {
        "model_type": "hfmm_clip_vision_model",
        "hidden_size": width,
        "intermediate_size": int(width * vision_cfg.get("mlp_ratio", 4.0)),
        "num_hidden_layers": vision_cfg["layers"],
        "num_attention_heads": width // vision_cfg.get("head_width", 64),
        "patch_size": vision_cfg["patch_size"],
        "hidden_act": act,
        "drop_patch_rate": vision_cfg.get("patch_dropout", 0.0),
        **image,
    }


def _text_config(text_cfg: Mapping, act: str) -> dict:
    _refuse_unknown("text_cfg", text_cfg, _TEXT_KEYS, _TEXT_DEFAULTS)
    width = text_cfg["width"]
    return {
        "vocab_size": text_cfg.get("vocab_size", 49408),
        "hidden_size": width,
        "intermediate_size": int(width * text_cfg.get("mlp_ratio", 4.0)),
        "num_hidden_layers": text_cfg["layers"],
        "num_attention_heads": text_cfg["heads"],
        "max_position_embeddings": text_cfg.get("context_length", 77),
        "hidden_act": act,
    }


def _timm_num_features(name: str) -> int:
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False).num_features


def config_from_open_clip(
    model_cfg: Mapping,
    *,
    quick_gelu: bool | None = None,
    preprocess: Mapping | None = None,
    timm_model_kwargs: Mapping | None = None,
    **overrides,
) -> HfmmCLIPConfig:
    """Builds the hfmm config of an OpenCLIP model config (`open_clip.get_model_config(name)` or the `model_cfg`
    of an `open_clip_config.json`).

    Args:
        model_cfg (`Mapping`):
            OpenCLIP model config with `embed_dim`, `vision_cfg` and `text_cfg` (and optionally `quick_gelu`,
            `custom_text`, `init_logit_scale`, `init_logit_bias`).
        quick_gelu (`bool`, *optional*):
            Activation of the checkpoint; defaults to the config's `quick_gelu` key (OpenCLIP's default: False).
            timm towers always use exact GELU.
        preprocess (`Mapping`, *optional*):
            OpenCLIP `preprocess_cfg` (`mean`, `std`, `interpolation`, `resize_mode`); OpenAI's mean/std, bicubic
            and shortest-edge resizing where absent.
        timm_model_kwargs (`Mapping`, *optional*):
            Extra keyword arguments of a timm trunk (e.g. the `depths` of a shrunk test model), which OpenCLIP
            configs cannot express; stored in the ConvNeXt tower's config.
        overrides:
            Top-level [`HfmmCLIPConfig`] fields.

    Returns:
        [`HfmmCLIPConfig`], or [`HfmmSigLIPConfig`] when the model has a learned logit bias (`init_logit_bias`).
    """
    _refuse_unknown("model", model_cfg, _TOP_KEYS, {})
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    act = "quick_gelu" if quick_gelu else "gelu"
    vision_config = _vision_config(model_cfg["vision_cfg"], act, preprocess or {})
    if timm_model_kwargs:
        if vision_config["model_type"] != "hfmm_convnext_vision_model":
            raise ValueError("timm_model_kwargs apply to timm image towers only; this model has a ViT tower.")
        vision_config["timm_model_kwargs"] = dict(timm_model_kwargs)
    config_cls = HfmmCLIPConfig
    if model_cfg.get("init_logit_bias") is not None:
        config_cls = HfmmSigLIPConfig
        overrides.setdefault("logit_bias_init_value", float(model_cfg["init_logit_bias"]))
    if model_cfg.get("init_logit_scale") is not None:
        overrides.setdefault("logit_scale_init_value", float(model_cfg["init_logit_scale"]))
    return config_cls(
        vision_config=vision_config,
        text_config=_text_config(model_cfg["text_cfg"], act),
        projection_dim=model_cfg["embed_dim"],
        **overrides,
    )


# --- state dict --------------------------------------------------------------------------------------------------


def split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`nn.MultiheadAttention`'s fused `in_proj` rows are ordered q, k, v (split without copying)."""
    return split_rows(tensor, 3)


_BLOCK = {
    r"ln_1\.(weight|bias)": ("layer_norm1.{0}", same),
    r"ln_2\.(weight|bias)": ("layer_norm2.{0}", same),
    r"attn\.out_proj\.(weight|bias)": ("self_attn.out_proj.{0}", same),
    r"mlp\.c_fc\.(weight|bias)": ("mlp.fc1.{0}", same),
    r"mlp\.c_proj\.(weight|bias)": ("mlp.fc2.{0}", same),
    r"attn\.in_proj_(weight|bias)": (
        ("self_attn.q_proj.{0}", "self_attn.k_proj.{0}", "self_attn.v_proj.{0}"),
        split_qkv,
    ),
}


def _block_rules(src_prefix: str, dst_prefix: str) -> dict:
    return {
        rf"{src_prefix}\.(\d+)\.{pattern}": (
            tuple(f"{dst_prefix}.{{0}}.{t.replace('{0}', '{1}')}" for t in target)
            if isinstance(target, tuple)
            else f"{dst_prefix}.{{0}}.{target.replace('{0}', '{1}')}",
            fn,
        )
        for pattern, (target, fn) in _BLOCK.items()
    }


def _text_rules(prefix: str) -> dict:
    """The text tower: at the top level in `CLIP`, under `text.` in `CustomTextCLIP` (`custom_text: true`)."""
    return {
        rf"{prefix}token_embedding\.weight": ("text_model.embeddings.token_embedding.weight", same),
        rf"{prefix}positional_embedding": ("text_model.embeddings.position_embedding.weight", same),
        **_block_rules(rf"{prefix}transformer\.resblocks", "text_model.encoder.layers"),
        rf"{prefix}ln_final\.(weight|bias)": ("text_model.final_layer_norm.{0}", same),
        rf"{prefix}text_projection": ("text_projection.weight", transpose),
        rf"{prefix}attn_mask": None,  # causal mask buffer of old checkpoints; rebuilt at run time
    }


# regex (anchored, full match) -> (target template(s) filled with the groups, tensor transform); None drops a key.
OPEN_CLIP_KEY_MAP: dict[str, Rule] = {
    r"visual\.conv1\.(weight|bias)": ("vision_model.embeddings.patch_embedding.{0}", same),
    r"visual\.class_embedding": ("vision_model.embeddings.class_embedding", same),
    r"visual\.positional_embedding": ("vision_model.embeddings.position_embedding.weight", same),
    r"visual\.ln_pre\.(weight|bias)": ("vision_model.pre_layrnorm.{0}", same),
    **_block_rules(r"visual\.transformer\.resblocks", "vision_model.encoder.layers"),
    r"visual\.ln_post\.(weight|bias)": ("vision_model.post_layernorm.{0}", same),
    r"visual\.proj": ("visual_projection.weight", transpose),
    r"visual\.trunk\.(.+)": ("vision_model.trunk.{0}", same),
    r"visual\.head\.proj\.weight": ("visual_projection.weight", same),
    r"visual\.head\.mlp\.(fc1\.weight|fc1\.bias|fc2\.weight)": ("visual_projection.{0}", same),
    **_text_rules(""),
    **_text_rules(r"text\."),
    r"logit_scale": ("logit_scale", as_vector),
    r"logit_bias": ("logit_bias", as_vector),
}
OPEN_CLIP_KEYS = KeyMap(OPEN_CLIP_KEY_MAP, source="OpenCLIP")


def convert_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps an in-memory OpenCLIP state dict (no `module.` prefix) onto hfmm's `HfmmCLIPModel` keys.

    Checkpoint files go through [`build_model`] instead, which checks keys and shapes and reads tensors lazily.
    """
    return OPEN_CLIP_KEYS.convert(state_dict)
