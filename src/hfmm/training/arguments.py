"""Recipe arguments: dataclasses whose fields are the YAML keys, and the YAML + `--key value` parser.

A recipe file has top-level keys mapping 1:1 onto the fields of the dataclasses given to `parse_recipe`
(transformers' `TrainingArguments` plus hfmm's model/data arguments); a nested section such as `lora:` maps onto a
nested dataclass field. An unknown key is an error naming it. Command-line `--key value` (or `--section.key value`)
overrides a key of the file; values are parsed as YAML scalars (`--bf16 true`, `--learning_rate 1e-4`).
"""

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any

import yaml


@dataclasses.dataclass
class CLIPModelArguments:
    """Which CLIP to train and how its loss is computed."""

    model_name_or_path: str | None = None  # an hfmm/transformers CLIP folder to start from, or None for `preset`
    preset: str | None = None  # an hfmm architecture preset (random init) when model_name_or_path is None
    config_overrides: dict | None = None  # keys merged into the preset's config, e.g. {"text_config": {...}}
    loss: str = "clip"  # "clip" (softmax InfoNCE) or "siglip" (sigmoid)
    loss_mode: str = "auto"  # hfmm.losses mode: auto | local | gather | ring
    loss_tile_size: int | None = None  # tile of the tiled loss; None picks hfmm's default
    grad_cache_chunk_size: int | None = (
        None  # GradCache: embed the device (= contrastive) batch in chunks of this size
    )
    max_logit_scale: float = 100.0  # the logit scale multiplier is clamped to [1, this] after each optimizer step
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16 | float16 | float64 (autocast is `bf16: true`)


@dataclasses.dataclass
class CLIPDataArguments:
    """Where the image-text pairs come from and how images are augmented."""

    train_data: str | None = None  # CSV/JSONL file, webdataset .tar shard(s) (a glob or folder) or an imagefolder
    eval_data: str | None = None  # same formats, for the eval loss
    data_format: str = "auto"  # auto | csv | jsonl | webdataset | imagefolder
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


class RecipeError(ValueError):
    """A recipe key or value that does not fit the recipe's dataclasses."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _nested_dataclass(annotation) -> type | None:
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


_MISMATCH = object()  # what `_fits` returns for a value of the wrong type (None is a value)
_NUMBER_KINDS = (int, float)


def _type_name(annotation) -> str:
    """A readable name for an annotation, as a user would write it: `float`, `list[str]`, `int | None`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "None"
    if origin in (types.UnionType, typing.Union):
        return " | ".join(_type_name(arg) for arg in args)
    if origin is typing.Literal:
        return " | ".join(repr(arg) for arg in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(arg) for arg in args)}]"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum) and len(annotation) <= 8:
        return " | ".join(repr(member.value) for member in annotation)
    return getattr(annotation, "__name__", str(annotation))


def _fits(annotation, value, coerce: bool):
    """`value` as an instance of `annotation`, or `_MISMATCH`; with `coerce`, numeric strings become numbers.

    YAML reads `1e-4` (no dot) as a string, so the second pass (`coerce=True`) converts it for `float`/`int` fields
    once no union member took the value as it is (a `str | float` field keeps the string).
    """
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any or isinstance(annotation, (str, typing.TypeVar)):
        return value  # unannotated or forward-referenced: nothing to check against
    if annotation is type(None):
        return value if value is None else _MISMATCH
    if origin in (types.UnionType, typing.Union):
        for passes in (False, True) if coerce else (False,):
            for arg in args:
                fitted = _fits(arg, value, passes)
                if fitted is not _MISMATCH:
                    return fitted
        return _MISMATCH
    if origin is typing.Literal:
        return value if value in args else _MISMATCH
    if origin in (list, tuple, dict):
        return _fits_container(origin, args, value, coerce)
    if dataclasses.is_dataclass(annotation):
        return value if isinstance(value, annotation) else _MISMATCH  # a dict section is built before this check
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return value if isinstance(value, annotation) or any(value == m.value for m in annotation) else _MISMATCH
    if annotation in _NUMBER_KINDS:
        return _fits_number(annotation, value, coerce)
    if isinstance(annotation, type):
        return value if isinstance(value, annotation) else _MISMATCH
    return value  # an annotation form this checker does not know: left to the dataclass


def _fits_number(kind: type, value, coerce: bool):
    if isinstance(value, bool):
        return _MISMATCH  # YAML's true/false are not 1/0 here
    if isinstance(value, kind) or (kind is float and isinstance(value, int)):
        return value
    if coerce and isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            return _MISMATCH
    return _MISMATCH


def _fits_container(origin: type, args: tuple, value, coerce: bool):
    if origin is dict:
        if not isinstance(value, dict):
            return _MISMATCH
        if len(args) != 2:
            return value
        items = {k: _fits(args[1], v, coerce) for k, v in value.items()}
        return _MISMATCH if any(v is _MISMATCH for v in items.values()) else items
    if not isinstance(value, (list, tuple)):
        return _MISMATCH
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return _MISMATCH
        items = [_fits(arg, item, coerce) for arg, item in zip(args, value)]
    else:
        items = [_fits(args[0], item, coerce) for item in value] if args else list(value)
    if any(item is _MISMATCH for item in items):
        return _MISMATCH
    return origin(items)


def _checked(annotation, value, key: str):
    """`value` fitted to `annotation` (numeric strings converted), or a one-line `RecipeError` naming the key."""
    fitted = _fits(annotation, value, coerce=True)
    if fitted is _MISMATCH:
        raise RecipeError(f"Recipe key {key} has value {value!r}; expected {_type_name(annotation)}.")
    return fitted


def _parse_override(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, bool) and raw.lower() not in ("true", "false"):
        return raw  # YAML 1.1 reads "no"/"off"/"yes" as booleans; `--save_strategy no` means the string
    return value


def apply_overrides(config: dict, argv: list[str]) -> dict:
    """Applies `--key value` / `--section.key value` pairs to a recipe dict (a copy)."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    if len(argv) % 2:
        raise RecipeError(f"Overrides come in `--key value` pairs; got {argv}.")
    for flag, raw in zip(argv[::2], argv[1::2]):
        if not flag.startswith("--"):
            raise RecipeError(f"Expected `--key`, got {flag!r}.")
        *sections, key = flag[2:].replace("-", "_").split(".")
        target = config
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = _parse_override(raw)
    return config


def _build(cls, values: dict, where: str, prefix: str = ""):
    """An instance of `cls` from `values`, every value type-checked first (so nothing is built from a bad one)."""
    fields = _field_types(cls)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"Unknown key(s) {unknown} in {where}; valid keys: {sorted(fields)}.")
    kwargs = {}
    for name, value in values.items():
        nested = _nested_dataclass(fields[name])
        if nested is not None and isinstance(value, dict):
            value = _build(nested, value, f"{where}.{name}", f"{prefix}{name}.")
        kwargs[name] = _checked(fields[name], value, f"{prefix}{name}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise RecipeError(f"Invalid value in {where}: {error}") from error


def parse_recipe(classes: tuple[type, ...], config_file: str | Path | None, argv: list[str] = ()) -> tuple:
    """Builds one instance of each dataclass in `classes` from a YAML recipe plus command-line overrides.

    Each top-level key goes to the one class that has a field of that name; a key no class has is an error.
    """
    config = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise RecipeError(f"Recipe {path} does not exist.")
        config = yaml.safe_load(path.read_text()) or {}
        if not isinstance(config, dict):
            raise RecipeError(f"Recipe {path} must be a mapping of keys to values.")
    config = apply_overrides(config, list(argv))
    owners = {}
    for cls in classes:
        for name in _field_types(cls):
            owners.setdefault(name, cls)
    unknown = sorted(k for k in config if k not in owners)
    if unknown:
        raise RecipeError(f"Unknown recipe key(s) {unknown}; see the recipe's dataclasses for valid keys.")
    per_class = {cls: {} for cls in classes}
    for key, value in config.items():
        per_class[owners[key]][key] = value
    return tuple(_build(cls, per_class[cls], cls.__name__) for cls in classes)


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
    bnb_4bit_quant_type: str = "nf4"  # nf4 | fp4
    bnb_4bit_compute_dtype: str = "bfloat16"  # dtype of the 4-bit matmuls (float32 on CPU tests)
    bnb_4bit_use_double_quant: bool = True  # quantise the quantisation constants too


@dataclasses.dataclass
class NevaModelArguments:
    """Which NeVA to train: assembled from parts (stage 1) or loaded (stage 2), and what is trained."""

    model_name_or_path: str | None = None  # a NeVA folder (e.g. stage 1's output); else assembled from the parts below
    vision_tower: str | None = None  # a transformers CLIP (or CLIPVision) folder
    language_model: str | None = None  # a transformers causal-LM folder with its tokenizer
    projector_type: str = "mlp2x_gelu"  # linear | mlp2x_gelu (a fresh projector when assembling)
    vision_feature_layer: int = -2  # vision hidden state the projector reads
    conv_template: str = "v1"  # chat template: nvgpt | llama_2 | v1 | plain
    pretrained_projector: str | None = None  # stage 1's projector.safetensors, loaded into the projector
    freeze_vision_tower: bool = True  # both NeVA stages keep the vision tower frozen
    freeze_language_model: bool = False  # stage 1: True (only the projector trains)
    projector_lr: float | None = None  # a separate learning rate for the projector (stage 2 with LoRA: 2e-5)
    lora: LoraArguments | None = None  # a `lora:` section turns on PEFT LoRA on the language model
    quantization: QuantizationArguments | None = None  # a `quantization:` section loads the base in 4 bits (QLoRA)
    dtype: str = "float32"  # parameter dtype: float32 | bfloat16 | float16 | float64 (autocast is `bf16: true`)

    def __post_init__(self):
        from .models import parameter_dtype  # torch and the model classes load only when a recipe is parsed

        parameter_dtype(self.dtype)  # a ValueError naming the allowed dtypes, at parse time rather than at load time


@dataclasses.dataclass
class NevaDataArguments:
    """LLaVA-style conversation data."""

    train_data: str | None = None  # LLaVA JSON list or JSON lines: {"id", "image", "conversations": [...]}
    image_folder: str | None = None  # folder the `image` paths are relative to
    model_max_length: int | None = None  # truncate longer samples (counted); None: the tokenizer's
    group_by_modality_length: bool = False  # batches of one modality (image or text-only), similar lengths (LLaVA)


# --- local model paths ----------------------------------------------------------------------------------------------

MODEL_PATH_KEYS = ("model_name_or_path", "vision_tower", "language_model")
DEMO_FOLDER = "demo_output"  # where `hfmm demo` / `make demo-neva` write; the tiny demo recipes point into it


def looks_local(path: str) -> bool:
    """Whether `path` can only mean a local folder: a Hub id is `name` or `org/name`, never `./x`, `/x`, `~/x`,
    `a/b/c`, nor `a/b` where the folder `a` exists here."""
    if path.startswith((".", "/", "~", "\\")) or path.count("/") > 1:
        return True
    first = path.split("/", 1)[0]
    return "/" in path and Path(first).exists()


def check_model_path(path: str | None, key: str) -> None:
    """Raises a one-line `RecipeError` for a local-looking model path that does not exist, instead of letting
    transformers take it for a Hub id (a minute of retries offline, then a traceback or "Repo id must be in the form")."""
    if path is None or not looks_local(str(path)) or Path(str(path)).expanduser().exists():
        return
    parts = Path(str(path)).parts
    if DEMO_FOLDER in parts:
        hint = f"`make {'demo-neva' if 'neva' in parts else 'demo'}` creates it"
    else:
        hint = "a Hub id is `name` or `org/name`"
    raise RecipeError(f"{key} {path} does not exist; {hint}.")


def check_model_paths(model_args) -> None:
    """`check_model_path` on each of the recipe's model folders (`model_name_or_path`, `vision_tower`, ...)."""
    for key in MODEL_PATH_KEYS:
        check_model_path(getattr(model_args, key, None), key)
