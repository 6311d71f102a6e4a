"""hfmm CLIP -> transformers-native `CLIPModel` (no remote code needed), for every model `CLIPModel` can represent."""

from transformers import CLIPConfig, CLIPModel

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
