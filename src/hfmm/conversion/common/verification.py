"""What every CLIP converter ends with: the processor of the converted model, the embedding check against the source
implementation, and the written folder."""

import copy
from collections.abc import Callable
from pathlib import Path

import torch

from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.common.writer import write_model_folder
from hfmm.models.clip import HfmmCLIPConfig, HfmmCLIPModel, HfmmSigLIPConfig, HfmmSigLIPModel
from hfmm.models.clip.processing_clip import HfmmCLIPImageProcessor, HfmmCLIPProcessor, HfmmCLIPTokenizer

TOLERANCE = 1e-5
CLIP_VOCAB_SIZE = 49408
_TEXTS = ["a photo of a cat", "a diagram of a rocket engine, drawn in ink", "Ünïcödé &amp; emoji 🐈 " * 4]


def model_class(config: HfmmCLIPConfig) -> type[HfmmCLIPModel]:
    """[`HfmmSigLIPModel`] for a sigmoid-loss config, [`HfmmCLIPModel`] otherwise."""
    return HfmmSigLIPModel if isinstance(config, HfmmSigLIPConfig) else HfmmCLIPModel


def clip_processor(config: HfmmCLIPConfig) -> HfmmCLIPProcessor:
    """OpenCLIP-exact tokenizer and image processor of a converted model (image size, mean/std, interpolation and
    resize mode from its vision config; context length from its text config)."""
    text = config.text_config
    if text.vocab_size != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={text.vocab_size}: hfmm ships the CLIP BPE tokenizer ({CLIP_VOCAB_SIZE} tokens) only."
        )
    return HfmmCLIPProcessor(
        image_processor=HfmmCLIPImageProcessor.from_vision_config(config.vision_config),
        tokenizer=HfmmCLIPTokenizer.from_package(model_max_length=text.max_position_embeddings),
    )


def sample_inputs(config: HfmmCLIPConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image and tokenized texts (padded with 0 to the full context, as OpenCLIP's `encode_text` needs).

    One image: a forward pass of a large tower on CPU takes seconds, and nothing in the towers mixes the batch."""
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=generator)  # (1, 3, H, W)
    context = config.text_config.max_position_embeddings
    tokenizer = HfmmCLIPTokenizer.from_package(model_max_length=context)
    ids = tokenizer(_TEXTS, padding="max_length", max_length=context, truncation=True, return_tensors="pt")
    return pixels, ids["input_ids"]  # (3, context)


def _relative_difference(ours: torch.Tensor, reference: torch.Tensor) -> float:
    scale = max(1.0, reference.abs().max().item())
    return (ours.float() - reference.float()).abs().max().item() / scale


@torch.no_grad()
def embedding_differences(
    model: HfmmCLIPModel,
    encode_image: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """
    Compares the projected embeddings of `model` with those of the source implementation, in fp32.

    Args:
        model ([`HfmmCLIPModel`]):
            The converted model (a float32 copy is used when it holds another dtype).
        encode_image (`Callable`):
            Source image encoder: pixels `(batch_size, 3, image_size, image_size)` -> `(batch_size, projection_dim)`.
        encode_text (`Callable`):
            Source text encoder: ids `(batch_size, context_length)` -> `(batch_size, projection_dim)`.

    Returns:
        `dict[str, float]`: per tower, max |ours - reference| / max(1, max |reference|).
    """
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
    pixels, ids = sample_inputs(model.config)
    return {
        "image": _relative_difference(model.get_image_features(pixels).pooler_output, encode_image(pixels)),
        "text": _relative_difference(model.get_text_features(ids).pooler_output, encode_text(ids)),
    }


def check_differences(differences: dict[str, float], source: str) -> None:
    """Raises `CheckpointError` when an embedding differs from the source implementation's by more than 1e-5."""
    bad = {tower: diff for tower, diff in differences.items() if not diff <= TOLERANCE}
    if bad:
        found = ", ".join(f"{tower} {diff:.3g}" for tower, diff in bad.items())
        raise CheckpointError(f"converted embeddings differ from {source}'s ({found} > {TOLERANCE}); nothing written.")


def write_clip_folder(
    model: HfmmCLIPModel, dst: str | Path, *, force: bool, max_shard_size: str, provenance: dict | None = None
) -> Path:
    """Writes `config.json`, the safetensors weights (sharded above `max_shard_size`), the modeling files, the
    processor and `conversion.json` (from `provenance`) into `dst`, atomically."""
    return write_model_folder(
        model,
        dst,
        processor=clip_processor(model.config),
        force=force,
        max_shard_size=max_shard_size,
        provenance=provenance,
    )
