"""LLaVA checkpoints -> hfmm NeVA folders, exactly: transformers `LlavaForConditionalGeneration` folders (every key
layout transformers has written), original haotian-liu LLaVA folders, and projector-only stage-1 folders completed
with `--llm` / `--vision`.

The NeVA's parameter names are Llava's (v5 in-memory) names, so the maps below only undo the older layouts.
"""

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from hfmm.conversion.common.key_maps import KeyMap, build_model, same
from hfmm.conversion.common.readers import (
    CheckpointError,
    SafetensorsStateDict,
    image_processor_file,
    load_torch_file,
    unwrap_state_dict,
    write_model_folder,
)
from hfmm.conversion.common.verification import check_destination
from hfmm.models.neva import NevaConfig, NevaForConditionalGeneration
from hfmm.models.neva.processing_neva import NevaProcessor

VISION = r"(embeddings\.(?:class_embedding|patch_embedding\.weight|position_embedding\.weight)|(?:pre_layrnorm|post_layernorm)\.(?:weight|bias)|encoder\.layers\.\d+\..+)"
PROJECTOR = r"(linear_[12]\.(?:weight|bias))"
# Any key of the causal LM but the rotary `inv_freq` buffers old checkpoints carry (dropped), so no key has two rules.
LANGUAGE_MODEL = r"((?!.*\.rotary_emb\.inv_freq$).+)"

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

# The parts given with --vision (a transformers CLIPModel or CLIPVisionModel folder) and --llm (a causal LM folder).
VISION_PART_KEYS = KeyMap(
    {
        rf"vision_model\.{VISION}": ("model.vision_tower.{0}", same),
        rf"{VISION}": ("model.vision_tower.{0}", same),
        r"(?:vision_model\.)?embeddings\.position_ids": None,
        r"(?:text_model|visual_projection|text_projection|logit_scale).*": None,
    },
    source="transformers CLIP (--vision)",
)
LLM_PART_KEYS = KeyMap(
    {
        rf"model\.{LANGUAGE_MODEL}": ("model.language_model.{0}", same),
        r"lm_head\.weight": ("lm_head.weight", same),
        r".*\.rotary_emb\.inv_freq": None,
    },
    source="transformers causal LM (--llm)",
)

ORIGINAL_MODEL_TYPES = ("llava_llama", "llava_mistral", "llava")
IMAGE_TOKEN, PAD_TOKEN = "<image>", "<pad>"


@dataclass
class NevaConversionResult:
    dst: Path
    notes: list[str] = field(default_factory=list)
    max_logit_difference: float | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not a readable JSON file ({error}).") from error


def _shards(folder: Path, index_name: str) -> list[Path]:
    weight_map = _read_json(folder / index_name).get("weight_map") or {}
    return [folder / name for name in sorted(set(weight_map.values()))]


def read_weights(folder: Path) -> dict:
    """Every tensor of a folder, lazily: safetensors (single or sharded), else `.bin` pickles (weights_only)."""
    if (folder / "model.safetensors").is_file():
        return dict(SafetensorsStateDict([folder / "model.safetensors"], backend="mmap").items())
    if (folder / "model.safetensors.index.json").is_file():
        return dict(SafetensorsStateDict(_shards(folder, "model.safetensors.index.json"), backend="mmap").items())
    paths = sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("mm_projector*.bin"))
    if not paths:
        raise CheckpointError(f"{folder}: no model.safetensors, pytorch_model.bin or mm_projector.bin.")
    state_dict = {}
    for path in paths:
        state_dict.update(unwrap_state_dict(load_torch_file(path), str(path)))
    return state_dict


def _vision_config(folder: Path):
    config = AutoConfig.from_pretrained(folder)
    vision = getattr(config, "vision_config", config)
    if vision.model_type != "clip_vision_model":
        raise CheckpointError(
            f"{folder}: --vision must be a transformers CLIP folder, got model_type {config.model_type!r}."
        )
    return vision


def _image_processor(*folders: Path, pad: bool):
    """The tower's image processor (the first folder that has one); LLaVA-1.5's `pad` aspect ratio as Llava's."""
    for folder in folders:
        if folder is not None and image_processor_file(folder) is not None:
            processor = AutoImageProcessor.from_pretrained(folder)  # reads either file transformers writes
            break
    else:
        searched = [str(f) for f in folders if f is not None]
        raise CheckpointError(f"no preprocessor_config.json or processor_config.json (image processor) in {searched}.")
    if pad:
        from transformers import LlavaImageProcessorPil

        keep = ("size", "crop_size", "do_center_crop", "do_resize", "resample", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb")  # fmt: skip
        settings = {key: value for key, value in processor.to_dict().items() if key in keep}
        processor = LlavaImageProcessorPil(**settings, do_pad=True)
    return processor


def _source_chat_template(folder: Path) -> str | None:
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return _read_json(folder / "chat_template.json").get("chat_template")
    return None


def _renamed(state_dict: dict, key_map: KeyMap) -> dict:
    """A part's tensors under NeVA names (unknown keys raise, naming the part)."""
    out = {}
    for key, (targets, _) in key_map.plan(state_dict.keys()).items():
        out[targets[0]] = state_dict[key]
    return out


IDENTITY = KeyMap({r"(.+)": ("{0}", same)}, source="assembled NeVA")


RESIZE_SEED = 0  # new embedding rows are drawn from this seed: a conversion is reproducible bit for bit


def _rows_like(rows: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` draws from N(μ, 1e-5·Σ), μ and Σ the mean and covariance of `rows` (transformers' LLaVA converter)."""
    rows64 = rows.double()
    mean = rows64.mean(0)
    centered = rows64 - mean
    covariance = 1e-5 * centered.T @ centered / rows.shape[0]  # (hidden, hidden)
    factor, info = torch.linalg.cholesky_ex(covariance)
    if info.item() != 0:  # fewer rows than dimensions, or a degenerate matrix: the mean itself
        return mean.expand(count, -1).to(rows.dtype).clone()
    noise = torch.randn(count, rows.shape[1], generator=generator, dtype=torch.float64)
    return (mean + noise @ factor.T).to(rows.dtype)


def _add_image_token(model: NevaForConditionalGeneration, tokenizer, notes: list[str]) -> None:
    """
    Adds `<image>` (and `<pad>` when the tokenizer has no pad token) as special tokens and resizes the embeddings as
    transformers' LLaVA converter does: to the new vocabulary padded to a multiple of 64, every new row drawn from
    N(μ, 1e-5·Σ) of the old rows, with a fixed seed (`RESIZE_SEED`). Unlike that converter, the new `lm_head` rows
    are drawn from `lm_head`'s own rows (it uses the input embeddings' statistics for both), so a new token's logit
    stays near an average token's. These rows are the conversion's choice: `<image>`'s input row is always replaced
    by image features, and the padding rows are never produced by the tokenizer.
    """
    added = tokenizer.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    old = model.get_input_embeddings().num_embeddings
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=False)  # keeps the old rows
    new = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(RESIZE_SEED)
    embeddings, head = model.get_input_embeddings().weight, model.lm_head.weight
    with torch.no_grad():
        for weight in (embeddings,) if head is embeddings else (embeddings, head):
            weight[old:] = _rows_like(weight[:old], new - old, generator)
    model.config.text_config.vocab_size = new
    model.config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    notes.append(
        f"added {added} special token(s) ({IMAGE_TOKEN}, {PAD_TOKEN}); embeddings {old} -> {new} rows "
        f"(new rows from N(mean, 1e-5 cov) of the old ones, seed {RESIZE_SEED})"
    )


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


def _llava_config_of(config: NevaConfig) -> LlavaConfig:
    return LlavaConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=config.image_seq_length,
        projector_hidden_act=config.projector_hidden_act,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        multimodal_projector_bias=config.multimodal_projector_bias,
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
        vision_config=llava_config.vision_config.to_dict(),
        text_config=llava_config.text_config.to_dict(),
        projector_type="mlp2x_gelu",
        projector_hidden_act=llava_config.projector_hidden_act,
        multimodal_projector_bias=llava_config.multimodal_projector_bias,
        vision_feature_layer=llava_config.vision_feature_layer,
        vision_feature_select_strategy=llava_config.vision_feature_select_strategy,
        image_token_id=llava_config.image_token_id,
        tie_word_embeddings=llava_config.tie_word_embeddings,
    )
    image_processor = _image_processor(src, pad=False)  # the cheap checks first
    tokenizer = AutoTokenizer.from_pretrained(src)
    chat_template = _source_chat_template(src) or NevaProcessor.chat_template_for("v1")
    processor = NevaProcessor.from_model_config(config, image_processor, tokenizer, chat_template)
    model = build_model(NevaForConditionalGeneration, config, read_weights(src), LLAVA_KEYS)
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


def _from_original_llava(src: Path, llm: Path | None, vision: Path | None, verify: bool, notes: list[str]):
    source = _read_json(src / "config.json") if (src / "config.json").is_file() else {}
    weights = read_weights(src)
    projector_only = all(key.startswith("model.mm_projector") for key in weights)
    has_tower = any(key.startswith("model.vision_tower.") for key in weights)
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
    if source.get("mm_vision_select_feature", "patch") != "patch":
        raise CheckpointError(
            f"{src}: mm_vision_select_feature={source['mm_vision_select_feature']!r} is not supported."
        )
    projector_type = source.get("mm_projector_type") or (
        "mlp2x_gelu" if any(k.startswith("model.mm_projector.2") for k in weights) else "linear"
    )
    if projector_type not in ("linear", "mlp2x_gelu"):
        raise CheckpointError(
            f"{src}: mm_projector_type={projector_type!r} has no NeVA equivalent (linear, mlp2x_gelu)."
        )
    tokenizer_folder = llm if projector_only else src
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder)
    text_config = AutoConfig.from_pretrained(llm) if projector_only else _original_text_config(source)
    vision_config = _vision_config(vision) if vision is not None else None
    if vision_config is None:
        raise CheckpointError(f"{src}: the vision tower's config comes from --vision (a transformers CLIP folder).")
    start_end = {}
    if source.get("mm_use_im_start_end"):
        ids = tokenizer.convert_tokens_to_ids(["<im_start>", "<im_end>"])
        if tokenizer.unk_token_id in ids:
            raise CheckpointError(
                f"{tokenizer_folder}: mm_use_im_start_end is set but the tokenizer lacks <im_start>/<im_end>."
            )
        start_end = {"use_im_start_end": True, "im_start_token_id": ids[0], "im_end_token_id": ids[1]}
    config = NevaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        projector_type=projector_type,
        vision_feature_layer=source.get("mm_vision_select_layer", -2),
        image_token_id=text_config.vocab_size,  # set for real once <image> is added
        conv_template="v1",
        **start_end,
    )
    parts = _renamed(weights, ORIGINAL_KEYS)
    if projector_only:
        parts.update(_renamed(read_weights(llm), LLM_PART_KEYS))
    if not has_tower:
        parts.update(_renamed(read_weights(vision), VISION_PART_KEYS))
    model = build_model(NevaForConditionalGeneration, config, parts, IDENTITY)
    if model.model.multi_modal_projector.linear_1.weight.shape[1] != config.vision_config.hidden_size:
        raise CheckpointError("the projector's input width does not match the vision tower's hidden size.")
    reference = None
    if verify:
        reference = _original_reference(
            src, config, weights, llm=llm if projector_only else None, vision=None if has_tower else vision
        )
    _add_image_token(model, tokenizer, notes)
    if reference is not None:
        _copy_new_rows(model, reference, notes)
    pad = source.get("image_aspect_ratio") == "pad"
    if pad:
        notes.append("image_aspect_ratio 'pad': images are padded to square with the mean colour (Llava's processor)")
    processor = NevaProcessor.from_model_config(
        model.config, _image_processor(src, vision, pad=pad), tokenizer, NevaProcessor.chat_template_for("v1")
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
    src: Path, config: NevaConfig, weights: dict, *, llm: Path | None, vision: Path | None
) -> LlavaForConditionalGeneration | None:
    """
    The ground truth, before any embedding resize: transformers' own Llava holding the same sources, read by
    transformers' loaders: the original folder through `ORIGINAL_KEY_MAPPING`, `llm` as an `AutoModelForCausalLM`
    (stage 1) and `vision` as a `CLIPVisionModel` (a folder without the tower). `None` when Llava cannot represent the
    model (a linear projector, start/end tokens).
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
        prefix = "model.multi_modal_projector."
        projector = {}
        for key, value in weights.items():
            for pattern, target in ORIGINAL_KEY_MAPPING.items():
                key = re.sub(pattern, target, key)
            projector[key.removeprefix(prefix)] = value.float()
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
) -> NevaConversionResult:
    """
    Converts a LLaVA folder into an hfmm NeVA folder (config, safetensors, processor with chat template).

    Args:
        src: a transformers Llava folder (`model_type: llava`), an original LLaVA folder (`llava_llama`, ...), or a
            stage-1 folder holding only `mm_projector.bin`.
        dst: output folder; appears only once complete.
        llm: a transformers causal-LM folder, for a projector-only `src`.
        vision: a transformers CLIP (or CLIPVision) folder, for a `src` without the vision tower.
        verify_outputs: compare logits with transformers' Llava (≤ 1e-5) before writing, where `src` is complete.
        force: replace an existing `dst`.
        max_shard_size: weights above this size are split into shards.
        arguments: the script's command-line arguments, recorded in `conversion.json` (the card's re-runnable command).
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
    model_type = _read_json(src / "config.json").get("model_type") if (src / "config.json").is_file() else None
    if model_type == "llava" and not _is_original(src):
        model, processor, difference = _from_transformers_llava(src, verify_outputs, notes)
    elif model_type in ORIGINAL_MODEL_TYPES or model_type is None:
        model, processor, difference = _from_original_llava(src, llm, vision, verify_outputs, notes)
    else:
        raise CheckpointError(f"{src}: model_type={model_type!r} is not a LLaVA checkpoint.")
    provenance = dict(
        converter="convert/llava_to_hfmm.py", source=src, notes=notes, differences=difference, arguments=arguments
    )
    write_model_folder(
        model, dst, processor=processor, force=force, max_shard_size=max_shard_size, provenance=provenance
    )
    return NevaConversionResult(Path(dst), notes, difference)


def _is_original(src: Path) -> bool:
    config = _read_json(src / "config.json")
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
