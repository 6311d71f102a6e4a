"""CLIPTrainer on fixed random samples, alone or under torchrun; saves the first step's gradients and final params.

    python train_worker.py OUT [--dtype float64] [--steps 2] [--batch 8] [--mode auto] [--optim sgd]
                           [--save-steps N] [--crash-after N] [--resume CHECKPOINT] [--sampling sequential]

Writes OUT/rank{r}.pt with {"grads": first step's gradients (after backward, before the optimizer step),
"params": final parameters}.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conftest import tiny_clip_config  # noqa: E402

from hfmm import HfmmCLIPModel  # noqa: E402
from hfmm.training.clip.arguments import CLIPTrainingArguments  # noqa: E402
from hfmm.training.clip.trainer import CLIPTrainer  # noqa: E402


class Samples(torch.utils.data.Dataset):
    def __init__(self, dtype, n=32):
        generator = torch.Generator().manual_seed(1)
        self.pixels = torch.randn(n, 3, 30, 30, generator=generator, dtype=dtype)
        self.ids = torch.randint(1, 49000, (n, 10), generator=generator)
        self.ids[:, 0], self.ids[:, -1] = 49406, 49407

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"pixel_values": self.pixels[i], "input_ids": self.ids[i]}


class Recorder(TrainerCallback):
    """Keeps the first step's gradients; optionally dies (no clean-up at all) after a given step."""

    def __init__(self, crash_after: int | None):
        self.grads, self.crash_after = None, crash_after

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}

    def on_step_end(self, args, state, control, **kwargs):
        if self.crash_after is not None and state.global_step == self.crash_after:
            os._exit(3)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--optim", default="sgd")
    parser.add_argument("--save-steps", type=int, default=None)
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--sampling", default="sequential")
    parser.add_argument("--grad-cache", type=int, default=None)
    opts = parser.parse_args()
    dtype = getattr(torch, opts.dtype)
    torch.manual_seed(0)
    model = HfmmCLIPModel(tiny_clip_config()).to(dtype)
    args = CLIPTrainingArguments(
        output_dir=str(opts.out / "run"),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps,
        optim=opts.optim,
        learning_rate=0.1 if opts.optim == "sgd" else 1e-3,
        lr_scheduler_type="constant" if opts.optim == "sgd" else "cosine",
        max_grad_norm=0.0,
        dataloader_drop_last=True,
        train_sampling_strategy=opts.sampling,
        logging_steps=1,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=0,
        loss_mode=opts.mode,
        grad_cache_chunk_size=opts.grad_cache,
    )
    recorder = Recorder(opts.crash_after)
    trainer = CLIPTrainer(
        model=model,
        args=args,
        train_dataset=Samples(dtype),
        callbacks=[recorder],
    )
    trainer.train(resume_from_checkpoint=opts.resume)
    params = {n: p.detach().clone() for n, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}
    torch.save(
        {"grads": recorder.grads, "params": params, "log": trainer.state.log_history},
        opts.out / f"rank{args.process_index}.pt",
    )


if __name__ == "__main__":
    main()
