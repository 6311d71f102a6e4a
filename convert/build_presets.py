"""Regenerates `src/hfmm/models/clip/presets/*.json` from the installed open_clip's model configs.

    python convert/build_presets.py

Each preset is a complete hfmm `config.json` of one architecture, with the preprocessing and activation of its
reference checkpoint (OpenCLIP pretrained tag) and a link to that checkpoint.
"""

import json
from pathlib import Path

import open_clip
from open_clip.pretrained import get_pretrained_cfg

from hfmm.conversion.open_clip.mapping import config_from_open_clip

PRESETS_DIR = Path(__file__).resolve().parents[1] / "src" / "hfmm" / "models" / "clip" / "presets"

# preset name -> (open_clip model name, reference pretrained tag or None)
REFERENCES = {
    "ViT-B-32": ("ViT-B-32", "laion2b_s34b_b79k"),
    "ViT-B-16": ("ViT-B-16", "laion2b_s34b_b88k"),
    "ViT-L-14": ("ViT-L-14", "laion2b_s32b_b82k"),
    "ViT-L-14-336": ("ViT-L-14-336", "openai"),
    "ViT-H-14": ("ViT-H-14", "laion2b_s32b_b79k"),
    "ViT-H-16": ("ViT-H-16", None),
    "ViT-g-14": ("ViT-g-14", "laion2b_s34b_b88k"),
    "ViT-bigG-14": ("ViT-bigG-14", "laion2b_s39b_b160k"),
    "ViT-e-14": ("ViT-e-14", None),
    "convnext_base": ("convnext_base", "laion400m_s13b_b51k"),
    "convnext_large_d": ("convnext_large_d", "laion2b_s26b_b102k_augreg"),
    "convnext_xxlarge": ("convnext_xxlarge", "laion2b_s34b_b82k_augreg"),
}
NO_WEIGHTS = {
    "ViT-H-16": "open_clip model config ViT-H-16 (no public pretrained weights)",
    "ViT-e-14": "NeMo CLIP size table, ViT-e/14: hidden 1792, FFN 15360, 56 layers, 16 heads "
    "(the same dimensions as open_clip's ViT-e-14 config), which give 3807.7M vision and 773.4M text parameters "
    "(the table's own parameter figures do not follow from its dimensions); no public pretrained weights",
}


def build(name: str, model_name: str, tag: str | None) -> dict:
    pretrained = get_pretrained_cfg(model_name, tag) if tag else {}
    source = f"https://huggingface.co/{pretrained['hf_hub'].rstrip('/')}" if tag else NO_WEIGHTS[name]
    config = config_from_open_clip(
        open_clip.get_model_config(model_name),
        quick_gelu=bool(pretrained.get("quick_gelu")),
        preprocess=pretrained,
        source_checkpoint=source,
    )
    return config.to_diff_dict() | {"model_type": config.model_type}


def main() -> None:
    PRESETS_DIR.mkdir(parents=True, exist_ok=True)
    for name, (model_name, tag) in REFERENCES.items():
        preset = build(name, model_name, tag)
        preset.pop("transformers_version", None)
        (PRESETS_DIR / f"{name}.json").write_text(json.dumps(preset, indent=2, sort_keys=True) + "\n")
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
