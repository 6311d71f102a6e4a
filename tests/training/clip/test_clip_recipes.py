"""Every CLIP recipe parses, and runs two steps through the package's recipe with a tiny-model override."""

import json
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from transformers import AutoModel

from hfmm.demo.synthetic import make_shapes_dataset
from hfmm.training.arguments import RecipeError, parse_recipe
from hfmm.training.clip import recipe as clip_recipe
from hfmm.training.clip.arguments import CLIPDataArguments, CLIPModelArguments, CLIPTrainingArguments

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
YAMLS = sorted((RECIPES / "clip").glob("*.yaml"))
CLASSES = (CLIPModelArguments, CLIPDataArguments, CLIPTrainingArguments)

TINY_VIT = {
    "projection_dim": 16,
    "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                      "num_hidden_layers": 2, "num_attention_heads": 4},
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
}  # fmt: skip
TINY_CONVNEXT = TINY_VIT | {
    "vision_config": {"timm_model_name": "convnext_atto", "hidden_size": 320, "image_size": 32, "drop_path_rate": 0.1}
}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("data"), 16, seed=0, split="train")


def test_every_recipe_key_is_known():
    assert {path.name for path in YAMLS} >= {
        "convnext_xxlarge_laion2b.yaml", "vit_b32_laion400m.yaml", "vit_l14_laion2b.yaml", "tiny_demo.yaml"
    }  # fmt: skip
    for path in YAMLS:
        model_args, data_args, training_args = parse_recipe(CLASSES, path, ["--use_cpu", "true", "--bf16", "false"])
        assert model_args.preset and data_args.train_data and training_args.per_device_train_batch_size > 0


def test_every_recipe_key_has_a_comment():
    for path in YAMLS:
        for line in path.read_text().splitlines():
            if line and not line.startswith((" ", "#")):  # a top-level key
                assert "#" in line, f"{path.name}: key without a comment: {line}"


def test_unknown_key_and_bad_override_are_errors(tmp_path):
    with pytest.raises(RecipeError, match="learning_rat"):
        parse_recipe(CLASSES, YAMLS[0], ["--learning_rat", "1e-3"])
    with pytest.raises(RecipeError, match="does not exist"):
        parse_recipe(CLASSES, tmp_path / "missing.yaml")


@pytest.mark.parametrize("recipe", YAMLS, ids=lambda p: p.stem)
def test_recipe_runs_two_steps(recipe, pairs, tmp_path):
    tiny = TINY_CONVNEXT if "convnext" in recipe.stem else TINY_VIT
    out = tmp_path / "out"
    overrides = {
        "config_overrides": json.dumps(tiny), "train_data": str(pairs), "data_format": "csv", "output_dir": str(out),
        "max_steps": "2", "per_device_train_batch_size": "4", "bf16": "false", "use_cpu": "true",
        "report_to": "[]", "dataloader_num_workers": "0", "save_strategy": "no", "logging_steps": "1",
        "activation_checkpointing": "false", "warmup_steps": "0",
    }  # fmt: skip
    argv = ["--config", str(recipe)] + [item for key, value in overrides.items() for item in (f"--{key}", value)]
    result = clip_recipe.main(argv)
    losses = [entry["loss"] for entry in result["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any("logit_scale" in entry for entry in result["log_history"])
    model = AutoModel.from_pretrained(out)
    assert model.config.vision_config.image_size == 32


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml"])
def test_accelerate_configs_load(name):
    config = load_config_from_file(str(RECIPES / "accelerate" / name))
    if name == "fsdp.yaml":
        assert config.distributed_type == "FSDP" and config.fsdp_config["fsdp_version"] == 2
    else:
        assert config.distributed_type == "MULTI_GPU"
