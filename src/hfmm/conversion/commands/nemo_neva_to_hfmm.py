"""Convert a NeMo NeVA checkpoint (NeMo 1 `.nemo` or NeMo 2 folder) into an hfmm NeVA folder.

    hfmm convert nemo-neva SRC DST --vision CLIP [--llm LLM] [--tokenizer TOK] [--force] [--max-shard-size 5GB]
    python convert/nemo_neva_to_hfmm.py SRC DST ...   (the same command)

SRC is a `.nemo` file (tar, plain or gzip) or its extracted folder, with the weights as `model_weights.ckpt`,
`mp_rank_XX/`, `tp_rank_XX_pp_rank_YYY/` or a `model_weights/` torch_dist checkpoint; megatron-core (`mcore_gpt`) and
legacy key names. The Megatron GPT language model becomes transformers' LLaMA (RMSNorm + SwiGLU), StableLM (NVGPT:
layernorm1p or LayerNorm + SwiGLU, partial rotary) or Nemotron (layernorm1p + squared ReLU, partial rotary): fused QKV
split per query group, SwiGLU fc1 = [gate; up] merged across TP ranks, vocabulary padding trimmed; other language
models are refused with the reason. The projector (linear or mlp2x_gelu) and the HF CLIP tower keep their weights.
NeVA files usually hold only what was trained, so:
  --vision  a transformers CLIP folder: the tower's config (NeMo records only its name), and its weights when SRC
            lacks them (required);
  --llm     the language model when SRC lacks it (stage 1), or the base of a LoRA file (its adapters on the fused QKV
            are merged into it): a NeMo GPT checkpoint or a transformers causal-LM folder;
  --tokenizer  a transformers tokenizer folder (else --llm's).
The NeVA gets an `<image>` special token (embeddings resized to a multiple of 64).
NeMo 2 (`context/model.yaml` + `weights/` torch_dist, megatron-core `LLaVAModel` keys): every part is in the
checkpoint; a megatron-core CLIP ViT tower becomes a transformers CLIP tower (its config from model.yaml), an HF CLIP
tower takes its config from --vision; the tokenizer is --tokenizer, else the checkpoint's `context/nemo_tokenizer/`.
DST appears only once complete; an existing DST needs --force.
"""

import argparse

from hfmm.conversion.common.script import add_common_arguments, print_report, script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, ".nemo file or folder")
    parser.add_argument("--vision", help="transformers CLIP folder (the vision tower)")
    parser.add_argument("--llm", help="language model: NeMo GPT checkpoint or transformers causal-LM folder")
    parser.add_argument("--tokenizer", help="transformers tokenizer folder")


def run(args: argparse.Namespace, arguments: list[str]) -> None:
    # Imported here, not at the top: `hfmm --help` and the other commands do not load the converters.
    from hfmm.conversion.nemo.neva import convert_nemo_neva_checkpoint

    result = convert_nemo_neva_checkpoint(
        args.src, args.dst, llm=args.llm, vision=args.vision, tokenizer=args.tokenizer, force=args.force,
        max_shard_size=args.max_shard_size, arguments=arguments,
    )  # fmt: skip
    print_report(result, "an hfmm NeVA")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)
