"""Building the model and processor a CLIP recipe names: a saved folder, or a preset with overrides."""

import torch
from transformers import AutoModel, AutoProcessor

from hfmm.models.clip import HfmmCLIPConfig, HfmmCLIPModel, HfmmSigLIPConfig, HfmmSigLIPModel
from hfmm.models.clip.configuration_clip import PRESETS_DIR
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor
from hfmm.training.arguments import check_model_paths
from hfmm.training.clip.arguments import CLIPModelArguments


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def preset_config(preset: str, overrides: dict | None = None, loss: str = "clip") -> HfmmCLIPConfig:
    """The preset's config with `overrides` deep-merged; a sigmoid loss gives an `HfmmSigLIPConfig`."""
    config = HfmmCLIPConfig.from_preset(preset).to_dict()
    config = _merge(config, overrides or {})
    config.pop("model_type", None)
    if loss == "siglip":
        for key in ("logit_scale_init_value", "logit_bias_init_value"):
            if key not in (overrides or {}):
                config.pop(key, None)  # SigLIP's own initial temperature and bias
        return HfmmSigLIPConfig(**config)
    return HfmmCLIPConfig(**config)


def load_model_and_processor(model_args: CLIPModelArguments, loss: str = "clip"):
    """The model (`model_name_or_path`, else a fresh `preset`; a SigLIP for `loss="siglip"`) in `model_args.dtype`,
    and its processor."""
    dtype = getattr(torch, model_args.dtype)
    check_model_paths(model_args)  # a missing local folder: one line now, not Hub retries then a traceback
    if model_args.model_name_or_path:
        model = AutoModel.from_pretrained(model_args.model_name_or_path, dtype=dtype)
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
        return model, processor
    if not model_args.preset:
        raise ValueError(
            f"Set `model_name_or_path` or `preset` (one of {sorted(p.stem for p in PRESETS_DIR.glob('*.json'))})."
        )
    config = preset_config(model_args.preset, model_args.config_overrides, loss)
    model_cls = HfmmSigLIPModel if isinstance(config, HfmmSigLIPConfig) else HfmmCLIPModel
    return model_cls(config).to(dtype), HfmmCLIPProcessor.from_vision_config(config.vision_config)
