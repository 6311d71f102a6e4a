"""Convert a NeMo NeVA checkpoint (NeMo 1 `.nemo`, or a NeMo 2 folder) into an hfmm NeVA folder.

    python convert/nemo_neva_to_hfmm.py SRC DST --vision CLIP [--llm LLM] [--tokenizer TOK] [--force]

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
import sys

from hfmm.conversion.io import command_line, run_script
from hfmm.conversion.nemo_neva import convert_nemo_neva_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help=".nemo file or folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--vision", help="transformers CLIP folder (the vision tower)")
    parser.add_argument("--llm", help="language model: NeMo GPT checkpoint or transformers causal-LM folder")
    parser.add_argument("--tokenizer", help="transformers tokenizer folder")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--max-shard-size", default="5GB", help="split the weights above this size (default 5GB)")
    args = parser.parse_args(argv)
    try:
        result = convert_nemo_neva_checkpoint(
            args.src, args.dst, llm=args.llm, vision=args.vision, tokenizer=args.tokenizer, force=args.force,
            max_shard_size=args.max_shard_size, arguments=command_line(argv),
        )  # fmt: skip
    except (ValueError, FileExistsError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote an hfmm NeVA to {result.dst} (weights: {result.weights})")
    return 0


if __name__ == "__main__":
    run_script(main)
