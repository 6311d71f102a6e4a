"""Safe, lazy readers for the checkpoint files the converters take.

Pickles are read only with `weights_only=True` (a pickle that needs code is refused); archives are extracted only
after every member has been checked (no absolute paths, no `..`, no links or devices).
"""

import json
import pickle
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and the problem."""


# --- configs and processor files -------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    """The parsed JSON file at `path`; `CheckpointError` naming the file when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON file ({error}).") from error


IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def image_processor_file(folder: Path) -> tuple[Path, dict] | None:
    """Where a transformers folder keeps its image processor settings, and the settings; None when it has none.

    Older transformers (and `ImageProcessor.save_pretrained`) write `preprocessor_config.json`; transformers 5's
    `Processor.save_pretrained` writes a single `processor_config.json` with the image processor nested under
    `"image_processor"`.
    """
    for name in IMAGE_PROCESSOR_FILES:
        path = Path(folder) / name
        if not path.is_file():
            continue
        settings = read_json(path)
        settings = settings.get("image_processor", settings) if name == "processor_config.json" else settings
        if isinstance(settings, dict) and "image_processor_type" in settings:
            return path, settings
    return None


# --- tensors -----------------------------------------------------------------------------------------------------


class SafetensorsStateDict(Mapping):
    """A read-only mapping over one or more `.safetensors` files that loads each tensor only when asked.

    With the default `backend="mmap"` a tensor is a zero-copy view of the file; the pages it touches stay resident
    (counted in RSS) while the file is open. `backend="pread"` reads each tensor into a fresh copy that is freed with
    it, which keeps memory at one copy when a converter transforms tensors into new ones (the source pages would
    otherwise stay resident beside the copies).
    """

    def __init__(self, paths: list[Path], *, backend: Literal["mmap", "pread"] = "mmap"):
        if backend not in ("mmap", "pread"):
            raise ValueError(f"backend={backend!r}: choose 'mmap' or 'pread'.")
        self._files = {}
        self._where = {}
        for path in paths:
            try:
                handle = safe_open(str(path), framework="pt", device="cpu", backend=backend)
            except (SafetensorError, OSError) as error:
                raise CheckpointError(f"{path}: not a readable safetensors file ({error}).") from error
            self._files[path] = handle
            for key in handle.keys():
                self._where[key] = path

    def __getitem__(self, key: str) -> torch.Tensor:
        try:
            return self._files[self._where[key]].get_tensor(key)
        except SafetensorError as error:
            raise CheckpointError(f"{self._where[key]}: tensor {key!r} cannot be read ({error}).") from error

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def load_torch_file(path: str | Path) -> object:
    """`torch.load` with `weights_only=True` (memory-mapped when the file allows it)."""
    path = Path(path)
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:  # legacy (non-zip) serialisation cannot be memory-mapped
            if "mmap" not in str(error):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = next(
            (line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported global" in line), ""
        )
        raise CheckpointError(
            f"{path}: refused to unpickle: it needs code beyond tensors and plain containers to load "
            f"(torch.load with weights_only=True). {reason}".strip()
        ) from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({error}).") from error


def unwrap_state_dict(obj: object, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor state dict inside a checkpoint object: a plain state dict, or a training checkpoint's
    `state_dict`/`model`/`module` entry; DDP `module.` prefixes are stripped."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "module"):
            if key in obj and isinstance(obj[key], Mapping):
                return unwrap_state_dict(obj[key], source)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            if all(k.startswith("module.") for k in tensors):
                tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
            return tensors
    raise CheckpointError(f"{source}: no tensor state dict found.")


def read_state_dict(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Reads `.safetensors`, or `.bin`/`.pt`/`.pth`/`.ckpt` pickles safely, into a state dict, memory-mapped (nothing
    is read until a tensor is used)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        return SafetensorsStateDict([path])
    return unwrap_state_dict(load_torch_file(path), str(path))


def _shards(folder: Path, index_name: str) -> list[Path]:
    weight_map = read_json(folder / index_name).get("weight_map") or {}
    return [folder / name for name in sorted(set(weight_map.values()))]


def read_model_folder(folder: Path, *, fallback: tuple[str, ...] = ()) -> Mapping[str, torch.Tensor]:
    """
    The tensors of a transformers-style model folder, memory-mapped (nothing is read until a tensor is used).

    The first form found is read: `model.safetensors`, the shards of `model.safetensors.index.json`,
    `pytorch_model.bin`, the shards of `pytorch_model.bin.index.json`, then the files of `fallback` in order (pickles
    are read with `weights_only=True`).

    Args:
        folder (`Path`):
            The model folder.
        fallback (`tuple[str, ...]`, *optional*, defaults to `()`):
            Other weight files the source may hold instead, e.g. LLaVA's stage-1 `("mm_projector.bin",)`.
    """
    if (folder / "model.safetensors").is_file():
        return SafetensorsStateDict([folder / "model.safetensors"], backend="mmap")
    if (folder / "model.safetensors.index.json").is_file():
        return SafetensorsStateDict(_shards(folder, "model.safetensors.index.json"), backend="mmap")
    if (folder / "pytorch_model.bin").is_file():
        paths = [folder / "pytorch_model.bin"]
    elif (folder / "pytorch_model.bin.index.json").is_file():
        paths = _shards(folder, "pytorch_model.bin.index.json")
    else:
        paths = [path for path in (folder / name for name in fallback) if path.is_file()][:1]
    if not paths:
        expected = ", ".join(["model.safetensors", "pytorch_model.bin", *fallback])
        raise CheckpointError(f"{folder}: no weights; expected one of {expected} (or a sharded index).")
    state_dict = {}
    for path in paths:
        state_dict.update(unwrap_state_dict(load_torch_file(path), str(path)))
    return state_dict


# --- archives ----------------------------------------------------------------------------------------------------


def check_tar_members(archive: tarfile.TarFile, source: str) -> list[tarfile.TarInfo]:
    """Every member, after refusing absolute paths, `..` components, links and special files."""
    members = archive.getmembers()
    for member in members:
        name = PurePosixPath(member.name)
        drive = bool(name.parts) and ":" in name.parts[0]  # "C:/..." written on Windows
        if name.is_absolute() or member.name.startswith(("/", "\\")) or drive:
            raise CheckpointError(
                f"{source}: archive member {member.name!r} has an absolute path; refusing to extract."
            )
        if ".." in name.parts:
            raise CheckpointError(
                f"{source}: archive member {member.name!r} leaves the folder (..); refusing to extract."
            )
        if member.issym() or member.islnk():
            raise CheckpointError(f"{source}: archive member {member.name!r} is a link; refusing to extract.")
        if not (member.isfile() or member.isdir()):
            raise CheckpointError(f"{source}: archive member {member.name!r} is not a file or folder; refusing.")
    return members


def safe_extract_tar(path: str | Path, dest: str | Path) -> Path:
    """Extracts a tar (plain or gzip) into `dest` once every member has passed `check_tar_members`."""
    path, dest = Path(path), Path(dest)
    try:
        with tarfile.open(path, "r:*") as archive:
            members = check_tar_members(archive, str(path))
            archive.extractall(dest, members=members, filter="data")
    except tarfile.TarError as error:
        raise CheckpointError(f"{path}: not a readable tar archive ({error}).") from error
    return dest
