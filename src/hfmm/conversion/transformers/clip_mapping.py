"""hfmm CLIP <-> transformers-native `CLIPModel`: the export (no remote code needed) of every model `CLIPModel` can
represent, and the configs and exhaustive key map of the way back."""

from transformers import CLIPConfig, CLIPModel

from hfmm.conversion.common.key_maps import KeyMap, Rule, as_vector, same
from hfmm.models.clip import HfmmCLIPConfig, HfmmCLIPModel

_TOWER_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "hidden_act",
    "layer_norm_eps",
    "attention_dropout",
    "initializer_range",
    "initializer_factor",
)


def unsupported_features(config: HfmmCLIPConfig) -> list[str]:
    """The features of `config` that transformers' `CLIPModel` cannot represent (empty when it can)."""
    vision, text = config.vision_config, config.text_config
    if vision.model_type != "hfmm_clip_vision_model":
        return [f"a {vision.model_type} image tower (CLIPModel holds ViT towers only)"]
    checks = {
        "a learned logit bias (sigmoid-loss model)": config.logit_bias_init_value is not None
        or "siglip" in config.model_type,
        f"class_token_length={vision.class_token_length} (CLIPModel has one class token)": vision.class_token_length
        != 1,
        "global_average_pool (CLIPModel pools the class token)": vision.global_average_pool,
        "a patch-embedding bias": vision.patch_embedding_bias,
        "an MLP visual projection": vision.projection_type != "linear",
        f"text pooling at eos_token_id={text.eos_token_id} with bos/eos ids that are not CLIP's": text.eos_token_id
        == 2,
    }
    return [feature for feature, present in checks.items() if present]


def to_transformers_config(config: HfmmCLIPConfig) -> CLIPConfig:
    """The `CLIPConfig` of an hfmm CLIP; raises `ValueError` naming what `CLIPModel` cannot represent."""
    problems = unsupported_features(config)
    if problems:
        raise ValueError(f"transformers' CLIPModel cannot represent this model: {'; '.join(problems)}.")
    vision, text = config.vision_config, config.text_config
    return CLIPConfig(
        vision_config={k: getattr(vision, k) for k in _TOWER_KEYS}
        | {
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
            "num_channels": vision.num_channels,
            "projection_dim": config.projection_dim,
        },
        text_config={k: getattr(text, k) for k in _TOWER_KEYS}
        | {
            "vocab_size": text.vocab_size,
            "max_position_embeddings": text.max_position_embeddings,
            "pad_token_id": text.pad_token_id,
            "bos_token_id": text.bos_token_id,
            "eos_token_id": text.eos_token_id,
            "projection_dim": config.projection_dim,
        },
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def to_transformers_model(model: HfmmCLIPModel) -> CLIPModel:
    """A `CLIPModel` holding the same weights (parameter names are shared; `logit_scale` becomes 0-dim)."""
    native = CLIPModel(to_transformers_config(model.config)).eval()
    state_dict = dict(model.state_dict())
    state_dict["logit_scale"] = state_dict["logit_scale"].reshape(())
    native.load_state_dict(state_dict, strict=True)
    return native


# --- transformers CLIPModel -> hfmm ------------------------------------------------------------------------------

_RESAMPLE = {3: "bicubic", 2: "bilinear", 0: "nearest"}  # PIL codes of CLIPImageProcessor's `resample`
_LEGACY_EOS = 2  # transformers' old CLIP configs: pool at argmax(input_ids), i.e. the first 49407 for real tokens


def _text_ids(text) -> dict:
    """hfmm pools at the first `eos_token_id`; transformers' legacy `eos_token_id: 2` pools at the argmax of the ids,
    which is the first end-of-text token (49407, the largest id) for real tokenizer output. Both become 49407; the
    ids are then those of hfmm's CLIP tokenizer (which pads with 0)."""
    if text.eos_token_id not in (_LEGACY_EOS, 49407):
        raise ValueError(f"text eos_token_id={text.eos_token_id}: hfmm's CLIP tokenizer ends every text with 49407.")
    return {"pad_token_id": 0, "bos_token_id": 49406, "eos_token_id": 49407}


def from_transformers_config(config: CLIPConfig, preprocessing: dict | None = None) -> HfmmCLIPConfig:
    """
    The hfmm config of a transformers `CLIPConfig`; each tower keeps its own `hidden_act`.

    Args:
        config (`CLIPConfig`):
            The source config.
        preprocessing (`dict`, *optional*):
            `image_mean`, `image_std`, `interpolation`, `resize_mode` of the vision tower (OpenAI's CLIP
            preprocessing where absent).
    """
    vision, text = config.vision_config, config.text_config
    return HfmmCLIPConfig(
        vision_config={k: getattr(vision, k) for k in _TOWER_KEYS}
        | {"image_size": vision.image_size, "patch_size": vision.patch_size, "num_channels": vision.num_channels}
        | (preprocessing or {}),
        text_config={k: getattr(text, k) for k in _TOWER_KEYS}
        | {"vocab_size": text.vocab_size, "max_position_embeddings": text.max_position_embeddings}
        | _text_ids(text),
        projection_dim=config.projection_dim,
        logit_scale_init_value=config.logit_scale_init_value,
    )


def preprocessing_from_processor_config(processor_config: dict, image_size: int) -> tuple[dict, list[str]]:
    """hfmm's preprocessing fields from a transformers `preprocessor_config.json`, and notes on what differs."""
    fields, notes = {}, []
    for name in ("image_mean", "image_std"):
        if processor_config.get(name) is not None:
            fields[name] = list(processor_config[name])
    resample = processor_config.get("resample", 3)
    if resample not in _RESAMPLE:
        raise ValueError(f"preprocessor_config.json resample={resample!r}: choose one of {sorted(_RESAMPLE)}.")
    fields["interpolation"] = _RESAMPLE[resample]
    size = processor_config.get("size") or {}
    if processor_config.get("do_center_crop", True) is False and {"height", "width"} <= set(size):
        fields["resize_mode"] = "squash"
    elif size.get("shortest_edge", image_size) != image_size:
        notes.append(
            f"SRC's processor resizes to {size['shortest_edge']} before its {image_size} crop; hfmm's (OpenCLIP's) "
            f"resizes to {image_size}"
        )
    return fields, notes


# regex (anchored, full match) -> (target template, transform); hfmm uses transformers' CLIP names.
TRANSFORMERS_KEY_MAP: dict[str, Rule] = {
    r"(text|vision)_model\.encoder\.layers\.(\d+)\.self_attn\.(q|k|v|out)_proj\.(weight|bias)": (
        "{0}_model.encoder.layers.{1}.self_attn.{2}_proj.{3}",
        same,
    ),
    r"(text|vision)_model\.encoder\.layers\.(\d+)\.(layer_norm1|layer_norm2)\.(weight|bias)": (
        "{0}_model.encoder.layers.{1}.{2}.{3}",
        same,
    ),
    r"(text|vision)_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)": (
        "{0}_model.encoder.layers.{1}.mlp.{2}.{3}",
        same,
    ),
    r"vision_model\.embeddings\.class_embedding": ("vision_model.embeddings.class_embedding", same),
    r"vision_model\.embeddings\.(patch_embedding|position_embedding)\.weight": (
        "vision_model.embeddings.{0}.weight",
        same,
    ),
    r"vision_model\.(pre_layrnorm|post_layernorm)\.(weight|bias)": ("vision_model.{0}.{1}", same),
    r"text_model\.embeddings\.(token_embedding|position_embedding)\.weight": (
        "text_model.embeddings.{0}.weight",
        same,
    ),
    r"text_model\.final_layer_norm\.(weight|bias)": ("text_model.final_layer_norm.{0}", same),
    r"(visual|text)_projection\.weight": ("{0}_projection.weight", same),
    r"logit_scale": ("logit_scale", as_vector),
    r"(text|vision)_model\.embeddings\.position_ids": None,  # persistent buffer of transformers < 4.31
}
TRANSFORMERS_KEYS = KeyMap(TRANSFORMERS_KEY_MAP, source="transformers CLIPModel")
