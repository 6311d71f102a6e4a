"""Recipe values are type-checked against their dataclass fields before anything is built (issue 15, item 6)."""

import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from hfmm.training.arguments import RecipeError, parse_recipe
from hfmm.training.clip.arguments import CLIPDataArguments, CLIPModelArguments, CLIPTrainingArguments
from hfmm.training.neva.arguments import NevaDataArguments, NevaModelArguments, NevaTrainingArguments

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
CLIP = (CLIPModelArguments, CLIPDataArguments, CLIPTrainingArguments)
NEVA = (NevaModelArguments, NevaDataArguments, NevaTrainingArguments)


def _recipe(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"preset: ViT-B-32\noutput_dir: {tmp_path / 'out'}\n{text}")
    return path


@pytest.mark.parametrize(
    "line, key, expected",
    [
        ("num_train_epochs: eight", "num_train_epochs", "float"),
        ("per_device_train_batch_size: [64]", "per_device_train_batch_size", "int"),
        ("bf16: maybe", "bf16", "bool"),
        ("max_steps: 2.5", "max_steps", "int"),
        ("rrc_scale: [0.9]", "rrc_scale", "tuple[float, float]"),
        ("rrc_scale: [0.9, big]", "rrc_scale", "tuple[float, float]"),
        ("zero_shot_templates: a photo of {}", "zero_shot_templates", "list[str] | None"),
        ("config_overrides: [1, 2]", "config_overrides", "dict | None"),
        ("loss_tile_size: auto", "loss_tile_size", "int | None"),
        ("report_to: 3", "report_to", "None | str | list[str]"),
        ("lr_scheduler_type: 7", "lr_scheduler_type", "str"),
        ("streaming: 1", "streaming", "bool"),
    ],
)
def test_wrong_type_is_one_line_naming_key_value_and_type(tmp_path, line, key, expected):
    with pytest.raises(RecipeError) as error:
        parse_recipe(CLIP, _recipe(tmp_path, line))
    message = str(error.value)
    assert "\n" not in message
    assert f"key {key} " in message and repr(_yaml_value(line)) in message and expected in message, message
    assert not (tmp_path / "out").exists()


def _yaml_value(line: str):
    import yaml

    return next(iter(yaml.safe_load(line).values()))


def test_override_of_wrong_type(tmp_path):
    with pytest.raises(RecipeError, match=r"key learning_rate has value 'fast'; expected float"):
        parse_recipe(CLIP, _recipe(tmp_path, ""), ["--learning_rate", "fast"])


def test_nested_section_values_are_checked(tmp_path):
    path = tmp_path / "neva.yaml"
    path.write_text("language_model: lm\nvision_tower: vt\nlora:\n  r: sixteen\n")
    with pytest.raises(RecipeError, match=r"key lora\.r has value 'sixteen'; expected int"):
        parse_recipe(NEVA, path)
    with pytest.raises(RecipeError, match=r"key lora\.target_modules has value \['q_proj', 3\]; expected list\[str\]"):
        parse_recipe(NEVA, path, ["--lora.r", "16", "--lora.target_modules", "[q_proj, 3]"])
    with pytest.raises(RecipeError, match=r"key lora has value 'yes please'; expected LoraArguments \| None"):
        parse_recipe(NEVA, path, ["--lora", "yes please"])


def test_good_values_are_converted(tmp_path):
    model, data, training = parse_recipe(
        CLIP,
        _recipe(tmp_path, "learning_rate: 1e-4\nrrc_scale: [0.5, 1]\nzero_shot_templates: ['{}']\nreport_to: none\n"),
        ["--max_steps", "3", "--lr_scheduler_type", "cosine", "--num_train_epochs", "2"],
    )
    assert training.learning_rate == 1e-4 and training.max_steps == 3 and training.num_train_epochs == 2
    assert data.rrc_scale == (0.5, 1) and isinstance(data.rrc_scale, tuple) and data.zero_shot_templates == ["{}"]
    assert training.lr_scheduler_type == "cosine"


def test_literal_fields_and_optional_nested_dataclasses(tmp_path):
    @dataclasses.dataclass
    class Inner:
        size: int = 1

    @dataclasses.dataclass
    class Outer:
        mode: Literal["a", "b"] = "a"
        inner: Inner | None = None
        pair: tuple[float, ...] = ()

    path = tmp_path / "r.yaml"
    path.write_text("mode: b\ninner: {size: 4}\npair: [1, 2.5, 3]\n")
    (outer,) = parse_recipe((Outer,), path)
    assert outer == Outer(mode="b", inner=Inner(4), pair=(1, 2.5, 3))
    with pytest.raises(RecipeError, match=r"key mode has value 'c'; expected 'a' \| 'b'"):
        parse_recipe((Outer,), path, ["--mode", "c"])


@pytest.mark.parametrize(
    "recipe",
    sorted([*RECIPES.glob("clip/*.yaml"), *RECIPES.glob("neva/*.yaml")]),
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_every_shipped_recipe_passes_the_checker(recipe):
    classes = CLIP if recipe.parent.name == "clip" else NEVA
    parse_recipe(classes, recipe, ["--use_cpu", "true", "--bf16", "false"])


CHOICES = [
    (CLIP, "loss", "infonce", "'clip' | 'siglip'"),
    (CLIP, "loss_mode", "allreduce", "'auto' | 'local' | 'gather' | 'ring'"),
    (CLIP, "data_format", "parquet", "'auto' | 'csv' | 'jsonl' | 'webdataset' | 'imagefolder'"),
    (CLIP, "dtype", "int8", "'float32' | 'bfloat16' | 'float16' | 'float64'"),
    (NEVA, "projector_type", "mlp3x_gelu", "'linear' | 'mlp2x_gelu'"),
    (NEVA, "conv_template", "chatml", "'nvgpt' | 'llama_2' | 'v1' | 'plain'"),
    (NEVA, "dtype", "half", "'float32' | 'bfloat16' | 'float16' | 'float64'"),
    (NEVA, "quantization.bnb_4bit_quant_type", "int4", "'nf4' | 'fp4'"),
]


@pytest.mark.parametrize("classes, key, value, allowed", CHOICES, ids=[f"{case[1]}={case[2]}" for case in CHOICES])
def test_bad_choice_is_one_line_naming_the_allowed_values(tmp_path, classes, key, value, allowed):
    path = _recipe(tmp_path, "") if classes is CLIP else tmp_path / "neva.yaml"
    if classes is NEVA:
        path.write_text("language_model: lm\nvision_tower: vt\nlora: {r: 4}\n")
    with pytest.raises(RecipeError) as error:
        parse_recipe(classes, path, [f"--{key}", value])
    assert str(error.value) == f"Recipe key {key} has value {value!r}; expected {allowed}."


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda tmp: CLIPTrainingArguments(tmp, loss="infonce"), r"key loss has value 'infonce'; expected 'clip' \|"),
        (
            lambda tmp: CLIPDataArguments(data_format="parquet"),
            r"key data_format has value 'parquet'; expected 'auto'",
        ),
        (lambda tmp: NevaModelArguments(dtype="half"), r"key dtype has value 'half'; expected 'float32' \|"),
    ],
)
def test_bad_choice_from_python_is_the_same_error(tmp_path, build, message):
    with pytest.raises(RecipeError, match=message):
        build(str(tmp_path))


def test_choices_match_the_library():
    """The `Literal` choices copy what the library accepts: loss modes, projector kinds and chat templates."""
    from typing import get_args, get_type_hints

    from hfmm.losses import MODES
    from hfmm.models.neva.configuration_neva import PROJECTOR_TYPES
    from hfmm.models.neva.processing_neva import CHAT_TEMPLATES

    assert get_args(get_type_hints(CLIPTrainingArguments)["loss_mode"]) == MODES
    assert get_args(get_type_hints(NevaModelArguments)["projector_type"]) == PROJECTOR_TYPES
    assert get_args(get_type_hints(NevaModelArguments)["conv_template"]) == CHAT_TEMPLATES
