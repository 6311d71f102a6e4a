"""`hfmm train clip | neva-stage1 | neva-stage2 --config RECIPE.yaml [--key value ...]`: the package's recipes from
the command line, with the same overrides as the scripts and one-line errors."""

import json
from pathlib import Path

import pytest
from transformers import AutoModel

from hfmm.cli import main
from hfmm.demo.synthetic import make_shapes_dataset

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = {"projection_dim": 16,
        "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4},
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4}}  # fmt: skip


def test_train_clip_runs_the_recipe_with_overrides(tmp_path, capsys):
    pairs = make_shapes_dataset(tmp_path / "data", 8, seed=0, split="train")
    out = tmp_path / "out"
    argv = ["train", "clip", "--config", str(RECIPES / "clip" / "tiny_demo.yaml"), "--config_overrides",
            json.dumps(TINY), "--train_data", str(pairs), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--warmup_steps", "0", "--logging_steps", "1",
            "--disable_tqdm", "true"]  # fmt: skip
    assert main(argv) == 0
    assert AutoModel.from_pretrained(out).config.vision_config.image_size == 32
    run = json.loads((out / "training_run.json").read_text())
    assert run["steps"] == 2 and run["recipe"] == "tiny_demo.yaml"
    assert "'skipped_samples': '0'" in capsys.readouterr().out  # the base trainer's skipped-sample count


@pytest.mark.parametrize("recipe", ["clip", "neva-stage1", "neva-stage2"])
def test_train_help_names_the_recipe_and_its_overrides(recipe, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", recipe, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: hfmm train {recipe} [-h] --config RECIPE.yaml [--key value ...]" in out and "--key value" in out


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--loss", "infonce"], "Recipe key loss has value 'infonce'; expected 'clip' | 'siglip'."),
        (["--learning_rat", "1e-3"], "Unknown recipe key(s) ['learning_rat']"),
        (["--max_steps"], "Overrides come in `--key value` pairs"),
    ],
)
def test_train_errors_are_one_line(overrides, message, capsys):
    assert main(["train", "clip", "--config", str(RECIPES / "clip" / "tiny_demo.yaml"), *overrides]) == 2
    error = capsys.readouterr().err
    assert error.startswith("hfmm train: error: ") and error.count("\n") == 1 and message in error, error


def test_train_needs_a_config_and_an_existing_one(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "neva-stage2", "--learning_rate", "1e-4"])
    assert exit_.value.code == 2 and "the following arguments are required: --config" in capsys.readouterr().err
    assert main(["train", "neva-stage1", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert f"Recipe {tmp_path / 'missing.yaml'} does not exist." in capsys.readouterr().err
