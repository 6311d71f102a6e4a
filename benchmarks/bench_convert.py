"""Peak memory and wall time of `convert/open_clip_to_hfmm.py` on a full-size ViT-L-14 checkpoint.

    python benchmarks/bench_convert.py [--rounds 3] [--model ViT-L-14] [--no-write]

Writes a hub-style folder once (`open_clip_config.json` + `open_clip_model.safetensors`, random fp32 weights, about
1.7 GB) into a temporary folder, then alternates, `--rounds` times: a plain `shutil.copyfile` of the checkpoint, and a
fresh `python convert/open_clip_to_hfmm.py SRC DST --no-verify --force` subprocess. The child's peak RSS comes from
`wait4` (its own `ru_maxrss`); the baseline is the peak RSS of a process that only imports torch and hfmm. Medians are
reported. On Linux a child's `ru_maxrss` starts from the RSS of the process that forked it, so this parent stays small:
it imports neither torch nor hfmm, and a child writes the checkpoint. Targets: peak RSS above baseline <= 1.25x the checkpoint size, conversion wall time <= 3x the copy.
Writes its table between the bench_convert markers of BENCHMARKS.md.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "import torch, hfmm"
# The child times the conversion itself (`main`, what `convert/open_clip_to_hfmm.py` runs), apart from interpreter
# start-up and imports (the converter's own included: the command imports it when run).
CHILD = """
import json, sys, time
start = time.perf_counter()
import torch, hfmm
import hfmm.conversion.open_clip.checkpoint
from hfmm.conversion.commands import open_clip_to_hfmm
imported = time.perf_counter()
code = open_clip_to_hfmm.main({argv!r})
done = time.perf_counter()
print(json.dumps({{"rc": code, "imports_s": imported - start, "convert_s": done - imported}}))
"""


WRITE = """
import json, sys, torch, open_clip
from pathlib import Path
from accelerate import init_empty_weights
from safetensors.torch import save_file
folder, name = Path(sys.argv[1]), sys.argv[2]
cfg = open_clip.get_model_config(name)
with init_empty_weights(include_buffers=False):
    shapes = {k: v.shape for k, v in open_clip.CLIP(**cfg).state_dict().items()}
generator = torch.Generator().manual_seed(0)
tensors = {key: torch.randn(shape, generator=generator) * 0.02 for key, shape in shapes.items()}
(folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
save_file(tensors, folder / "open_clip_model.safetensors")
"""


def run_child(code: str, *args: str) -> tuple[dict, int, float]:
    """Runs `python -c code args`; returns its last stdout line as JSON (or {}), its peak RSS in bytes and wall time."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage (Popen.wait would reap it first)
        wall = time.perf_counter() - start
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise RuntimeError(f"child failed: {stderr[-2000:]}")
    lines = stdout.strip().splitlines()
    report = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return report, usage.ru_maxrss * 1024, wall  # ru_maxrss is in KiB on Linux


def measure(folder: Path, rounds: int) -> dict:
    weights = folder / "open_clip_model.safetensors"
    dst = folder.parent / "converted"
    argv = [str(folder), str(dst), "--no-verify", "--force"]
    child = CHILD.format(argv=argv)
    rows = {"baseline_rss": [], "peak_rss": [], "copy_s": [], "convert_s": [], "child_s": [], "imports_s": []}
    for _ in range(rounds):
        start = time.perf_counter()
        shutil.copyfile(weights, folder.parent / "copy.safetensors")
        rows["copy_s"].append(time.perf_counter() - start)
        (folder.parent / "copy.safetensors").unlink()
        _, baseline, _ = run_child(BASELINE)
        rows["baseline_rss"].append(baseline)
        shutil.rmtree(dst, ignore_errors=True)  # as the copy, the conversion writes to a new path
        report, peak, wall = run_child(child)
        if report.get("rc") != 0:
            raise RuntimeError(f"conversion failed: {report}")
        rows["peak_rss"].append(peak)
        rows["child_s"].append(wall)
        rows["convert_s"].append(report["convert_s"])
        rows["imports_s"].append(report["imports_s"])
    medians = {key: statistics.median(values) for key, values in rows.items()}
    medians["size"] = weights.stat().st_size
    return medians


def table(m: dict) -> str:
    gib = 2**30
    above = m["peak_rss"] - m["baseline_rss"]
    rss_ratio, time_ratio = above / m["size"], m["convert_s"] / m["copy_s"]
    return "\n".join(
        [
            "| measure | value | target | met |",
            "|---|---|---|---|",
            f"| checkpoint size | {m['size'] / gib:.2f} GiB | | |",
            f"| baseline RSS (import torch, hfmm) | {m['baseline_rss'] / gib:.2f} GiB | | |",
            f"| converter peak RSS | {m['peak_rss'] / gib:.2f} GiB | | |",
            f"| peak RSS above baseline ÷ checkpoint size | {rss_ratio:.2f}× | ≤ 1.25× | {'yes' if rss_ratio <= 1.25 else 'no'} |",
            f"| `shutil.copyfile` of the checkpoint | {m['copy_s']:.2f} s | | |",
            f"| conversion (`main()`, after imports) | {m['convert_s']:.2f} s | | |",
            f"| conversion ÷ copy | {time_ratio:.2f}× | ≤ 3× | {'yes' if time_ratio <= 3 else 'no'} |",
            f"| whole child process (start-up + imports {m['imports_s']:.1f} s + conversion) | {m['child_s']:.2f} s | | |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="ViT-L-14", help="open_clip architecture of the random checkpoint")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_convert-") as tmp:
        folder = Path(tmp) / "src"
        folder.mkdir()
        run_child(WRITE, str(folder), args.model)
        parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result = table(measure(folder, args.rounds))
    if parent_rss > 200 * 2**20:
        raise RuntimeError(
            f"the parent holds {parent_rss / 2**20:.0f} MiB, which its children's ru_maxrss would inherit"
        )
    print(result)
    if not args.no_write:
        import torch

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_inference import write_section  # one writer of BENCHMARKS.md sections

        header = (
            f"## Checkpoint conversion ({args.model} OpenCLIP → hfmm, fp32, `--no-verify`)\n\n"
            f"`python benchmarks/bench_convert.py --rounds {args.rounds}` — {datetime.date.today()}, "
            f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}; median of {args.rounds} "
            "alternating rounds (copy, then a fresh converter process). Peak RSS is the child's own `ru_maxrss`.\n"
        )
        write_section(header + "\n" + result, "bench_convert")


if __name__ == "__main__":
    main()
