"""Registration of hfmm's configs, models and processors with transformers' Auto classes.

Importing `hfmm` runs `register()` once; it touches no GPU, network or environment variable.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
)

from .models.clip import (
    HfmmCLIPConfig,
    HfmmCLIPModel,
    HfmmCLIPTextConfig,
    HfmmCLIPTextModel,
    HfmmCLIPVisionConfig,
    HfmmCLIPVisionModel,
    HfmmConvNextVisionConfig,
    HfmmConvNextVisionModel,
    HfmmSigLIPConfig,
    HfmmSigLIPModel,
)
from .models.clip.processing_clip import HfmmCLIPImageProcessor, HfmmCLIPProcessor, HfmmCLIPTokenizer
from .models.neva import NevaConfig, NevaForConditionalGeneration, NevaModel
from .models.neva.processing_neva import NevaProcessor

_MODELS = [
    (HfmmCLIPTextConfig, HfmmCLIPTextModel),
    (HfmmCLIPVisionConfig, HfmmCLIPVisionModel),
    (HfmmConvNextVisionConfig, HfmmConvNextVisionModel),
    (HfmmCLIPConfig, HfmmCLIPModel),
    (HfmmSigLIPConfig, HfmmSigLIPModel),
]
_ZERO_SHOT = [(HfmmCLIPConfig, HfmmCLIPModel), (HfmmSigLIPConfig, HfmmSigLIPModel)]


def register() -> None:
    """Registers every hfmm config and model (idempotent)."""
    for config_cls, model_cls in _MODELS:
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModel.register(config_cls, model_cls, exist_ok=True)
        # `save_pretrained` then writes `auto_map` and the modeling files, for users with transformers alone.
        config_cls.register_for_auto_class()
        model_cls.register_for_auto_class("AutoModel")
    for config_cls, model_cls in _ZERO_SHOT:
        AutoModelForZeroShotImageClassification.register(config_cls, model_cls, exist_ok=True)
        AutoTokenizer.register(config_cls, tokenizer_class=HfmmCLIPTokenizer, exist_ok=True)
        # OpenCLIP's preprocessing is PIL-based and hfmm's processor is its one exact implementation, whichever
        # backend transformers asks for.
        backends = {"pil": HfmmCLIPImageProcessor, "torchvision": HfmmCLIPImageProcessor}
        AutoImageProcessor.register(config_cls, image_processor_classes=backends, exist_ok=True)
        AutoProcessor.register(config_cls, HfmmCLIPProcessor, exist_ok=True)
    AutoConfig.register(NevaConfig.model_type, NevaConfig, exist_ok=True)
    AutoModel.register(NevaConfig, NevaModel, exist_ok=True)
    AutoModelForImageTextToText.register(NevaConfig, NevaForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(NevaConfig, NevaProcessor, exist_ok=True)
    NevaConfig.register_for_auto_class()
    NevaForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
