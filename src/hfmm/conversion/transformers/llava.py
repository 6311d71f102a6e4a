"""LLaVA checkpoints -> hfmm NeVA folders, exactly: transformers `LlavaForConditionalGeneration` folders (every key
layout transformers has written), original haotian-liu LLaVA folders, and projector-only stage-1 folders completed
with `--llm` / `--vision`.

The NeVA's parameter names are Llava's (v5 in-memory) names, so the maps below only undo the older layouts.
"""

import copy
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from hfmm.conversion.common.key_maps import KeyMap, build_model, same
from hfmm.conversion.common.readers import CheckpointError, read_json, read_model_folder
from hfmm.conversion.common.result import ConversionResult
from hfmm.conversion.common.writer import check_destination, write_model_folder
from hfmm.conversion.transformers.neva_parts import (
    IDENTITY,
    LANGUAGE_MODEL,
    LLM_PART_KEYS,
    VISION,
    VISION_PART_KEYS,
    add_image_token,
    load_image_processor,
    read_part,
)
from hfmm.models.neva import NevaConfig, NevaForConditionalGeneration
from hfmm.models.neva.processing_neva import NevaProcessor

PROJECTOR = r"(linear_[12]\.(?:weight|bias))"

# transformers Llava folders: v5 in-memory names, what 5.x `save_pretrained` writes, and pre-4.52 Hub repos.
LLAVA_KEYS = KeyMap(
    {
        rf"model\.vision_tower\.{VISION}": ("model.vision_tower.{0}", same),
        rf"vision_tower\.vision_model\.{VISION}": ("model.vision_tower.{0}", same),
        rf"vision_tower\.{VISION}": ("model.vision_tower.{0}", same),
        rf"model\.multi_modal_projector\.{PROJECTOR}": ("model.multi_modal_projector.{0}", same),
        rf"multi_modal_projector\.{PROJECTOR}": ("model.multi_modal_projector.{0}", same),
        rf"model\.language_model\.{LANGUAGE_MODEL}": ("model.language_model.{0}", same),
        rf"language_model\.model\.{LANGUAGE_MODEL}": ("model.language_model.{0}", same),
        r"lm_head\.weight": ("lm_head.weight", same),
        r"language_model\.lm_head\.weight": ("lm_head.weight", same),
        r"(?:model\.)?vision_tower\.(?:vision_model\.)?embeddings\.position_ids": None,
        r".*\.rotary_emb\.inv_freq": None,
    },
    source="transformers Llava",
)

# Original LLaVA (`LlavaLlamaForCausalLM`): `model.mm_projector.{0,2}` (mlp2x_gelu) or `model.mm_projector` (linear),
# `model.vision_tower.vision_tower.vision_model.*` when the tower was saved, the LLaMA under `model.`.
ORIGINAL_KEYS = KeyMap(
    {
        r"model\.mm_projector\.0\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same),
        r"model\.mm_projector\.2\.(weight|bias)": ("model.multi_modal_projector.linear_2.{0}", same),
        r"model\.mm_projector\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same),
        rf"model\.vision_tower\.vision_tower\.vision_model\.{VISION}": ("model.vision_tower.{0}", same),
        r"model\.vision_tower\.vision_tower\.vision_model\.embeddings\.position_ids": None,
        r"model\.((?:embed_tokens|norm)\.weight|layers\.\d+\.(?!self_attn\.rotary_emb\.inv_freq$).+)": (
            "model.language_model.{0}",
            same,
        ),
        r"lm_head\.weight": ("lm_head.weight", same),
        r".*\.rotary_emb\.inv_freq": None,
    },
    source="original LLaVA",
)

ORIGINAL_MODEL_TYPES = ("llava_llama", "llava_mistral", "llava")


def _vision_config(folder: Path):
    config = AutoConfig.from_pretrained(folder)
    vision = getattr(config, "vision_config", config)
    if vision.model_type != "clip_vision_model":
        raise CheckpointError(
            f"{folder}: --vision must be a transformers CLIP folder, got model_type {config.model_type!r}."
        )
    return vision


def _source_chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return read_json(folder / "chat_template.json").get("chat_template")
    return None


def _reference_logits(model: NevaForConditionalGeneration, llava: LlavaForConditionalGeneration) -> float:
    """The largest logit difference on one image and a short prompt, in fp32."""
    if any(parameter.dtype != torch.float32 for parameter in model.parameters()):
        model = copy.deepcopy(model).float()
    config = model.config
    generator = torch.Generator().manual_seed(0)
    size = config.vision_config.image_size
    pixels = torch.randn(1, 3, size, size, generator=generator)
    text = torch.randint(0, min(config.text_config.vocab_size, 1000), (12,), generator=generator)
    text[text == config.image_token_id] = config.text_config.bos_token_id or 1  # image tokens only where placed
    image = torch.full((config.image_seq_length,), config.image_token_id)
    ids = torch.cat([text[:4], image, text[4:]]).unsqueeze(0)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits
        theirs = llava(input_ids=ids, pixel_values=pixels).logits
    return (ours - theirs).abs().max().item()


# NeVA and Llava config fields of the same name and meaning
_SHARED_FIELDS = (
    "projector_hidden_act",
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "multimodal_projector_bias",
)


def _shared_fields(config: NevaConfig | LlavaConfig) -> dict:
    """The towers and the projector settings, which a NeVA and a Llava config hold alike."""
    towers = {"vision_config": config.vision_config.to_dict(), "text_config": config.text_config.to_dict()}
    return towers | {name: getattr(config, name) for name in _SHARED_FIELDS}


def _llava_config_of(config: NevaConfig) -> LlavaConfig:
    return LlavaConfig(
        **_shared_fields(config), image_token_index=config.image_token_id, image_seq_length=config.image_seq_length
    )


def _check(difference: float, source: str) -> None:
    if not difference <= 1e-5:  # NaN fails too
        raise CheckpointError(
            f"the converted NeVA differs from {source} by {difference:.3g} (> 1e-5); nothing written."
        )


# --- the three sources ---------------------------------------------------------------------------------------------


def _from_transformers_llava(src: Path, verify: bool, notes: list[str]):
    llava_config = LlavaConfig.from_pretrained(src)
    if llava_config.vision_config.model_type != "clip_vision_model":
        raise CheckpointError(
            f"{src}: a {llava_config.vision_config.model_type} vision tower; the converter reads CLIP vision towers."
        )
    if not isinstance(llava_config.vision_feature_layer, int):
        raise CheckpointError(
            f"{src}: vision_feature_layer={llava_config.vision_feature_layer} (several layers) has no NeVA equivalent."
        )
    config = NevaConfig(
        **_shared_fields(llava_config),
        projector_type="mlp2x_gelu",
        image_token_id=llava_config.image_token_id,
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )
    image_processor = load_image_processor(src, pad=False)  # the cheap checks first
    tokenizer = AutoTokenizer.from_pretrained(src)
    chat_template = _source_chat_template(src) or NevaProcessor.chat_template_for("v1")
    processor = NevaProcessor.from_model_config(config, image_processor, tokenizer, chat_template)
    model = build_model(NevaForConditionalGeneration, config, read_model_folder(src), LLAVA_KEYS)
    difference = None
    if verify:
        difference = _reference_logits(
            model, LlavaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
        )
        _check(difference, "transformers' LlavaForConditionalGeneration")
    return model, processor, difference


def _original_text_config(source: dict):
    text = {k: v for k, v in source.items() if not k.startswith(("mm_", "tune_mm", "freeze_mm", "unfreeze_mm"))}
    text.pop("architectures", None)
    base_type = "mistral" if source.get("model_type") == "llava_mistral" else "llama"
    text["model_type"] = base_type
    return AutoConfig.for_model(**text)


def _check_original_parts(src: Path, source: dict, projector_only: bool, has_tower: bool, llm, vision) -> None:
    """Refuses an original LLaVA folder whose missing parts were not given (`--llm`, `--vision`), naming them."""
    if projector_only and llm is None:
        raise CheckpointError(
            f"{src} holds only the projector (a stage-1 folder): give --llm (a transformers causal-LM folder) and "
            "--vision (a transformers CLIP folder)."
        )
    if not has_tower and vision is None:
        raise CheckpointError(
            f"{src} has no vision tower weights (LLaVA loads {source.get('mm_vision_tower', 'its CLIP tower')} at "
            "run time): give --vision (a transformers CLIP folder)."
        )
    if vision is None:
        raise CheckpointError(f"{src}: the vision tower's config comes from --vision (a transformers CLIP folder).")
    if source.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError(
            f"{src}: mm_vision_select_feature={source['mm_vision_select_feature']!r} is not supported."
        )


def _original_config(src: Path, source: dict, weights: Mapping, text_config, tokenizer, vision: Path) -> NevaConfig:
    """The NeVA config of an original LLaVA folder (`source`: its `config.json`) with the tower of `vision`."""
    projector_type = source.get("mm_projector_type") or (
        "mlp2x_gelu" if any(k.startswith("model.mm_projector.2") for k in weights) else "linear"
    )
    if projector_type not in ("linear", "mlp2x_gelu"):
        raise CheckpointError(
            f"{src}: mm_projector_type={projector_type!r} has no NeVA equivalent (linear, mlp2x_gelu)."
        )
    start_end = {}
    if source.get("mm_use_im_start_end"):
        ids = tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
        if tokenizer.unk_token_id in ids:
            raise CheckpointError(
                f"{tokenizer.name_or_path}: mm_use_im_start_end is set but the tokenizer lacks <im_start>/<im_end>."
            )
        start_end = {"use_im_start_end": True, "im_start_token_id": ids[0], "im_end_token_id": ids[1]}
    return NevaConfig(
        vision_config=_vision_config(vision).to_dict(),
        text_config=text_config.to_dict(),
        projector_type=projector_type,
        vision_feature_layer=source.get("mm_vision_select_layer", -2),
        image_token_id=text_config.vocab_size,  # set for real once <image> is added
        conv_template="v1",
        **start_end,
    )


def _from_original_llava(src: Path, llm: Path | None, vision: Path | None, verify: bool, notes: list[str]):
    source = read_json(src / "config.json") if (src / "config.json").is_file() else {}
    weights = read_model_folder(src, fallback=("mm_projector.bin",))
    projector_only = all(key.startswith("model.mm_projector") for key in weights)
    has_tower = any(key.startswith("model.vision_tower.") for key in weights)
    _check_original_parts(src, source, projector_only, has_tower, llm, vision)
    tokenizer = AutoTokenizer.from_pretrained(llm if projector_only else src)
    text_config = AutoConfig.from_pretrained(llm) if projector_only else _original_text_config(source)
    config = _original_config(src, source, weights, text_config, tokenizer, vision)
    parts = ORIGINAL_KEYS.convert(weights)
    if projector_only:
        parts.update(read_part(llm, LLM_PART_KEYS))
    if not has_tower:
        parts.update(read_part(vision, VISION_PART_KEYS))
    model = build_model(NevaForConditionalGeneration, config, parts, IDENTITY)
    if model.model.multi_modal_projector.linear_1.weight.shape[1] != config.vision_config.hidden_size:
        raise CheckpointError("the projector's input width does not match the vision tower's hidden size.")
    reference = None
    if verify:
        reference = _original_reference(
            src, config, weights, llm=llm if projector_only else None, vision=None if has_tower else vision
        )
    add_image_token(model, tokenizer, notes)
    if reference is not None:
        _copy_new_rows(model, reference, notes)
    pad = source.get("image_aspect_ratio") == "pad"
    if pad:
        notes.append("image_aspect_ratio 'pad': images are padded to square with the mean colour (Llava's processor)")
    processor = NevaProcessor.from_model_config(
        model.config, load_image_processor(src, vision, pad=pad), tokenizer, NevaProcessor.chat_template_for("v1")
    )
    difference = None
    if reference is not None:
        difference = _reference_logits(model, reference)
        _check(difference, "transformers' Llava loading the original folder through its key_mapping")
    elif verify:
        notes.append(
            "not verified: transformers' Llava cannot represent this model (the keys and shapes were checked)"
        )
    return model, processor, difference


ORIGINAL_KEY_MAPPING = {  # research/hf_integration.md §3.6: transformers' Llava reads an original folder with these
    r"^model\.mm_projector\.0": "model.multi_modal_projector.linear_1",
    r"^model\.mm_projector\.2": "model.multi_modal_projector.linear_2",
    r"^model\.vision_tower\.vision_tower\.vision_model": "model.vision_tower",
    r"^model\.(embed_tokens|layers|norm)": r"model.language_model.\1",
}


def _original_reference(
    src: Path, config: NevaConfig, weights: Mapping[str, torch.Tensor], *, llm: Path | None, vision: Path | None
) -> LlavaForConditionalGeneration | None:
    """
    The ground truth, before any embedding resize: transformers' own Llava holding the same sources, read by
    transformers' loaders: the original folder through `ORIGINAL_KEY_MAPPING`, `llm` as an `AutoModelForCausalLM`
    (stage 1) and `vision` as a `CLIPVisionModel` (a folder without the tower); a stage-1 projector is named as
    `ORIGINAL_KEY_MAPPING` names it, spelled out rather than through the converter's map. `None` when Llava cannot
    represent the model (a linear projector, start/end tokens).
    """
    if config.projector_type != "mlp2x_gelu" or config.use_im_start_end:
        return None
    llava_config = _llava_config_of(config)
    if llm is None:
        llava = LlavaForConditionalGeneration.from_pretrained(
            src, config=llava_config, key_mapping=ORIGINAL_KEY_MAPPING, dtype=torch.float32
        )
    else:  # a stage-1 folder: the projector from src, the language model from llm
        with torch.device("meta"):
            llava = LlavaForConditionalGeneration(llava_config)
        language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=torch.float32)
        llava.model.language_model, llava.lm_head = language_model.model, language_model.lm_head
        projector = {  # model.mm_projector.0 -> linear_1, model.mm_projector.2 -> linear_2
            f"linear_{index}.{name}": weights[f"model.mm_projector.{source}.{name}"].float()
            for index, source in ((1, 0), (2, 2))
            for name in ("weight", "bias")
        }
        llava.model.multi_modal_projector.load_state_dict(projector, strict=True, assign=True)
    if vision is not None:
        llava.model.vision_tower = CLIPVisionModel.from_pretrained(vision, dtype=torch.float32)
    return llava.eval()


def _copy_new_rows(model: NevaForConditionalGeneration, reference: LlavaForConditionalGeneration, notes: list[str]):
    """Gives the reference the converted model's new embedding rows, so that both see the same vocabulary."""
    rows = model.get_input_embeddings().num_embeddings
    reference.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        reference.get_input_embeddings().weight.copy_(model.get_input_embeddings().weight)
        reference.lm_head.weight.copy_(model.lm_head.weight)
    reference.config.image_token_id = model.config.image_token_id


def convert_llava_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    verify_outputs: bool = True,
    force: bool = False,
    max_shard_size: str = "5GB",
    arguments: list[str] | None = None,
) -> ConversionResult:
    """
    Converts a LLaVA folder into an hfmm NeVA folder (config, safetensors, processor with chat template).

    Args:
        src (`str` or `Path`):
            A transformers Llava folder (`model_type: llava`), an original LLaVA folder (`llava_llama`, ...), or a
            stage-1 folder holding only `mm_projector.bin`.
        dst (`str` or `Path`):
            Output folder; appears only once complete.
        llm (`str` or `Path`, *optional*):
            A transformers causal-LM folder, for a projector-only `src`.
        vision (`str` or `Path`, *optional*):
            A transformers CLIP (or CLIPVision) folder, for a `src` without the vision tower.
        verify_outputs (`bool`, *optional*, defaults to `True`):
            Compare logits with transformers' Llava (≤ 1e-5) before writing, where `src` is complete.
        force (`bool`, *optional*, defaults to `False`):
            Replace an existing `dst`.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`):
            Weights above this size are split into shards.
        arguments (`list[str]`, *optional*):
            The converter script's command-line arguments, recorded in `conversion.json` so the conversion can be
            re-run (the model card shows the command).
    """
    check_destination(dst, force)
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a folder.")
    for name, part in (("--llm", llm), ("--vision", vision)):
        if part is not None and not Path(part).is_dir():
            raise CheckpointError(f"{name} {part}: not a folder.")
    llm, vision = (Path(llm) if llm else None), (Path(vision) if vision else None)
    notes: list[str] = []
    model_type = read_json(src / "config.json").get("model_type") if (src / "config.json").is_file() else None
    if model_type == "llava" and not _is_original(src):
        model, processor, difference = _from_transformers_llava(src, verify_outputs, notes)
    elif model_type in ORIGINAL_MODEL_TYPES or model_type is None:
        model, processor, difference = _from_original_llava(src, llm, vision, verify_outputs, notes)
    else:
        raise CheckpointError(f"{src}: model_type={model_type!r} is not a LLaVA checkpoint.")
    result = ConversionResult(Path(dst), notes, differences=None if difference is None else {"logits": difference})
    provenance = result.provenance("convert/llava_to_hfmm.py", src, arguments)
    write_model_folder(
        model, dst, processor=processor, force=force, max_shard_size=max_shard_size, provenance=provenance
    )
    return result


def _is_original(src: Path) -> bool:
    config = read_json(src / "config.json")
    return any(key.startswith("mm_") for key in config)


# --- the way back: a native transformers Llava -------------------------------------------------------------------


def llava_unsupported_features(config: NevaConfig) -> list[str]:
    """The features of a NeVA that transformers' `LlavaForConditionalGeneration` cannot represent (empty if none)."""
    checks = {
        "a linear projector (Llava's projector is Linear-GELU-Linear)": config.projector_type != "mlp2x_gelu",
        "image start/end tokens (use_im_start_end)": config.use_im_start_end,
        f"a {config.vision_config.model_type} vision tower (the export holds transformers' CLIP vision towers)": (
            config.vision_config.model_type != "clip_vision_model"
        ),
    }
    return [feature for feature, present in checks.items() if present]


def check_llava_can_represent(config: NevaConfig) -> None:
    """Raises `ValueError` naming what transformers' Llava cannot represent in this NeVA."""
    missing = llava_unsupported_features(config)
    if missing:
        raise ValueError(f"transformers' Llava cannot represent this NeVA: {'; '.join(missing)}.")


def to_llava(model: NevaForConditionalGeneration, processor: NevaProcessor):
    """The same weights as a native `LlavaForConditionalGeneration` and `LlavaProcessor` (no remote code needed)."""
    from transformers import LlavaProcessor

    check_llava_can_represent(model.config)
    llava = LlavaForConditionalGeneration(_llava_config_of(model.config)).eval()
    llava.load_state_dict(model.state_dict(), strict=True)
    native_processor = LlavaProcessor(
        image_processor=processor.image_processor,
        tokenizer=processor.tokenizer,
        patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        chat_template=processor.chat_template,
        image_token=processor.image_token,
        num_additional_image_tokens=1,  # the class token, which "default" drops
    )
    return llava, native_processor


def export_to_llava(
    src: str | Path, dst: str | Path, *, verify_outputs: bool = True, force: bool = False
) -> float | None:
    """Writes an hfmm NeVA folder as a native transformers Llava folder; returns the largest logit difference."""
    check_destination(dst, force)
    check_llava_can_represent(NevaConfig.from_pretrained(src))  # before reading any weights
    model = NevaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    processor = NevaProcessor.from_pretrained(src)
    llava, native_processor = to_llava(model, processor)
    difference = None
    if verify_outputs:
        difference = _reference_logits(model, llava)
        _check(difference, "the exported Llava")
    write_model_folder(llava, dst, processor=native_processor, force=force)
    return difference
