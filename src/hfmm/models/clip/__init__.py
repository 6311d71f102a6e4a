from .configuration_clip import (
    HfmmCLIPConfig,
    HfmmCLIPTextConfig,
    HfmmCLIPVisionConfig,
    HfmmConvNextVisionConfig,
    HfmmSigLIPConfig,
    available_presets,
)
from .modeling_clip import (
    HfmmCLIPModel,
    HfmmCLIPOutput,
    HfmmCLIPPreTrainedModel,
    HfmmCLIPTextModel,
    HfmmCLIPVisionModel,
    HfmmConvNextVisionModel,
    HfmmSigLIPModel,
)

__all__ = [
    "HfmmCLIPConfig",
    "HfmmCLIPModel",
    "HfmmCLIPOutput",
    "HfmmCLIPPreTrainedModel",
    "HfmmCLIPTextConfig",
    "HfmmCLIPTextModel",
    "HfmmCLIPVisionConfig",
    "HfmmCLIPVisionModel",
    "HfmmConvNextVisionConfig",
    "HfmmConvNextVisionModel",
    "HfmmSigLIPConfig",
    "HfmmSigLIPModel",
    "available_presets",
]
