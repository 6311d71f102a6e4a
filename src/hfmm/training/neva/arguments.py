"""A NeVA recipe's arguments: which model and what of it trains, which data, and how `NevaTrainer` trains it.

Each field is a YAML key; `lora:` and `quantization:` are nested sections.
"""

import dataclasses
from typing import Literal

from transformers import TrainingArguments

from hfmm.training.arguments import ParameterDtype, check_choices


@dataclasses.dataclass
class LoraArguments:
    """PEFT LoRA on the language model's attention and MLP projections (the `lora:` section of a NeVA recipe)."""

    r: int = 128  # adapter rank (LLaVA-1.5: 128)
    alpha: int = 256  # scaling numerator: the update is scaled by alpha / r (LLaVA-1.5: 256)
    dropout: float = 0.05  # dropout on the adapter input
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )  # projection names inside the language model's layers (vision tower and projector are never targeted)
    merge_on_save: bool = True  # save the merged full model (else the adapters only)


@dataclasses.dataclass
class QuantizationArguments:
    """4-bit base model for QLoRA through bitsandbytes (the `quantization:` section; needs `lora:`)."""

    load_in_4bit: bool = True  # 4-bit NF4 weights for the language model (vision tower, projector, lm_head stay full)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: ParameterDtype = "bfloat16"  # dtype of the 4-bit matmuls (float32 on CPU tests)
    bnb_4bit_use_double_quant: bool = True  # quantise the quantisation constants too

    def __post_init__(self):
        check_choices(self)


@dataclasses.dataclass
class NevaModelArguments:
    """Which NeVA to train: assembled from parts (stage 1) or loaded (stage 2), and what of it is trained."""

    model_name_or_path: str | None = None  # a NeVA folder (e.g. stage 1's output); else assembled from the parts below
    vision_tower: str | None = None  # a transformers CLIP (or CLIPVision) folder
    language_model: str | None = None  # a transformers causal-LM folder with its tokenizer
    projector_type: Literal["linear", "mlp2x_gelu"] = "mlp2x_gelu"  # a fresh projector's kind, when assembling
    vision_feature_layer: int = -2  # vision hidden state the projector reads
    conv_template: Literal["nvgpt", "llama_2", "v1", "plain"] = "v1"  # chat template of the conversations
    pretrained_projector: str | None = None  # stage 1's projector.safetensors, loaded into the projector
    freeze_vision_tower: bool = True  # both NeVA stages keep the vision tower frozen
    freeze_language_model: bool = False  # stage 1: True (only the projector trains)
    lora: LoraArguments | None = None  # a `lora:` section turns on PEFT LoRA on the language model
    quantization: QuantizationArguments | None = None  # a `quantization:` section loads the base in 4 bits (QLoRA)
    dtype: ParameterDtype = "float32"  # parameter dtype (autocast is `bf16: true`)

    def __post_init__(self):
        check_choices(self)


@dataclasses.dataclass
class NevaDataArguments:
    """LLaVA-style conversation data."""

    train_data: str | None = None  # LLaVA JSON list or JSON lines: {"id", "image", "conversations": [...]}
    image_folder: str | None = None  # folder the `image` paths are relative to
    model_max_length: int | None = None  # truncate longer samples (counted); None: the tokenizer's


@dataclasses.dataclass
class NevaTrainingArguments(TrainingArguments):
    """[`~transformers.TrainingArguments`] plus the settings of [`NevaTrainer`] (LLaVA's own additions).

    Parameters:
        projector_lr (`float`, *optional*):
            A learning rate of its own for the projector (LLaVA-1.5's LoRA recipe: 2e-5); `None`: `learning_rate`.
        group_by_modality_length (`bool`, *optional*, defaults to `False`):
            Batches of one modality (image or text-only) and similar lengths, as LLaVA's sampler makes them.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Overrides the Trainer's default: `NevaCollator` reads the conversation transform's columns.
    """

    projector_lr: float | None = dataclasses.field(
        default=None, metadata={"help": "A learning rate of its own for the projector; None: learning_rate."}
    )
    group_by_modality_length: bool = dataclasses.field(
        default=False, metadata={"help": "Batches of one modality (image or text-only) and similar lengths."}
    )
    remove_unused_columns: bool = dataclasses.field(
        default=False, metadata={"help": "False: the collator reads the conversation transform's columns."}
    )
