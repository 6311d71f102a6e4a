"""transformers-native `CLIPModel` folders (most OpenAI and LAION CLIP weights on the Hub) -> hfmm CLIP folders, exactly.

The reverse of `convert/to_transformers.py`: parameter names are shared, `logit_scale` becomes a `(1,)` tensor, each
tower keeps its `hidden_act`, and the image preprocessing comes from the folder's `preprocessor_config.json`.
"""

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from hfmm.conversion.common.key_maps import build_model
from hfmm.conversion.common.readers import CheckpointError, image_processor_file, read_json, read_model_folder
from hfmm.conversion.common.result import ConversionResult
from hfmm.conversion.common.verification import check_differences, embedding_differences, write_clip_folder
from hfmm.conversion.common.writer import check_destination
from hfmm.conversion.transformers.clip_mapping import (
    TRANSFORMERS_KEYS,
    from_transformers_config,
    preprocessing_from_processor_config,
)
from hfmm.models.clip import HfmmCLIPModel
from hfmm.models.clip.processing_clip import HfmmCLIPTokenizer


def read_config(src: Path) -> CLIPConfig:
    """The `CLIPConfig` of a transformers folder; anything else is refused, naming its `model_type`."""
    path = src / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{src}: no config.json (is it a transformers CLIPModel folder?).")
    model_type = read_json(path).get("model_type")
    if model_type != "clip":
        hint = " (already an hfmm folder)" if str(model_type).startswith("hfmm") else ""
        raise CheckpointError(f"{path}: model_type={model_type!r}, not a transformers CLIPModel ('clip'){hint}.")
    return CLIPConfig.from_pretrained(src)


def _source_vocab(src: Path) -> dict | None:
    if (src / "vocab.json").is_file():
        return read_json(src / "vocab.json")
    if (src / "tokenizer.json").is_file():
        return (read_json(src / "tokenizer.json").get("model") or {}).get("vocab")
    return None


def check_tokenizer(src: Path) -> str | None:
    """Refuses a folder whose tokenizer vocabulary is not CLIP's BPE (the one hfmm ships); a note when it has none."""
    vocab = _source_vocab(src)
    if vocab is None:
        return "SRC has no tokenizer files; DST gets hfmm's CLIP tokenizer"
    ours = HfmmCLIPTokenizer.from_package().get_vocab()
    ordinary = {token: i for token, i in ours.items() if i < 49406}  # the two special tokens are named differently
    if len(vocab) != len(ours) or {token: i for token, i in vocab.items() if i < 49406} != ordinary:
        raise CheckpointError(f"{src}: its tokenizer vocabulary is not CLIP's BPE vocabulary, the one hfmm ships.")
    return None


def read_hfmm_config(src: Path):
    """The hfmm config of a transformers CLIP folder, and notes on the preprocessing."""
    config = read_config(src)
    notes = []
    preprocessing = {}
    if (found := image_processor_file(src)) is not None:
        path, processor_config = found
        preprocessing, notes = preprocessing_from_processor_config(processor_config, config.vision_config.image_size)
        notes.append(f"preprocessing from {path.name}")
    else:
        notes.append("SRC has no preprocessor_config.json or processor_config.json: OpenAI CLIP preprocessing")
    if config.text_config.eos_token_id == 2:
        notes.append("legacy eos_token_id 2 (argmax pooling): hfmm pools at the first 49407, the same token")
    return from_transformers_config(config, preprocessing), notes


@torch.no_grad()
def verify(model: HfmmCLIPModel, src: Path) -> dict[str, float]:
    """Embedding differences against transformers' own `CLIPModel` loaded from `src` (raises beyond 1e-5)."""
    native = CLIPModel.from_pretrained(src, dtype=torch.float32).eval()
    differences = embedding_differences(
        model,
        lambda pixels: native.get_image_features(pixel_values=pixels).pooler_output,
        lambda ids: native.get_text_features(input_ids=ids).pooler_output,
    )
    check_differences(differences, "transformers' CLIPModel")
    return differences


def convert_transformers_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    verify_outputs: bool = True,
    force: bool = False,
    max_shard_size: str = "5GB",
    progress: bool = False,
    arguments: list[str] | None = None,
) -> ConversionResult:
    """
    Converts a transformers `CLIPModel` folder into an hfmm CLIP folder, exactly (the weights are copied unchanged).

    Args:
        src (`str` or `Path`):
            Folder with `config.json` (`model_type: clip`) and `model.safetensors` / `pytorch_model.bin` (or shards).
        dst (`str` or `Path`):
            Output folder; appears only once complete.
        verify_outputs (`bool`, *optional*, defaults to `True`):
            Compare image and text embeddings with transformers' `CLIPModel` (≤ 1e-5) before writing.
        force (`bool`, *optional*, defaults to `False`):
            Replace an existing `dst`.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`):
            Weights above this size are split into shards.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar.
        arguments (`list[str]`, *optional*):
            The converter script's command-line arguments, recorded in `conversion.json` so the conversion can be
            re-run (the model card shows the command).
    """
    check_destination(dst, force)
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a folder (a transformers CLIPModel folder is expected).")
    config, notes = read_hfmm_config(src)
    if (tokenizer_note := check_tokenizer(src)) is not None:
        notes.append(tokenizer_note)
    model = build_model(HfmmCLIPModel, config, read_model_folder(src), TRANSFORMERS_KEYS, progress=progress)
    result = ConversionResult(Path(dst), notes=notes)
    if verify_outputs:
        result.differences = verify(model, src)
    else:
        result.notes.append("verification skipped (--no-verify)")
    provenance = result.provenance("convert/transformers_to_hfmm.py", src, arguments)
    write_clip_folder(model, dst, force=force, max_shard_size=max_shard_size, provenance=provenance)
    return result
