"""A tiny legacy NeMo CLIP (from a tiny open_clip `CLIP`, mapped as NeMo's converter maps it) for fast error tests."""

from pathlib import Path

import torch
from nemo_fixtures import legacy_config, open_clip_to_legacy_nemo, with_prefix, write_nemo_folder
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"width": 32, "layers": 2, "patch_size": 8, "image_size": 32, "head_width": 8},
    "text_cfg": {"width": 32, "heads": 4, "layers": 2},
}


def tiny_open_clip() -> CLIP:
    torch.manual_seed(0)
    model = CLIP(
        embed_dim=TINY_CFG["embed_dim"],
        vision_cfg=CLIPVisionCfg(**TINY_CFG["vision_cfg"]),
        text_cfg=CLIPTextCfg(**TINY_CFG["text_cfg"]),
    )
    return model.eval()


def tiny_legacy_state_dict() -> dict:
    """`model.`-prefixed legacy keys (`megatron_legacy: True`) of `tiny_open_clip()`."""
    state_dict = open_clip_to_legacy_nemo(tiny_open_clip().state_dict(), vision_heads=4, text_heads=4)
    return with_prefix(state_dict)


def write_tiny_nemo(folder: Path, state_dict: dict | None = None, **config_overrides) -> Path:
    """An extracted tiny legacy `.nemo` (TP=1), optionally with other weights or config values."""
    config = legacy_config(TINY_CFG, megatron_legacy=True, quick_gelu=False)
    config.update(config_overrides)
    return write_nemo_folder(folder, config, {"": tiny_legacy_state_dict() if state_dict is None else state_dict})
