"""Configurations of hfmm's CLIP family: a text tower, two image towers (ViT, timm ConvNeXt) and the dual encoder.

Self-contained (imports only transformers and the standard library) so that `save_pretrained` can ship it to
the Hub as remote code.
"""

import json
import math
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_ACTIVATIONS = ("quick_gelu", "gelu", "gelu_pytorch_tanh")
_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_RESIZE_MODES = ("shortest", "squash", "longest")
_PROJECTIONS = ("linear", "mlp")
PRESETS_DIR = Path(__file__).parent / "presets"


# Megatron-style tensor parallelism of a tower (NeMo's TP, the transformers way): q/k/v and fc1 split by output
# features, out_proj and fc2 by input features; attention then runs on each rank's own heads.
TOWER_TP_PLAN = {
    "encoder.layers.*.self_attn.q_proj": "colwise",
    "encoder.layers.*.self_attn.k_proj": "colwise",
    "encoder.layers.*.self_attn.v_proj": "colwise",
    "encoder.layers.*.self_attn.out_proj": "rowwise",
    "encoder.layers.*.mlp.fc1": "colwise",
    "encoder.layers.*.mlp.fc2": "rowwise",
}


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}`={value!r} is not supported; choose one of {list(choices)}.")


def _check_heads(hidden_size: int, num_attention_heads: int) -> None:
    if hidden_size % num_attention_heads != 0:
        raise ValueError(
            f"`hidden_size` ({hidden_size}) must be a multiple of `num_attention_heads` ({num_attention_heads})."
        )


def _check_preprocessing(config) -> None:
    _check_choice("interpolation", config.interpolation, _INTERPOLATIONS)
    _check_choice("resize_mode", config.resize_mode, _RESIZE_MODES)
    _check_choice("projection_type", config.projection_type, _PROJECTIONS)
    for name in ("image_mean", "image_std"):
        if len(getattr(config, name)) != config.num_channels:
            raise ValueError(f"`{name}` needs {config.num_channels} values, got {getattr(config, name)}.")


@strict
class HfmmCLIPTextConfig(PreTrainedConfig):
    r"""
    Configuration of the CLIP text tower: a causal pre-norm transformer pooled at the end-of-text token, as in
    OpenCLIP's `TextTransformer`. Defaults describe the text tower of OpenCLIP `ViT-B-32`.

    Args:
        vocab_size (`int`, *optional*, defaults to 49408):
            Size of the CLIP BPE vocabulary.
        hidden_size (`int`, *optional*, defaults to 512):
            Width of the transformer.
        intermediate_size (`int`, *optional*, defaults to 2048):
            Width of the MLP inside each block.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Number of attention heads.
        max_position_embeddings (`int`, *optional*, defaults to 77):
            Context length.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            `"gelu"` (exact), `"quick_gelu"` (OpenAI and some LAION checkpoints) or `"gelu_pytorch_tanh"`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            LayerNorm epsilon.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth, rising linearly to this rate over the blocks (training only).

    Example:

    ```python
    >>> from hfmm import HfmmCLIPTextConfig, HfmmCLIPTextModel

    >>> config = HfmmCLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    >>> model = HfmmCLIPTextModel(config)
    ```"""

    model_type = "hfmm_clip_text_model"
    base_config_key = "text_config"
    base_model_tp_plan = TOWER_TP_PLAN

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    drop_path_rate: float = 0.0
    initializer_range: float = 0.02
    initializer_factor: float = 1.0
    pad_token_id: int | None = 0
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407

    def __post_init__(self, **kwargs):
        _check_heads(self.hidden_size, self.num_attention_heads)
        _check_choice("hidden_act", self.hidden_act, _ACTIVATIONS)
        super().__post_init__(**kwargs)


@strict
class HfmmCLIPVisionConfig(PreTrainedConfig):
    r"""
    Configuration of the ViT image tower, with NeMo's extras. Defaults describe OpenCLIP `ViT-B-32`.

    Args:
        hidden_size (`int`, *optional*, defaults to 768):
            Width of the transformer.
        intermediate_size (`int`, *optional*, defaults to 3072):
            Width of the MLP inside each block.
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of transformer blocks.
        num_attention_heads (`int`, *optional*, defaults to 12):
            Number of attention heads.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        image_size (`int`, *optional*, defaults to 224):
            Square input resolution.
        patch_size (`int`, *optional*, defaults to 32):
            Patch size of the patch embedding.
        hidden_act (`str`, *optional*, defaults to `"gelu"`):
            `"gelu"`, `"quick_gelu"` or `"gelu_pytorch_tanh"`.
        layer_norm_eps (`float`, *optional*, defaults to 1e-5):
            LayerNorm epsilon.
        attention_dropout (`float`, *optional*, defaults to 0.0):
            Dropout on attention probabilities.
        class_token_length (`int`, *optional*, defaults to 1):
            Number of learned class tokens prepended to the patches (NeMo allows 8); pooling uses the first.
        global_average_pool (`bool`, *optional*, defaults to `False`):
            Pool by averaging all tokens (class tokens included) after the final LayerNorm, as NeMo does.
        patch_embedding_bias (`bool`, *optional*, defaults to `False`):
            Whether the patch embedding has a bias (NeMo checkpoints before April 2024).
        drop_patch_rate (`float`, *optional*, defaults to 0.0):
            Fraction of patch tokens randomly dropped during training (patch dropout; class tokens are kept).
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth, rising linearly to this rate over the blocks (training only).
        projection_type (`str`, *optional*, defaults to `"linear"`):
            Projection into the joint space: `"linear"` (no bias) or `"mlp"` (Linear-GELU-Linear).
        image_mean (`list[float]`, *optional*, defaults to OpenAI's mean):
            Normalisation mean of the checkpoint's preprocessing.
        image_std (`list[float]`, *optional*, defaults to OpenAI's std):
            Normalisation std of the checkpoint's preprocessing.
        interpolation (`str`, *optional*, defaults to `"bicubic"`):
            Resize interpolation of the checkpoint's preprocessing.
        resize_mode (`str`, *optional*, defaults to `"shortest"`):
            `"shortest"` (resize shortest side, centre crop), `"squash"` or `"longest"` (fit and pad).

    Example:

    ```python
    >>> from hfmm import HfmmCLIPVisionConfig, HfmmCLIPVisionModel

    >>> config = HfmmCLIPVisionConfig(class_token_length=8, global_average_pool=True)
    >>> model = HfmmCLIPVisionModel(config)
    ```"""

    model_type = "hfmm_clip_vision_model"
    base_config_key = "vision_config"
    base_model_tp_plan = TOWER_TP_PLAN

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 32
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    class_token_length: int = 1
    global_average_pool: bool = False
    patch_embedding_bias: bool = False
    drop_patch_rate: float = 0.0
    drop_path_rate: float = 0.0
    projection_type: str = "linear"
    image_mean: list[float] | tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: list[float] | tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        _check_heads(self.hidden_size, self.num_attention_heads)
        _check_choice("hidden_act", self.hidden_act, _ACTIVATIONS)
        _check_preprocessing(self)
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be a multiple of `patch_size` ({self.patch_size})."
            )
        if self.class_token_length < 1:
            raise ValueError(f"`class_token_length` must be at least 1, got {self.class_token_length}.")
        if not 0.0 <= self.drop_patch_rate < 1.0:
            raise ValueError(f"`drop_patch_rate` must lie in [0, 1), got {self.drop_patch_rate}.")
        super().__post_init__(**kwargs)


@strict
class HfmmConvNextVisionConfig(PreTrainedConfig):
    r"""
    Configuration of a timm ConvNeXt image tower, as OpenCLIP's `TimmModel` (trunk with average pooling and
    head LayerNorm; the projection lives in the dual encoder). Defaults describe OpenCLIP `convnext_base`.

    Args:
        timm_model_name (`str`, *optional*, defaults to `"convnext_base"`):
            Name of the timm architecture (`convnext_base`, `convnext_large`, `convnext_xxlarge`, ...). timm holds
            the exact widths, depths and LayerNorm epsilons (1e-5 for `convnext_xxlarge`, 1e-6 otherwise).
        hidden_size (`int`, *optional*, defaults to 1024):
            Width of the trunk's pooled features (`trunk.num_features`); checked when the model is built.
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        image_size (`int`, *optional*, defaults to 224):
            Square input resolution of the checkpoint.
        drop_path_rate (`float`, *optional*, defaults to 0.0):
            Stochastic depth of the trunk (training only; OpenCLIP trains with 0.1).
        projection_type (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (OpenCLIP `timm_proj: linear`) or `"mlp"` (`convnext_large_d`).
        image_mean, image_std, interpolation, resize_mode:
            Preprocessing of the checkpoint, as in [`HfmmCLIPVisionConfig`].

    Example:

    ```python
    >>> from hfmm import HfmmConvNextVisionConfig

    >>> config = HfmmConvNextVisionConfig(timm_model_name="convnext_xxlarge", hidden_size=3072, image_size=256)
    ```"""

    model_type = "hfmm_convnext_vision_model"
    base_config_key = "vision_config"

    timm_model_name: str = "convnext_base"
    hidden_size: int = 1024
    num_channels: int = 3
    image_size: int = 224
    drop_path_rate: float = 0.0
    projection_type: str = "linear"
    timm_model_kwargs: dict | None = None
    image_mean: list[float] | tuple[float, ...] = OPENAI_CLIP_MEAN
    image_std: list[float] | tuple[float, ...] = OPENAI_CLIP_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    initializer_range: float = 0.02
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        _check_preprocessing(self)
        if not self.timm_model_name.startswith("convnext"):
            raise ValueError(f"`timm_model_name` must name a timm ConvNeXt, got {self.timm_model_name!r}.")
        super().__post_init__(**kwargs)


VISION_CONFIG_CLASSES = {cls.model_type: cls for cls in (HfmmCLIPVisionConfig, HfmmConvNextVisionConfig)}


@strict
class HfmmCLIPConfig(PreTrainedConfig):
    r"""
    Configuration of hfmm's CLIP dual encoder: a text tower, an image tower (ViT or ConvNeXt, chosen by the
    `model_type` of `vision_config`), linear projections into a joint space and a learned temperature.
    Defaults describe OpenCLIP `ViT-B-32`.

    Args:
        text_config (`dict` or [`HfmmCLIPTextConfig`], *optional*):
            Text tower.
        vision_config (`dict`, [`HfmmCLIPVisionConfig`] or [`HfmmConvNextVisionConfig`], *optional*):
            Image tower; a dict picks its class by its `model_type` (ViT when absent).
        projection_dim (`int`, *optional*, defaults to 512):
            Width of the joint embedding space (OpenCLIP `embed_dim`).
        logit_scale_init_value (`float`, *optional*, defaults to log(1/0.07)):
            Initial value of the log temperature (a 1-element parameter).
        logit_bias_init_value (`float`, *optional*):
            Initial value of a learned logit bias (SigLIP uses -10); no bias when `None`.
        source_checkpoint (`str`, *optional*):
            Where the reference weights of this architecture come from (informational).

    Example:

    ```python
    >>> from hfmm import HfmmCLIPConfig, HfmmCLIPModel

    >>> config = HfmmCLIPConfig.from_preset("ViT-B-32")
    >>> model = HfmmCLIPModel(config)
    ```"""

    model_type = "hfmm_clip"
    sub_configs_defaults = {"text_config": HfmmCLIPTextConfig, "vision_config": HfmmCLIPVisionConfig}

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = math.log(1 / 0.07)
    logit_bias_init_value: float | None = None
    source_checkpoint: str | None = None
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        if isinstance(self.vision_config, dict):
            vision_type = self.vision_config.get("model_type", HfmmCLIPVisionConfig.model_type)
            _check_choice("vision_config.model_type", vision_type, VISION_CONFIG_CLASSES)
            self.vision_config = VISION_CONFIG_CLASSES[vision_type](**self.vision_config)
        elif self.vision_config is not None and not isinstance(
            self.vision_config, tuple(VISION_CONFIG_CLASSES.values())
        ):
            raise ValueError(
                f"`vision_config` must be one of {list(VISION_CONFIG_CLASSES)}, got {type(self.vision_config)}."
            )
        if self.projection_dim < 1:
            raise ValueError(f"`projection_dim` must be positive, got {self.projection_dim}.")
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "HfmmCLIPConfig":
        """Loads a preset shipped with hfmm (`available_presets()` lists them); `overrides` replace top-level keys."""
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"Unknown preset {name!r}; available: {available_presets()}.")
        config_dict = json.loads(path.read_text())
        config_dict.update(overrides)
        config_cls = _CONFIG_CLASSES_BY_TYPE.get(config_dict.pop("model_type", cls.model_type), cls)
        return config_cls(**config_dict)


@strict
class HfmmSigLIPConfig(HfmmCLIPConfig):
    r"""
    [`HfmmCLIPConfig`] of a model trained with the sigmoid loss. Its `model_type` contains "siglip", so the
    zero-shot pipeline applies a sigmoid to the logits (which include the learned bias) instead of a softmax.
    """

    model_type = "hfmm_siglip"

    logit_scale_init_value: float = math.log(10.0)
    logit_bias_init_value: float | None = -10.0


_CONFIG_CLASSES_BY_TYPE = {cls.model_type: cls for cls in (HfmmCLIPConfig, HfmmSigLIPConfig)}


def available_presets() -> list[str]:
    """Names of the architecture presets shipped in `presets/`."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


__all__ = [
    "HfmmCLIPConfig",
    "HfmmCLIPTextConfig",
    "HfmmCLIPVisionConfig",
    "HfmmConvNextVisionConfig",
    "HfmmSigLIPConfig",
    "available_presets",
]
