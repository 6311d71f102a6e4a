"""hfmm.hub.record: the training-run record (`training_run.json`, `recipe.yaml`) the model card reads."""

import json
from types import SimpleNamespace

from transformers import TrainingArguments

from hfmm.hub.record import RECIPE_FILE, TRAINING_RUN_FILE, record_training_run


def finished_trainer(tmp_path, main_process: bool = True) -> SimpleNamespace:
    """What `record_training_run` reads of a `Trainer` after 12 steps on CPU."""
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        learning_rate=3e-4,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=4,
        max_steps=12,
        lr_scheduler_type="cosine",
        seed=7,
    )
    return SimpleNamespace(
        args=args,
        state=SimpleNamespace(global_step=12, epoch=1.5),
        is_world_process_zero=lambda: main_process,
    )


def test_record_holds_the_run_and_a_copy_of_the_recipe(tmp_path):
    recipe = tmp_path / "tiny_demo.yaml"
    recipe.write_text("learning_rate: 3.0e-4  # peak\n")
    out = tmp_path / "model"
    path = record_training_run(finished_trainer(tmp_path), out, datasets=[tmp_path / "pairs.csv"], recipe=recipe)
    assert path == out / TRAINING_RUN_FILE and (out / RECIPE_FILE).read_text() == recipe.read_text()
    record = json.loads(path.read_text())
    assert record["steps"] == 12 and record["epochs"] == 1.5 and record["recipe"] == "tiny_demo.yaml"
    assert record["hardware"] == {"device": "CPU", "processes": 1}
    assert record["datasets"] == [str(tmp_path / "pairs.csv")]
    settings = record["hyperparameters"]
    assert settings["global_batch_size"] == 8 * 4 and settings["learning_rate"] == 3e-4 and settings["seed"] == 7
    assert settings["lr_scheduler_type"] == "cosine" and isinstance(settings["optim"], str)  # enum values, as text


def test_only_the_main_process_writes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 1\n")
    assert (
        record_training_run(finished_trainer(tmp_path, main_process=False), tmp_path / "model", recipe=recipe) is None
    )
    assert not (tmp_path / "model").exists()
