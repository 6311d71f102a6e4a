"""Samples/s of the training data pipelines: hfmm's CLIP webdataset pipeline vs OpenCLIP's `get_wds_dataset`, and
hfmm's NeVA LLaVA-JSON pipeline.

    python benchmarks/bench_data.py [--samples 2048] [--shards 8] [--batch 64] [--rounds 3] [--quick] [--no-write]

Data: `--samples` JPEGs (256-640 px a side, quality 90, 5% greyscale) cut from scikit-image's sample photos with
random crops, resizes and colour jitter, each with a 10-25-word caption (and an img2dataset-style `.json`), written
into `--shards` webdataset shards in a temporary folder; the NeVA set is the same JPEGs as files plus a LLaVA JSON
of two-turn conversations.

CLIP rows (batch `--batch`, 224 px, ViT-B-32's processor; 0, 1 and 2 DataLoader workers):

- hfmm: `build_train_dataset(CLIPDataArguments(streaming=True, data_format="webdataset"))` (hfmm's `ShardStream`
  tar reader and shuffle buffer inside `datasets.IterableDataset.from_generator`, batched `IterableDataset.map` of
  `PairTransform`) + `CLIPCollator` in a torch DataLoader;
- hfmm transform on webdataset: the same `PairTransform` and `CLIPCollator`, fed by a `webdataset` pipeline (tar
  reader, shuffle buffer) with no `datasets` in between (to choose the reader by measurement);
- OpenCLIP: `open_clip_train.data.get_wds_dataset` with `image_transform(224, is_train=True)` (RandomResizedCrop
  scale (0.9, 1.0), as hfmm's default `rrc_scale`) and `open_clip.get_tokenizer("ViT-B-32")`.

Every pipeline reads the same shards and yields the same number of full batches per pass. A pass builds a fresh
loader (workers included); its rate counts the batches after the first `max(1, workers)` ones, from the arrival of
the last of those, so worker start-up and buffer filling are excluded. The pipelines alternate within each round;
the median over `--rounds` is reported. A cProfile of each pipeline with 0 workers says where the time goes.
Writes its section between the bench_data markers of BENCHMARKS.md.
"""

import argparse
import cProfile
import datetime
import functools
import gc
import io
import itertools
import json
import os
import platform
import pstats
import random
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import open_clip
import open_clip_train.data
import torch
import webdataset as wds
from open_clip_train.data import get_wds_dataset, group_by_keys_nothrow, log_and_continue
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader
from webdataset.tariterators import tar_file_expander, url_opener

from hfmm import HfmmCLIPConfig
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor
from hfmm.models.neva.processing_neva import NevaProcessor
from hfmm.training.clip.arguments import CLIPDataArguments
from hfmm.training.clip.data import (
    STREAMING_SHUFFLE_BUFFER,
    TRANSFORM_BATCH,
    WEBDATASET_IMAGE_KEYS,
    WEBDATASET_TEXT_KEY,
    CLIPCollator,
    PairLayout,
    PairTransform,
    build_train_dataset,
    train_image_transform,
)
from hfmm.training.neva.data import NevaCollator, build_conversation_dataset

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))  # the tiny NeVA processor of the tests
from bench_inference import write_section  # noqa: E402
from bench_loss import MAX_CONTENTION, _busy_seconds, _wait_until_idle  # noqa: E402
from neva_fixtures import tiny_image_processor, tiny_neva_config, tiny_tokenizer  # noqa: E402

# scikit-image photo -> what a caption may say about it
PHOTOS = {
    "astronaut": "an astronaut in a white space suit posing in front of the american flag",
    "coffee": "a cup of coffee with latte art on a saucer on a wooden table",
    "chelsea": "a tabby cat with green eyes looking to the side",
    "rocket": "a rocket on the launch pad against a blue sky",
    "hubble_deep_field": "a telescope image of many distant galaxies in deep space",
    "immunohistochemistry": "a microscope slide of stained tissue in brown and blue",
    "retina": "a medical photograph of the back of a human eye",
    "colorwheel": "a colour wheel with a smooth rainbow gradient",
    "camera": "a black and white photo of a man with a camera on a tripod",
    "coins": "old coins laid out on a dark background",
}
STYLES = ("a photo of", "a close-up photo of", "a cropped picture of", "an old picture of", "a bright image of")
EXTRAS = ("high resolution", "stock photo", "taken outdoors", "wallpaper", "for sale", "free download", "4k",
          "on display", "vintage", "trending", "detailed view", "editorial use")  # fmt: skip
QUESTIONS = ("What is shown in the image?", "Describe the colours of the image.", "Is this a photograph?")


# ---------------------------------------------------------------------------------------------------------------------
# Data: realistic JPEGs in webdataset shards, and the same images + LLaVA JSON for NeVA
# ---------------------------------------------------------------------------------------------------------------------


def _photos() -> dict[str, Image.Image]:
    import skimage.data

    return {name: Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in PHOTOS}


def _jittered(photo: Image.Image, rng: random.Random) -> Image.Image:
    """A random crop of `photo` resized to 256-640 px a side, with colour jitter; 5% come out greyscale."""
    width, height = photo.size
    crop_w, crop_h = int(width * rng.uniform(0.4, 1.0)), int(height * rng.uniform(0.4, 1.0))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    size = (rng.randint(256, 640), rng.randint(256, 640))
    image = photo.crop((left, top, left + crop_w, top + crop_h)).resize(size, Image.Resampling.BILINEAR)
    for enhance in (ImageEnhance.Color, ImageEnhance.Brightness, ImageEnhance.Contrast):
        image = enhance(image).enhance(rng.uniform(0.7, 1.3))
    return image.convert("L") if rng.random() < 0.05 else image


def _caption(name: str, rng: random.Random) -> str:
    extras = rng.sample(EXTRAS, rng.randint(0, 4))
    return " ".join([rng.choice(STYLES), PHOTOS[name], *extras]).replace(" a an ", " an ")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_data(folder: Path, samples: int, shards: int, seed: int = 0) -> list[dict]:
    """Writes `shards` tar shards and `images/{key}.jpg` into `folder`; returns one `{key, caption}` per sample."""
    rng, photos = random.Random(seed), _photos()
    (folder / "images").mkdir()
    rows, per_shard = [], -(-samples // shards)
    for shard in range(shards):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for index in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
                name = rng.choice(list(PHOTOS))
                key, caption, buffer = f"{index:08d}", _caption(name, rng), io.BytesIO()
                _jittered(photos[name], rng).save(buffer, "JPEG", quality=90)
                meta = {"key": key, "caption": caption, "status": "success"}
                for suffix, data in (
                    ("jpg", buffer.getvalue()),
                    ("txt", caption.encode()),
                    ("json", json.dumps(meta).encode()),
                ):
                    _add(tar, f"{key}.{suffix}", data)
                (folder / "images" / f"{key}.jpg").write_bytes(buffer.getvalue())
                rows.append({"key": key, "caption": caption})
    return rows


def write_conversations(path: Path, rows: list[dict], seed: int = 0) -> None:
    """LLaVA's JSON list: per image, a description turn and a short question turn."""
    rng = random.Random(seed)
    samples = [
        {
            "id": row["key"],
            "image": f"{row['key']}.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe the image briefly."},
                {"from": "gpt", "value": row["caption"].capitalize() + "."},
                {"from": "human", "value": rng.choice(QUESTIONS)},
                {"from": "gpt", "value": f"It is {row['caption']}."},
            ],
        }
        for row in rows
    ]
    path.write_text(json.dumps(samples))


# ---------------------------------------------------------------------------------------------------------------------
# Loaders: one fresh DataLoader per pass
# ---------------------------------------------------------------------------------------------------------------------


def clip_processor() -> HfmmCLIPProcessor:
    return HfmmCLIPProcessor.from_vision_config(HfmmCLIPConfig.from_preset("ViT-B-32").vision_config)


def hfmm_loader(folder: Path, processor, batch: int, workers: int) -> DataLoader:
    args = CLIPDataArguments(train_data=str(folder), streaming=True, data_format="webdataset")
    dataset = build_train_dataset(args, processor)
    return DataLoader(dataset, batch_size=batch, collate_fn=CLIPCollator(), num_workers=workers, drop_last=True)


def _transformed(rows, transform: PairTransform):
    """Rows -> examples through `transform`, `TRANSFORM_BATCH` rows per call as datasets' batched `map` does."""
    columns = transform.layout.columns
    chunk = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == TRANSFORM_BATCH:
            yield from _apply(transform, columns, chunk)
            chunk = []
    if chunk:
        yield from _apply(transform, columns, chunk)


def _apply(transform: PairTransform, columns: list[str], rows: list[dict]):
    out = transform({column: [row.get(column) for row in rows] for column in columns})
    yield from (dict(zip(out, values)) for values in zip(*out.values()))


def hfmm_on_webdataset_loader(folder: Path, processor, batch: int, workers: int) -> DataLoader:
    """hfmm's `PairTransform` + `CLIPCollator` fed by the `webdataset` library instead of datasets' reader."""
    args = CLIPDataArguments()
    layout = PairLayout(WEBDATASET_IMAGE_KEYS, WEBDATASET_TEXT_KEY)
    transform = PairTransform(layout, train_image_transform(processor.image_processor, args), processor.tokenizer)
    shards = sorted(str(path) for path in folder.glob("*.tar"))
    dataset = wds.DataPipeline(
        wds.SimpleShardList(shards),
        wds.shuffle(len(shards)),
        wds.split_by_worker,
        wds.tarfile_to_samples(),
        wds.shuffle(STREAMING_SHUFFLE_BUFFER),
        wds.decode(),  # text members to str; images stay bytes for the transform
        lambda rows: _transformed(rows, transform),
    )
    return DataLoader(dataset, batch_size=batch, collate_fn=CLIPCollator(), num_workers=workers, drop_last=True)


def _tarfile_to_samples_nothrow(src, handler=log_and_continue):
    # open_clip_train 3.3.0 with webdataset >= 0.2.96 fails at the end of each shard (KeyError 'fname': the new
    # end-of-shard marker `{}`); `eof_value=None` is the fix given in open_clip issue #935. Same work per sample.
    files = tar_file_expander(url_opener(src, handler=handler), handler=handler, eof_value=None)
    return group_by_keys_nothrow(files, handler=handler)


def open_clip_loader(folder: Path, processor, batch: int, workers: int) -> DataLoader:
    shards = sorted(folder.glob("*.tar"))
    args = SimpleNamespace(
        train_data="::".join(str(path) for path in shards),
        train_num_samples=_count_samples(shards),
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        batch_size=batch,
        workers=workers,
        world_size=1,
    )
    image = processor.image_processor
    aug_cfg = open_clip.AugmentationCfg(scale=(0.9, 1.0))  # OpenCLIP's default scale, and hfmm's `rrc_scale`
    preprocess = open_clip.image_transform(
        224, is_train=True, mean=image.image_mean, std=image.image_std, aug_cfg=aug_cfg
    )
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    open_clip_train.data.tarfile_to_samples_nothrow = _tarfile_to_samples_nothrow
    return get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer).dataloader


def _count_samples(shards: list[Path]) -> int:
    with tarfile.open(shards[0]) as tar:
        per_shard = sum(name.endswith(".jpg") for name in tar.getnames())
    return per_shard * len(shards)


CLIP_PIPELINES = {
    "hfmm build_train_dataset": hfmm_loader,
    "hfmm transform on a webdataset reader": hfmm_on_webdataset_loader,
    "OpenCLIP get_wds_dataset": open_clip_loader,
}


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def batch_size_of(batch) -> int:
    return len(batch["input_ids"]) if isinstance(batch, dict) else len(batch[0])


def timed_pass(loader: DataLoader, workers: int, batches: int) -> float:
    """Samples/s over `batches` batches of a fresh loader, counted after its first `max(1, workers)` batches (worker
    start-up, shuffle buffers filling). hfmm's stream is endless, hence the fixed count."""
    skip, samples, iterator = max(1, workers), 0, iter(loader)
    for index, batch in enumerate(itertools.islice(iterator, batches)):
        if index == skip - 1:
            start = time.perf_counter()
        elif index >= skip:
            samples += batch_size_of(batch)
    seconds = time.perf_counter() - start
    if index != batches - 1:
        raise RuntimeError(f"the loader gave {index + 1} batches, {batches} were asked for")
    del iterator, loader
    gc.collect()  # shuts the workers down (OpenCLIP's are persistent) before the next pass
    return samples / seconds


def _cpu_seconds() -> float:
    """CPU time of this process and its reaped children (DataLoader workers are joined when a pass ends)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measured_pass(make_loader, workers: int, batches: int, attempts: int) -> dict:
    """`timed_pass` re-run (up to `attempts` times) while other processes took over 5% of the CPUs."""
    for attempt in range(attempts):
        if attempt:
            _wait_until_idle(quiet=3.0, timeout=15.0)
        busy, own, start = _busy_seconds(), _cpu_seconds(), time.monotonic()
        rate = timed_pass(make_loader(), workers, batches)
        wall = time.monotonic() - start
        others = (_busy_seconds() - busy) - (_cpu_seconds() - own)
        contention = max(0.0, others / (wall * os.cpu_count()))
        if contention <= MAX_CONTENTION:
            break
    return {"rate": rate, "contention": contention}


# ---------------------------------------------------------------------------------------------------------------------
# NeVA: LLaVA JSON + image files, hfmm's conversation dataset and collator
# ---------------------------------------------------------------------------------------------------------------------


def neva_processor():
    """The tests' tiny NeVA processor (byte-level BPE, v1 template), at 224 px with 256 image tokens (patch 14)."""
    tokenizer = tiny_tokenizer()
    vision = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=224, patch_size=14)  # fmt: skip
    config = tiny_neva_config(tokenizer, vision_config=vision)
    return NevaProcessor.from_model_config(config, tiny_image_processor(224), tokenizer)


def neva_loader(folder: Path, processor, batch: int, workers: int) -> DataLoader:
    dataset = build_conversation_dataset(folder / "llava.json", processor, folder / "images", model_max_length=2048)
    return DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
        collate_fn=NevaCollator(processor.tokenizer.pad_token_id),
        num_workers=workers,
        drop_last=True,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Profile: inclusive time of the steps every pipeline shares, 0 workers
# ---------------------------------------------------------------------------------------------------------------------


def _steps() -> dict[str, list]:
    """Step -> the functions whose inclusive time it is (whichever a pipeline calls)."""
    from PIL import ImageFile
    from torchvision import transforms as T
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    from hfmm.training.clip import data
    from hfmm.training.neva import data as neva_data

    return {
        "JPEG decode (`Image.open` + `load`)": [Image.open, ImageFile.ImageFile.load],
        "RGB conversion (`Image.convert`)": [Image.Image.convert],
        "RandomResizedCrop (crop + bicubic resize)": [T.RandomResizedCrop.forward],
        "ToTensor": [T.ToTensor.__call__],
        "Normalize": [T.Normalize.forward],
        "image processor (NeVA: resize, crop, normalise)": [type(tiny_image_processor(224)).__call__],
        "chat template (NeVA: render + label spans)": [neva_data.supervised_spans],
        "tokenization": [data.PairTransform._tokenize, open_clip.tokenizer.SimpleTokenizer.__call__,
                         PreTrainedTokenizerBase.__call__],
        "collate": [CLIPCollator.__call__, wds.filters.default_collation_fn, NevaCollator.__call__],
        "_of which_ tar reading": [data._shard_samples, wds.tariterators.tar_file_iterator],
    }  # fmt: skip


def _inclusive(stats: pstats.Stats, functions: list) -> float:
    keys = {(f.__code__.co_filename, f.__code__.co_firstlineno, f.__code__.co_name) for f in functions}
    return sum(row[3] for key, row in stats.stats.items() if key in keys)


def profile(make_loader, batches: int) -> dict[str, float]:
    """Seconds per step of one 0-worker pass under cProfile; the rest is reading, shuffling, formatting, DataLoader."""
    profiler = cProfile.Profile()
    profiler.enable()
    timed_pass(make_loader(), 0, batches)
    profiler.disable()
    stats = pstats.Stats(profiler)
    steps = {name: _inclusive(stats, functions) for name, functions in _steps().items()}
    total = stats.total_tt
    steps["everything else (reader, shuffle buffer, map/formatting, DataLoader)"] = total - sum(
        seconds for name, seconds in steps.items() if not name.startswith("_of which")
    )
    steps["_of which_ `datasets` package, own time"] = sum(
        row[2] for key, row in stats.stats.items() if f"{os.sep}datasets{os.sep}" in key[0]
    )
    steps["total"] = total
    return steps


# ---------------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------------


def measure(loaders: dict, worker_counts: tuple, batches: int, rounds: int, attempts: int) -> dict:
    """{(pipeline, workers): [pass results]}; every round runs each pipeline once per worker count, alternating."""
    results = {(name, workers): [] for name in loaders for workers in worker_counts}
    for round_ in range(rounds):
        for workers in worker_counts:
            for name, make_loader in loaders.items():
                result = measured_pass(functools.partial(make_loader, workers), workers, batches, attempts)
                results[(name, workers)].append(result)
                print(f"round {round_} workers {workers} {name}: {result['rate']:.1f} samples/s "
                      f"(others {100 * result['contention']:.0f}%)", flush=True)  # fmt: skip
    return results


def _median(runs: list[dict]) -> float:
    return statistics.median(run["rate"] for run in runs)


def _cell(runs: list[dict]) -> str:
    flag = "*" if any(run["contention"] > MAX_CONTENTION for run in runs) else ""
    rates = ", ".join(f"{run['rate']:.0f}" for run in runs)
    return f"{_median(runs):.0f}{flag} ({rates})"


def clip_table(results: dict, worker_counts: tuple) -> str:
    peer = "OpenCLIP get_wds_dataset"
    lines = [
        "| pipeline | " + " | ".join(f"{w} workers: samples/s (runs)" for w in worker_counts) + " | "
        + " | ".join(f"÷ OpenCLIP, {w} w." for w in worker_counts) + " |",
        "|---" * (1 + 2 * len(worker_counts)) + "|",
    ]  # fmt: skip
    for name in CLIP_PIPELINES:
        cells = [_cell(results[(name, w)]) for w in worker_counts]
        ratios = [f"{_median(results[(name, w)]) / _median(results[(peer, w)]):.2f}×" for w in worker_counts]
        lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
    return "\n".join(lines)


def neva_table(results: dict, worker_counts: tuple) -> str:
    runs = [results[("NeVA", w)] for w in worker_counts]
    return "\n".join([
        "| pipeline | " + " | ".join(f"{w} workers: samples/s (runs)" for w in worker_counts) + " |",
        "|---" * (1 + len(worker_counts)) + "|",
        "| hfmm build_conversation_dataset + NevaCollator | " + " | ".join(_cell(r) for r in runs) + " |",
    ])  # fmt: skip


def profile_table(profiles: dict[str, dict]) -> str:
    names = list(profiles)
    lines = [
        "| step (inclusive time) | " + " | ".join(f"{n}: s (%)" for n in names) + " |",
        "|---" * (1 + len(names)) + "|",
    ]
    for step in next(iter(profiles.values())):
        cells = []
        for name in names:
            seconds, total = profiles[name][step], profiles[name]["total"]
            cells.append(f"{seconds:.2f} ({100 * seconds / total:.0f}%)" if seconds >= 0.005 else "–")
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES_START, NOTES_END = "<!-- bench_data:notes:start -->", "<!-- bench_data:notes:end -->"


def _keep_notes(body: str) -> str:
    """Hand-written notes between the notes markers of the current section survive a re-run."""
    text = (BENCH_DIR.parent / "BENCHMARKS.md").read_text()
    if NOTES_START in text and NOTES_END in text:
        notes = text[text.index(NOTES_START) : text.index(NOTES_END) + len(NOTES_END)]
        return body.replace(f"{NOTES_START}\n{NOTES_END}", notes)
    return body


def section(args, clip: dict, neva: dict, profiles: dict, load: tuple, workers: tuple) -> str:
    quick = " --quick" if args.quick else ""
    command = (f"python benchmarks/bench_data.py --samples {args.samples} --shards {args.shards} --batch {args.batch} "
               f"--neva-batch {args.neva_batch} --rounds {args.rounds} --attempts {args.attempts}{quick}")  # fmt: skip
    return "\n".join([
        "## Training data pipelines (CLIP webdataset: hfmm vs OpenCLIP; NeVA LLaVA JSON)\n",
        f"`{command}` — {datetime.date.today()}, {platform.machine()} CPU ({os.cpu_count()} cores), load average "
        f"{load[0]:.1f} before measuring, torch {torch.__version__}, datasets {datasets.__version__}, webdataset "
        f"{wds.__version__}, open_clip {open_clip.__version__}. {args.samples} JPEGs (256–640 px) in {args.shards} "
        f"shards; {args.samples // args.batch} batches of {args.batch} per pass, fresh loader each pass, first "
        "`max(1, workers)` batches excluded; one torch thread per process; median of alternating rounds "
        "(single runs in brackets). * = other processes took over 5% of the CPUs during a run.\n",
        clip_table(clip, workers),
        "",
        f"NeVA (tiny BPE tokenizer, `v1` template, 224 px CLIPImageProcessor, 256 image tokens, batch "
        f"{args.neva_batch}, two-turn conversations, shuffled map-style `Dataset`):\n",
        neva_table(neva, workers),
        "",
        "Profile (cProfile, one 0-worker pass each; cProfile inflates Python-heavy steps):\n",
        profile_table(profiles),
        "",
        f"{NOTES_START}\n{NOTES_END}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--neva-batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--attempts", type=int, default=2, help="tries of a pass disturbed by other processes")
    parser.add_argument("--quick", action="store_true", help="512 samples, 1 round: a smoke test, ~1 min")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.rounds, args.attempts = 512, 1, 1
    # DataLoader workers run torch with one thread; the 0-worker case does too, so 0/1/2 workers = 1/1/2 cores.
    torch.set_num_threads(1)
    workers = (0, 1, 2)
    with tempfile.TemporaryDirectory(prefix="bench_data-") as tmp:
        folder = Path(tmp)
        write_conversations(folder / "llava.json", write_data(folder, args.samples, args.shards))
        clip_processor_, neva_processor_ = clip_processor(), neva_processor()
        clip_loaders = {
            name: (lambda w, make=make: make(folder, clip_processor_, args.batch, w))
            for name, make in CLIP_PIPELINES.items()
        }
        neva_loaders = {"NeVA": lambda w: neva_loader(folder, neva_processor_, args.neva_batch, w)}
        for make in [*clip_loaders.values(), *neva_loaders.values()]:  # warm-up: first-call caches, lazy imports
            timed_pass(make(0), 0, 2)
        _wait_until_idle(quiet=5.0, timeout=20.0)
        load = os.getloadavg()
        clip = measure(clip_loaders, workers, args.samples // args.batch, args.rounds, args.attempts)
        neva = measure(neva_loaders, workers, args.samples // args.neva_batch, args.rounds, args.attempts)
        profiles = {
            name: profile(functools.partial(make, 0), max(2, 512 // args.batch)) for name, make in clip_loaders.items()
        }
        profiles["NeVA"] = profile(lambda: neva_loaders["NeVA"](0), max(2, 512 // args.neva_batch))
    body = section(args, clip, neva, profiles, load, workers)
    print(body)
    if not args.no_write:
        write_section(_keep_notes(body), "bench_data")


if __name__ == "__main__":
    main()
