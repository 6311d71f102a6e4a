"""A real megatron-core `LLaVAModel` (the module NeMo 2's NeVA is built on) saved as a NeMo 2 checkpoint.

    python tests/convert/nemo2_neva_megatron.py OUT_DIR

megatron-core 0.16.1 on CPU under gloo (TP=2, one process per rank): a CLIP ViT (`CLIPViTModel`, QuickGELU, one class
token, dropped), an MLP projector (`MultimodalProjector`, "mlp": fc1, GELU, fc2) and a LLaMA-style `GPTModel` (GQA,
RMSNorm, SwiGLU, RoPE). It writes `OUT_DIR/nemo2/` as NeMo 2 does: `weights/` from `dist_checkpointing.save` of the
model's `sharded_state_dict(prefix="module.")` (format `torch_dist`) and `context/model.yaml` (NeMo 2's `NevaConfig`
with its three sub-configs; `vision_feature_layer: -1`, since megatron's own forward takes the ViT's last layer) and
`context/nemo_tokenizer/` (the HF tokenizer artifact), `OUT_DIR/tokenizer/`, and `OUT_DIR/reference.pt` with the inputs, the model's own logits and its 20 greedy tokens.
"""

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
from neva_fixtures import tiny_tokenizer  # noqa: E402

HIDDEN, HEADS, GROUPS, FFN, LAYERS = 64, 4, 2, 96, 2
V_HIDDEN, V_HEADS, V_FFN, V_LAYERS, IMAGE, PATCH = 32, 4, 128, 2, 28, 14
IMAGE_TOKEN = 3  # megatron's placeholder id: one per image in the prompt, expanded to the image's tokens


def vocab() -> tuple[int, int]:
    size = len(tiny_tokenizer(image_token=False))
    return size, -(-size // 256) * 256


def configs():
    import torch.nn.functional as F
    from megatron.core.activations import quick_gelu
    from megatron.core.transformer.transformer_config import TransformerConfig

    cpu = dict(use_cpu_initialization=True, bias_dropout_fusion=False, masked_softmax_fusion=False,
               apply_rope_fusion=False, gradient_accumulation_fusion=False, persist_layer_norm=False,
               hidden_dropout=0.0, attention_dropout=0.0, params_dtype=torch.float32, pipeline_dtype=torch.float32,
               init_method_std=0.1, bias_activation_fusion=False)  # fmt: skip
    language = TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
                                 num_query_groups=GROUPS, ffn_hidden_size=FFN, gated_linear_unit=True,
                                 activation_func=F.silu, add_bias_linear=False, normalization="RMSNorm",
                                 layernorm_epsilon=1e-5, **cpu)  # fmt: skip
    vision = TransformerConfig(num_layers=V_LAYERS, hidden_size=V_HIDDEN, num_attention_heads=V_HEADS,
                               ffn_hidden_size=V_FFN, activation_func=quick_gelu, add_bias_linear=True,
                               normalization="LayerNorm", layernorm_epsilon=1e-5, **cpu)  # fmt: skip
    vision.vision_model_type = "clip"
    projection = TransformerConfig(num_layers=1, hidden_size=HIDDEN, num_attention_heads=1, ffn_hidden_size=HIDDEN,
                                   add_bias_linear=True, activation_func=F.gelu, gated_linear_unit=False, **cpu)  # fmt: skip
    return language, vision, projection


def build():
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.models.multimodal import llava_model
    from megatron.core.models.vision.clip_vit_model import CLIPViTModel
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.mlp import MLPSubmodules
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    class CPUCLIPViT(CLIPViTModel):  # research/megatron_cpu.md §2 #5, #6
        def __init__(self, *args, **kwargs):
            cuda = torch.Tensor.cuda
            torch.Tensor.cuda = lambda self, *a, **k: self
            try:
                super().__init__(*args, **{**kwargs, "ln_pre_impl": WrappedTorchNorm})
            finally:
                torch.Tensor.cuda = cuda

    llava_model.CLIPViTModel = CPUCLIPViT
    language, vision, projection = configs()
    vit_spec = get_gpt_layer_local_spec()
    vit_spec.submodules.self_attention.params["attn_mask_type"] = AttnMaskType.no_mask
    return llava_model.LLaVAModel(
        language, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab()[1], 128, vision, vit_spec, True,
        projection, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear), "mlp",
        parallel_output=False, share_embeddings_and_output_weights=False, language_position_embedding_type="rope",
        img_h=IMAGE, img_w=IMAGE, patch_dim=PATCH,
    ).eval()  # fmt: skip


def randomise(model: torch.nn.Module, tp_rank: int) -> None:
    for name, param in model.named_parameters():
        sharded = getattr(param, "tensor_model_parallel", False)
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()) + (1000 * tp_rank if sharded else 0))
        noise = torch.randn(param.shape, generator=generator)
        with torch.no_grad():
            if name.endswith(("layernorm.weight", "ln_pre.weight")):
                param.copy_(1 + 0.3 * noise)
            elif param.ndim >= 2 and "embedding" not in name and "class_token" not in name:
                param.copy_(noise / param.shape[-1] ** 0.5)
            else:
                param.copy_(0.3 * noise)


def model_yaml() -> dict:
    base = "nemo.collections.vlm.neva.model.base."
    gelu = {"_target_": "torch.nn.functional.gelu", "_call_": False}
    return {
        "_target_": base + "NevaModel",
        "config": {
            "_target_": base + "NevaConfig",
            "drop_vision_class_token": True,
            "vision_feature_layer": -1,
            "language_transformer_config": {
                "_target_": "nemo.collections.llm.gpt.model.llama.LlamaConfig", "num_layers": LAYERS,
                "hidden_size": HIDDEN, "ffn_hidden_size": FFN, "num_attention_heads": HEADS,
                "num_query_groups": GROUPS, "normalization": "RMSNorm", "layernorm_epsilon": 1e-5,
                "activation_func": {"_target_": "torch.nn.functional.silu", "_call_": False},
                "gated_linear_unit": True, "add_bias_linear": False, "position_embedding_type": "rope",
                "rotary_base": 10000, "rotary_percent": 1.0, "seq_length": 128,
                "share_embeddings_and_output_weights": False,
            },
            "vision_transformer_config": {
                "_target_": base + "CLIPViTConfig", "num_layers": V_LAYERS, "hidden_size": V_HIDDEN,
                "ffn_hidden_size": V_FFN, "num_attention_heads": V_HEADS, "layernorm_epsilon": 1e-5,
                "activation_func": {"_target_": "megatron.core.activations.quick_gelu", "_call_": False},
                "add_class_token": True, "class_token_len": 1, "patch_dim": PATCH, "img_h": IMAGE, "img_w": IMAGE,
                "vision_model_type": "clip",
            },
            "vision_projection_config": {
                "_target_": base + "MultimodalProjectorConfig", "projector_type": "mcore_mlp",
                "input_size": V_HIDDEN, "hidden_size": HIDDEN, "ffn_hidden_size": HIDDEN, "activation_func": gelu,
            },
        },
        "tokenizer": {"_target_": "nemo.collections.common.tokenizers.huggingface.auto_tokenizer.AutoTokenizer"},
    }  # fmt: skip


def worker(rank: int, world_size: int, port: int, out: str) -> None:
    from megatron.core import dist_checkpointing, parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    torch.cuda.current_device = lambda: torch.device("cpu")
    torch.cuda.synchronize = lambda *args, **kwargs: None
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world_size)
    model_parallel_cuda_manual_seed(1234, inference_rng_tracker=True)
    torch.manual_seed(0)
    model = build()
    randomise(model, parallel_state.get_tensor_model_parallel_rank())
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(20, vocab()[0], (12,), generator=generator)
    ids = torch.cat([text[:5], torch.tensor([IMAGE_TOKEN]), text[5:]]).unsqueeze(0)
    pixels = torch.randn(1, 3, IMAGE, IMAGE, generator=generator)
    patches = (IMAGE // PATCH) ** 2
    length = ids.shape[1] - 1 + patches
    mask = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)[None, None]
    with torch.no_grad():
        logits = model(pixels, ids, torch.arange(ids.shape[1]).unsqueeze(0), mask, image_token_index=IMAGE_TOKEN)
    logits = logits[0] if isinstance(logits, tuple) else logits
    sequence = ids  # 20 greedy tokens over the tokenizer's ids, the whole prompt recomputed each step
    for _ in range(20):
        length = sequence.shape[1] - 1 + patches
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool), diagonal=1)[None, None]
        with torch.no_grad():
            step = model(pixels, sequence, torch.arange(sequence.shape[1]).unsqueeze(0), causal,
                         image_token_index=IMAGE_TOKEN)  # fmt: skip
        step = step[0] if isinstance(step, tuple) else step
        sequence = torch.cat([sequence, step[:, -1, : vocab()[0]].argmax(-1, keepdim=True)], dim=1)
    root = Path(out) / "nemo2"
    if rank == 0:
        (root / "weights").mkdir(parents=True, exist_ok=True)
        (root / "context").mkdir(parents=True, exist_ok=True)
        (root / "context" / "model.yaml").write_text(yaml.safe_dump(model_yaml(), sort_keys=False))
        tiny_tokenizer(image_token=False).save_pretrained(Path(out) / "tokenizer")
        tiny_tokenizer(image_token=False).save_pretrained(root / "context" / "nemo_tokenizer")  # NeMo 2's artifact
        expanded = torch.cat([text[:5], torch.full((patches,), -1), text[5:]]).unsqueeze(0)  # -1: image positions
        reference = {"ids": expanded, "pixels": pixels, "logits": logits, "greedy": sequence[:, ids.shape[1] :]}
        torch.save(reference, Path(out) / "reference.pt")
    dist.barrier()
    dist_checkpointing.save(model.sharded_state_dict(prefix="module."), str(root / "weights"))
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()


def main(out: str) -> None:
    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(worker, args=(2, port, out), nprocs=2, join=True)


if __name__ == "__main__":
    main(sys.argv[1])
