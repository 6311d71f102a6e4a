"""The training-run record a recipe leaves next to its model: `training_run.json` (steps, epochs, hardware, datasets,
hyperparameters) and a copy of the recipe YAML as `recipe.yaml`. The model card (`hfmm.hub.cards`) reads both."""

import json
import shutil
from pathlib import Path

TRAINING_RUN_FILE = "training_run.json"
RECIPE_FILE = "recipe.yaml"


def _hyperparameters(args) -> dict:
    """The `TrainingArguments` a card reports, as JSON values."""
    return {
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "global_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_train_epochs": args.num_train_epochs,
        "max_steps": args.max_steps,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "adam_beta2": args.adam_beta2,
        "max_grad_norm": args.max_grad_norm,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "optim": str(getattr(args.optim, "value", args.optim)),
        "seed": args.seed,
    }


def record_training_run(
    trainer, output_dir: str | Path, datasets: list[str] | None = None, recipe: str | Path | None = None
) -> Path | None:
    """
    Writes `training_run.json` and a copy of the recipe YAML (`recipe.yaml`) next to a trained model, for its card.
    Only the main process writes.

    Args:
        trainer (`Trainer`): the trainer after training (its `state` and `args` are recorded).
        output_dir (`str` or `Path`): the model folder.
        datasets (`list[str]`, *optional*): the training data (paths or names), listed on the card.
        recipe (`str` or `Path`, *optional*): the recipe YAML; its file name names the model on its card.

    Returns:
        `Path` of `training_run.json`, or `None` on the other processes.
    """
    if not trainer.is_world_process_zero():
        return None
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    if recipe is not None:
        shutil.copyfile(recipe, Path(output_dir) / RECIPE_FILE)
    import torch

    args = trainer.args
    device = torch.cuda.get_device_name(0) if args.device.type == "cuda" else args.device.type.upper()
    record = {
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "hardware": {"device": device, "processes": args.world_size},
        "datasets": [str(name) for name in datasets or []],
        "recipe": Path(recipe).name if recipe is not None else None,  # names the model on its card
        "hyperparameters": _hyperparameters(args),
    }
    path = Path(output_dir) / TRAINING_RUN_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
