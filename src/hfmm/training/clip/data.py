"""Image-caption pairs for CLIP training, through `datasets`: loading, OpenCLIP's transforms, and a collator that
skips bad samples without changing the batch size.

Formats (`CLIPDataArguments.data_format`, `"auto"` infers it from the path):

- `csv` / `jsonl`: one row per pair; `image_column` holds an image path (relative paths are resolved against the
  file's folder) and `caption_column` the caption. CSV cells are read as text (`na_filter=False`, so a caption "NA"
  stays "NA"); `csv_separator` is the separator (OpenCLIP's CSVs use a tab).
- `webdataset`: `.tar` shards in img2dataset's layout, `{key}.jpg|png|jpeg|webp` + `{key}.txt` (other members such
  as `{key}.json` are ignored). The path is one shard, a glob, a folder of shards or a brace list
  (`/data/{00000..41455}.tar`); several sources are joined with `::`, as in OpenCLIP.
- `imagefolder`: a folder of images with a `metadata.jsonl` or `metadata.csv` (`file_name` + `caption_column`), read
  by `datasets`' imagefolder builder (its "train" split).

`streaming=True` returns a `datasets.IterableDataset` (shuffled through a buffer of `STREAMING_SHUFFLE_BUFFER`
samples for training); otherwise a `datasets.Dataset`. Either way examples are decoded lazily, batch by batch, to
`{"pixel_values": (3, height, width) float32, "input_ids": (77,) int64}` plus `skip_reason`/`skip_detail` (both
`None` for a good sample).

Bad samples. A missing image, an image that does not decode (truncated JPEG, not an image, ...) or an empty or
whitespace caption does not raise: the transform marks the example with a `skip_reason` (one of `SKIP_REASONS`), and
`CLIPCollator` drops it, counts it and refills the batch from a reserve of good samples it has already collated, so
every batch keeps the size the DataLoader asked for (the contrastive loss needs equal local batches on all ranks).
This costs nothing up front (no validation pass over millions of files) and catches errors that only full decoding
reveals, which a header check would miss.

The Trainer must pass these keys through untouched: set `TrainingArguments(remove_unused_columns=False)`, otherwise
it drops every column the model's `forward` does not name before the collator sees it.
"""

import dataclasses
import glob
import io
import itertools
import logging
import os
import random
import re
import tarfile
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from datasets import Dataset, Features, IterableDataset, Value, load_dataset
from datasets import Image as ImageFeature
from PIL import Image
from torchvision import transforms as T

from hfmm.training.clip.arguments import DataFormat

logger = logging.getLogger(__name__)

DATA_FORMATS = typing.get_args(DataFormat)
SKIP_REASONS = ("missing_image", "corrupt_image", "empty_caption")
WEBDATASET_IMAGE_KEYS = ("jpg", "png", "jpeg", "webp")  # OpenCLIP's image keys, first present wins
WEBDATASET_TEXT_KEY = "txt"
STREAMING_SHUFFLE_BUFFER = 1_000  # samples held by the shuffle buffer of a streamed training set
TRANSFORM_BATCH = 64  # rows decoded per call of the transform on a streamed dataset

# Explicit features: inferred ones would come from the first 5 samples only, and a later `.png` among `.jpg`s would
# then be an unknown field. `decode=False`: images are decoded by the transform, where a bad one can be skipped.
_WEBDATASET_FEATURES = Features(
    {
        "__key__": Value("string"),
        "__url__": Value("string"),
        **{key: ImageFeature(decode=False) for key in WEBDATASET_IMAGE_KEYS},
        WEBDATASET_TEXT_KEY: Value("string"),
    }
)


# ---------------------------------------------------------------------------------------------------------------------
# Locating the data
# ---------------------------------------------------------------------------------------------------------------------

_BRACES = re.compile(r"\{([^{}]*)\}")


def _expand_braces(pattern: str) -> list[str]:
    """Shell-style brace expansion as `braceexpand` does it: `{a,b}` and zero-padded ranges `{000..123}`."""
    match = _BRACES.search(pattern)
    if match is None:
        return [pattern]
    body, head, tail = match.group(1), pattern[: match.start()], pattern[match.end() :]
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        low, high = numeric.groups()
        padded = any(len(bound) > 1 and bound.startswith("0") for bound in (low, high))
        width = max(len(low), len(high)) if padded else 0
        options = [str(i).zfill(width) for i in range(int(low), int(high) + 1)]
    elif "," in body:
        options = body.split(",")
    else:  # not an expansion: keep the braces literally
        return [head + "{" + body + "}" + expanded for expanded in _expand_braces(tail)]
    return [expanded for option in options for expanded in _expand_braces(head + option + tail)]


def _match_shards(pattern: str) -> list[str]:
    if "://" in pattern:  # remote shards (fsspec URLs) are passed to `datasets` as they are
        return [pattern]
    path = Path(pattern).expanduser()
    if path.is_dir():
        shards = sorted(str(p) for p in path.glob("*.tar"))
        if not shards:
            raise ValueError(f"Folder {path} holds no .tar shards.")
        return shards
    if glob.has_magic(pattern):
        shards = sorted(glob.glob(str(path)))
        if not shards:
            raise ValueError(f"No webdataset shard matches {pattern!r}.")
        return shards
    if not path.is_file():
        raise ValueError(f"Webdataset shard {path} does not exist.")
    return [str(path)]


def expand_shards(spec: str) -> list[str]:
    """
    The `.tar` files named by `spec`: a file, a glob, a folder of shards or a brace list, several joined with `::`.

    Example:

    ```python
    >>> expand_shards("/data/{00000..00002}.tar")  # doctest: +SKIP
    ['/data/00000.tar', '/data/00001.tar', '/data/00002.tar']
    ```
    """
    return [shard for part in spec.split("::") for pattern in _expand_braces(part) for shard in _match_shards(pattern)]


def resolve_format(path: str, data_format: DataFormat = "auto") -> str:
    """The data format of `path`: `data_format` itself unless it is `"auto"`, else inferred from the path."""
    if data_format != "auto":
        return data_format
    first = _expand_braces(path.split("::")[0])[0]
    suffix = Path(first).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".tar":
        return "webdataset"
    folder = Path(first).expanduser()
    if folder.is_dir():
        return "webdataset" if any(folder.glob("*.tar")) else "imagefolder"
    raise ValueError(
        f"Cannot infer the data format of {path!r} (not a .csv/.tsv/.jsonl/.json/.tar file nor a folder); "
        f"set data_format to one of {', '.join(DATA_FORMATS[1:])}."
    )


# ---------------------------------------------------------------------------------------------------------------------
# Loading raw pairs
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PairLayout:
    """
    Where a raw row keeps its image and caption.

    Args:
        image_columns (`tuple[str, ...]`):
            Columns that may hold the image; the first non-empty one is used (webdataset has one per extension).
            A value is a path (`str`) or a `datasets.Image(decode=False)` dict with `bytes` and/or `path`.
        caption_column (`str`):
            Column holding the caption.
        root (`Path`, *optional*):
            Folder that relative image paths are resolved against (the CSV/JSONL file's folder).
    """

    image_columns: tuple[str, ...]
    caption_column: str
    root: Path | None = None

    @property
    def columns(self) -> list[str]:
        return [*self.image_columns, self.caption_column]

    def image_source(self, row: dict) -> str | bytes | None:
        """The image of `row` as bytes or a path, or `None` when the row has none."""
        for column in self.image_columns:
            value = row.get(column)
            if isinstance(value, dict):
                value = value.get("bytes") or value.get("path")
            if isinstance(value, bytes) and value:
                return value
            if isinstance(value, str) and value.strip():
                path = Path(value).expanduser()
                return str(path if path.is_absolute() or self.root is None else self.root / path)
        return None


def _existing_file(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"Data file {file} does not exist.")
    return file.resolve()


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset), None)  # a streamed CSV/JSON has no features until read
    return list(first) if first is not None else []


def _check_columns(dataset: Dataset | IterableDataset, layout: PairLayout, source: str, options: tuple) -> None:
    columns = _column_names(dataset)
    if not columns:
        raise ValueError(f"{source} holds no rows.")
    for option, column in zip(options, (layout.image_columns[0], layout.caption_column)):
        if option is not None and column not in columns:
            raise ValueError(f"{source} has no column {column!r} (`{option}`); its columns are {columns}.")
    if isinstance(dataset, Dataset) and len(dataset) == 0:
        raise ValueError(f"{source} holds no rows.")


def _load_table(
    path: str, data_format: str, data_args, streaming: bool
) -> tuple[Dataset | IterableDataset, PairLayout]:
    file = _existing_file(path)
    if data_format == "csv":
        # na_filter=False: cells stay text ("" for empty), so a caption such as "NA" or "null" is not lost.
        kwargs = {"sep": data_args.csv_separator, "na_filter": False}
        dataset = load_dataset("csv", data_files=str(file), split="train", streaming=streaming, **kwargs)
    else:
        dataset = load_dataset("json", data_files=str(file), split="train", streaming=streaming)
    layout = PairLayout((data_args.image_column,), data_args.caption_column, file.parent)
    _check_columns(dataset, layout, f"{data_format.upper()} file {file}", ("image_column", "caption_column"))
    return dataset, layout


def _load_webdataset(path: str, data_args, streaming: bool) -> tuple[Dataset | IterableDataset, PairLayout]:
    shards = expand_shards(path)
    dataset = load_dataset(
        "webdataset", data_files={"train": shards}, split="train", features=_WEBDATASET_FEATURES, streaming=streaming
    )
    layout = PairLayout(WEBDATASET_IMAGE_KEYS, WEBDATASET_TEXT_KEY)
    if not streaming and len(dataset) == 0:
        raise ValueError(f"The webdataset shards {path} hold no samples.")
    return dataset, layout


def _load_imagefolder(path: str, data_args, streaming: bool) -> tuple[Dataset | IterableDataset, PairLayout]:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"Image folder {folder} does not exist.")
    dataset = load_dataset("imagefolder", data_dir=str(folder.resolve()), split="train", streaming=streaming)
    layout = PairLayout(("image",), data_args.caption_column)
    where = f"Image folder {folder} (captions come from its metadata.jsonl or metadata.csv)"
    _check_columns(dataset, layout, where, (None, "caption_column"))
    return dataset.cast_column("image", ImageFeature(decode=False)), layout


_LOADERS = {
    "csv": lambda path, args, streaming: _load_table(path, "csv", args, streaming),
    "jsonl": lambda path, args, streaming: _load_table(path, "jsonl", args, streaming),
    "webdataset": _load_webdataset,
    "imagefolder": _load_imagefolder,
}


def load_pairs(path: str, data_args, *, streaming: bool = False) -> tuple[Dataset | IterableDataset, PairLayout]:
    """
    Loads the raw (undecoded) rows of an image-caption dataset and says where each row keeps its image and caption.

    Args:
        path (`str`):
            A CSV/JSONL file, webdataset shard(s) or an image folder (see the module docstring).
        data_args (`CLIPDataArguments`):
            `data_format`, `image_column`, `caption_column` and `csv_separator` are read.
        streaming (`bool`, *optional*, defaults to `False`):
            Return a `datasets.IterableDataset` that reads the files as it goes.

    Returns:
        `tuple[datasets.Dataset | datasets.IterableDataset, PairLayout]`.
    """
    return _LOADERS[resolve_format(path, data_args.data_format)](path, data_args, streaming)


# ---------------------------------------------------------------------------------------------------------------------
# Streaming webdataset shards for training: every rank and DataLoader worker reads its own shards
# ---------------------------------------------------------------------------------------------------------------------

RESAMPLED_READER_SLOTS = 4096  # reader slots of a resampled stream per rank: the most DataLoader workers it feeds


def _rank_and_world() -> tuple[int, int]:
    """From torch.distributed (inherited by forked workers), else from the launcher's `RANK`/`WORLD_SIZE`."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _reader() -> tuple[int, int]:
    """(index, count) of this reader among ranks x DataLoader workers."""
    rank, world = _rank_and_world()
    info = torch.utils.data.get_worker_info()
    worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
    return rank * workers + worker, world * workers


def _open_shard(url: str):
    if "://" in url:
        import fsspec

        return fsspec.open(url, "rb").open()
    return open(url, "rb")


def _shard_samples(url: str) -> Iterator[dict]:
    """The samples of one `.tar` shard, read sequentially: members `{key}.{ext}` grouped by key, as webdataset does."""
    sample = None
    with _open_shard(url) as file, tarfile.open(fileobj=file, mode="r|*") as tar:
        for member in tar:
            if not member.isfile():
                continue
            folder, _, name = member.name.rpartition("/")
            stem, dot, extension = name.partition(".")
            key = f"{folder}/{stem}" if folder else stem
            if not dot or stem.startswith("_"):  # no extension, or a `__meta__`-style member
                continue
            if sample is None or sample["__key__"] != key:
                if sample is not None:
                    yield sample
                sample = {"__key__": key, "__url__": url}
            sample[extension.lower()] = tar.extractfile(member).read()
    if sample is not None:
        yield sample


def _as_row(sample: dict) -> dict:
    """A raw sample in `_WEBDATASET_FEATURES`' schema (images stay undecoded bytes)."""
    row = {"__key__": sample["__key__"], "__url__": sample["__url__"]}
    for key in WEBDATASET_IMAGE_KEYS:
        row[key] = {"bytes": sample[key], "path": None} if key in sample else None
    text = sample.get(WEBDATASET_TEXT_KEY)
    row[WEBDATASET_TEXT_KEY] = None if text is None else text.decode("utf-8", errors="replace")
    return row


def _buffer_shuffle(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """Yields `samples` in random order through a buffer of `size`; everything is yielded, the tail included."""
    buffer = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = rng.randrange(size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def check_shard_count(shards: int, readers: int) -> None:
    """Raises `ValueError` unless every reader (rank x DataLoader worker) can have a shard of its own."""
    if shards < readers:
        raise ValueError(
            f"{shards} webdataset shards cannot feed {readers} readers (ranks x dataloader workers); "
            f"streaming needs at least {readers} shards: use more shards, fewer workers, or dataset_resampled."
        )


@dataclasses.dataclass
class ShardStream:
    """
    An endless, deterministic stream of webdataset samples split over readers: reader `rank * workers + worker` of
    `world_size * workers` (one per DataLoader worker of each rank) reads only its own shards.

    Epochs happen inside the stream: in data epoch `e` the shards are permuted by an RNG seeded with `(seed, e)`, the
    same on every reader, and reader `i` of `n` reads shards `i, i + n, i + 2n, ...` of that permutation, so every
    shard is read exactly once per epoch, and shard order and the shard-to-reader assignment change every epoch
    (OpenCLIP's `detshuffle2` + `split_by_node` + `split_by_worker`). Samples go through a per-reader `buffer_size`
    shuffle buffer emptied at the end of each epoch. With `resampled=True` a reader instead draws shards with
    replacement forever (OpenCLIP's `ResampledShards2`) from an RNG seeded with `(seed, reader)`.

    Fewer shards than readers (without `resampled`) is a `ValueError` naming how many are needed: splitting shards
    by samples would make every reader read every shard.

    The stream is a `datasets.IterableDataset` generator (see `stream_shards`): `datasets` calls it once per data
    source it gives a worker ("slots", at least one per reader, which is also what makes accelerate split the
    dataset by rank rather than wrap it); the first call never ends, and the reader's identity comes from the rank and
    worker, not from the slot. It needs `TrainingArguments.accelerator_config.dispatch_batches=False` (see
    `configure_streaming`): with dispatching, rank 0 would read only its own share for every rank.

    Args:
        shards (`tuple[str, ...]`):
            The `.tar` shards.
        seed (`int`, *optional*, defaults to 0):
            Seed of the shard permutations, the resampling and the shuffle buffers (the Trainer's `seed`).
        resampled (`bool`, *optional*, defaults to `False`):
            Draw shards with replacement (an unbounded stream) instead of epochs over the shards.
        buffer_size (`int`, *optional*, defaults to `STREAMING_SHUFFLE_BUFFER`):
            Samples held by each reader's shuffle buffer.
    """

    shards: tuple[str, ...]
    seed: int = 0
    resampled: bool = False
    buffer_size: int = STREAMING_SHUFFLE_BUFFER

    @property
    def slots(self) -> list[int]:
        # `datasets` splits a stream between ranks by its generator's slots only when their count divides by the
        # world size; otherwise every rank would read the whole stream and keep every world_size-th sample, which,
        # as each reader already reads only its own shards, would drop samples. So the count is a multiple of it.
        per_rank = RESAMPLED_READER_SLOTS if self.resampled else len(self.shards)
        return list(range(per_rank * _rank_and_world()[1]))

    def __call__(self, slot: list[int]) -> Iterator[dict]:
        reader, readers = _reader()
        if not self.resampled:
            check_shard_count(len(self.shards), readers)
        samples = self._resampled(reader) if self.resampled else self._epochs(reader, readers)
        yield from map(_as_row, samples)

    def _epochs(self, reader: int, readers: int) -> Iterator[dict]:
        for epoch in itertools.count():
            order = random.Random(f"{self.seed}:{epoch}").sample(self.shards, len(self.shards))
            samples = (sample for shard in order[reader::readers] for sample in _shard_samples(shard))
            yield from _buffer_shuffle(samples, self.buffer_size, random.Random(f"{self.seed}:{epoch}:{reader}"))

    def _resampled(self, reader: int) -> Iterator[dict]:
        rng = random.Random(f"{self.seed}:resampled:{reader}")
        samples = (sample for _ in itertools.count() for sample in _shard_samples(rng.choice(self.shards)))
        yield from _buffer_shuffle(samples, self.buffer_size, rng)


def stream_shards(path: str, data_args, seed: int = 0) -> tuple[IterableDataset, PairLayout]:
    """
    The endless training stream of the webdataset shards `path` (see `ShardStream`), as a `datasets.IterableDataset`
    of raw rows (`__key__`, `__url__`, one column per image extension, `txt`).

    Args:
        path (`str`):
            Shards: a file, glob, folder or brace list, several joined with `::`.
        data_args (`CLIPDataArguments`):
            `dataset_resampled` is read.
        seed (`int`, *optional*, defaults to 0):
            The Trainer's `seed`.
    """
    stream = ShardStream(tuple(expand_shards(path)), seed=seed, resampled=data_args.dataset_resampled)
    dataset = IterableDataset.from_generator(stream, features=_WEBDATASET_FEATURES, gen_kwargs={"slot": stream.slots})
    return dataset, PairLayout(WEBDATASET_IMAGE_KEYS, WEBDATASET_TEXT_KEY)


# ---------------------------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------------------------


def _convert_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _check_pair(name: str, value) -> tuple[float, float]:
    if len(value) != 2 or not 0 < value[0] <= value[1]:
        raise ValueError(f"{name} must be two increasing positive numbers, got {value!r}.")
    return float(value[0]), float(value[1])


def train_image_transform(image_processor, data_args) -> Callable[[Image.Image], torch.Tensor]:
    """
    OpenCLIP's training transform (`image_transform(is_train=True)` with `aug_cfg`) for PIL images.

    RandomResizedCrop to the processor's `size` (`scale=rrc_scale`, `ratio=rrc_ratio`, bicubic, as OpenCLIP's
    torchvision path), conversion to RGB after the crop, `ToTensor`, `Normalize(image_mean, image_std)` and, when
    `re_prob > 0`, timm's `RandomErasing(re_prob, mode="pixel", max_count=re_count)` on the normalised tensor, which
    is what OpenCLIP's `use_timm=True` path (the one that honours `re_prob`) applies. Returns a `(3, height, width)`
    float32 tensor.
    """
    scale, ratio = _check_pair("rrc_scale", data_args.rrc_scale), _check_pair("rrc_ratio", data_args.rrc_ratio)
    if not 0 <= data_args.re_prob <= 1:
        raise ValueError(f"re_prob must lie in [0, 1], got {data_args.re_prob}.")
    if data_args.re_count < 1:
        raise ValueError(f"re_count must be at least 1, got {data_args.re_count}.")
    size = image_processor.size if isinstance(image_processor.size, int) else tuple(image_processor.size)
    steps = [
        T.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=T.InterpolationMode.BICUBIC),
        _convert_rgb,
        T.ToTensor(),
        T.Normalize(image_processor.image_mean, image_processor.image_std),
    ]
    if data_args.re_prob > 0:
        from timm.data.random_erasing import RandomErasing

        steps.append(RandomErasing(data_args.re_prob, mode="pixel", max_count=data_args.re_count, device="cpu"))
    return T.Compose(steps)


@dataclasses.dataclass
class EvalImageTransform:
    """The processor's own preprocessing of one PIL image (OpenCLIP's eval transform): `(3, height, width)`."""

    image_processor: object

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.image_processor(image, return_tensors="pt")["pixel_values"][0]


def open_image(source: str | bytes) -> Image.Image:
    """Opens and fully decodes an image from a path or bytes (a truncated file raises here, not later)."""
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()
    return image


@dataclasses.dataclass
class PairTransform:
    """
    Turns a batch of raw rows into model inputs; bad rows get a `skip_reason` instead of tensors.

    Args:
        layout (`PairLayout`):
            Where rows keep their image and caption.
        image_transform (`Callable[[PIL.Image.Image], torch.Tensor]`):
            Train or eval image transform.
        tokenizer:
            The processor's tokenizer; captions become `(context_length,)` ids, padded and truncated as OpenCLIP's.
    """

    layout: PairLayout
    image_transform: Callable[[Image.Image], torch.Tensor]
    tokenizer: object

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        out = {"pixel_values": [], "input_ids": [], "skip_reason": [], "skip_detail": []}
        captions = []
        for row in rows:
            caption = row.get(self.layout.caption_column)
            caption = "" if caption is None else str(caption)
            pixels, reason, detail = self._pixels(row) if caption.strip() else (None, "empty_caption", repr(caption))
            out["pixel_values"].append(pixels)
            out["skip_reason"].append(reason)
            out["skip_detail"].append(detail)
            captions.append(caption if reason is None else None)
        good = [caption for caption in captions if caption is not None]
        ids = iter(self._tokenize(good)) if good else iter(())
        out["input_ids"] = [None if caption is None else next(ids) for caption in captions]
        return out

    def _pixels(self, row: dict) -> tuple[torch.Tensor | None, str | None, str | None]:
        source = self.layout.image_source(row)
        if source is None:
            return None, "missing_image", f"no image in {self.layout.image_columns}"
        if isinstance(source, str) and not os.path.isfile(source):  # local files only (a URL counts as missing)
            return None, "missing_image", source
        try:
            return self.image_transform(open_image(source)), None, None
        except Exception as error:  # decoders raise many types: OSError, SyntaxError, struct.error, ...
            where = source if isinstance(source, str) else f"{len(source)} bytes"
            return None, "corrupt_image", f"{where}: {type(error).__name__}: {error}"

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        length = self.tokenizer.model_max_length
        return self.tokenizer(captions, padding="max_length", max_length=length, truncation=True, return_tensors="pt")[
            "input_ids"
        ]  # (B, context_length)


def apply_transform(dataset: Dataset | IterableDataset, transform: PairTransform) -> Dataset | IterableDataset:
    """Attaches `transform` lazily: `with_transform` on a `Dataset`, an on-the-fly `map` on an `IterableDataset`."""
    columns = transform.layout.columns
    if isinstance(dataset, IterableDataset):
        # a webdataset stream keeps each sample's `__key__` (for tracing which samples a rank trained on)
        kept = ["__key__"] if "__key__" in (dataset.column_names or ()) else []
        selected = dataset.select_columns(columns + kept)
        return selected.map(transform, batched=True, batch_size=TRANSFORM_BATCH, remove_columns=columns)
    return dataset.with_transform(transform, columns=columns)


# ---------------------------------------------------------------------------------------------------------------------
# Datasets the recipes train on
# ---------------------------------------------------------------------------------------------------------------------


def build_train_dataset(data_args, processor, seed: int = 0) -> Dataset | IterableDataset:
    """
    The training set of `data_args.train_data` with OpenCLIP's training transform (see `train_image_transform`).

    Args:
        data_args (`CLIPDataArguments`):
            Data options; `max_train_samples` keeps the first rows. With `streaming`, webdataset shards become the
            endless `ShardStream` (read per rank and worker, reshuffled per data epoch, resumable; call
            `configure_streaming` on the `TrainingArguments`), other formats a `datasets.IterableDataset` shuffled
            through a `STREAMING_SHUFFLE_BUFFER`-sample buffer.
        processor (`HfmmCLIPProcessor`):
            Gives the image size, mean and std (`processor.image_processor`) and the tokenizer.
        seed (`int`, *optional*, defaults to 0):
            Seed of the streamed order: pass the Trainer's `seed`.

    Returns:
        `datasets.Dataset | datasets.IterableDataset` of `{"pixel_values", "input_ids", "skip_reason",
        "skip_detail"}` examples (plus `__key__` for streamed shards), to be batched by `CLIPCollator` (with
        `remove_unused_columns=False`).
    """
    if not data_args.train_data:
        raise ValueError("train_data is not set.")
    if data_args.dataset_resampled and not (data_args.streaming and _is_webdataset(data_args)):
        raise ValueError("dataset_resampled=True needs webdataset shards with streaming=True.")
    if data_args.streaming and _is_webdataset(data_args):
        dataset, layout = stream_shards(data_args.train_data, data_args, seed=seed)
    else:
        dataset, layout = load_pairs(data_args.train_data, data_args, streaming=data_args.streaming)
        if isinstance(dataset, IterableDataset):
            dataset = dataset.shuffle(seed=seed, buffer_size=STREAMING_SHUFFLE_BUFFER)
    if data_args.max_train_samples is not None:
        if data_args.max_train_samples < 1:
            raise ValueError(f"max_train_samples must be positive, got {data_args.max_train_samples}.")
        if isinstance(dataset, IterableDataset):
            dataset = dataset.take(data_args.max_train_samples)
        else:
            dataset = dataset.select(range(min(data_args.max_train_samples, len(dataset))))
    image_transform = train_image_transform(processor.image_processor, data_args)
    return apply_transform(dataset, PairTransform(layout, image_transform, processor.tokenizer))


def _is_webdataset(data_args) -> bool:
    return resolve_format(data_args.train_data, data_args.data_format) == "webdataset"


def configure_streaming(training_args, data_args) -> None:
    """
    Sets what a streamed webdataset training set needs on `training_args` (a `transformers.TrainingArguments`); call
    it before building the Trainer. No-op unless `streaming` is on and the training data are webdataset shards.

    - `accelerator_config.dispatch_batches = False`: each rank reads its own shards (accelerate's default for
      iterable datasets is rank 0 reading every rank's batches and broadcasting them, which does not scale).
    - checks that there are at least `world_size * dataloader_num_workers` shards (unless `dataset_resampled`).
    - `max_steps`: the stream is endless, so the run's length is `max_steps`; when it is unset (-1), it is
      `num_train_epochs * train_num_samples // global batch` (OpenCLIP's `--train-num-samples`), else an error.
    """
    if not (data_args.streaming and data_args.train_data and _is_webdataset(data_args)):
        return
    training_args.accelerator_config.dispatch_batches = False
    if not data_args.dataset_resampled:  # fail here, not later inside a DataLoader worker
        readers = training_args.world_size * max(1, training_args.dataloader_num_workers)
        check_shard_count(len(expand_shards(data_args.train_data)), readers)
    if training_args.max_steps > 0:
        return
    if data_args.train_num_samples is None:
        raise ValueError("Streaming webdataset shards needs max_steps or train_num_samples; neither is set.")
    global_batch = (
        training_args.per_device_train_batch_size
        * training_args.world_size
        * training_args.gradient_accumulation_steps
    )
    steps = int(training_args.num_train_epochs * data_args.train_num_samples // global_batch)
    if steps < 1:
        raise ValueError(
            f"train_num_samples={data_args.train_num_samples} is less than one global batch ({global_batch})."
        )
    training_args.max_steps = steps


def build_eval_dataset(data_args, processor) -> Dataset | IterableDataset:
    """
    The evaluation set of `data_args.eval_data`, preprocessed exactly as `processor.image_processor` does (OpenCLIP's
    eval transform), in file order. Same examples and collator as `build_train_dataset`.
    """
    if not data_args.eval_data:
        raise ValueError("eval_data is not set.")
    dataset, layout = load_pairs(data_args.eval_data, data_args, streaming=data_args.streaming)
    transform = PairTransform(layout, EvalImageTransform(processor.image_processor), processor.tokenizer)
    return apply_transform(dataset, transform)


# ---------------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------------

_COUNTER_ROWS = 65  # row 0: the main process; rows 1..64: DataLoader workers (a worker id past 63 shares a row)


class CLIPCollator:
    """
    Stacks examples into `{"pixel_values": (batch_size, 3, height, width), "input_ids": (batch_size, 77)}`, dropping
    bad examples and refilling the batch so its size never changes.

    An example with a `skip_reason` (see `SKIP_REASONS`) is dropped and counted; the first time a reason is seen in a
    process it is logged with `logger.warning`. Each dropped example is replaced by a good example drawn (without
    replacement) from a reserve of up to `reserve_size` good examples collated earlier by this process, so the
    contrastive batch stays full and equal across ranks (`dataloader_drop_last=True` then holds). If the reserve is
    too small, good examples of the current batch are repeated (a repeated pair is a false negative for the loss,
    which is why the reserve comes first). A batch with no good example while the reserve is still empty, i.e. the
    first batch of a process (or of a DataLoader worker) is all bad, raises `ValueError`: there is nothing honest to
    fill it with, and such data is almost always a wrong path.

    Counts (`skipped`, `replaced`) live in shared memory, so they add up over DataLoader worker processes (fork or
    spawn) and can be read in the main process for logging; they are per rank. Reserved examples are augmented
    views already used for training, held as tensors: `reserve_size` times one example's memory per process.

    Needs `TrainingArguments(remove_unused_columns=False)`: the examples carry keys the model does not take.

    Args:
        reserve_size (`int`, *optional*, defaults to 64):
            Good examples kept to replace dropped ones.
        seed (`int`, *optional*, defaults to 0):
            Seed of the draws from the reserve.

    Example:

    ```python
    >>> collator = CLIPCollator()
    >>> batch = collator(examples)  # examples from build_train_dataset
    >>> collator.skipped
    {'missing_image': 0, 'corrupt_image': 1, 'empty_caption': 0}
    ```
    """

    def __init__(self, reserve_size: int = 64, seed: int = 0):
        if reserve_size < 0:
            raise ValueError(f"reserve_size must be >= 0, got {reserve_size}.")
        self.reserve_size = reserve_size
        self._reserve: list[dict] = []
        self._random = random.Random(seed)
        self._warned: set[str] = set()
        # (rows, reasons + 1): one row per process so increments never race; the last column counts replacements.
        self._counts = torch.zeros(_COUNTER_ROWS, len(SKIP_REASONS) + 1, dtype=torch.int64).share_memory_()

    @property
    def skipped(self) -> dict[str, int]:
        """Examples dropped so far, by reason, summed over this rank's processes."""
        totals = self._counts.sum(0).tolist()
        return dict(zip(SKIP_REASONS, totals))

    def skipped_counts(self) -> dict[str, int]:
        """Same as `skipped`."""
        return self.skipped

    @property
    def replaced(self) -> int:
        """Examples put in place of dropped ones so far (from the reserve or repeated from their batch)."""
        return int(self._counts[:, -1].sum())

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("CLIPCollator got an empty list of examples.")
        good = [f for f in features if f.get("skip_reason") is None]
        bad = [f for f in features if f.get("skip_reason") is not None]
        if bad:
            self._count(bad)
            good = good + self._replacements(len(bad), good, bad)
        self._remember(good[: len(features) - len(bad)])
        return {
            "pixel_values": torch.stack([f["pixel_values"] for f in good]),  # (B, 3, H, W)
            "input_ids": torch.stack([f["input_ids"] for f in good]),  # (B, context_length)
        }

    def _count(self, bad: list[dict]) -> None:
        row = self._row()
        for example in bad:
            reason = example["skip_reason"]
            if reason not in SKIP_REASONS:
                raise ValueError(f"Unknown skip_reason {reason!r}; expected one of {SKIP_REASONS}.")
            self._counts[row, SKIP_REASONS.index(reason)] += 1
            if reason not in self._warned:
                self._warned.add(reason)
                logger.warning(
                    "Skipping samples with %s (first: %s); counts are in CLIPCollator.skipped and the training logs.",
                    reason.replace("_", " "),
                    example.get("skip_detail"),
                )

    def _replacements(self, count: int, good: list[dict], bad: list[dict]) -> list[dict]:
        drawn = self._random.sample(self._reserve, min(count, len(self._reserve)))
        if len(drawn) < count:
            if not good and not drawn:
                details = "; ".join(f"{f['skip_reason']}: {f.get('skip_detail')}" for f in bad[:3])
                raise ValueError(
                    f"Every example of a batch was bad and no good example has been seen yet to replace them "
                    f"({details}). Check the data paths and columns."
                )
            pool = good + drawn
            drawn += [pool[self._random.randrange(len(pool))] for _ in range(count - len(drawn))]
        self._counts[self._row(), -1] += count
        return drawn

    def _remember(self, fresh: list[dict]) -> None:
        for example in fresh:
            if len(self._reserve) < self.reserve_size:
                self._reserve.append(example)
            elif self.reserve_size:
                self._reserve[self._random.randrange(self.reserve_size)] = example

    @staticmethod
    def _row() -> int:
        info = torch.utils.data.get_worker_info()
        return 0 if info is None else 1 + info.id % (_COUNTER_ROWS - 1)

    def __getstate__(self) -> dict:
        # The reserve is per process; a worker starts with its own (empty) one.
        return {**self.__dict__, "_reserve": []}
