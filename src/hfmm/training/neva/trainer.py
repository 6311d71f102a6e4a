"""`NevaTrainer`: transformers' `Trainer` with LLaVA's two additions, a projector learning rate and modality-grouped
batches; its settings are `NevaTrainingArguments`."""

from hfmm.training.arguments import RecipeError
from hfmm.training.neva.arguments import NevaTrainingArguments
from hfmm.training.neva.data import ModalityLengthGroupedSampler, modality_lengths
from hfmm.training.trainer import HfmmTrainer

QLORA_UNDER_FSDP = (
    "QLoRA (`quantization:`) is not supported under FSDP: sharding bitsandbytes' 4-bit weights is untested here "
    "(CPU-only bitsandbytes); use DDP (recipes/accelerate/ddp.yaml) or drop `quantization:` for LoRA."
)


class NevaTrainer(HfmmTrainer):
    """Trainer for NeVA; batches are `NevaCollator`'s.

    Args:
        args (`NevaTrainingArguments`):
            Transformers' settings plus `projector_lr` (a separate learning rate for the projector, as LLaVA's LoRA
            recipe: 2e-5) and `group_by_modality_length` (LLaVA's modality-grouped batches, from the raw rows of
            `train_dataset`, a `build_conversation_dataset`).
        **kwargs:
            Passed to [`~transformers.Trainer`].
    """

    args_class = NevaTrainingArguments

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.is_fsdp_enabled and getattr(self.model, "is_loaded_in_4bit", False):
            raise RecipeError(QLORA_UNDER_FSDP)
        self.modality_lengths = modality_lengths(self.train_dataset) if self.args.group_by_modality_length else None

    def _get_train_sampler(self, train_dataset=None):
        if self.modality_lengths is None:
            return super()._get_train_sampler(train_dataset)
        return ModalityLengthGroupedSampler(
            self.modality_lengths,
            batch_size=self.args.train_batch_size * self.args.gradient_accumulation_steps,
            world_size=self.args.world_size,
            seed=self.args.seed,
        )

    def compute_loss(self, model, inputs, *args, **kwargs):
        # Training never reads a key-value cache; one written in `forward` would also be written a second time when
        # FSDP's activation checkpointing recomputes a decoder layer in backward (doubling its keys).
        return super().compute_loss(model, {**inputs, "use_cache": False}, *args, **kwargs)

    def create_optimizer(self, model=None):
        if self.args.projector_lr is None:
            return super().create_optimizer(model)
        model = model if model is not None else self.model
        projector, rest = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                (projector if "multi_modal_projector" in name else rest).append(parameter)
        optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        groups = [{"params": rest}, {"params": projector, "lr": self.args.projector_lr}]
        self.optimizer = optimizer_cls([g for g in groups if g["params"]], **kwargs)
        return self.optimizer
