"""Reference OpenCLIP models (random init, real architectures, depth optionally shrunk) and their hfmm twins."""

import copy
import functools
from unittest import mock

import open_clip
import timm
import torch

from hfmm import HfmmCLIPModel
from hfmm.conversion.open_clip.mapping import config_from_open_clip, convert_open_clip_state_dict

SHRUNK_CONVNEXT_DEPTHS = [1, 1, 2, 1]


def open_clip_model(name: str, *, quick_gelu: bool = False, layers: int | None = 2, seed: int = 0):
    """`open_clip.create_model(name)` with random weights; `layers` shrinks both towers' depth (widths, heads and
    patch sizes kept; a timm ConvNeXt trunk gets `SHRUNK_CONVNEXT_DEPTHS` blocks per stage), `None` keeps it.

    1-D parameters (LayerNorms, biases) are perturbed so that parity cannot pass on default values.
    Returns the model and the OpenCLIP config it was built from.
    """
    torch.manual_seed(seed)
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    create_trunk = timm.create_model
    if layers is not None:
        cfg["text_cfg"]["layers"] = layers
        if "layers" in cfg["vision_cfg"]:
            cfg["vision_cfg"]["layers"] = layers
        # open_clip's TimmModel builds its trunk with timm.create_model: same widths, fewer blocks.
        create_trunk = functools.partial(timm.create_model, depths=SHRUNK_CONVNEXT_DEPTHS)
    with mock.patch.object(timm, "create_model", create_trunk):
        model = open_clip.create_model(
            name, pretrained=None, force_quick_gelu=quick_gelu, text_cfg=cfg["text_cfg"], vision_cfg=cfg["vision_cfg"]
        )
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 1 and param.numel() > 1:
                param.add_(0.1 * torch.randn_like(param))
    return model.eval(), cfg


def hfmm_twin(reference, cfg: dict, *, quick_gelu: bool = False, shrunk: bool = True, preprocess: dict | None = None):
    """The hfmm model holding the same weights as the OpenCLIP `reference`."""
    config = config_from_open_clip(cfg, quick_gelu=quick_gelu, preprocess=preprocess)
    if shrunk and config.vision_config.model_type == "hfmm_convnext_vision_model":
        config.vision_config.timm_model_kwargs = {"depths": SHRUNK_CONVNEXT_DEPTHS}
    model = HfmmCLIPModel(config).eval()
    model.load_state_dict(convert_open_clip_state_dict(reference.state_dict()), strict=True)
    return model
