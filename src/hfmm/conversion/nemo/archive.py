"""Readers of NeMo checkpoints: `.nemo` tarballs and folders, per-rank pickles and megatron-core distributed checkpoints.

What a NeMo checkpoint looks like (research/nemo_formats.md §1):

- NeMo 1 `.nemo`: a tar (plain, or gzip before NeMo 1.7) or its extracted folder with `model_config.yaml` and the
  weights as `model_weights.ckpt` (TP=1), `mp_rank_XX/model_weights.ckpt` (TP>1), `tp_rank_XX_pp_rank_YYY/
  model_weights.ckpt` (PP>1; layer indices local to the stage) or `model_weights/` (a megatron-core distributed
  checkpoint). Keys start with `model.` (sometimes `model.module.`).
- NeMo 2: a folder with `context/model.yaml` and `weights/` (a megatron-core distributed checkpoint, keys `module.`).
- megatron-core distributed checkpoints (`metadata.json` names the format): `torch_dist` is PyTorch DCP and is read
  here with `torch.distributed.checkpoint`, no megatron needed: tensors are global (TP-merged) and the layers of a
  block are stacked on a leading axis under a key without index, which is undone here. The older `zarr` format is
  refused.

Safety: archives are extracted only into a temporary folder and only after `safe_extract_tar` has checked every
member; pickles go through `load_torch_file` (`weights_only=True`), with `io.BytesIO` allowed in a narrow context for
Transformer Engine's `_extra_state` blobs (it holds bytes and runs no code); the DCP `.metadata` pickle, which
torch's own reader opens with plain `pickle.load`, is read with an unpickler that resolves only DCP's metadata classes
(megatron-core's `MCoreMetadata`/`MCoreSavePlan` become stand-ins, so megatron is not needed). `_extra_state` entries are dropped.
"""

import contextlib
import io
import json
import pickle
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml

from hfmm.conversion.common.readers import CheckpointError, load_torch_file, safe_extract_tar

_RANK_DIR = re.compile(r"mp_rank_(\d+)|tp_rank_(\d+)_pp_rank_(\d+)")
_LAYER_KEY = re.compile(r"(.*\.layers\.)(\d+)(\..+)")
_STACKED_KEY = re.compile(r"(.*\.layers)\.([^\d].*)")
_EXTRA_STATE = re.compile(r".*\._extra_state(/shard_\d+_\d+)?")


@dataclass
class NemoCheckpoint:
    """
    A NeMo checkpoint opened for conversion.

    Args:
        config (`dict`):
            NeMo 1: the `model` section of `model_config.yaml`; NeMo 2: `context/model.yaml`.
        nemo_version (`int`):
            1 or 2 (the config schema).
        shards (`list[Mapping[str, torch.Tensor]]`):
            One state dict per tensor-parallel rank (one for distributed checkpoints, already merged), keys without
            the `model.`/`module.` prefixes, pipeline stages joined with global layer indices, `_extra_state` dropped.
        root (`Path`):
            The (extracted) checkpoint folder, for artifacts such as tokenizer files.
        weights (`str`):
            Where the weights came from, for messages.
    """

    config: dict
    nemo_version: Literal[1, 2]
    shards: list[Mapping[str, torch.Tensor]]
    root: Path
    weights: str


def target_name(value) -> str:
    """The last name of what a NeMo 2 config entry names: `gelu` from `{"_target_": "torch.nn.functional.gelu",
    "_call_": false}` (or from the plain string)."""
    if isinstance(value, Mapping):
        value = value.get("_target_", "")
    return str(value).rsplit(".", 1)[-1]


def nemo2_tokenizer_folders(checkpoint: NemoCheckpoint) -> list[Path]:
    """The folders of a NeMo 2 checkpoint that may hold its tokenizer files, most specific first.

    NeMo 2 copies a local tokenizer folder into `context/<folder name>/` and records `tokenizer.pretrained_model_name:
    <folder name>` (or the path it was given); its HF-tokenizer saver uses `context/nemo_tokenizer/`. Only the last
    component of the recorded name is used, so the folder stays inside `context/`.
    """
    context = checkpoint.root / "context"
    spec = checkpoint.config.get("tokenizer") or {}
    name = Path(str(spec.get("pretrained_model_name") or "")).name
    named = [context / name] if name not in ("", ".", "..") else []
    return [folder for folder in (*named, context / "nemo_tokenizer", context) if folder.is_dir()]


@contextlib.contextmanager
def open_nemo_checkpoint(src: str | Path) -> Iterator[NemoCheckpoint]:
    """Opens a `.nemo` tar (extracted into a temporary folder, removed on exit) or a NeMo 1/2 checkpoint folder."""
    src = Path(src)
    if not src.exists():
        raise CheckpointError(f"{src}: no such file or folder.")
    if src.is_dir():
        yield read_nemo_folder(src)
        return
    with tempfile.TemporaryDirectory(prefix="hfmm-nemo-") as tmp:
        safe_extract_tar(src, tmp)
        try:
            checkpoint = read_nemo_folder(Path(tmp), source=str(src))
        except CheckpointError as error:  # name the archive's member, not the temporary copy
            raise CheckpointError(str(error).replace(f"{tmp}/", f"{src}:")) from error
        yield checkpoint


def read_nemo_folder(root: Path, source: str | None = None) -> NemoCheckpoint:
    """Reads the config and the weights of an extracted NeMo 1 `.nemo` or a NeMo 2 checkpoint folder."""
    source = source or str(root)
    if (root / "model_config.yaml").is_file():
        config, version = _read_yaml(root / "model_config.yaml", source), 1
        config = config.get("model", config)  # a training config nests the model under `model:`
    elif (root / "context" / "model.yaml").is_file():
        config, version = _read_yaml(root / "context" / "model.yaml", source), 2
    else:
        what = _describe_weights(root)
        raise CheckpointError(
            f"{source}: {what} but no model config: a NeMo 1 checkpoint carries `model_config.yaml`, a NeMo 2 "
            "checkpoint `context/model.yaml`; pass the checkpoint's top folder (or the `.nemo` file), not its weights."
        )
    for candidate in ("model_weights", "weights"):
        if (root / candidate).is_dir():
            shards = [read_distributed_checkpoint(root / candidate, f"{source}/{candidate}")]
            return NemoCheckpoint(config, version, shards, root, f"{candidate}/ (torch_dist)")
    shards, weights = _read_rank_pickles(root, source)
    return NemoCheckpoint(config, version, shards, root, weights)


def _read_yaml(path: Path, source: str) -> dict:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CheckpointError(f"{source}: {path.name} is not valid YAML ({' '.join(str(error).split())}).") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{source}: {path.name} does not hold a mapping.")
    return config


def _describe_weights(root: Path) -> str:
    if (root / ".metadata").is_file() or (root / "metadata.json").is_file():
        return "a bare megatron-core distributed checkpoint"
    if any(root.glob("**/model_weights.ckpt")):
        return "model_weights.ckpt weights"
    return "no NeMo checkpoint files"


# --- per-rank pickles ----------------------------------------------------------------------------------------------


def _load_pickle(path: Path) -> dict:
    """A `model_weights.ckpt`: `weights_only=True`, with Transformer Engine's `io.BytesIO` extra state allowed."""
    with torch.serialization.safe_globals([io.BytesIO]):
        obj = load_torch_file(path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):  # a Lightning training checkpoint
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: not a state dict.")
    return dict(obj)


def strip_prefixes(state_dict: Mapping, source: str) -> dict[str, torch.Tensor]:
    """Drops `_extra_state` entries and the `model.`/`module.` prefixes NeMo 1 and 2 put on every key."""
    out = {}
    for key, value in state_dict.items():
        if _EXTRA_STATE.fullmatch(key):
            continue
        name = key.removeprefix("model.")
        while name.startswith("module."):
            name = name.removeprefix("module.")
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor.")
        out[name] = value
    return out


def _read_rank_pickles(root: Path, source: str) -> tuple[list[dict], str]:
    if (root / "model_weights.ckpt").is_file():
        return [strip_prefixes(_load_pickle(root / "model_weights.ckpt"), source)], "model_weights.ckpt"
    ranks: dict[tuple[int, int], Path] = {}
    for path in sorted(root.glob("*/model_weights.ckpt")):
        match = _RANK_DIR.fullmatch(path.parent.name)
        if match is None:
            raise CheckpointError(f"{source}: unexpected weights folder {path.parent.name!r}.")
        tp, pp = (int(match[1]), 0) if match[1] is not None else (int(match[2]), int(match[3]))
        ranks[(tp, pp)] = path
    if not ranks:
        raise CheckpointError(
            f"{source}: no weights: expected model_weights.ckpt, mp_rank_XX/, tp_rank_XX_pp_rank_YYY/ or a "
            "model_weights/ distributed checkpoint."
        )
    tp_size = max(tp for tp, _ in ranks) + 1
    pp_size = max(pp for _, pp in ranks) + 1
    missing = [f"tp {tp} pp {pp}" for tp in range(tp_size) for pp in range(pp_size) if (tp, pp) not in ranks]
    if missing:
        raise CheckpointError(f"{source}: the weights of rank(s) {', '.join(missing)} are missing.")
    shards = []
    for tp in range(tp_size):
        stages = [strip_prefixes(_load_pickle(ranks[(tp, pp)]), source) for pp in range(pp_size)]
        shards.append(join_pipeline_stages(stages, source))
    layout = "tp_rank_XX_pp_rank_YYY" if pp_size > 1 or ranks[(0, 0)].parent.name.startswith("tp") else "mp_rank_XX"
    return shards, f"{layout}/ (TP={tp_size}, PP={pp_size})"


def join_pipeline_stages(stages: list[dict], source: str) -> dict:
    """One state dict from pipeline stages whose layer indices restart at 0: each stack of `*.layers.N.` keys is
    offset by the number of layers of that stack in the earlier stages."""
    if len(stages) == 1:
        return stages[0]
    joined, offsets = {}, {}
    for stage in stages:
        counts = {}
        for key, value in stage.items():
            match = _LAYER_KEY.fullmatch(key)
            if match:
                stack, index, rest = match.groups()
                counts[stack] = max(counts.get(stack, 0), int(index) + 1)
                key = f"{stack}{int(index) + offsets.get(stack, 0)}{rest}"
            if key in joined:
                raise CheckpointError(f"{source}: {key!r} appears in more than one pipeline stage.")
            joined[key] = value
        for stack, count in counts.items():
            offsets[stack] = offsets.get(stack, 0) + count
    return joined


# --- megatron-core distributed checkpoints -------------------------------------------------------------------------


class _MCoreSavePlan:
    """Inert stand-in for megatron-core's `MCoreSavePlan` (a placeholder class old checkpoints reference)."""

    def __setstate__(self, state):
        self.__dict__.update(state if isinstance(state, dict) else {"state": state})


def _dcp_classes() -> dict[tuple[str, str], object]:
    from torch.distributed.checkpoint import filesystem, metadata, planner

    allowed = {("torch", "Size"): torch.Size, ("torch.serialization", "_get_layout"): torch.serialization._get_layout}
    for module, names in (
        (metadata, ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                    "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")),
        (planner, ("SavePlan", "WriteItem", "WriteItemType", "TensorWriteData", "LoadPlan", "ReadItem",
                   "LoadItemType")),
        (filesystem, ("_StorageInfo",)),
    ):  # fmt: skip
        for name in names:
            if hasattr(module, name):
                allowed[(module.__name__, name)] = getattr(module, name)
    mcore = "megatron.core.dist_checkpointing.strategies.torch"  # stand-ins, so megatron is not needed (or imported)
    allowed[(mcore, "MCoreMetadata")] = type("MCoreMetadata", (metadata.Metadata,), {})
    allowed[(mcore, "MCoreSavePlan")] = _MCoreSavePlan
    return allowed


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the classes a DCP `.metadata` file needs; anything else is refused by name."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source
        self.allowed = _dcp_classes()

    def find_class(self, module: str, name: str):
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        if module == "collections" and name == "OrderedDict":
            return __import__("collections").OrderedDict
        raise CheckpointError(
            f"{self.source}: refused to unpickle .metadata: it needs {module}.{name}, which is not a distributed-"
            "checkpoint metadata class."
        )


def read_dcp_metadata(folder: Path, source: str):
    """The `Metadata` of a PyTorch DCP folder, unpickled safely (see `_MetadataUnpickler`)."""
    from torch.distributed.checkpoint.metadata import Metadata

    path = folder / ".metadata"
    if not path.is_file():
        raise CheckpointError(f"{source}: no .metadata file: not a torch_dist distributed checkpoint.")
    try:
        with path.open("rb") as file:
            metadata = _MetadataUnpickler(file, source).load()
    except CheckpointError:
        raise
    except Exception as error:  # a truncated or foreign pickle
        raise CheckpointError(f"{source}: .metadata cannot be read ({error}).") from error
    if not isinstance(metadata, Metadata):
        raise CheckpointError(f"{source}: .metadata holds a {type(metadata).__name__}, not DCP metadata.")
    return metadata


def read_distributed_checkpoint(folder: Path, source: str) -> dict[str, torch.Tensor]:
    """All tensors of a megatron-core `torch_dist` checkpoint, read with `torch.distributed.checkpoint` (no process
    group, no megatron), prefixes stripped and stacked layers (`*.layers.<name>` of shape `(L, ...)`) split into
    `*.layers.{i}.<name>`."""
    from torch.distributed.checkpoint import FileSystemReader, load
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    backend = "torch_dist"
    if (folder / "metadata.json").is_file():
        try:
            backend = json.loads((folder / "metadata.json").read_text()).get("sharded_backend", backend)
        except (json.JSONDecodeError, AttributeError) as error:
            raise CheckpointError(f"{source}/metadata.json is not valid JSON ({error}).") from error
    if backend == "zarr":
        raise CheckpointError(
            f"{source}: a megatron-core distributed checkpoint in the old `zarr` format, which hfmm does not read; "
            "re-save it as `torch_dist` with NeMo first (dist_ckpt_format: torch_dist)."
        )
    if backend != "torch_dist":
        raise CheckpointError(
            f"{source}: distributed checkpoint format {backend!r} is not supported (torch_dist only)."
        )
    metadata = read_dcp_metadata(folder, source)

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            return metadata

    tensors = {
        key: torch.empty(meta.size, dtype=meta.properties.dtype)
        for key, meta in metadata.state_dict_metadata.items()
        if isinstance(meta, TensorStorageMetadata) and not _EXTRA_STATE.fullmatch(key)
    }
    try:
        # "torch.distributed is disabled, unavailable or uninitialized": reading in one process is the intent
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            load(tensors, storage_reader=SafeReader(folder), no_dist=True)
    except Exception as error:  # torch wraps reader errors (missing or truncated shards) in CheckpointException
        raise CheckpointError(
            f"{source}: the tensors cannot be read ({' '.join(str(error).split())[:300]})."
        ) from error
    return unstack_layers(strip_prefixes(tensors, source))


def unstack_layers(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`decoder.layers.<name>` of shape `(L, ...)` -> `decoder.layers.{i}.<name>` for i < L (views, no copies)."""
    out = {}
    for key, value in state_dict.items():
        match = _STACKED_KEY.fullmatch(key)
        if match:
            for index, layer in enumerate(value.unbind(0)):
                out[f"{match[1]}.{index}.{match[2]}"] = layer
        else:
            out[key] = value
    return out
