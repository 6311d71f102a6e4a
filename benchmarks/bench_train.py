"""Training throughput: hfmm's `CLIPTrainer` vs OpenCLIP's own loop (`open_clip_train.main`), same small CLIP.

    python benchmarks/bench_train.py [--batch 64] [--steps 12] [--rounds 3]

The model is ViT-B-32's widths with 4 layers per tower, fp32, CPU, one process, synthetic data of the same kind on
both sides (OpenCLIP's `--dataset-type synthetic`: a constant image through the eval preprocessing and a constant
caption). Each run is a fresh subprocess; throughput is `batch x (steps - 2) / (t(steps) - t(2))`, so start-up,
model building and the first steps cancel out. hfmm and OpenCLIP runs alternate; the median of `--rounds` is taken.
"""

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402

MODEL_NAME = "bench-ViT-B-32-4L"
OPEN_CLIP_CONFIG = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 4},
}

OPEN_CLIP_RUN = """
import sys, open_clip
open_clip.add_model_config(sys.argv[1])
from open_clip_train.main import main
main(sys.argv[2:])
"""

HFMM_RUN = """
import sys, torch
from PIL import Image
from hfmm.training.clip.arguments import CLIPTrainingArguments
from hfmm.training.clip.model import preset_config
from hfmm.training.clip.trainer import CLIPTrainer
from hfmm.models.clip import HfmmCLIPModel
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

out, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
overrides = {"vision_config": {"num_hidden_layers": 4}, "text_config": {"num_hidden_layers": 4}}
config = preset_config("ViT-B-32", overrides)
processor = HfmmCLIPProcessor.from_vision_config(config.vision_config)

class Synthetic(torch.utils.data.Dataset):  # OpenCLIP's SyntheticDataset, through hfmm's processor
    image = Image.new("RGB", (224, 224))
    def __len__(self):
        return steps * batch
    def __getitem__(self, i):
        pixels = processor.image_processor(self.image, return_tensors="pt")["pixel_values"][0]
        ids = processor.tokenizer("Dummy caption", padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt")["input_ids"][0]
        return {"pixel_values": pixels, "input_ids": ids}

torch.manual_seed(0)
args = CLIPTrainingArguments(output_dir=out, use_cpu=True, report_to=[], per_device_train_batch_size=batch,
                             max_steps=steps, learning_rate=5e-4, weight_decay=0.2, adam_beta2=0.98, warmup_steps=2,
                             max_grad_norm=0.0, dataloader_drop_last=True, save_strategy="no", logging_steps=1000,
                             remove_unused_columns=False, disable_tqdm=True)
CLIPTrainer(model=HfmmCLIPModel(config), args=args, train_dataset=Synthetic()).train()
"""


def open_clip_command(config_dir: Path, logs: Path, steps: int, batch: int) -> list[str]:
    flags = [
        "--model", MODEL_NAME, "--dataset-type", "synthetic", "--train-num-samples", str(steps * batch),
        "--batch-size", str(batch), "--epochs", "1", "--workers", "0", "--precision", "fp32", "--lr", "5e-4",
        "--wd", "0.2", "--beta2", "0.98", "--warmup", "2", "--save-frequency", "0", "--zeroshot-frequency", "0",
        "--val-frequency", "0", "--logs", str(logs), "--name", f"run-{time.time_ns()}", "--report-to", "",
        "--log-every-n-steps", "1000", "--device", "cpu",
    ]  # fmt: skip
    return [sys.executable, "-c", OPEN_CLIP_RUN, str(config_dir), *flags]


def hfmm_command(work: Path, steps: int, batch: int) -> list[str]:
    return [sys.executable, "-c", HFMM_RUN, str(work / f"hfmm-{time.time_ns()}"), str(steps), str(batch)]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    rates = {"hfmm": [], "open_clip": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "configs").mkdir()
        (work / "configs" / f"{MODEL_NAME}.json").write_text(json.dumps(OPEN_CLIP_CONFIG))
        commands = {
            "hfmm": lambda steps: hfmm_command(work, steps, args.batch),
            "open_clip": lambda steps: open_clip_command(work / "configs", work / "logs", steps, args.batch),
        }
        for round_ in range(args.rounds):
            for name, command in commands.items():
                short, long = timed(command(2)), timed(command(args.steps))
                rates[name].append(args.batch * (args.steps - 2) / (long - short))
                print(f"round {round_}: {name} {rates[name][-1]:.1f} samples/s", flush=True)
    hfmm_rate, open_clip_rate = statistics.median(rates["hfmm"]), statistics.median(rates["open_clip"])
    table = "\n".join([
        "| loop | samples/s (median) | runs | hfmm ÷ this |",
        "|---|---|---|---|",
        f"| hfmm CLIPTrainer | {hfmm_rate:.1f} | {', '.join(f'{r:.1f}' for r in rates['hfmm'])} | 1.00× |",
        f"| open_clip_train.main | {open_clip_rate:.1f} | {', '.join(f'{r:.1f}' for r in rates['open_clip'])} | "
        f"{hfmm_rate / open_clip_rate:.2f}× |",
    ])  # fmt: skip
    print(table)
    if not args.no_write:
        header = (
            f"## CLIP training throughput (ViT-B-32 widths, 4 layers, batch {args.batch}, fp32, one process)\n\n"
            f"`python benchmarks/bench_train.py --batch {args.batch} --steps {args.steps} --rounds {args.rounds}` — "
            f"{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; throughput from the time difference of a {args.steps}-step and a 2-step run "
            "(fresh processes), median of alternating rounds.\n"
        )
        write_section(header + "\n" + table, "bench_train")


if __name__ == "__main__":
    main()
