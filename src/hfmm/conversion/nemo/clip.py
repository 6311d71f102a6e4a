"""NeMo CLIP checkpoint -> hfmm model folder: the tokenizer, the model assembled on the meta device, the written folder.

Used by `hfmm convert nemo-clip` (`convert/nemo_clip_to_hfmm.py`); see `archive.py` for the readers and
`clip_mapping.py` for the config and key maps.
"""

import json
from pathlib import Path

from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.common.result import ConversionResult
from hfmm.conversion.common.writer import check_destination, write_model_folder
from hfmm.conversion.nemo.archive import NemoCheckpoint, nemo2_tokenizer_folders, open_nemo_checkpoint
from hfmm.conversion.nemo.clip_mapping import assemble_model, config_from_nemo1, config_from_nemo2
from hfmm.models.clip import HfmmCLIPModel
from hfmm.models.clip.processing_clip import HfmmCLIPImageProcessor, HfmmCLIPProcessor, HfmmCLIPTokenizer

# HF's CLIP vocab.json spells the special tokens differently from OpenCLIP (and hfmm); the ids are the same.
_HF_SPECIAL_TOKENS = {"<|startoftext|>": "<start_of_text>", "<|endoftext|>": "<end_of_text>"}


def _read_bpe_files(vocab_file: Path, merges_file: Path, source: str) -> HfmmCLIPTokenizer:
    try:
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{source}: the tokenizer files cannot be read ({error}).") from error
    vocab = {_HF_SPECIAL_TOKENS.get(token, token): index for token, index in vocab.items()}
    missing = [token for token in _HF_SPECIAL_TOKENS.values() if token not in vocab]
    if missing:
        raise CheckpointError(f"{source}: {vocab_file.name} lacks the CLIP special token(s) {missing}.")
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#version")]
    return HfmmCLIPTokenizer(vocab=vocab, merges=merges)


def _artifact(root: Path, value: str | None) -> Path | None:
    """The file a NeMo 1 config entry such as `nemo:3f2a..._vocab.json` names inside the archive, if there."""
    if not value:
        return None
    path = root / Path(str(value).removeprefix("nemo:")).name
    return path if path.is_file() else None


def nemo_tokenizer(checkpoint: NemoCheckpoint) -> tuple[HfmmCLIPTokenizer, str]:
    """The checkpoint's own BPE files (NeMo 1 `vocab_file`/`merge_file` artifacts, NeMo 2 `context/<tokenizer>/`)
    when it carries them, else hfmm's CLIP BPE tokenizer, which is what NeMo's `openai/clip-vit-*` tokenizer is."""
    root = checkpoint.root
    if checkpoint.nemo_version == 1:
        spec = checkpoint.config.get("tokenizer") or {}
        files = (_artifact(root, spec.get("vocab_file")), _artifact(root, spec.get("merge_file")))
        name = spec.get("type") or ""
        if spec.get("model"):
            raise CheckpointError(
                f"tokenizer: a SentencePiece model ({spec['model']}); hfmm's CLIP uses the CLIP BPE."
            )
    else:
        spec = checkpoint.config.get("tokenizer") or {}
        folder = next((d for d in nemo2_tokenizer_folders(checkpoint) if (d / "vocab.json").is_file()), None)
        files = (folder / "vocab.json", folder / "merges.txt") if folder and (folder / "merges.txt").is_file() else ()
        name = spec.get("pretrained_model_name") or ""
    if files and all(files):
        return _read_bpe_files(*files, source=f"{checkpoint.weights} tokenizer"), f"tokenizer from {files[0].name}"
    if name and "clip" not in name.lower():
        raise CheckpointError(
            f"tokenizer {name!r} is not a CLIP tokenizer and the checkpoint carries no vocab/merges files for it."
        )
    return HfmmCLIPTokenizer.from_package(), f"tokenizer: hfmm's CLIP BPE ({name or 'none named'} in the config)"


def build_clip(
    checkpoint: NemoCheckpoint, *, progress: bool = False
) -> tuple[HfmmCLIPModel, HfmmCLIPProcessor, list[str]]:
    """The hfmm model and processor of an opened NeMo CLIP checkpoint (parameters assigned from the checkpoint's
    tensors, so memory holds about one copy of the weights)."""
    patch_bias = any(key.endswith("linear_encoder.bias") for key in checkpoint.shards[0])
    if checkpoint.nemo_version == 1:
        config, layout, notes = config_from_nemo1(checkpoint.config, patch_bias=patch_bias)
    else:
        config, layout, notes = config_from_nemo2(checkpoint.config)
    tokenizer, tokenizer_note = nemo_tokenizer(checkpoint)
    vocab_size = len(tokenizer)
    if tokenizer.eos_token_id != vocab_size - 1:
        raise CheckpointError(
            "the tokenizer's end-of-text id is not its largest id: NeMo pools the text at the largest id, hfmm at "
            "end-of-text, so the two would differ."
        )
    text = config.text_config
    text.vocab_size, text.eos_token_id, text.bos_token_id = vocab_size, tokenizer.eos_token_id, tokenizer.bos_token_id
    text.pad_token_id = tokenizer.pad_token_id
    model = assemble_model(checkpoint.shards, config, layout, progress=progress)
    dtypes = {param.dtype for param in model.parameters()}
    if len(dtypes) == 1:
        model.config.dtype = next(iter(dtypes))
    image_processor = HfmmCLIPImageProcessor.from_vision_config(config.vision_config)
    processor = HfmmCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model.eval(), processor, [*notes, tokenizer_note]


def convert_nemo_clip_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    force: bool = False,
    max_shard_size: str = "5GB",
    progress: bool = False,
    arguments: list[str] | None = None,
) -> ConversionResult:
    """
    Converts a NeMo CLIP checkpoint into an hfmm CLIP folder (`config.json`, `model.safetensors`, tokenizer and
    image processor files).

    Args:
        src (`str` or `Path`):
            A NeMo 1 `.nemo` file (plain or gzip tar) or its extracted folder, or a NeMo 2 checkpoint folder
            (`context/` + `weights/`).
        dst (`str` or `Path`):
            Output folder; it appears only once complete.
        force (`bool`, *optional*, defaults to `False`):
            Replace an existing `dst`.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`):
            Split the weights above this size.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar over the tensors.
        arguments (`list[str]`, *optional*):
            The converter script's command-line arguments, recorded in `conversion.json` so the conversion can be
            re-run (the model card shows the command).

    Raises:
        `CheckpointError` (a `ValueError`) for unreadable, unsafe or unsupported checkpoints, naming the file or key;
        `FileExistsError` when `dst` exists and `force` is not set.
    """
    dst = Path(dst)
    check_destination(dst, force)
    with open_nemo_checkpoint(src) as checkpoint:
        model, processor, notes = build_clip(checkpoint, progress=progress)
        result = ConversionResult(dst, notes, weights=checkpoint.weights)
        provenance = result.provenance("convert/nemo_clip_to_hfmm.py", src, arguments)
        write_model_folder(
            model, dst, processor=processor, force=force, max_shard_size=max_shard_size, provenance=provenance
        )
        return result
