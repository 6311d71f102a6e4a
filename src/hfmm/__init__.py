"""hfmm: CLIP and NeVA models, native to Hugging Face transformers.

Importing hfmm registers every config, model and processor with transformers' Auto classes, so
`AutoModel.from_pretrained(dir)` and `pipeline("zero-shot-image-classification", model=dir)` work.
"""

from .auto import register as _register
from .log_filters import quiet_bitsandbytes as _quiet_bitsandbytes
from .models.clip import (
    HfmmCLIPConfig,
    HfmmCLIPModel,
    HfmmCLIPOutput,
    HfmmCLIPTextConfig,
    HfmmCLIPTextModel,
    HfmmCLIPVisionConfig,
    HfmmCLIPVisionModel,
    HfmmConvNextVisionConfig,
    HfmmConvNextVisionModel,
    HfmmSigLIPConfig,
    HfmmSigLIPModel,
    available_presets,
)
from .models.neva import NevaConfig, NevaForConditionalGeneration, NevaModel
from .models.neva.processing_neva import NevaProcessor

__version__ = "0.1.0.dev0"

_quiet_bitsandbytes()
_register()

__all__ = [
    "HfmmCLIPConfig",
    "HfmmCLIPModel",
    "HfmmCLIPOutput",
    "HfmmCLIPTextConfig",
    "HfmmCLIPTextModel",
    "HfmmCLIPVisionConfig",
    "HfmmCLIPVisionModel",
    "HfmmConvNextVisionConfig",
    "HfmmConvNextVisionModel",
    "HfmmSigLIPConfig",
    "HfmmSigLIPModel",
    "NevaConfig",
    "NevaForConditionalGeneration",
    "NevaModel",
    "NevaProcessor",
    "available_presets",
]
