"""Greedy generation speed: hfmm's NeVA vs transformers' `LlavaForConditionalGeneration`, same weights.

    python benchmarks/bench_generate.py [--rounds 5] [--new-tokens 64] [--no-write]

A small NeVA (CLIP ViT-B/32-like tower with 4 layers at 224 px: 49 image tokens; LLaMA with hidden 512, 8 layers,
8 heads, vocabulary 32064; mlp2x_gelu projector), fp32, batch 1, one image, a 24-token prompt, greedy decoding of
exactly `--new-tokens` tokens with the KV cache. Both models hold the same random weights and are timed in the same
process, alternating, after one warm-up each; tokens/s = new tokens / wall time of `generate` (prefill included).
Writes its table between the bench_generate markers of BENCHMARKS.md.
"""

import argparse
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import write_section  # noqa: E402

from hfmm import NevaConfig, NevaForConditionalGeneration  # noqa: E402

VISION = dict(model_type="clip_vision_model", hidden_size=768, intermediate_size=3072, num_hidden_layers=4,
              num_attention_heads=12, image_size=224, patch_size=32, hidden_act="quick_gelu")  # fmt: skip
TEXT = dict(model_type="llama", hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
            vocab_size=32064, max_position_embeddings=2048)  # fmt: skip
IMAGE_TOKEN = 32000


def build() -> tuple[NevaForConditionalGeneration, LlavaForConditionalGeneration]:
    torch.manual_seed(0)
    neva = NevaForConditionalGeneration(
        NevaConfig(vision_config=VISION, text_config=TEXT, projector_type="mlp2x_gelu", image_token_id=IMAGE_TOKEN)
    ).eval()
    config = neva.config
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=VISION,
            text_config=TEXT,
            image_token_index=IMAGE_TOKEN,
            image_seq_length=config.image_seq_length,
        )
    ).eval()
    llava.load_state_dict(neva.state_dict(), strict=True)
    return neva, llava


def timed(model, inputs: dict, new_tokens: int) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    neva, llava = build()
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(3, 32000, (24,), generator=generator)
    image = torch.full((neva.config.image_seq_length,), IMAGE_TOKEN)
    inputs = {
        "input_ids": torch.cat([text[:4], image, text[4:]]).unsqueeze(0),
        "pixel_values": torch.randn(1, 3, 224, 224, generator=generator),
    }
    models = {"hfmm NeVA": neva, "transformers Llava": llava}
    outputs = {name: timed(model, inputs, 2)[1] for name, model in models.items()}  # warm-up
    rates = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            seconds, outputs[name] = timed(model, inputs, args.new_tokens)
            rates[name].append(args.new_tokens / seconds)
    same = torch.equal(outputs["hfmm NeVA"], outputs["transformers Llava"])
    ours = statistics.median(rates["hfmm NeVA"])
    rows = [
        "| implementation | tokens/s (median) | runs | hfmm ÷ this |",
        "|---|---|---|---|",
        *(
            f"| {name} | {statistics.median(r):.1f} | {', '.join(f'{x:.1f}' for x in r)} | "
            f"{ours / statistics.median(r):.2f}× |"
            for name, r in rates.items()
        ),
    ]
    table = "\n".join(rows) + f"\n\nGreedy tokens identical: {'yes' if same else 'NO'}."
    print(table)
    if not args.no_write:
        header = (
            f"## NeVA greedy generation ({args.new_tokens} new tokens, one image, batch 1, fp32)\n\n"
            f"`python benchmarks/bench_generate.py --rounds {args.rounds} --new-tokens {args.new_tokens}` — "
            f"{datetime.date.today()}, {platform.machine()} CPU, {torch.get_num_threads()} threads, torch "
            f"{torch.__version__}; same weights, one process, alternating runs after a warm-up, median. Model: CLIP "
            "ViT-B/32-like tower (4 layers, 49 image tokens), LLaMA hidden 512 × 8 layers, vocab 32064.\n"
        )
        write_section(header + "\n" + table, "bench_generate")


if __name__ == "__main__":
    main()
