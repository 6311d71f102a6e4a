"""Safe, lazy readers for the checkpoint files the converters take, and the writer of hfmm model folders.

Pickles are read only with `weights_only=True` (a pickle that needs code is refused); archives are extracted only
after every member has been checked (no absolute paths, no `..`, no links or devices).
"""

import json
import pickle
import tarfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath

import torch
from safetensors import SafetensorError, safe_open

from hfmm.conversion.common.writer import atomic_output_dir, write_provenance


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or converted; the message names the file and the problem."""


# --- processor files ---------------------------------------------------------------------------------------------

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
        try:
            settings = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointError(f"{path}: not a readable JSON file ({error}).") from error
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

    def __init__(self, paths: list[Path], *, backend: str = "mmap"):
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
    """Reads `.safetensors` lazily, or `.bin`/`.pt`/`.pth`/`.ckpt` pickles safely, into a state dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        return SafetensorsStateDict([path])
    return unwrap_state_dict(load_torch_file(path), str(path))


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


# --- writing -----------------------------------------------------------------------------------------------------


def write_model_folder(
    model, dst: str | Path, *, processor=None, force: bool = False, max_shard_size: str = "5GB", provenance=None
):
    """Saves `model` (safetensors, sharded above `max_shard_size`) and `processor` into `dst` atomically; a
    `provenance` dict (`write_provenance`'s keywords) is recorded in `conversion.json`."""
    with atomic_output_dir(dst, force=force) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(tmp)
        if provenance is not None:
            write_provenance(tmp, **provenance)
    return Path(dst)
