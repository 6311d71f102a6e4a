"""Output handling shared by the converters: write into a temporary folder beside DST, rename at the end."""

import contextlib
import json
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

PROVENANCE_FILE = "conversion.json"


def check_destination(dst: str | Path, force: bool = False) -> None:
    """Raises `FileExistsError` when `dst` exists and `force` is not set; call it before any heavy work."""
    if Path(dst).exists() and not force:
        raise FileExistsError(f"{dst} exists; pass --force to overwrite it.")


def _make_temporary_dir(dst: Path) -> Path:
    """A new empty folder beside `dst`. Unlike `tempfile.mkdtemp` (always 0o700) it is created with mode 0o777 less
    the umask, as `save_pretrained` creates folders, since it becomes the output folder itself."""
    for _ in range(100):
        tmp = dst.parent / f".{dst.name}.tmp-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary folder name beside {dst}.")


@contextlib.contextmanager
def atomic_output_dir(dst: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yields a temporary folder next to `dst` that becomes `dst` only if the block succeeds.

    A failure leaves no `dst` and no temporary folder. An existing `dst` is refused unless `force` is set, in which
    case it is replaced only after the new output is complete. The folder's mode follows the umask.
    """
    dst = Path(dst)
    check_destination(dst, force=force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = _make_temporary_dir(dst)
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_provenance(
    folder: str | Path,
    *,
    converter: str,
    source: str | Path,
    notes=(),
    differences=None,
    arguments: Sequence[str] | None = None,
) -> Path:
    """Records where a converted folder came from in `conversion.json` (read by the model cards): the converter
    script and its exact arguments (`python <converter> <arguments>` re-runs the conversion; None when it was called
    as a library), the source checkpoint, the converter's notes and the measured differences from the source model."""
    from hfmm import __version__

    record = {
        "converter": converter,
        "arguments": None if arguments is None else list(arguments),
        "source": str(source),
        "notes": list(notes),
        "max_difference_from_source": differences,
        "hfmm_version": __version__,
    }
    path = Path(folder) / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def write_model_folder(
    model, dst: str | Path, *, processor=None, force: bool = False, max_shard_size: str = "5GB", provenance=None
) -> Path:
    """Saves `model` (safetensors, sharded above `max_shard_size`) and `processor` into `dst` atomically; a
    `provenance` dict (`write_provenance`'s keywords) is recorded in `conversion.json`."""
    with atomic_output_dir(dst, force=force) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if processor is not None:
            processor.save_pretrained(tmp)
        if provenance is not None:
            write_provenance(tmp, **provenance)
    return Path(dst)
