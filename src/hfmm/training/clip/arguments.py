"""A CLIP recipe's arguments: which model, which data, and how `CLIPTrainer` trains it. Each field is a YAML key."""

import dataclasses
from typing import Literal

from transformers import TrainingArguments

from hfmm.training.arguments import ParameterDtype, check_choices

DataFormat = Literal["auto", "csv", "jsonl", "webdataset", "imagefolder"]


@dataclasses.dataclass
class CLIPModelArguments:
    """Which CLIP to train."""

    model_name_or_path: str | None = None  # an hfmm/transformers CLIP folder to start from, or None for `preset`
    preset: str | None = None  # an hfmm architecture preset (random init) when model_name_or_path is None
    config_overrides: dict | None = None  # keys merged into the preset's config, e.g. {"text_config": {...}}
    dtype: ParameterDtype = "float32"  # parameter dtype (autocast is `bf16: true`)

    def __post_init__(self):
        check_choices(self)


@dataclasses.dataclass
class CLIPDataArguments:
    """Where the image-text pairs come from and how images are augmented."""

    train_data: str | None = None  # CSV/JSONL file, webdataset .tar shard(s) (a glob or folder) or an imagefolder
    eval_data: str | None = None  # same formats, for the eval loss
    data_format: DataFormat = "auto"  # "auto" infers it from the path
    image_column: str = "image"  # column holding image paths (CSV/JSONL; relative to the file's folder)
    caption_column: str = "caption"  # column holding captions
    csv_separator: str = ","  # OpenCLIP's CSVs use "\t"
    streaming: bool = False  # stream large datasets instead of loading them into memory
    dataset_resampled: bool = False  # webdataset streaming: draw shards with replacement per reader (OpenCLIP)
    train_num_samples: int | None = None  # samples per epoch (OpenCLIP); sets max_steps when it is unset
    max_train_samples: int | None = None  # truncate the training set (debugging, tests)
    rrc_scale: tuple[float, float] = (0.9, 1.0)  # RandomResizedCrop scale range (OpenCLIP aug_cfg `scale`)
    rrc_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect-ratio range
    re_prob: float = 0.0  # random erasing probability (OpenCLIP aug_cfg `re_prob`)
    re_count: int = 1  # random erasing count
    zero_shot_eval_data: str | None = None  # imagefolder of class folders, evaluated zero-shot at each evaluation
    zero_shot_templates: list[str] | None = None  # prompt templates ("a photo of a {}."), averaged per class

    def __post_init__(self):
        check_choices(self)


@dataclasses.dataclass
class CLIPTrainingArguments(TrainingArguments):
    """[`~transformers.TrainingArguments`] plus the settings of [`CLIPTrainer`]'s contrastive loss.

    Parameters:
        loss (`str`, *optional*, defaults to `"clip"`):
            `"clip"` (softmax InfoNCE) or `"siglip"` (sigmoid; a preset then builds an `HfmmSigLIPModel`, whose logit
            bias the loss needs).
        loss_mode (`str`, *optional*, defaults to `"auto"`):
            `hfmm.losses` mode: `"local"`, `"gather"`, `"ring"`, or `"auto"` (ring on NCCL, gather on gloo).
        loss_tile_size (`int`, *optional*):
            Tile size of the tiled loss; `None` picks `hfmm.losses`' default.
        grad_cache_chunk_size (`int`, *optional*):
            GradCache: embed the device (= contrastive) batch in chunks of this size, which must divide it.
        max_logit_scale (`float`, *optional*, defaults to 100):
            The logit multiplier is clamped to [1, this] after every optimizer step.
        remove_unused_columns (`bool`, *optional*, defaults to `False`):
            Overrides the Trainer's default: `CLIPCollator` decodes the raw image and caption columns.
    """

    loss: Literal["clip", "siglip"] = dataclasses.field(
        default="clip", metadata={"help": "clip (softmax InfoNCE) or siglip (sigmoid)."}
    )
    loss_mode: Literal["auto", "local", "gather", "ring"] = dataclasses.field(
        default="auto", metadata={"help": "hfmm.losses mode; auto is ring on NCCL, gather on gloo."}
    )
    loss_tile_size: int | None = dataclasses.field(
        default=None, metadata={"help": "Tile size of the tiled loss; None picks hfmm.losses' default."}
    )
    grad_cache_chunk_size: int | None = dataclasses.field(
        default=None, metadata={"help": "GradCache: embed the device batch in chunks of this size."}
    )
    max_logit_scale: float = dataclasses.field(
        default=100.0, metadata={"help": "The logit multiplier is clamped to [1, this] after each optimizer step."}
    )
    remove_unused_columns: bool = dataclasses.field(
        default=False, metadata={"help": "False: the collator decodes the raw image and caption columns."}
    )

    def __post_init__(self):
        super().__post_init__()
        check_choices(self)
        if self.grad_cache_chunk_size is not None and self.grad_cache_chunk_size < 1:
            raise ValueError(f"grad_cache_chunk_size must be positive, got {self.grad_cache_chunk_size}.")
