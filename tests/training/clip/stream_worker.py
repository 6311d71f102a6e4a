"""CLIPTrainer on streamed webdataset shards, alone or under torchrun; records the sample keys each step trains on.

    python stream_worker.py OUT SHARDS [--steps N] [--batch 4] [--workers 2] [--seed 0] [--epochs 1] [--resampled]
                            [--train-num-samples N] [--save-steps N] [--crash-after N] [--resume CHECKPOINT]

Appends one JSON line per training step to OUT/keys-rank{r}.jsonl: {"step": global step (1-based), "keys": [...]}.
The keys are carried from the shards to the batch by the collator and read where the Trainer trains on the batch.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conftest import tiny_clip_config  # noqa: E402

from hfmm import HfmmCLIPModel  # noqa: E402
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor  # noqa: E402
from hfmm.training.clip.arguments import CLIPDataArguments, CLIPTrainingArguments  # noqa: E402
from hfmm.training.clip.data import CLIPCollator, build_train_dataset, configure_streaming  # noqa: E402
from hfmm.training.clip.trainer import CLIPTrainer  # noqa: E402


class KeyedCollator(CLIPCollator):
    """CLIPCollator's batch plus the keys of its samples (the test data has no bad samples to replace)."""

    def __call__(self, features):
        return {**super().__call__(features), "keys": [f["__key__"] for f in features]}


class KeyRecordingTrainer(CLIPTrainer):
    def __init__(self, *args, log_path: Path, crash_after: int | None, **kwargs):
        super().__init__(*args, **kwargs)
        self.log_path, self.crash_after = log_path, crash_after

    def training_step(self, model, inputs, num_items_in_batch=None):
        # A crash lands after the previous step's checkpoint was written, before this step trains.
        if self.crash_after is not None and self.state.global_step == self.crash_after:
            os._exit(3)
        with open(self.log_path, "a") as log:
            log.write(json.dumps({"step": self.state.global_step + 1, "keys": inputs["keys"]}) + "\n")
        return super().training_step(model, inputs, num_items_in_batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("shards")
    parser.add_argument("--steps", type=int, default=-1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resampled", action="store_true")
    parser.add_argument("--train-num-samples", type=int, default=None)
    parser.add_argument("--save-steps", type=int, default=None)
    parser.add_argument("--crash-after", type=int, default=None)
    parser.add_argument("--resume", default=None)
    opts = parser.parse_args()
    args = CLIPTrainingArguments(
        output_dir=str(opts.out / "run"),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=opts.batch,
        max_steps=opts.steps,
        num_train_epochs=opts.epochs,
        optim="sgd",
        learning_rate=0.01,
        dataloader_num_workers=opts.workers,
        save_strategy="steps" if opts.save_steps else "no",
        save_steps=opts.save_steps or 500,
        remove_unused_columns=False,
        disable_tqdm=True,
        seed=opts.seed,
    )
    data_args = CLIPDataArguments(
        train_data=opts.shards,
        streaming=True,
        dataset_resampled=opts.resampled,
        train_num_samples=opts.train_num_samples,
    )
    configure_streaming(args, data_args)
    processor = HfmmCLIPProcessor.from_vision_config(tiny_clip_config().vision_config)
    trainer = KeyRecordingTrainer(
        model=HfmmCLIPModel(tiny_clip_config()),
        args=args,
        train_dataset=build_train_dataset(data_args, processor, seed=args.seed),
        data_collator=KeyedCollator(),
        log_path=opts.out / f"keys-rank{args.process_index}.jsonl",
        crash_after=opts.crash_after,
    )
    trainer.train(resume_from_checkpoint=opts.resume)


if __name__ == "__main__":
    main()
