"""Contrastive loss on one CUDA GPU: hfmm `clip_loss` (two tile sizes) vs OpenCLIP `ClipLoss`, forward + backward.

    python benchmarks/bench_loss_cuda.py                       # prints a Markdown table; --json FILE also saves it
    python benchmarks/bench_loss_cuda.py --sizes 8192,16384 --repeats 3

fp32 embeddings (d = 512, unit norm), logit scale 20, TF32 off (full fp32 matmuls on both sides). Every point runs in
a fresh subprocess: two warm-up steps, then the median of `--repeats` forward + backward steps timed with CUDA
events, and the peak of `torch.cuda.max_memory_allocated` above the inputs. A point that runs out of memory is
reported as OOM. hfmm and OpenCLIP points alternate. Needs a CUDA GPU and `open_clip_torch`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 512


def measure(impl: str, batch: int, tile: int, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    if impl == "hfmm":
        sys.path.insert(0, str(ROOT / "src"))
        from hfmm.losses import clip_loss

        def step(image, text, scale):
            return clip_loss(image, text, scale, mode="local", tile_size=tile)
    else:
        from open_clip.loss import ClipLoss

        criterion = ClipLoss()

        def step(image, text, scale):
            return criterion(image, text, scale)

    generator = torch.Generator(device="cuda").manual_seed(0)
    image = F.normalize(torch.randn(batch, DIM, device="cuda", generator=generator), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(batch, DIM, device="cuda", generator=generator), dim=-1).requires_grad_()
    scale = torch.tensor(20.0, device="cuda", requires_grad=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    try:
        for i in range(2 + repeats):
            image.grad = text.grad = scale.grad = None
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step(image, text, scale).backward()
            end.record()
            torch.cuda.synchronize()
            if i >= 2:
                times.append(start.elapsed_time(end) / 1000)
    except torch.OutOfMemoryError:
        return {"impl": impl, "batch": batch, "tile": tile, "oom": True}
    peak = torch.cuda.max_memory_allocated() - base
    return {"impl": impl, "batch": batch, "tile": tile, "seconds": statistics.median(times), "peak_mib": peak / 2**20}


def run_point(impl: str, batch: int, tile: int, repeats: int) -> dict:
    command = [sys.executable, __file__, "--point", impl, str(batch), str(tile), "--repeats", str(repeats)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{impl} at batch {batch} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(points: list[dict], tiles: list[int], device: str) -> str:
    def cell(point: dict | None) -> tuple[str, str]:
        if point is None:
            return "–", "–"
        if point.get("oom"):
            return "OOM", "OOM"
        return f"{point['seconds']:.3f}", f"{point['peak_mib']:.0f}"

    header = ["B", "OpenCLIP s", "OpenCLIP peak MiB"]
    for tile in tiles:
        header += [f"hfmm tile {tile} s", f"hfmm tile {tile} peak MiB"]
    lines = [f"Device: {device}. fp32, d = {DIM}, TF32 off; peak = CUDA memory above the inputs.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for batch in sorted({p["batch"] for p in points}):
        row = [str(batch), *cell(next((p for p in points if p["batch"] == batch and p["impl"] == "open_clip"), None))]
        for tile in tiles:
            row += cell(
                next((p for p in points if p["batch"] == batch and p["impl"] == "hfmm" and p["tile"] == tile), None)
            )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--point", nargs=3, metavar=("IMPL", "BATCH", "TILE"), help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="8192,16384,32768,65536,131072")
    parser.add_argument("--tiles", default="1024,8192")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    opts = parser.parse_args()
    if opts.point:
        impl, batch, tile = opts.point[0], int(opts.point[1]), int(opts.point[2])
        print(json.dumps(measure(impl, batch, tile, opts.repeats)))
        return
    import torch

    tiles = [int(t) for t in opts.tiles.split(",")]
    points = []
    for batch in (int(s) for s in opts.sizes.split(",")):
        skip_openclip = any(p["impl"] == "open_clip" and p.get("oom") for p in points)
        if not skip_openclip:
            points.append(run_point("open_clip", batch, 0, opts.repeats))
        for tile in tiles:
            points.append(run_point("hfmm", batch, tile, opts.repeats))
        print(json.dumps(points[-1 - len(tiles) :]), flush=True)
    device = torch.cuda.get_device_name()
    print(table(points, tiles, device))
    if opts.json:
        opts.json.write_text(json.dumps({"device": device, "points": points}, indent=1))


if __name__ == "__main__":
    main()
