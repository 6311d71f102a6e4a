"""Image and text embeddings per second: hfmm vs open_clip vs transformers `CLIPModel`, same ViT-B/32 weights.

    python benchmarks/bench_inference.py [--batch 32] [--rounds 7]

One process; the three implementations run alternately in each round (so drift hits all alike) and the median
over rounds is reported. fp32, `torch.inference_mode`, default attention (sdpa for both transformers models).
Writes its table between the bench_inference markers of BENCHMARKS.md.
"""

import argparse
import datetime
import platform
import statistics
import time
from pathlib import Path

import open_clip
import torch

import hfmm
from hfmm.conversion.open_clip.mapping import config_from_open_clip, convert_open_clip_state_dict
from hfmm.conversion.transformers.clip_mapping import to_transformers_model

ROOT = Path(__file__).resolve().parents[1]


def build_models():
    torch.manual_seed(0)
    reference = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    config = config_from_open_clip(open_clip.get_model_config("ViT-B-32"))
    model = hfmm.HfmmCLIPModel(config).eval()
    model.load_state_dict(convert_open_clip_state_dict(reference.state_dict()))
    native = to_transformers_model(model)
    native.set_attn_implementation("sdpa")
    return {"hfmm": model, "open_clip": reference, "transformers": native}


def encoders(name, model):
    if name == "open_clip":
        return model.encode_image, model.encode_text
    return (
        lambda x: model.get_image_features(pixel_values=x).pooler_output,
        lambda t: model.get_text_features(input_ids=t).pooler_output,
    )


def timed(fn, inputs) -> float:
    start = time.perf_counter()
    fn(inputs)
    return time.perf_counter() - start


def measure(models, batch: int, rounds: int) -> dict:
    pixels = torch.randn(batch, 3, 224, 224)
    texts = open_clip.get_tokenizer("ViT-B-32")([f"a photo of a number {i}, rendered in colour" for i in range(batch)])
    fns = {name: encoders(name, model) for name, model in models.items()}
    times = {(name, kind): [] for name in models for kind in ("image", "text")}
    with torch.inference_mode():
        for image_fn, text_fn in fns.values():  # warm-up
            image_fn(pixels), text_fn(texts)
        for _ in range(rounds):
            for name, (image_fn, text_fn) in fns.items():
                times[(name, "image")].append(timed(image_fn, pixels))
                times[(name, "text")].append(timed(text_fn, texts))
    return {key: batch / statistics.median(values) for key, values in times.items()}


def table(rates: dict, batch: int, rounds: int) -> str:
    lines = [
        "| implementation | images/s | texts/s | hfmm ÷ this (images) | hfmm ÷ this (texts) |",
        "|---|---|---|---|---|",
    ]
    for name in ("hfmm", "open_clip", "transformers"):
        image, text = rates[(name, "image")], rates[(name, "text")]
        lines.append(
            f"| {name} | {image:.1f} | {text:.1f} | {rates[('hfmm', 'image')] / image:.2f}× | "
            f"{rates[('hfmm', 'text')] / text:.2f}× |"
        )
    return "\n".join(lines)


def write_section(body: str, marker: str) -> None:
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    section = f"{start}\n{body}\n{end}"
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    rates = measure(build_models(), args.batch, args.rounds)
    result = table(rates, args.batch, args.rounds)
    print(result)
    if not args.no_write:
        header = (
            f"## CLIP inference throughput (ViT-B/32, batch {args.batch}, fp32)\n\n"
            f"`python benchmarks/bench_inference.py --batch {args.batch} --rounds {args.rounds}` — "
            f"{datetime.date.today()}, {platform.machine()} CPU with {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}; median of {args.rounds} alternating rounds, same random weights.\n"
        )
        write_section(header + "\n" + result, "bench_inference")


if __name__ == "__main__":
    main()
