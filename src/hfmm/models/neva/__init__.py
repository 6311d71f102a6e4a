from .configuration_neva import NevaConfig, available_presets
from .modeling_neva import (
    NevaCausalLMOutputWithPast,
    NevaForConditionalGeneration,
    NevaModel,
    NevaModelOutputWithPast,
    NevaMultiModalProjector,
    NevaPreTrainedModel,
)

__all__ = [
    "NevaCausalLMOutputWithPast",
    "NevaConfig",
    "NevaForConditionalGeneration",
    "NevaModel",
    "NevaModelOutputWithPast",
    "NevaMultiModalProjector",
    "NevaPreTrainedModel",
    "available_presets",
]
