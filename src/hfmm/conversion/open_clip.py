"""OpenCLIP -> hfmm: architecture configs and an exhaustive, templated state-dict key map.

Every OpenCLIP key must match exactly one anchored rule below; an unknown key is an error that names it.
"""

import re
from collections.abc import Callable, Mapping

import torch

from hfmm.models.clip import HfmmCLIPConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# OpenCLIP config keys hfmm can represent; any other key with a non-default value is refused by name.
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


def _refuse_unknown(section: str, cfg: Mapping, allowed: set) -> None:
    unknown = sorted(set(cfg) - allowed)
    if unknown:
        raise ValueError(f"OpenCLIP {section} options {unknown} have no hfmm equivalent; cannot convert this model.")


def _vision_config(vision_cfg: Mapping, act: str, preprocess: Mapping) -> dict:
    image = {
        "image_size": vision_cfg.get("image_size", 224),
        "image_mean": list(preprocess.get("mean", OPENAI_MEAN)),
        "image_std": list(preprocess.get("std", OPENAI_STD)),
        "interpolation": preprocess.get("interpolation", "bicubic"),
        "resize_mode": preprocess.get("resize_mode", "shortest"),
    }
    if vision_cfg.get("timm_model_name"):
        _refuse_unknown("vision_cfg", vision_cfg, _TIMM_KEYS)
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
    _refuse_unknown("vision_cfg", vision_cfg, _VISION_KEYS)
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
    _refuse_unknown("text_cfg", text_cfg, _TEXT_KEYS)
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
    model_cfg: Mapping, *, quick_gelu: bool | None = None, preprocess: Mapping | None = None, **overrides
) -> HfmmCLIPConfig:
    """Builds the hfmm config of an OpenCLIP model config (`open_clip.get_model_config(name)` or the `model_cfg`
    of an `open_clip_config.json`).

    Args:
        model_cfg (`Mapping`):
            OpenCLIP model config with `embed_dim`, `vision_cfg` and `text_cfg`.
        quick_gelu (`bool`, *optional*):
            Activation of the checkpoint; defaults to the config's `quick_gelu` key (OpenCLIP's default: False).
            timm towers always use exact GELU.
        preprocess (`Mapping`, *optional*):
            OpenCLIP `preprocess_cfg` (`mean`, `std`, `interpolation`, `resize_mode`).
    """
    top_unknown = sorted(set(model_cfg) - {"embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "custom_text"})
    if top_unknown:
        raise ValueError(f"OpenCLIP model options {top_unknown} have no hfmm equivalent; cannot convert this model.")
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    act = "quick_gelu" if quick_gelu else "gelu"
    return HfmmCLIPConfig(
        vision_config=_vision_config(model_cfg["vision_cfg"], act, preprocess or {}),
        text_config=_text_config(model_cfg["text_cfg"], act),
        projection_dim=model_cfg["embed_dim"],
        **overrides,
    )


# --- state dict --------------------------------------------------------------------------------------------------


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def _transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous()


def _as_vector(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(1)


def split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`nn.MultiheadAttention`'s fused `in_proj` rows are ordered q, k, v."""
    return tuple(chunk.contiguous() for chunk in tensor.chunk(3, dim=0))


_BLOCK = {
    r"ln_1\.(weight|bias)": ("layer_norm1.{0}", _same),
    r"ln_2\.(weight|bias)": ("layer_norm2.{0}", _same),
    r"attn\.out_proj\.(weight|bias)": ("self_attn.out_proj.{0}", _same),
    r"mlp\.c_fc\.(weight|bias)": ("mlp.fc1.{0}", _same),
    r"mlp\.c_proj\.(weight|bias)": ("mlp.fc2.{0}", _same),
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


# regex (anchored, full match) -> (target template(s) filled with the groups, tensor transform); None drops a key.
OPEN_CLIP_KEY_MAP: dict[str, tuple | None] = {
    r"visual\.conv1\.(weight|bias)": ("vision_model.embeddings.patch_embedding.{0}", _same),
    r"visual\.class_embedding": ("vision_model.embeddings.class_embedding", _same),
    r"visual\.positional_embedding": ("vision_model.embeddings.position_embedding.weight", _same),
    r"visual\.ln_pre\.(weight|bias)": ("vision_model.pre_layrnorm.{0}", _same),
    **_block_rules(r"visual\.transformer\.resblocks", "vision_model.encoder.layers"),
    r"visual\.ln_post\.(weight|bias)": ("vision_model.post_layernorm.{0}", _same),
    r"visual\.proj": ("visual_projection.weight", _transpose),
    r"visual\.trunk\.(.+)": ("vision_model.trunk.{0}", _same),
    r"visual\.head\.proj\.weight": ("visual_projection.weight", _same),
    r"visual\.head\.mlp\.(fc1\.weight|fc1\.bias|fc2\.weight)": ("visual_projection.{0}", _same),
    r"token_embedding\.weight": ("text_model.embeddings.token_embedding.weight", _same),
    r"positional_embedding": ("text_model.embeddings.position_embedding.weight", _same),
    **_block_rules(r"transformer\.resblocks", "text_model.encoder.layers"),
    r"ln_final\.(weight|bias)": ("text_model.final_layer_norm.{0}", _same),
    r"text_projection": ("text_projection.weight", _transpose),
    r"logit_scale": ("logit_scale", _as_vector),
    r"logit_bias": ("logit_bias", _as_vector),
    r"attn_mask": None,  # causal mask buffer of old checkpoints; rebuilt at run time
}
_COMPILED = [(re.compile(pattern), rule) for pattern, rule in OPEN_CLIP_KEY_MAP.items()]


def map_open_clip_key(key: str) -> tuple[tuple[str, ...] | str, Callable] | None:
    """Target key(s) and transform of one OpenCLIP key; `None` for keys dropped on purpose."""
    for pattern, rule in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            if rule is None:
                return None
            target, fn = rule
            groups = match.groups()
            if isinstance(target, tuple):
                return tuple(t.format(*groups) for t in target), fn
            return target.format(*groups), fn
    raise KeyError(f"Unknown OpenCLIP key {key!r}: no rule in hfmm's key map matches it.")


def convert_open_clip_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Maps an OpenCLIP `CLIP` state dict (no `module.` prefix) onto hfmm's `HfmmCLIPModel` keys."""
    converted = {}
    for key, tensor in state_dict.items():
        mapped = map_open_clip_key(key)
        if mapped is None:
            continue
        target, fn = mapped
        values = fn(tensor)
        targets = target if isinstance(target, tuple) else (target,)
        values = values if isinstance(values, tuple) else (values,)
        converted.update(zip(targets, values, strict=True))
    return converted
