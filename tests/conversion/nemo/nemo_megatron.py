"""Real megatron-core CLIP models on CPU, saved the ways NeMo saves them: fixtures for the NeMo converter tests.

    python tests/convert/nemo_megatron.py OUT_DIR

NeMo's megatron-core CLIP (`mcore_gpt: True`) is megatron-core's `CLIPViTModel` (vision) and `GPTModel` with
`post_process=False` (text), each topped by a final LayerNorm and a bias-free `head`, both built from GPT layer specs
(the vision spec with `no_mask`); `NemoCLIP` below assembles exactly that from megatron-core 0.16.1. Without Transformer
Engine the local spec is used and `TENorm` becomes torch's LayerNorm (research/megatron_cpu.md).

Every variant runs at its TP size under gloo (`torch.multiprocessing`, one process per rank) and writes:
- `<name>/ckpt/`: an extracted `.nemo` with `model_weights.ckpt` (TP=1) or `mp_rank_XX/model_weights.ckpt` (TP=2),
  keys as NeMo pickles them (`model.` + module names; "te" variants renamed with megatron-core's own
  `sharded_state_dict_keys_map`, as a Transformer Engine model names them, plus TE-style `_extra_state` entries);
- `<name>/dist/` (variants with `dist`): the same model saved by megatron-core's `dist_checkpointing.save` (format
  `torch_dist`) as NeMo 1 does (`model_weights/`, keys `model.`) or NeMo 2 does (`weights/` + `context/model.yaml`,
  keys `module.`, towers `vision_model`/`text_model`);
- `<name>/reference.pt`: inputs and megatron-core's own outputs (projected embeddings, the encoder's hidden states and
  NeMo's legacy `global_average_pool` embedding: mean over all tokens after the final LayerNorm).

This runs in its own processes because megatron-core on CPU needs process-wide patches (`torch.cuda.current_device`,
`Tensor.cuda` during `CLIPViTModel.__init__`, `torch.cuda.synchronize`) that must not leak into the test process.
"""

import io
import json
import os
import socket
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # megatron's fused bias-GELU is torch.compile'd: same math, no g++

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import yaml  # noqa: E402
from nemo_fixtures import nemo_clip_config, write_nemo_folder  # noqa: E402

VOCAB, WIDTH, HEADS, FFN, LAYERS, IMAGE, PATCH, OUT_DIM, CONTEXT = 49408, 64, 4, 256, 2, 32, 8, 32, 77
EOT = VOCAB - 1

# name -> tensor parallel size, class tokens, per-tower NeMo activation settings, key naming, dist-ckpt layout
VARIANTS = {
    "tp1_cls1": dict(tp=1, ctl=1, vision=("approx-gelu", False), text=("gelu", False), names="te", dist=None),
    "tp1_cls8": dict(tp=1, ctl=8, vision=("gelu", True), text=("approx-gelu", False), names="local", dist="nemo1"),
    "tp2_cls8": dict(tp=2, ctl=8, vision=("gelu", False), text=("approx-gelu", False), names="local", dist="nemo2"),
    "tp2_cls1": dict(tp=2, ctl=1, vision=("approx-gelu", False), text=("gelu", True), names="te", dist=None),
}


def _patch_cpu():
    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None


def _layer_config(activation: str, fusion: bool):
    import torch.nn.functional as F
    from megatron.core.activations import quick_gelu
    from megatron.core.transformer.transformer_config import TransformerConfig

    return TransformerConfig(
        num_layers=LAYERS, hidden_size=WIDTH, num_attention_heads=HEADS, ffn_hidden_size=FFN,
        activation_func=quick_gelu if activation == "approx-gelu" else F.gelu, bias_activation_fusion=fusion,
        add_bias_linear=True, gated_linear_unit=False, normalization="LayerNorm", layernorm_epsilon=1e-5,
        use_cpu_initialization=True, bias_dropout_fusion=False, masked_softmax_fusion=False,
        gradient_accumulation_fusion=False, persist_layer_norm=False, hidden_dropout=0.0, attention_dropout=0.0,
        params_dtype=torch.float32, pipeline_dtype=torch.float32, init_method_std=0.05,
    )  # fmt: skip


def build_model(spec: dict, vision_name: str, text_name: str):
    """NeMo's mcore CLIP (`MCoreCLIPViTModel` + `MCoreCLIPTextModel` + `logit_scale`) from megatron-core parts."""
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.module import MegatronModule
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    vision_config = _layer_config(*spec["vision"])
    vision_spec = get_gpt_layer_local_spec()
    vision_spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.no_mask
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # CLIPViTModel puts its position ids on "cuda"
    try:
        vision = CLIPViTModel(vision_config, vision_spec, ln_pre_impl=WrappedTorchNorm, add_class_token=True,
                              class_token_len=spec["ctl"], patch_dim=PATCH, img_h=IMAGE, img_w=IMAGE)  # fmt: skip
    finally:
        torch.Tensor.cuda = cuda
    text = GPTModel(_layer_config(*spec["text"]), get_gpt_layer_local_spec(), vocab_size=VOCAB,
                    max_sequence_length=CONTEXT, pre_process=True, post_process=False,
                    share_embeddings_and_output_weights=False, position_embedding_type="learned_absolute")  # fmt: skip
    for tower in (vision, text):  # NeMo's tower top: `final_layernorm` (TENorm) and a bias-free `head`
        tower.final_layernorm = WrappedTorchNorm(tower.config, WIDTH, eps=tower.config.layernorm_epsilon)
        tower.head = torch.nn.Linear(WIDTH, OUT_DIM, bias=False)

    class NemoCLIP(MegatronModule):
        def __init__(self):
            super().__init__(vision_config)
            self.add_module(vision_name, vision)
            self.add_module(text_name, text)
            self.logit_scale = torch.nn.Parameter(torch.ones([]) * 2.5)

    return NemoCLIP().eval(), vision, text


def randomise(model: torch.nn.Module, tp_rank: int) -> None:
    """Every parameter random, seeded by name (and TP rank for sharded ones), so replicas agree across ranks and
    LayerNorms, biases, class tokens and positions cannot pass on their constant initial values."""
    for name, param in model.named_parameters():
        sharded = getattr(param, "tensor_model_parallel", False)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) + (1000 * tp_rank if sharded else 0))
        noise = torch.randn(param.shape, generator=generator)
        with torch.no_grad():
            if name.endswith(("layernorm.weight", "layer_norm_weight", "ln_pre.weight")):
                param.copy_(1 + 0.3 * noise)
            elif param.ndim >= 2 and "embedding" not in name and "class_token" not in name:
                param.copy_(noise / param.shape[1:].numel() ** 0.5)
            else:
                param.copy_(0.3 * noise if param.ndim else param + 0.1 * noise)


def inputs():
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, IMAGE, IMAGE, generator=generator)
    input_ids = torch.zeros(2, CONTEXT, dtype=torch.long)
    for row, length in enumerate((9, 30)):
        input_ids[row, 0] = VOCAB - 2
        input_ids[row, 1 : length - 1] = torch.randint(1, VOCAB - 2, (length - 2,), generator=generator)
        input_ids[row, length - 1] = EOT
    return pixel_values, input_ids


@torch.no_grad()
def forward(vision, text, pixel_values, input_ids) -> dict:
    """NeMo's `MCoreCLIPViTModel.forward` / `MCoreCLIPTextModel.forward` on megatron-core's towers."""
    hidden = vision(pixel_values, attention_mask=None)  # (B, K+N, W)
    normed = vision.final_layernorm(hidden)
    positions = torch.arange(CONTEXT)[None]
    causal = torch.triu(torch.ones(CONTEXT, CONTEXT, dtype=torch.bool), diagonal=1)[None, None]  # True = masked
    text_hidden = text.final_layernorm(text(input_ids, positions, causal))  # (T, B, W)
    eot = text_hidden[input_ids.argmax(dim=-1), torch.arange(input_ids.shape[0])]
    return {
        "image_embeds": vision.head(normed[:, 0]),
        "text_embeds": text.head(eot),
        "vision_hidden_states": hidden,
        "global_average_pool_embeds": vision.head(normed.mean(dim=1)),
    }


def te_names(model, state_dict: dict) -> dict:
    """Module keys as a Transformer Engine model has them: megatron-core's `sharded_state_dict_keys_map` of each
    layer (`input_layernorm.` -> `self_attention.linear_qkv.layer_norm_`, ...), plus TE's `_extra_state` blobs."""
    renames = {}
    for name, module in model.named_modules():
        for old, new in getattr(getattr(module, "submodules_config", None), "sharded_state_dict_keys_map", {}).items():
            renames[f"{name}.{old}"] = f"{name}.{new}"
    out = {}
    for key, value in state_dict.items():
        prefix = next((old for old in renames if key.startswith(old)), None)
        key = renames[prefix] + key[len(prefix) :] if prefix else key
        out[key] = value
        if key.endswith("linear_qkv.weight"):
            out[key.replace("linear_qkv.weight", "core_attention._extra_state")] = io.BytesIO(b"fp8-meta")
    return out


def nemo1_name(key: str) -> str:
    """A `.nemo` is always NeMo 1, whose towers are `vision_encoder`/`text_encoder` (NeMo 2: `*_model`)."""
    tower, dot, rest = key.partition(".")
    return {"vision_model": "vision_encoder", "text_model": "text_encoder"}.get(tower, tower) + dot + rest


def save_checkpoints(name: str, spec: dict, model, out: Path, tp_rank: int) -> None:
    from megatron.core import dist_checkpointing

    tp, writer = spec["tp"], dist.get_rank() < spec["tp"]  # one data-parallel replica writes the pickles
    state_dict = {key: value for key, value in model.state_dict().items() if not key.endswith("_extra_state")}
    if spec["names"] == "te":
        state_dict = te_names(model, state_dict)
    state_dict = {nemo1_name(key): value for key, value in state_dict.items()}
    folder = out / name / "ckpt"
    config = mcore_config(spec)
    if dist.get_rank() == 0:
        write_nemo_folder(folder, config, {})
    dist.barrier()
    if writer:
        sub = folder / (f"mp_rank_{tp_rank:02d}" if tp > 1 else "")
        sub.mkdir(parents=True, exist_ok=True)
        torch.save({f"model.{key}": value for key, value in state_dict.items()}, sub / "model_weights.ckpt")
    if spec["dist"]:
        root = out / name / "dist"
        weights = root / ("model_weights" if spec["dist"] == "nemo1" else "weights")
        if dist.get_rank() == 0:
            weights.mkdir(parents=True, exist_ok=True)
            if spec["dist"] == "nemo1":
                (root / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            else:
                (root / "context").mkdir()
                (root / "context" / "model.yaml").write_text(yaml.safe_dump(nemo2_model_yaml(spec), sort_keys=False))
        dist.barrier()
        prefix = "model." if spec["dist"] == "nemo1" else "module."
        dist_checkpointing.save(model.sharded_state_dict(prefix=prefix), str(weights))


def mcore_config(spec: dict) -> dict:
    def tower(activation, fusion, **extra):
        sizes = {"num_layers": LAYERS, "hidden_size": WIDTH, "ffn_hidden_size": FFN, "num_attention_heads": HEADS}
        return {**sizes, "activation": activation, "bias_activation_fusion": fusion, **extra}

    vision = tower(*spec["vision"], patch_dim=PATCH, img_h=IMAGE, img_w=IMAGE, class_token_length=spec["ctl"])
    text = tower(*spec["text"], encoder_seq_length=CONTEXT, max_position_embeddings=CONTEXT)
    return nemo_clip_config(vision, text, output_dim=OUT_DIM, mcore=True, tp=spec["tp"])


def nemo2_model_yaml(spec: dict) -> dict:
    """`context/model.yaml` as NeMo 2's `IOMixin.io_dump` writes it for `nemo.collections.vlm.CLIPModel`."""

    def activation(name, fusion):
        target = ("nemo.collections.nlp.modules.common.megatron.utils.ApproxGELUActivation" if name == "approx-gelu"
                  else "torch.nn.functional.gelu")  # fmt: skip
        return {"activation_func": {"_target_": target, "_call_": False}, "bias_activation_fusion": fusion}

    common = {
        "num_layers": LAYERS,
        "hidden_size": WIDTH,
        "ffn_hidden_size": FFN,
        "num_attention_heads": HEADS,
        "layernorm_epsilon": 1e-5,
        "output_dim": OUT_DIM,
        "add_bias_linear": True,
        "gated_linear_unit": False,
        "normalization": "LayerNorm",
        "hidden_dropout": 0.0,
        "attention_dropout": 0.0,
    }
    base = "nemo.collections.vlm.clip.model.base."
    return {
        "_target_": base + "CLIPModel",
        "config": {
            "_target_": base + "CLIPConfig",
            "text_transformer_config": {
                "_target_": base + "CLIPTextModelConfig",
                **common,
                **activation(*spec["text"]),
                "max_seq_length": CONTEXT,
            },
            "vision_transformer_config": {
                "_target_": base + "CLIPViTConfig",
                **common,
                **activation(*spec["vision"]),
                "class_token_len": spec["ctl"],
                "add_class_token": True,
                "patch_dim": PATCH,
                "img_h": IMAGE,
                "img_w": IMAGE,
                "vision_model_type": "clip",
            },
        },
        "tokenizer": {
            "_target_": "nemo.collections.common.tokenizers.huggingface.auto_tokenizer.AutoTokenizer",
            "pretrained_model_name": "openai/clip-vit-large-patch14",
        },
    }


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    """One of `world_size` gloo ranks; runs the TP=2 variants, then the TP=1 ones (two data-parallel replicas)."""
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    _patch_cpu()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    for tp in sorted({spec["tp"] for spec in VARIANTS.values()}, reverse=True):
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp)
        model_parallel_cuda_manual_seed(1234, inference_rng_tracker=True)
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        for name, spec in VARIANTS.items():
            if spec["tp"] != tp:
                continue
            towers = ("vision_model", "text_model") if spec["dist"] == "nemo2" else ("vision_encoder", "text_encoder")
            torch.manual_seed(0)
            model, vision, text = build_model(spec, *towers)
            randomise(model, tp_rank)
            pixel_values, input_ids = inputs()
            outputs = forward(vision, text, pixel_values, input_ids)
            save_checkpoints(name, spec, model, Path(out), tp_rank)
            if rank == 0:
                reference = {
                    "pixel_values": pixel_values,
                    "input_ids": input_ids,
                    "logit_scale": model.logit_scale.detach(),
                }
                torch.save({**reference, **outputs}, Path(out) / name / "reference.pt")
        parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def main(out: str) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as probe:  # a free port for gloo's rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    world_size = max(spec["tp"] for spec in VARIANTS.values())
    mp.spawn(worker, args=(world_size, port, out), nprocs=world_size, join=True)
    (Path(out) / "variants.json").write_text(json.dumps(VARIANTS))


if __name__ == "__main__":
    main(sys.argv[1])
