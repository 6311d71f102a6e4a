"""`ZeroShotEvalCallback`: zero-shot accuracy of the CLIP being trained, added to each `Trainer.evaluate`."""

import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import TrainerCallback

from hfmm.evaluation.clip import DEFAULT_TEMPLATES, evaluate_zero_shot, fill_template
from hfmm.evaluation.data import load_classification_data

logger = logging.getLogger(__name__)


class ZeroShotEvalCallback(TrainerCallback):
    """
    Zero-shot classification of the model being trained, at every evaluation of a `Trainer`.

    On `on_evaluate` it computes top-1 (and top-5) accuracy with the live model and adds `eval_zero_shot_top1`,
    `eval_zero_shot_top5` to the evaluation's metrics (so `metric_for_best_model="eval_zero_shot_top1"` works) and to
    the matching entry of `state.log_history`. It runs after the Trainer has logged the evaluation, so loggers such
    as TensorBoard or W&B do not receive these keys; they are written to the Python log (`logger.info`).
    `Trainer.evaluate` only runs with an `eval_dataset`, so the recipe needs one for this callback to fire.

    The model is put in eval mode for the computation and restored afterwards. Every rank computes the same metrics
    (needed for sharded models whose forward is collective). The model's `get_image_features`/`get_text_features`
    are called directly, which FSDP2's root-module hooks do not cover.

    Args:
        processor (`HfmmCLIPProcessor`):
            Image processor and tokenizer of the model.
        dataset_path (`str` or `Path`):
            Folder of class subfolders (or CSV/JSONL with `image`, `label`); read once here.
        templates (`Sequence[str]`, *optional*, defaults to `("a photo of a {}.",)`):
            Prompt templates, averaged per class.
        classnames (`Sequence[str]`, *optional*):
            Prompt names of the classes, in class order.
        batch_size (`int`, *optional*, defaults to 64):
            Images or texts per forward pass.
    """

    def __init__(
        self,
        processor,
        dataset_path: str | Path,
        templates: Sequence[str] | None = None,
        *,
        classnames: Sequence[str] | None = None,
        batch_size: int = 64,
    ):
        self.processor = processor
        self.data = load_classification_data(dataset_path, classnames=classnames)
        self.templates = list(templates or DEFAULT_TEMPLATES)
        for template in self.templates:
            fill_template(template, "x")  # a template without a slot fails now, not at the first evaluation
        self.batch_size = batch_size

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None:
            raise ValueError("ZeroShotEvalCallback needs the model (the Trainer passes it to its callbacks).")
        was_training = model.training
        model.eval()
        try:
            scores = evaluate_zero_shot(
                model, self.processor, self.data, self.templates, batch_size=self.batch_size, progress=False
            )
        finally:
            model.train(was_training)
        new = {f"eval_zero_shot_{name}": value for name, value in scores.items()}
        if metrics is not None:
            metrics.update(new)
        _add_to_log_history(state, new)
        logger.info("Zero-shot on %s/%s at step %d: %s", self.data.name, self.data.split, state.global_step, new)
        return control


def _add_to_log_history(state, new: dict[str, float]) -> None:
    """Merges `new` into this step's evaluation entry of `state.log_history`, or appends an entry of its own."""
    last = state.log_history[-1] if state.log_history else None
    if last is not None and last.get("step") == state.global_step and any(k.startswith("eval_") for k in last):
        last.update(new)
    else:
        state.log_history.append({**new, "epoch": state.epoch, "step": state.global_step})
