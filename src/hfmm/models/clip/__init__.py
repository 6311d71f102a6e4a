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
