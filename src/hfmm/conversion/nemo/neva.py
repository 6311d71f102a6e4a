"""NeMo 1 NeVA checkpoints -> hfmm NeVA folders: the Megatron GPT language model becomes transformers' LLaMA, the
projector and the HF CLIP tower keep their weights (research/nemo_formats.md §4, research/megatron_cpu.md §3-4).

A NeVA `.nemo` usually carries only what was trained (stage 1: the projector; stage 2: projector + language model),
so the missing parts come from `--llm` (a NeMo GPT checkpoint or a transformers causal-LM folder) and `--vision` (a
transformers CLIP folder, which also gives the tower's config: NeMo records only its name).
"""

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer, CLIPImageProcessor, PreTrainedConfig

from hfmm.conversion.common.key_maps import build_model, same
from hfmm.conversion.common.readers import CheckpointError
from hfmm.conversion.common.result import ConversionResult
from hfmm.conversion.common.writer import check_destination, write_model_folder
from hfmm.conversion.nemo.archive import nemo2_tokenizer_folders, open_nemo_checkpoint, target_name
from hfmm.conversion.nemo.clip_mapping import TowerLayout, block_rules, layer_rules
from hfmm.conversion.nemo.gpt import gpt_rules, text_config_from_nemo
from hfmm.conversion.nemo.megatron import (
    COLUMN,
    REPLICATED,
    ROW,
    MegatronRule,
    TensorParallelShards,
    split_gqa_qkv,
    split_rules,
)
from hfmm.conversion.transformers.neva_parts import (
    IDENTITY,
    LLM_PART_KEYS,
    VISION_PART_KEYS,
    add_image_token,
    load_image_processor,
    read_part,
)
from hfmm.models.neva import NevaConfig, NevaForConditionalGeneration
from hfmm.models.neva.processing_neva import CHAT_TEMPLATES, NevaProcessor

ADAPTER = r"embedding\.word_embeddings\.adapter_layer\.mm_projector_adapter\.mm_projector"
TOWER = r"embedding\.word_embeddings\.vision_encoder\.vision_model"


def neva_part_rules() -> dict[str, MegatronRule]:
    """The NeVA parts inside NeMo 1's word-embedding module (megatron-core and legacy prefixes) and the LoRA adapters
    (merged apart, `merge_lora`)."""
    rules = {}
    for p in ("", r"language_model\."):
        rules |= {
            rf"{p}{ADAPTER}\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same, REPLICATED),
            rf"{p}{ADAPTER}\.0\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same, REPLICATED),
            rf"{p}{ADAPTER}\.2\.(weight|bias)": ("model.multi_modal_projector.linear_2.{0}", same, REPLICATED),
            rf"{p}{TOWER}\.(.+)": ("model.vision_tower.{0}", same, REPLICATED),
        }
    return rules | {_LORA_KEY.pattern: None}


def nemo1_rules(text: PreTrainedConfig, vocab_size: int) -> dict[str, MegatronRule]:
    """Every key of a NeMo 1 NeVA or GPT checkpoint: the GPT (megatron-core or legacy names) and the NeVA parts."""
    return gpt_rules(text, vocab_size, legacy=False) | gpt_rules(text, vocab_size, legacy=True) | neva_part_rules()


def nemo2_part_rules(vision_heads: int | None) -> dict[str, MegatronRule]:
    """NeMo 2 (megatron-core `LLaVAModel`): the projector and the vision tower, an HF CLIP tower (`vision_heads` None)
    or megatron-core's ViT, whose layers are those of NeMo's megatron-core CLIP."""
    tower = "model.vision_tower."
    rules = {
        r"vision_projection\.encoder\.linear_fc1\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same, COLUMN),
        r"vision_projection\.encoder\.linear_fc2\.(weight|bias)": ("model.multi_modal_projector.linear_2.{0}", same, ROW),
        r"vision_projection\.0\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same, REPLICATED),
        r"vision_projection\.2\.(weight|bias)": ("model.multi_modal_projector.linear_2.{0}", same, REPLICATED),
        r"vision_projection\.(weight|bias)": ("model.multi_modal_projector.linear_1.{0}", same, REPLICATED),
        r"vision_model\.vision_model\.(.+)": (tower + "{0}", same, REPLICATED),  # NeMo 2's HF CLIP tower
    }  # fmt: skip
    if vision_heads is None:
        return rules
    layers = layer_rules(TowerLayout(vision_heads), mcore=True)
    return rules | block_rules(r"vision_model\.decoder\.layers", tower + "encoder.layers", layers) | {
        r"vision_model\.conv1\.weight": (tower + "embeddings.patch_embedding.weight", same, REPLICATED),
        r"vision_model\.position_embeddings\.weight": (tower + "embeddings.position_embedding.weight", same, REPLICATED),
        r"vision_model\.class_token": (tower + "embeddings.class_embedding", class_embedding, REPLICATED),
        r"vision_model\.ln_pre\.(weight|bias)": (tower + "pre_layrnorm.{0}", same, REPLICATED),
    }  # fmt: skip


def class_embedding(tensor: torch.Tensor) -> torch.Tensor:
    """megatron-core's `class_token` `[1, 1, h]` as CLIP's `class_embedding` `[h]` (one class token only)."""
    if tensor.shape[:-1].numel() != 1:
        raise CheckpointError(f"a ViT with {tensor.shape[:-1].numel()} class tokens has no transformers CLIP tower.")
    return tensor.reshape(-1)


def nemo2_configs(model_yaml: Mapping, source: str) -> tuple[dict, dict | None, str, int]:
    """(NeMo 1-style GPT config, CLIPVisionConfig kwargs or None for an HF tower, projector type, feature layer) of
    NeMo 2's `NevaConfig` in `context/model.yaml`."""
    config = model_yaml.get("config") or {}
    language, vision = config.get("language_transformer_config"), config.get("vision_transformer_config")
    projection = config.get("vision_projection_config")
    if not all(isinstance(part, Mapping) for part in (language, vision, projection)):
        raise CheckpointError(f"{source}: context/model.yaml has no NeVA sub-configs (language/vision/projection).")
    normalization = str(language.get("normalization", "LayerNorm")).lower()
    if normalization == "layernorm" and language.get("layernorm_zero_centered_gamma", False):
        normalization = "layernorm1p"
    activation = target_name(language.get("activation_func"))
    gated = language.get("gated_linear_unit", False)
    text = {
        "normalization": normalization,
        "rotary_percentage": language.get("rotary_percent", 1.0),
        "position_embedding_type": language.get("position_embedding_type", "rope"),
        "rotary_interleaved": language.get("rotary_interleaved", False),
        "activation": {(True, "silu"): "swiglu", (False, "squared_relu"): "squared-relu"}.get((gated, activation),
                                                                                            activation),
        "bias": language.get("add_bias_linear", False),
        "share_embeddings_and_output_weights": language.get("share_embeddings_and_output_weights", False),
        "num_layers": language["num_layers"], "hidden_size": language["hidden_size"],
        "ffn_hidden_size": language["ffn_hidden_size"], "num_attention_heads": language["num_attention_heads"],
        "num_query_groups": language.get("num_query_groups"), "layernorm_epsilon": language.get("layernorm_epsilon", 1e-5),
        "max_position_embeddings": language.get("seq_length", 4096), "rotary_base": language.get("rotary_base", 10000),
    }  # fmt: skip
    projector = {"mcore_mlp": "mlp2x_gelu", "mlp2x_gelu": "mlp2x_gelu", "linear": "linear"}.get(
        projection.get("projector_type", "mlp2x_gelu")
    )
    if projector is None or (
        projector == "mlp2x_gelu" and target_name(projection.get("activation_func", "gelu")) != "gelu"
    ):
        raise CheckpointError(
            f"{source}: vision projector {projection.get('projector_type')!r} has no NeVA equivalent."
        )
    if not config.get("drop_vision_class_token", True):
        raise CheckpointError(f"{source}: drop_vision_class_token: false is not supported yet.")
    vision_config = None
    if not target_name(vision).startswith("HFCLIPVision"):
        if vision.get("vision_model_type", "clip") != "clip" or vision.get("class_token_len", 1) != 1:
            raise CheckpointError(f"{source}: only CLIP ViT towers with one class token convert to a CLIP tower.")
        activation = target_name(vision.get("activation_func", "quick_gelu"))
        vision_config = dict(
            hidden_size=vision["hidden_size"], intermediate_size=vision["ffn_hidden_size"],
            num_hidden_layers=vision["num_layers"], num_attention_heads=vision["num_attention_heads"],
            patch_size=vision["patch_dim"], image_size=vision["img_h"], layer_norm_eps=vision.get("layernorm_epsilon", 1e-5),
            hidden_act={"quick_gelu": "quick_gelu", "gelu": "gelu"}.get(activation, activation),
        )  # fmt: skip
    return text, vision_config, projector, int(config.get("vision_feature_layer", -2))


def _get(cfg: Mapping, key: str, default=None):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _tokenizer(llm: Path | None, tokenizer: Path | None, source: str, *saved: Path):
    """The transformers tokenizer of --tokenizer, else of --llm, else of the checkpoint's own `saved` folders."""
    for folder in (tokenizer, llm, *saved):
        if folder is not None and folder.is_dir() and any(folder.glob("tokenizer*")):
            return AutoTokenizer.from_pretrained(folder)
    raise CheckpointError(
        f"{source}: no transformers tokenizer: give --tokenizer (a folder with the language model's tokenizer) or a "
        "transformers --llm folder."
    )


def convert_nemo_neva_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    llm: str | Path | None = None,
    vision: str | Path | None = None,
    tokenizer: str | Path | None = None,
    force: bool = False,
    max_shard_size: str = "5GB",
    arguments: list[str] | None = None,
) -> ConversionResult:
    """
    Converts a NeMo NeVA checkpoint into an hfmm NeVA folder: NeMo 1 (`.nemo` tar or folder; `model_weights.ckpt`,
    `mp_rank_XX/`, `tp_rank_XX_pp_rank_YYY/` or `model_weights/` torch_dist) or NeMo 2 (`context/model.yaml` +
    `weights/`).

    Args:
        src (`str` or `Path`):
            The NeVA checkpoint.
        dst (`str` or `Path`):
            Output folder; appears only once complete.
        llm (`str` or `Path`, *optional*):
            The language model when `src` lacks it (stage 1, or frozen), or the base of its LoRA adapters: a NeMo GPT
            checkpoint or a transformers causal-LM folder.
        vision (`str` or `Path`, *optional*):
            A transformers CLIP folder: the tower's config (always for NeMo 1; NeMo 2 with an HF CLIP tower), its
            weights when `src` lacks them.
        tokenizer (`str` or `Path`, *optional*):
            A transformers tokenizer folder, unless `llm` is a transformers folder with one.
        force (`bool`, *optional*, defaults to `False`):
            Replace an existing `dst`.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`):
            Weights above this size are split into shards.
        arguments (`list[str]`, *optional*):
            The converter script's command-line arguments, recorded in `conversion.json` so the conversion can be
            re-run (the model card shows the command).
    """
    check_destination(dst, force)
    llm, vision, tokenizer = (Path(p) if p is not None else None for p in (llm, vision, tokenizer))
    result = ConversionResult(Path(dst))
    with open_nemo_checkpoint(src) as checkpoint:
        if checkpoint.nemo_version == 2:
            model, processor = _nemo2(checkpoint, vision, tokenizer or llm, str(src), result.notes)
        else:
            model, processor = _nemo1(checkpoint, llm, vision, tokenizer, str(src), result.notes)
        result.weights = checkpoint.weights
    provenance = result.provenance(CONVERTER, src, arguments)
    write_model_folder(
        model, dst, processor=processor, force=force, max_shard_size=max_shard_size, provenance=provenance
    )
    return result


def _nemo1(checkpoint, llm: Path | None, vision: Path | None, tokenizer: Path | None, source: str, notes: list[str]):
    """A NeMo 1 NeVA (`mm_cfg` in `model_config.yaml`); the parts it does not carry come from `llm` and `vision`."""
    mm = checkpoint.config.get("mm_cfg")
    if not isinstance(mm, Mapping):
        raise CheckpointError(f"{source}: model_config.yaml has no mm_cfg section: not a NeVA checkpoint.")
    lora = read_lora(checkpoint, source)
    if lora and llm is None:
        raise CheckpointError(
            f"{source} holds LoRA adapters, which are merged into their base language model: give --llm (the base: "
            "a NeMo GPT checkpoint or a transformers causal-LM folder)."
        )
    if vision is None:
        raise CheckpointError(
            f"{source}: give --vision (a transformers CLIP folder): NeMo records only the tower's name "
            f"({_get(mm, 'vision_encoder.from_pretrained', 'unknown')}), not its architecture."
        )
    if not _get(mm, "vision_encoder.from_hf", True):
        raise CheckpointError(f"{source}: a NeMo CLIP vision tower (from_hf: false) is not supported yet.")
    text_config = text_config_from_nemo(checkpoint.config, source)
    hf_tokenizer = _tokenizer(llm, tokenizer, source)
    text_config.vocab_size = len(hf_tokenizer)
    config = _nemo1_config(checkpoint.config, text_config, hf_tokenizer, vision, source)
    converted = _convert_all(checkpoint.shards, nemo1_rules(text_config, len(hf_tokenizer)), "NeMo NeVA")
    if "model.language_model.embed_tokens.weight" not in converted:
        if llm is None:
            raise CheckpointError(
                f"{source} does not carry the language model (it was frozen when saved): give --llm (a NeMo GPT "
                "checkpoint or a transformers causal-LM folder)."
            )
        converted.update(_llm_parts(llm, text_config, len(hf_tokenizer)))
        notes.append(f"language model from {llm}")
    if lora:
        merge_lora(converted, lora, text_config)
        notes.append(f"merged LoRA adapters of {len(lora)} layers into the language model")
    if not any(key.startswith("model.vision_tower.") for key in converted):
        converted.update(read_part(vision, VISION_PART_KEYS))
        notes.append(f"vision tower from {vision}")
    model = build_model(NevaForConditionalGeneration, config, converted, IDENTITY)
    add_image_token(model, hf_tokenizer, notes)
    return model, NevaProcessor.from_model_config(model.config, load_image_processor(vision, pad=False), hf_tokenizer)


def _nemo1_config(cfg: Mapping, text_config: PreTrainedConfig, tokenizer, vision: Path, source: str) -> NevaConfig:
    """The NeVA config of a NeMo 1 `model_config.yaml`: `mm_cfg`'s projector, feature layer and start/end tokens, the
    tower of `vision` and the `<image>` token that the converter adds at the end of `tokenizer`'s vocabulary."""
    mm = cfg["mm_cfg"]
    projector_type = mm.get("mm_mlp_adapter_type", "linear")
    if projector_type not in ("linear", "mlp2x_gelu"):
        raise CheckpointError(f"{source}: mm_mlp_adapter_type={projector_type!r} has no NeVA equivalent yet.")
    vision_config = AutoConfig.from_pretrained(vision)
    vision_config = getattr(vision_config, "vision_config", vision_config)
    start_end = {}
    if mm.get("use_im_start_end", False):
        ids = tokenizer.convert_tokens_to_ids(["<extra_id_4>", "<extra_id_5>"])
        if tokenizer.unk_token_id in ids or None in ids:
            raise CheckpointError(f"{source}: use_im_start_end needs <extra_id_4>/<extra_id_5> in the tokenizer.")
        start_end = {"use_im_start_end": True, "im_start_token_id": ids[0], "im_end_token_id": ids[1]}
    return NevaConfig(
        vision_config=vision_config.to_dict(),
        text_config=text_config.to_dict(),
        projector_type=projector_type,
        vision_feature_layer=_get(mm, "vision_encoder.vision_select_layer", -2),
        image_token_id=len(tokenizer),  # the <image> token added after conversion
        conv_template=template if (template := _get(cfg, "data.conv_template")) in CHAT_TEMPLATES else None,
        **start_end,
    )


CONVERTER = "convert/nemo_neva_to_hfmm.py"
_LORA_KEY = re.compile(
    r"(?:language_model\.encoder|decoder)\.layers\.(\d+)\.self_attention\.adapter_layer\.lora_kqv_adapter\.linear_(in|out)\.weight"
)


def read_lora(checkpoint, source: str) -> dict[int, torch.Tensor]:
    """NeMo 1 PEFT LoRA on the fused QKV: layer -> the merged delta `scale * linear_out @ linear_in` (fused layout)."""
    found = {}
    for key in checkpoint.shards[0]:
        match = _LORA_KEY.fullmatch(key)
        if match:
            found.setdefault(int(match[1]), {})[match[2]] = key
    other = [key for key in checkpoint.shards[0] if "adapter_layer.lora" in key and not _LORA_KEY.fullmatch(key)]
    if other:
        raise CheckpointError(f"{source}: LoRA on {other[0]!r}: only NeMo's default target (attention_qkv) is merged.")
    if not found:
        return {}
    if len(checkpoint.shards) > 1:
        raise CheckpointError(f"{source}: LoRA adapters saved with tensor parallelism > 1 are not supported yet.")
    tuning = _get(checkpoint.config, "peft.lora_tuning", {}) or {}
    first = next(iter(found.values()))
    dim = checkpoint.shards[0][first["in"]].shape[0]
    alpha = tuning.get("alpha", dim)  # NeMo's default alpha is the adapter dim: scale 1
    scale = float(alpha) / dim
    return {
        layer: scale * checkpoint.shards[0][names["out"]].float() @ checkpoint.shards[0][names["in"]].float()
        for layer, names in found.items()
    }


def merge_lora(converted: dict[str, torch.Tensor], lora: dict[int, torch.Tensor], text: PreTrainedConfig) -> None:
    """Adds each layer's fused-QKV delta to LLaMA's q/k/v (split as the base weights are)."""
    for layer, delta in lora.items():
        for name, part in zip("qkv", split_gqa_qkv(delta, text.num_attention_heads, text.num_key_value_heads)):
            key = f"model.language_model.layers.{layer}.self_attn.{name}_proj.weight"
            if key not in converted or converted[key].shape != part.shape:
                raise CheckpointError(f"LoRA of layer {layer} does not fit the base language model's {name}_proj.")
            converted[key] = converted[key] + part.to(converted[key].dtype)


def _convert_all(shards, rules: Mapping[str, MegatronRule], source: str) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint, TP-merged and transformed by `rules`, under NeVA names."""
    key_map, tp_rules = split_rules(rules, source)
    return key_map.convert(TensorParallelShards(shards, tp_rules))


def _llm_parts(llm: Path, text_config: PreTrainedConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    if llm.suffix == ".nemo" or (llm / "model_config.yaml").is_file():
        with open_nemo_checkpoint(llm) as checkpoint:
            rules = nemo1_rules(text_config, vocab_size)
            return _convert_all(checkpoint.shards, rules, "NeMo GPT (--llm)")
    if not (llm / "config.json").is_file():
        raise CheckpointError(f"--llm {llm}: neither a NeMo GPT checkpoint nor a transformers causal-LM folder.")
    return read_part(llm, LLM_PART_KEYS)


def _nemo2(checkpoint, vision: Path | None, tokenizer: Path | None, source: str, notes: list[str]):
    """A NeMo 2 NeVA (`weights/` torch_dist + `context/model.yaml`): every part is in the checkpoint."""
    text_kwargs, vision_kwargs, projector, feature_layer = nemo2_configs(checkpoint.config, source)
    text_config = text_config_from_nemo(text_kwargs, source)
    hf_tokenizer = _tokenizer(None, tokenizer, source, *nemo2_tokenizer_folders(checkpoint))  # NeMo 2's copy
    text_config.vocab_size = len(hf_tokenizer)
    if vision_kwargs is None:  # NeMo 2's HF CLIP tower: its config comes from --vision
        if vision is None:
            raise CheckpointError(
                f"{source}: the NeVA uses an HF CLIP tower; give --vision (its transformers folder)."
            )
        vision_config = AutoConfig.from_pretrained(vision)
        vision_kwargs = getattr(vision_config, "vision_config", vision_config).to_dict()
    else:
        vision_kwargs = {"model_type": "clip_vision_model", **vision_kwargs}
    config = NevaConfig(
        vision_config=vision_kwargs,
        text_config=text_config.to_dict(),
        projector_type=projector,
        vision_feature_layer=feature_layer,
        image_token_id=len(hf_tokenizer),
    )
    mcore_tower = not any(key.startswith("vision_model.vision_model.") for key in checkpoint.shards[0])
    rules = gpt_rules(text_config, len(hf_tokenizer), "language_model.", legacy=False) | nemo2_part_rules(
        config.vision_config.num_attention_heads if mcore_tower else None
    )
    converted = _convert_all(checkpoint.shards, rules, "NeMo 2 NeVA")
    if mcore_tower:  # megatron's ViT has no final LayerNorm; CLIP's post_layernorm is never used by NeVA's features
        width = config.vision_config.hidden_size
        converted["model.vision_tower.post_layernorm.weight"] = torch.ones(width)
        converted["model.vision_tower.post_layernorm.bias"] = torch.zeros(width)
        notes.append(
            "megatron-core ViT tower: post_layernorm set to identity (unused: features come from a hidden state)"
        )
    model = build_model(NevaForConditionalGeneration, config, converted, IDENTITY)
    add_image_token(model, hf_tokenizer, notes)
    size = config.vision_config.image_size
    image_processor = (
        load_image_processor(vision, pad=False)
        if vision is not None
        else CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    )
    return model, NevaProcessor.from_model_config(model.config, image_processor, hf_tokenizer)
