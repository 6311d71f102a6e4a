"""Real megatron-core GPT language models on CPU inside NeMo 1 NeVA checkpoints: fixtures for the NeVA converter tests.

    python tests/convert/nemo_neva_megatron.py OUT_DIR

NeMo's NeVA is a Megatron GPT whose word-embedding module also holds the vision tower (transformers' CLIPVisionModel)
and the projector; image features (CLIP layer -2, class token dropped, through the projector) overwrite the token
embeddings at the image positions, and the GPT runs on those embeddings (`decoder_input`). Each variant here builds a
megatron-core 0.16.1 `GPTModel` (LLaMA-style: RMSNorm, SwiGLU, RoPE, no biases, untied output; or NVGPT-style:
`layernorm1p` stored as γ − 1, rotary on half the channels, SwiGLU or squared ReLU) at its TP size under gloo, a seeded CLIP tower and projector, and writes:
- `<name>/nemo/`: an extracted `.nemo` (`model_config.yaml` + `model_weights.ckpt` or `mp_rank_XX/`), keys as NeMo
  pickles them (`model.` + megatron-core or legacy names), holding the parts the variant keeps (NeMo drops frozen
  parts);
- `<name>/clip/`: the tower as a transformers CLIP folder (what `--vision` names);
- `<name>/dist/` (variants with `dist`): the same NeVA as NeMo 1 saves megatron-core models, `model_config.yaml` +
  `model_weights/` written by megatron-core's `dist_checkpointing.save` (format `torch_dist`, layers stacked, Transformer
  Engine names), the projector added as replicated `ShardedTensor`s;
- variants with `lora`: NeMo's PEFT file (`peft.peft_scheme: lora`) holding the projector and
  `lora_kqv_adapter.linear_in/linear_out` weights per layer (rank 4, alpha 8: scale 2), the base GPT in `gpt/`
  without them, and the reference computed with the adapters merged (W_qkv + scale * linear_out @ linear_in);
- `<name>/gpt/` (variants with `gpt_only`): the language model alone as a NeMo GPT checkpoint (what `--llm` names);
- `<name>/reference.pt`: input ids, pixels, megatron-core's own logits on the merged embeddings and its 20 greedy
  tokens (argmax over the tokenizer's ids, the prompt recomputed at each step).
"""

import json
import os
import socket
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from neva_fixtures import tiny_image_processor, tiny_tokenizer  # noqa: E402

HIDDEN, HEADS, FFN, LAYERS, IMAGE, PATCH = 64, 4, 96, 2, 28, 14
# name -> TP size, query groups, projector, key names, which parts the .nemo keeps, start/end tokens
VARIANTS = {
    "tp1_gqa_linear": dict(tp=1, groups=2, projector="linear", names="mcore", parts=("llm", "projector"), im=False),
    "tp2_mha_mlp": dict(tp=2, groups=4, projector="mlp2x_gelu", names="legacy", parts=("llm", "projector", "vision"),
                        im=True),
    "tp2_gqa_dist": dict(tp=2, groups=2, projector="mlp2x_gelu", names="mcore", parts=("llm", "projector"), im=False,
                         dist=True),
    "tp1_lora": dict(tp=1, groups=2, projector="linear", names="mcore", parts=("projector",), im=False, gpt_only=True,
                     lora=True),
    "tp2_gqa_stage1": dict(tp=2, groups=2, projector="mlp2x_gelu", names="mcore", parts=("projector",), im=False,
                           gpt_only=True),
    # NVGPT-2B-like (layernorm1p, half the channels rotated, SwiGLU) and Nemotron-like (layernorm1p, squared ReLU)
    "tp2_nvgpt_swiglu": dict(tp=2, groups=2, projector="linear", names="legacy", parts=("llm", "projector"), im=False,
                             norm="layernorm1p", act="fast-swiglu", rotary=0.5),
    "tp1_nvgpt_relu2": dict(tp=1, groups=4, projector="mlp2x_gelu", names="mcore", parts=("llm", "projector"),
                            im=False, norm="layernorm1p", act="squared-relu", rotary=0.5),
}  # fmt: skip


def vocab() -> tuple[int, int]:
    size = len(tiny_tokenizer(image_token=False))
    return size, -(-size // 256) * 256  # NeMo pads to a multiple of 128 x TP


def build_gpt(spec: dict):
    """megatron-core's GPT; `layernorm1p` runs as megatron's LayerNorm holding γ = 1 + the stored zero-centred weight
    (what NeMo computes at run time: megatron-core's CPU LayerNorm has no zero-centred option)."""
    import torch.nn.functional as F
    from megatron.core.activations import squared_relu
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.transformer_config import TransformerConfig

    gated = spec.get("act", "fast-swiglu") != "squared-relu"
    normalization = "RMSNorm" if spec.get("norm", "rmsnorm") == "rmsnorm" else "LayerNorm"
    config = TransformerConfig(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=spec["groups"],
        ffn_hidden_size=FFN, gated_linear_unit=gated, activation_func=F.silu if gated else squared_relu,
        add_bias_linear=False, normalization=normalization, layernorm_epsilon=1e-5, use_cpu_initialization=True,
        bias_activation_fusion=False, bias_dropout_fusion=False, masked_softmax_fusion=False, apply_rope_fusion=False,
        gradient_accumulation_fusion=False, persist_layer_norm=False, hidden_dropout=0.0, attention_dropout=0.0,
        params_dtype=torch.float32, pipeline_dtype=torch.float32, init_method_std=0.1,
    )  # fmt: skip
    return GPTModel(
        config, get_gpt_layer_local_spec(normalization=normalization), vocab_size=vocab()[1], max_sequence_length=128,
        position_embedding_type="rope", rotary_percent=spec.get("rotary", 1.0), rotary_base=10000,
        share_embeddings_and_output_weights=False, parallel_output=False,
    ).eval()  # fmt: skip


def randomise(model: torch.nn.Module, tp_rank: int) -> None:
    for name, param in model.named_parameters():
        sharded = getattr(param, "tensor_model_parallel", False)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) + (1000 * tp_rank if sharded else 0))
        noise = torch.randn(param.shape, generator=generator)
        with torch.no_grad():
            if name.endswith("layernorm.weight"):  # γ - 1 on a 2^-10 grid: exact both ways for layernorm1p
                param.copy_(1 + torch.round(0.3 * noise * 1024).clamp(-1000, 1000) / 1024)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)


def build_parts(spec: dict):
    """The HF CLIP tower and the projector (the same on every rank: seeded)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(7)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, image_size=IMAGE, patch_size=PATCH)).eval()  # fmt: skip
    if spec["projector"] == "linear":
        projector = torch.nn.Linear(32, HIDDEN)
    else:
        projector = torch.nn.Sequential(torch.nn.Linear(32, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, HIDDEN))
    return tower, projector.eval()


def inputs(spec: dict):
    tokenizer = tiny_tokenizer(image_token=False)
    size, _ = vocab()
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(20, size, (14,), generator=generator)
    patches = (IMAGE // PATCH) ** 2
    # NeMo's NeVA without start/end: the image span is N placeholder positions (all overwritten); with them, the N
    # patch positions sit between <extra_id_4> and <extra_id_5>, which keep their embeddings.
    image = [0] * patches  # placeholder ids: overwritten
    if spec["im"]:
        start, end = tokenizer.convert_tokens_to_ids(["<extra_id_4>", "<extra_id_5>"])
        image = [start, *image, end]
    ids = torch.tensor([[*text[:5].tolist(), *image, *text[5:].tolist()]])
    positions = torch.arange(5 + (1 if spec["im"] else 0), 5 + (1 if spec["im"] else 0) + patches)
    pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=generator)
    return ids, positions, pixels


@torch.no_grad()
def reference_logits(gpt, tower, projector, ids, positions, pixels) -> torch.Tensor:
    features = projector(tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:])  # [1, N, h]
    position_ids = torch.arange(ids.shape[1]).unsqueeze(0)
    embeddings = gpt.embedding(input_ids=ids, position_ids=position_ids)  # [s, b, h]
    embeddings[positions, 0] = features[0]
    mask = torch.triu(torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool), diagonal=1)[None, None]
    return gpt(ids, position_ids, mask, decoder_input=embeddings)


LEGACY_PREFIXES = {
    "embedding.word_embeddings.": "language_model.embedding.word_embeddings.",
    "decoder.layers.": "language_model.encoder.layers.",
    "decoder.final_layernorm.": "language_model.encoder.final_layernorm.",
    "output_layer.": "language_model.output_layer.",
}
LEGACY_MODULES = {
    ".self_attention.linear_qkv.": ".self_attention.query_key_value.",
    ".self_attention.linear_proj.": ".self_attention.dense.",
    ".mlp.linear_fc1.": ".mlp.dense_h_to_4h.",
    ".mlp.linear_fc2.": ".mlp.dense_4h_to_h.",
    ".pre_mlp_layernorm.": ".post_attention_layernorm.",
}


def legacy_name(key: str) -> str:
    """NeMo's legacy (non-mcore) GPT name of a megatron-core key."""
    for old, new in LEGACY_PREFIXES.items():
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    for old, new in LEGACY_MODULES.items():
        key = key.replace(old, new)
    return key


ADAPTER = "embedding.word_embeddings.adapter_layer.mm_projector_adapter.mm_projector"
TOWER = "embedding.word_embeddings.vision_encoder."


def nemo_state(spec: dict, gpt, tower, projector, parts) -> dict:
    state = {}
    if "llm" in parts:
        state |= {k: v for k, v in gpt.state_dict().items() if not k.endswith("_extra_state")}
        if spec.get("norm") == "layernorm1p":  # NeMo stores the zero-centred γ - 1
            state |= {k: v - 1 for k, v in state.items() if k.endswith("layernorm.weight")}
    if "projector" in parts:  # nn.Linear: mm_projector.{weight,bias}; Sequential: mm_projector.{0,2}.*
        state |= {f"{ADAPTER}.{k}": v for k, v in projector.state_dict().items()}
    if "vision" in parts:
        state |= {f"{TOWER}vision_model.{k}": v for k, v in tower.state_dict().items() if "position_ids" not in k}
    if spec["names"] == "legacy":
        state = {legacy_name(key): value for key, value in state.items()}
    return {f"model.{k}": v.clone() for k, v in state.items()}


LORA_RANK, LORA_ALPHA = 4, 8


def add_lora(gpt) -> dict:
    """NeMo's LoRA on the fused QKV of every layer, merged into `gpt` in place; returns the adapter tensors as NeMo
    names them."""
    tensors = {}
    generator = torch.Generator().manual_seed(11)
    for index, layer in enumerate(gpt.decoder.layers):
        weight = layer.self_attention.linear_qkv.weight
        lora_in = torch.randn(LORA_RANK, weight.shape[1], generator=generator) * 0.1
        lora_out = torch.randn(weight.shape[0], LORA_RANK, generator=generator) * 0.1
        with torch.no_grad():
            weight += (LORA_ALPHA / LORA_RANK) * lora_out @ lora_in
        prefix = f"model.decoder.layers.{index}.self_attention.adapter_layer.lora_kqv_adapter"
        tensors |= {f"{prefix}.linear_in.weight": lora_in, f"{prefix}.linear_out.weight": lora_out}
    return tensors


def nemo_config(spec: dict) -> dict:
    return {
        "mcore_gpt": spec["names"] == "mcore", "num_layers": LAYERS, "hidden_size": HIDDEN, "ffn_hidden_size": FFN,
        "num_attention_heads": HEADS, "num_query_groups": spec["groups"], "normalization": spec.get("norm", "rmsnorm"),
        "layernorm_epsilon": 1e-5, "activation": spec.get("act", "fast-swiglu"), "bias": False,
        "position_embedding_type": "rope", "rotary_percentage": spec.get("rotary", 1.0), "rotary_base": 10000,
        "share_embeddings_and_output_weights": False,
        "encoder_seq_length": 128, "max_position_embeddings": 128, "tensor_model_parallel_size": spec["tp"],
        "make_vocab_size_divisible_by": 128,
        "mm_cfg": {"llm": {"from_pretrained": "llama.nemo", "freeze": "llm" not in spec["parts"]},
                   "vision_encoder": {"from_pretrained": "openai/clip-vit-tiny", "from_hf": True, "patch_dim": PATCH,
                                      "hidden_size": 32, "vision_select_layer": -2, "class_token_length": 1,
                                      "crop_size": [IMAGE, IMAGE], "freeze": "vision" not in spec["parts"]},
                   "mm_mlp_adapter_type": spec["projector"], "use_im_start_end": spec["im"]},
        "data": {"conv_template": "llama_2", "image_token_len": (IMAGE // PATCH) ** 2},
        **({"peft": {"peft_scheme": "lora", "lora_tuning": {"adapter_dim": LORA_RANK, "alpha": LORA_ALPHA,
                                                            "target_modules": ["attention_qkv"]}}}
           if spec.get("lora") else {}),
    }  # fmt: skip


def save(folder: Path, config: dict, state: dict, tp: int, tp_rank: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_config.yaml").write_text(yaml.safe_dump(config))
    path = folder / "model_weights.ckpt" if tp == 1 else folder / f"mp_rank_{tp_rank:02d}" / "model_weights.ckpt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)


def save_distributed(folder: Path, config: dict, gpt, projector, tp_rank: int) -> None:
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    if dist.get_rank() == 0:
        (folder / "model_weights").mkdir(parents=True, exist_ok=True)
        (folder / "model_config.yaml").write_text(yaml.safe_dump(config))
    dist.barrier()
    sharded = gpt.sharded_state_dict(prefix="model.")
    for key, value in projector.state_dict().items():
        name = f"model.{ADAPTER}.{key}"
        sharded[name] = ShardedTensor.from_rank_offsets(name, value.detach().clone(), replica_id=tp_rank)
    dist_checkpointing.save(sharded, str(folder / "model_weights"))


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None  # dist_checkpointing.save on CPU
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for tp in (2, 1):
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
        model_parallel_cuda_manual_seed(1234, inference_rng_tracker=True)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        for name, spec in VARIANTS.items():
            if spec["tp"] != tp:
                continue
            torch.manual_seed(0)
            gpt = build_gpt(spec)
            randomise(gpt, tp_rank)
            tower, projector = build_parts(spec)
            ids, positions, pixels = inputs(spec)
            base = nemo_state(spec, gpt, tower, projector, ("llm",))  # before any LoRA merge
            lora = add_lora(gpt) if spec.get("lora") else {}
            logits = reference_logits(gpt, tower, projector, ids, positions, pixels)
            sequence = ids  # 20 greedy tokens over the tokenizer's ids, recomputing the whole prompt each step
            for _ in range(20):
                step = reference_logits(gpt, tower, projector, sequence, positions, pixels)
                sequence = torch.cat([sequence, step[:, -1, : vocab()[0]].argmax(-1, keepdim=True)], dim=1)
            root = Path(out) / name
            if rank < tp:  # with TP=1 both ranks are replicas: rank 0 writes
                save(
                    root / "nemo",
                    nemo_config(spec),
                    nemo_state(spec, gpt, tower, projector, spec["parts"]) | lora,
                    tp,
                    tp_rank,
                )
                if spec.get("gpt_only"):
                    gpt_config = {k: v for k, v in nemo_config(spec).items() if k not in ("mm_cfg", "data")}
                    save(root / "gpt", gpt_config, base, tp, tp_rank)
            if spec.get("dist"):
                save_distributed(root / "dist", nemo_config(spec), gpt, projector, tp_rank)
            if rank == 0:
                tower.save_pretrained(root / "clip")
                tiny_image_processor().save_pretrained(root / "clip")
                tiny_tokenizer(image_token=False).save_pretrained(root / "tokenizer")
                torch.save({"ids": ids, "positions": positions, "pixels": pixels, "logits": logits,
                            "greedy": sequence[:, ids.shape[1] :]},
                           root / "reference.pt")  # fmt: skip
        parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def main(out: str) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(2, port, out), nprocs=2, join=True)
    (Path(out) / "variants.json").write_text(json.dumps(VARIANTS))


if __name__ == "__main__":
    main(sys.argv[1])
