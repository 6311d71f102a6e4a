"""NevaTrainer on a saved tiny NeVA, alone or under torchrun; saves the first step's gradients.

    python neva_train_worker.py MODEL DATA OUT [--dtype float64] [--batch 4] [--group]

The body is stage 2's (`hfmm.training.neva.recipe` with stage=2): `load_neva` with the tower frozen,
`build_conversation_dataset`, `NevaCollator`, `NevaTrainer`; one SGD step. Writes OUT/rank{r}.pt with
{"grads": first step's gradients (after backward, before the optimizer step), "modalities": per device batch of
this rank, whether each sample had an image}.
"""

import argparse
from pathlib import Path

import torch
from transformers import TrainerCallback

from hfmm.training.neva.arguments import NevaModelArguments, NevaTrainingArguments
from hfmm.training.neva.data import NevaCollator, build_conversation_dataset
from hfmm.training.neva.model import load_neva
from hfmm.training.neva.trainer import NevaTrainer


class Recorder(TrainerCallback):
    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--group", action="store_true")
    opts = parser.parse_args()
    model, processor = load_neva(NevaModelArguments(model_name_or_path=str(opts.model), freeze_vision_tower=True))
    model = model.to(getattr(torch, opts.dtype))
    dataset = build_conversation_dataset(opts.data, processor, image_folder=opts.data.parent)
    args = NevaTrainingArguments(
        output_dir=str(opts.out / "run"), use_cpu=True, report_to=[], per_device_train_batch_size=opts.batch,
        max_steps=1, optim="sgd", learning_rate=0.1, lr_scheduler_type="constant", max_grad_norm=0.0,
        train_sampling_strategy="sequential", remove_unused_columns=False, save_strategy="no", disable_tqdm=True,
        seed=0, group_by_modality_length=opts.group,
    )  # fmt: skip
    recorder = Recorder()
    trainer = NevaTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=NevaCollator(processor.tokenizer.pad_token_id),
        callbacks=[recorder],
    )
    image_id = processor.image_token_id
    modalities = [(batch["input_ids"] == image_id).any(dim=1).tolist() for batch in trainer.get_train_dataloader()]
    trainer.train()
    torch.save({"grads": recorder.grads, "modalities": modalities}, opts.out / f"rank{args.process_index}.pt")


if __name__ == "__main__":
    main()
