"""What hfmm's trainers share: their own arguments class, the skipped-sample counts in the logs, the run's record and
hfmm's model card, and a saved model that is always a plain, loadable folder.

Whatever wraps the model while it trains (DDP, `torch.compile`, FSDP2), `save_model` writes what `save_pretrained`
of the model's own class writes: its config, weights, modeling files and `auto_map`. FSDP2 needs care twice over:
`fully_shard` swaps the model's class in place for a generated `FSDP<Name>` subclass (whose module is torch's, so
transformers would copy torch's `_fsdp_*.py` files as the remote code and write `FSDP<Name>` into `auto_map`), and
its parameters are shards, so the full weights must be gathered by every rank (a collective) before rank 0 writes.
Checkpoints during training stay FSDP's own (sharded with `fsdp_state_dict_type: SHARDED_STATE_DICT`), which is what
resuming reads.
"""

import contextlib
import os
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer import TRAINING_ARGS_NAME

from hfmm.hub.record import record_training_run


def own_class(model: torch.nn.Module) -> type:
    """The class `model` had before FSDP2's `fully_shard` swapped in its `FSDP<Name>` subclass (else `type(model)`)."""
    from torch.distributed.fsdp import FSDPModule

    return next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))


@contextlib.contextmanager
def as_own_class(model: torch.nn.Module):
    """`model` seen as its own class for the duration (`save_pretrained` names and copies the code of `type(self)`).

    This undoes, briefly, the in-place class swap that `fully_shard` made; the module and its parameters are untouched.
    """
    swapped = type(model)
    model.__class__ = own_class(model)
    try:
        yield model
    finally:
        model.__class__ = swapped


def gathered_state_dict(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The model's full state dict on the main process (a collective: every rank must call it under FSDP)."""
    return trainer.accelerator.get_state_dict(trainer.model)


class HfmmTrainer(Trainer):
    """`Trainer` whose settings are its own `TrainingArguments` subclass (`args_class`), whose logs count the samples
    the collator skipped, whose card is hfmm's, and whose `save_model` writes a plain folder whatever wraps the model.

    Args:
        model (`PreTrainedModel`):
            The model to train.
        args (`args_class`, *optional*):
            Transformers' settings plus the subclass's own (`CLIPTrainingArguments`, `NevaTrainingArguments`);
            defaults to `args_class(output_dir="trainer_output")`, as `Trainer` does.
        **kwargs:
            Passed to [`~transformers.Trainer`].
    """

    args_class: type[TrainingArguments] = TrainingArguments

    def __init__(self, model=None, args: TrainingArguments | None = None, **kwargs):
        args = self.args_class(output_dir="trainer_output") if args is None else args
        if not isinstance(args, self.args_class):
            raise TypeError(
                f"{type(self).__name__} reads its settings from a {self.args_class.__name__}, got {type(args).__name__}."
            )
        super().__init__(model, args, **kwargs)

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """Adds the samples the collator skipped so far (its `skipped` counts by reason) to the training logs:
        `skipped_samples` in all, and `skipped_<reason>` for each reason that occurred."""
        skipped = getattr(self.data_collator, "skipped", None)  # CLIPCollator's and NevaCollator's; not the default's
        if skipped is not None and "loss" in logs:
            counts = {f"skipped_{reason}": float(count) for reason, count in skipped.items() if count}
            logs = {**logs, "skipped_samples": float(sum(skipped.values())), **counts}
        super().log(logs, *args, **kwargs)

    def record_run(self, datasets: list[str] | None = None, recipe: str | Path | None = None) -> Path | None:
        """Writes the run's record (`training_run.json`, and the recipe as `recipe.yaml`) into `output_dir`, on the
        main process. The card is rendered from it: call it before `save_model` or a push."""
        return record_training_run(self, self.args.output_dir, datasets, recipe)

    def create_model_card(self, **kwargs) -> None:
        """hfmm's card (config, training run, eval results) instead of the generic one: `push_to_hub` uploads it."""
        from hfmm.hub.cards import trainer_model_card

        trainer_model_card(self, **kwargs)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if not self.is_fsdp_enabled:
            return super().save_model(output_dir, _internal_call)
        if _internal_call:
            return  # a checkpoint: the FSDP model (and optimizer) files written next to it are what resuming reads
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        state_dict = gathered_state_dict(self)
        if self.args.should_save:
            model = self.accelerator.unwrap_model(self.model, keep_torch_compile=False)
            with as_own_class(model):
                model.save_pretrained(output_dir, state_dict=state_dict)
            if self.processing_class is not None:
                self.processing_class.save_pretrained(output_dir)
            torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)
