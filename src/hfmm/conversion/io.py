"""Output handling shared by the converters: write into a temporary folder beside DST, rename at the end."""

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

PROVENANCE_FILE = "conversion.json"


@contextlib.contextmanager
def atomic_output_dir(dst: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Yields a temporary folder next to `dst` that becomes `dst` only if the block succeeds.

    A failure leaves no `dst` and no temporary folder. An existing `dst` is refused unless `force` is set, in which
    case it is replaced only after the new output is complete.
    """
    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f"{dst} exists; pass --force to overwrite it.")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
        if dst.exists():
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def write_provenance(folder: str | Path, *, converter: str, source: str | Path, notes=(), differences=None) -> Path:
    """Records where a converted folder came from in `conversion.json` (read by the model cards): the converter
    script, the source checkpoint, the converter's notes and the measured differences from the source model."""
    from hfmm import __version__

    record = {
        "converter": converter,
        "source": str(source),
        "notes": list(notes),
        "max_difference_from_source": differences,
        "hfmm_version": __version__,
    }
    path = Path(folder) / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
