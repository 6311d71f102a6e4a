"""Model soups: the uniform average of checkpoints of one architecture (how OpenCLIP's convnext_xxlarge "soup"
was made from its runs)."""

from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel

from hfmm.conversion.common.writer import check_destination, write_model_folder

_IGNORED_CONFIG_KEYS = {"_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures", "auto_map"}


def _architecture(path: str | Path) -> dict:
    config = AutoConfig.from_pretrained(path).to_dict()
    return {k: v for k, v in config.items() if k not in _IGNORED_CONFIG_KEYS}


def make_soup(checkpoints: list[str | Path], out: str | Path, *, force: bool = False) -> Path:
    """Averages the weights of `checkpoints` (model folders of one architecture) and saves the result to `out`,
    with the first checkpoint's config and processor files. An existing `out` is refused (unless `force` is set)
    before any checkpoint is read."""
    check_destination(out, force)
    if len(checkpoints) < 2:
        raise ValueError(f"A soup needs at least two checkpoints, got {len(checkpoints)}.")
    reference = _architecture(checkpoints[0])
    for path in checkpoints[1:]:
        other = _architecture(path)
        differing = sorted(k for k in reference.keys() | other.keys() if reference.get(k) != other.get(k))
        if differing:
            raise ValueError(f"{path} is not the architecture of {checkpoints[0]}: config keys {differing} differ.")
    soup = AutoModel.from_pretrained(checkpoints[0], dtype=torch.float32)
    totals = {name: tensor.detach().clone().double() for name, tensor in soup.state_dict().items()}
    for path in tqdm(checkpoints[1:], desc="averaging"):
        state = AutoModel.from_pretrained(path, dtype=torch.float32).state_dict()
        for name, tensor in state.items():
            totals[name] += tensor.double()
    soup.load_state_dict({name: (total / len(checkpoints)).float() for name, total in totals.items()})
    processor = None
    try:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(checkpoints[0])
    except (OSError, ValueError):
        pass  # a checkpoint folder without processor files
    return write_model_folder(soup, out, processor=processor, force=force)
