"""What hfmm's trainers share: hfmm's model card, and a saved model that is always a plain, loadable folder.

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

import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME


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
    """`Trainer` whose `save_model` writes a plain folder whatever wraps the model, and whose card is hfmm's."""

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
