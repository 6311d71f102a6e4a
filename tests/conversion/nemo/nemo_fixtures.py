"""Writers of NeMo CLIP checkpoints for the converter tests: `model_config.yaml` in NeMo's schema, `.nemo` tars, the
legacy key mapping of NeMo's own `convert_external_clip_to_nemo.py` and NeMo's tensor-parallel split rules.

The legacy writers follow NeMo v2.4.0 (v1.23.0 for the old `linear_encoder` patch embedding):
- `examples/multimodal/vision_language_foundation/clip/convert_external_clip_to_nemo.py` (OpenCLIP -> legacy keys,
  research/nemo_formats.md §3.1), whose fused QKV is OpenCLIP's `in_proj` as is, the `megatron_legacy: True` layout;
- `nemo/collections/vlm/clip/model/clip.py::import_qkv` (per-head `[q_h; k_h; v_h]` interleave), the layout NeMo uses
  without `megatron_legacy`;
- `examples/nlp/language_modeling/megatron_change_num_partitions.py::compute_tp_splits` (TP shards).
They are re-implemented here from those descriptions; none of this is hfmm's reader.
"""

import copy
import io
import json
import tarfile
from pathlib import Path

import torch
import yaml

TOWER_DEFAULTS = {
    "precision": 32,
    "num_channels": 3,
    "drop_patch_rate": 0.0,
    "drop_path_rate": 0.0,
    "init_method_std": 0.02,
    "use_scaled_init_method": True,
    "hidden_dropout": 0.0,
    "attention_dropout": 0.0,
    "kv_channels": None,
    "apply_query_key_layer_scaling": True,
    "normalization": "layernorm",
    "layernorm_epsilon": 1e-5,
    "pre_process": True,
    "post_process": True,
    "persist_layer_norm": True,
    "masked_softmax_fusion": True,
    "bias_dropout_add_fusion": True,
    "onnx_safe": False,
    "openai_gelu": False,
    "bias_activation_fusion": False,
    "megatron_legacy": False,
    "activation": "gelu",
}


VISION_DEFAULTS = {
    "img_h": 224,
    "img_w": 224,
    "patch_dim": 16,
    "class_token_length": 1,
    "global_average_pool": False,
    "preprocess_layernorm": True,
    "position_embedding_type": "learned_absolute",
    "image_mean": None,
    "image_std": None,
}
TEXT_DEFAULTS = {
    "encoder_seq_length": 77,
    "max_position_embeddings": 77,
    "position_embedding_type": "learned_absolute",
}


def nemo_clip_config(vision: dict, text: dict, *, output_dim: int, mcore: bool, tp: int = 1, **model) -> dict:
    """A NeMo 1 `model_config.yaml` (the `model:` section, interpolations resolved as `save_to` writes them)."""
    vision = {**TOWER_DEFAULTS, **VISION_DEFAULTS, "output_dim": output_dim, **vision}
    text = {**TOWER_DEFAULTS, **TEXT_DEFAULTS, "output_dim": output_dim, **text}
    return {
        "precision": 32,
        "micro_batch_size": 32,
        "global_batch_size": 32,
        "tensor_model_parallel_size": tp,
        "pipeline_model_parallel_size": 1,
        "output_dim": output_dim,
        "local_loss": False,
        "gather_with_grad": True,
        "mcore_gpt": mcore,
        "transformer_engine": mcore,
        "vision": vision,
        "text": text,
        "megatron_amp_O2": False,
        "tokenizer": {
            "library": "huggingface",
            "type": "openai/clip-vit-large-patch14",
            "model": None,
            "vocab_file": None,
            "merge_file": None,
            "delimiter": None,
            "sentencepiece_legacy": False,
        },
        "make_vocab_size_divisible_by": 128,
        "target": "nemo.collections.multimodal.models.vision_language_foundation.clip.megatron_clip_models."
        "MegatronCLIPModel",
        "nemo_version": "2.4.0",
        **model,
    }


def write_nemo_folder(folder: Path, config: dict, shards: dict[str, dict], artifacts: dict[str, bytes] | None = None):
    """Writes an extracted `.nemo`: `model_config.yaml`, one `model_weights.ckpt` per shard folder ("" for none)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for sub, state_dict in shards.items():
        (folder / sub).mkdir(parents=True, exist_ok=True)
        torch.save(state_dict, folder / sub / "model_weights.ckpt")
    for name, data in (artifacts or {}).items():
        (folder / name).write_bytes(data)
    return folder


def pack_nemo(folder: Path, path: Path, *, gzip: bool = False) -> Path:
    """Tars an extracted `.nemo` the way `SaveRestoreConnector` does (`arcname="."`; uncompressed unless `gzip`)."""
    with tarfile.open(path, "w:gz", compresslevel=1) if gzip else tarfile.open(path, "w:") as archive:
        archive.add(folder, arcname=".")
    return path


def add_tar_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


# --- OpenCLIP -> legacy NeMo (convert_external_clip_to_nemo.py) --------------------------------------------------

_LAYER_SUFFIXES = {
    ".ln_1.": ".input_layernorm.",
    ".attn.in_proj_weight": ".self_attention.query_key_value.weight",
    ".attn.in_proj_bias": ".self_attention.query_key_value.bias",
    ".attn.out_proj.": ".self_attention.dense.",
    ".ln_2.": ".post_attention_layernorm.",
    ".mlp.c_fc.": ".mlp.dense_h_to_4h.",
    ".mlp.c_proj.": ".mlp.dense_4h_to_h.",
}
_EXACT = {
    "positional_embedding": "text_encoder.language_model.embedding.position_embeddings",
    "token_embedding.weight": "text_encoder.language_model.embedding.word_embeddings.weight",
    "ln_final.weight": "text_encoder.language_model.encoder.final_layernorm.weight",
    "ln_final.bias": "text_encoder.language_model.encoder.final_layernorm.bias",
    "text_projection": "text_encoder.head.weight",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_encoder.backbone.cls_token",
    "visual.positional_embedding": "vision_encoder.backbone.position_embeddings",
    "visual.conv1.weight": "vision_encoder.backbone.conv1.weight",
    "visual.ln_pre.weight": "vision_encoder.backbone.preprocess_layernorm.weight",
    "visual.ln_pre.bias": "vision_encoder.backbone.preprocess_layernorm.bias",
    "visual.ln_post.weight": "vision_encoder.backbone.transformer.final_layernorm.weight",
    "visual.ln_post.bias": "vision_encoder.backbone.transformer.final_layernorm.bias",
    "visual.proj": "vision_encoder.head.weight",
}


def interleave_qkv(fused: torch.Tensor, num_heads: int) -> torch.Tensor:
    """`[q; k; v]` -> per head `[q_h; k_h; v_h]` (NeMo's `import_qkv` with one query group per head)."""
    q, k, v = (part.reshape(num_heads, -1, *fused.shape[1:]) for part in fused.chunk(3, dim=0))
    return torch.stack([q, k, v], dim=1).reshape(fused.shape)


def open_clip_to_legacy_nemo(
    state_dict: dict, *, vision_heads: int, text_heads: int, megatron_legacy: bool = True, patch_bias=None
) -> dict:
    """Legacy NeMo CLIP keys (no `model.` prefix) of an OpenCLIP `CLIP` state dict.

    `megatron_legacy=True` keeps OpenCLIP's `in_proj` as the fused QKV, as NeMo's converter does; `False` writes the
    per-head interleave NeMo uses otherwise. `patch_bias` writes the NeMo <= 1.23 patch embedding (`linear_encoder`,
    weight rearranged `o c p1 p2 -> o (p1 p2 c)`) with that bias (the converter wrote zeros).
    """
    out = {}
    for key, tensor in state_dict.items():
        if key == "attn_mask":
            continue
        if key in _EXACT:
            new = _EXACT[key]
        else:
            prefix, rest = next(
                (pre, key[len(src) :])
                for src, pre in (
                    ("visual.transformer.resblocks.", "vision_encoder.backbone.transformer.layers."),
                    ("transformer.resblocks.", "text_encoder.language_model.encoder.layers."),
                )
                if key.startswith(src)
            )
            index, _, tail = rest.partition(".")
            tail = "." + tail
            src_suffix = next(s for s in _LAYER_SUFFIXES if tail.startswith(s))
            new = f"{prefix}{index}{_LAYER_SUFFIXES[src_suffix]}{tail[len(src_suffix) :]}"
            if "query_key_value" in new and not megatron_legacy:
                heads = vision_heads if new.startswith("vision") else text_heads
                tensor = interleave_qkv(tensor, heads)
        out[new] = tensor.clone()
    out["text_encoder.head.weight"] = out["text_encoder.head.weight"].t().contiguous()
    out["vision_encoder.head.weight"] = out["vision_encoder.head.weight"].t().contiguous()
    out["vision_encoder.backbone.cls_token"] = out["vision_encoder.backbone.cls_token"].reshape(1, 1, -1)
    if patch_bias is not None:
        weight = out.pop("vision_encoder.backbone.conv1.weight")
        out["vision_encoder.backbone.linear_encoder.weight"] = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
        out["vision_encoder.backbone.linear_encoder.bias"] = patch_bias.clone()
    return out


# --- NeMo's TP split rules (compute_tp_splits) ---------------------------------------------------------------------

_COLUMN = (".query_key_value.", ".dense_h_to_4h.", "word_embeddings.weight", ".linear_qkv.weight",
           ".linear_qkv.bias", ".linear_fc1.weight", ".linear_fc1.bias")  # fmt: skip
_ROW = (".dense.weight", ".dense_4h_to_h.weight", ".linear_proj.weight", ".linear_fc2.weight")


def shard_shape(name: str, shape: torch.Size, tp: int) -> torch.Size:
    """The shape a TP=`tp` Megatron model gives parameter `name` (column- / row-parallel / replicated)."""
    if any(part in name for part in _COLUMN) and "layer_norm" not in name:
        return torch.Size([shape[0] // tp, *shape[1:]])
    if any(name.endswith(part) for part in _ROW):
        return torch.Size([shape[0], shape[1] // tp])
    return shape


def split_tp(state_dict: dict, tp: int, *, megatron_legacy: bool) -> list[dict]:
    """NeMo's `compute_tp_splits`: replicate, split the last dim (row-parallel), stride `megatron_legacy` QKV over
    ranks (rank i gets chunks i, i+tp, i+2tp of 3*tp), or split dim 0."""
    shards = [{} for _ in range(tp)]
    for name, full in state_dict.items():
        target = shard_shape(name, full.shape, tp)
        if target == full.shape:
            parts = [full] * tp
        elif target[0] == full.shape[0]:
            parts = torch.split(full, target[-1], dim=-1)
        elif ".query_key_value." in name and megatron_legacy:
            chunks = torch.chunk(full, tp * 3, dim=0)
            parts = [torch.cat([chunks[j] for j in range(i, tp * 3, tp)]) for i in range(tp)]
        else:
            parts = torch.split(full, target[0], dim=0)
        for shard, part in zip(shards, parts, strict=True):
            shard[name] = part.clone()
    return shards


def with_prefix(state_dict: dict, prefix: str = "model.") -> dict:
    """NeMo 1 saves `MegatronCLIPModel.state_dict()`, whose keys all start with `model.`."""
    return {f"{prefix}{key}": value for key, value in state_dict.items()}


def legacy_config(open_clip_cfg: dict, *, megatron_legacy: bool, quick_gelu: bool, tp: int = 1, **vision) -> dict:
    """NeMo's legacy CLIP config (`megatron_clip_VIT-L-14.yaml` shape) describing an OpenCLIP model config."""
    vision_cfg, text_cfg = open_clip_cfg["vision_cfg"], open_clip_cfg["text_cfg"]
    common = {
        "activation": "approx-gelu" if quick_gelu else "gelu",
        "megatron_legacy": megatron_legacy,
        "position_embedding_type": "learned_parameters",
    }
    width, text_width = vision_cfg["width"], text_cfg["width"]
    vision = {
        "patch_dim": vision_cfg["patch_size"],
        "img_h": vision_cfg["image_size"],
        "img_w": vision_cfg["image_size"],
        "num_layers": vision_cfg["layers"],
        "hidden_size": width,
        "ffn_hidden_size": int(width * vision_cfg.get("mlp_ratio", 4.0)),
        "num_attention_heads": width // vision_cfg.get("head_width", 64),
        **common,
        **vision,
    }
    text = {
        "num_layers": text_cfg["layers"],
        "hidden_size": text_width,
        "ffn_hidden_size": text_width * 4,
        "num_attention_heads": text_cfg["heads"],
        **common,
    }
    return nemo_clip_config(vision, text, output_dim=open_clip_cfg["embed_dim"], mcore=False, tp=tp)


def deep_update(config: dict, **sections) -> dict:
    """A copy of `config` with `vision=..`/`text=..` dicts merged into those sections and other keys replaced."""
    config = copy.deepcopy(config)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    return config


def hf_clip_tokenizer_files(folder: Path, prefix: str = "") -> tuple[Path, Path]:
    """CLIP BPE `vocab.json`/`merges.txt` as HF writes them (`<|startoftext|>`, `<|endoftext|>`) with the ids of
    "cat" and "dog" swapped, so a test can tell these files from hfmm's own tokenizer."""
    import hfmm

    package = Path(hfmm.__file__).parent / "models" / "clip" / "tokenizer"
    vocab = json.loads((package / "vocab.json").read_text())
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = vocab.pop("<start_of_text>"), vocab.pop("<end_of_text>")
    vocab["cat</w>"], vocab["dog</w>"] = vocab["dog</w>"], vocab["cat</w>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / f"{prefix}vocab.json", folder / f"{prefix}merges.txt"
    vocab_file.write_text(json.dumps(vocab))
    merges_file.write_bytes((package / "merges.txt").read_bytes())
    return vocab_file, merges_file
