"""The recipe parser: a YAML file plus `--key value` overrides, type-checked into the recipe's dataclasses.

A recipe file has top-level keys mapping 1:1 onto the fields of the dataclasses given to `parse_recipe` (the model
and data arguments of `hfmm.training.clip.arguments` or `hfmm.training.neva.arguments`, and their
`TrainingArguments` subclass); a nested section such as `lora:` maps onto a nested dataclass field. An unknown key is
an error naming it. Command-line `--key value` (or `--section.key value`) overrides a key of the file; values are
parsed as YAML scalars (`--bf16 true`, `--learning_rate 1e-4`). Every value is checked against its field's
annotation before anything is built; a choice is a `Literal[...]` annotation, and a value outside it is the same
one-line `RecipeError` naming the allowed values whether it comes from a recipe or from Python (`check_choices`).

Also here: what both models' recipes share, the parameter dtypes (`ParameterDtype`) and the check that a local model
folder exists before transformers takes its path for a Hub id.
"""

import dataclasses
import enum
import functools
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml


class RecipeError(ValueError):
    """A recipe key or value that does not fit the recipe's dataclasses."""


ParameterDtype = Literal["float32", "bfloat16", "float16", "float64"]  # a recipe's `dtype` (autocast is `bf16: true`)


@functools.cache
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


def _has_choices(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_has_choices(arg) for arg in typing.get_args(annotation))
    return origin is typing.Literal


def check_choices(arguments) -> None:
    """Raises `RecipeError` (a `ValueError`) for a field of the dataclass `arguments` whose value is not one of its
    `Literal[...]` choices: the argument dataclasses call it from `__post_init__`, so Python callers get the message
    a recipe gets."""
    for name, annotation in _field_types(type(arguments)).items():
        if _has_choices(annotation):
            _checked(annotation, getattr(arguments, name), name)


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


def parse_recipe_argv(classes: tuple[type, ...], argv: list[str]) -> tuple:
    """`parse_recipe` on a command line `--config RECIPE.yaml [--key value ...]`; returns the instances, then the
    recipe's path."""
    if "--config" not in argv or argv.index("--config") == len(argv) - 1:
        raise RecipeError(f"usage: {Path(sys.argv[0]).name} --config RECIPE.yaml [--key value ...]")
    index = argv.index("--config")
    config_file, overrides = argv[index + 1], argv[:index] + argv[index + 2 :]
    return *parse_recipe(classes, config_file, overrides), config_file


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
