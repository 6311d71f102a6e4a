"""NeVA configuration: a CLIP vision tower, a linear or 2-layer-MLP projector and a causal language model.

Self-contained (imports only transformers, huggingface_hub and the standard library) so that `save_pretrained` can
ship it to the Hub as remote code.
"""

import json
from pathlib import Path

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

PRESETS_DIR = Path(__file__).parent / "presets"
PROJECTOR_TYPES = ("linear", "mlp2x_gelu")
FEATURE_SELECT_STRATEGIES = ("default", "full")


def available_presets() -> list[str]:
    """Names accepted by `NevaConfig.from_preset`."""
    return sorted(path.stem for path in PRESETS_DIR.glob("*.json"))


@strict
class NevaConfig(PreTrainedConfig):
    r"""
    Configuration of a NeVA (NeMo's LLaVA): image features from layer `vision_feature_layer` of a CLIP vision tower
    (class token dropped), mapped by a projector into the language model's embedding space at the positions of the
    image tokens. Defaults describe NeMo's NeVA with LLaMA-2-7B and CLIP ViT-L/14 at 224 px (linear projector).

    Args:
        vision_config (`dict` or [`PreTrainedConfig`], *optional*):
            Vision tower; any config `AutoModel` builds a vision model from (transformers' `clip_vision_model`
            by default).
        text_config (`dict` or [`PreTrainedConfig`], *optional*):
            Causal language model (LLaMA by default).
        projector_type (`str`, *optional*, defaults to `"linear"`):
            `"linear"` (NeMo's NeVA) or `"mlp2x_gelu"` (LLaVA-1.5: Linear, GELU, Linear).
        projector_hidden_act (`str`, *optional*, defaults to `"gelu"`):
            Activation between the two layers of `mlp2x_gelu` (exact GELU, as `nn.GELU()`).
        multimodal_projector_bias (`bool`, *optional*, defaults to `True`):
            Whether the projector's linear layers have biases.
        vision_feature_layer (`int`, *optional*, defaults to -2):
            Index into the vision tower's hidden states (-2: the input of its last layer, no post-norm).
        vision_feature_select_strategy (`str`, *optional*, defaults to `"default"`):
            `"default"` drops the class token(s), `"full"` keeps them.
        image_token_id (`int`, *optional*, defaults to 32000):
            Token whose positions receive the image features (alias `image_token_index`).
        image_seq_length (`int`, *optional*):
            Image tokens per image; derived from the vision tower ((image_size / patch_size)² patches, plus the class
            tokens under `"full"`): 256 at 224 px, 576 at 336 px.
        use_im_start_end (`bool`, *optional*, defaults to `False`):
            Whether each image is wrapped in start/end tokens, which keep their own (trained) embeddings.
        im_start_token_id (`int`, *optional*):
            Id of the image start token (with `use_im_start_end`).
        im_end_token_id (`int`, *optional*):
            Id of the image end token (with `use_im_start_end`).
        conv_template (`str`, *optional*):
            The conversation template the model was trained with (`nvgpt`, `llama_2`, `v1` or `plain`).
        tie_word_embeddings (`bool`, *optional*, defaults to `False`):
            Whether `lm_head` shares the input embeddings.

    Example:

    ```python
    >>> from hfmm import NevaConfig, NevaForConditionalGeneration

    >>> config = NevaConfig.from_preset("llava-1.5-7b")
    >>> config.image_seq_length
    576
    ```"""

    model_type = "neva"
    attribute_map = {"image_token_index": "image_token_id"}
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 224,
                "projection_dim": 768,
                "hidden_act": "quick_gelu",
            },
        ),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "linear"
    projector_hidden_act: str = "gelu"
    multimodal_projector_bias: bool = True
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_token_id: int = 32000
    image_seq_length: int | None = None
    use_im_start_end: bool = False
    im_start_token_id: int | None = None
    im_end_token_id: int | None = None
    conv_template: str | None = None
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.projector_type not in PROJECTOR_TYPES:
            raise ValueError(f"`projector_type` must be one of {PROJECTOR_TYPES}, got {self.projector_type!r}.")
        if self.vision_feature_select_strategy not in FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"`vision_feature_select_strategy` must be one of {FEATURE_SELECT_STRATEGIES}, "
                f"got {self.vision_feature_select_strategy!r}."
            )
        if self.use_im_start_end and (self.im_start_token_id is None or self.im_end_token_id is None):
            raise ValueError("`use_im_start_end=True` needs `im_start_token_id` and `im_end_token_id`.")
        expected = self.image_tokens_per_image()
        if self.image_seq_length is None:
            self.image_seq_length = expected
        elif expected is not None and self.image_seq_length != expected:
            raise ValueError(
                f"`image_seq_length`={self.image_seq_length} does not match the vision tower, which gives {expected} "
                f"features per image (image_size {self.vision_config.image_size}, patch_size "
                f"{self.vision_config.patch_size}, strategy {self.vision_feature_select_strategy!r})."
            )
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @property
    def num_class_tokens(self) -> int:
        """Class tokens in front of the patch tokens (NeMo's `class_token_length`; 1 for CLIP)."""
        return getattr(self.vision_config, "class_token_length", 1)

    def image_tokens_per_image(self) -> int | None:
        image_size = getattr(self.vision_config, "image_size", None)
        patch_size = getattr(self.vision_config, "patch_size", None)
        if not isinstance(image_size, int) or not isinstance(patch_size, int):
            return None
        patches = (image_size // patch_size) ** 2
        return patches + (self.num_class_tokens if self.vision_feature_select_strategy == "full" else 0)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "NevaConfig":
        """Loads a preset shipped with hfmm (`available_presets()` lists them); `overrides` replace top-level keys."""
        path = PRESETS_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(f"Unknown NeVA preset {name!r}; available: {available_presets()}.")
        config_dict = json.loads(path.read_text())
        config_dict.pop("model_type", None)
        config_dict.update(overrides)
        return cls(**config_dict)


__all__ = ["NevaConfig", "available_presets"]
