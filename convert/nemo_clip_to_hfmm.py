"""Convert a NeMo CLIP checkpoint into an hfmm CLIP folder, exactly.

    python convert/nemo_clip_to_hfmm.py SRC DST [--force] [--max-shard-size 5GB]

SRC is a NeMo 1 `.nemo` file (tar, plain or gzip) or its extracted folder, with the weights as `model_weights.ckpt`,
`mp_rank_XX/`, `tp_rank_XX_pp_rank_YYY/` or a megatron-core `torch_dist` checkpoint in `model_weights/`; or a NeMo 2
folder (`context/model.yaml` + `weights/`). Legacy (`query_key_value`, `megatron_legacy` true or false) and
megatron-core (`linear_qkv`) models, any tensor-parallel size, 1 or 8 class tokens, `global_average_pool`, the old
patch embedding with bias. The activation follows NeMo's rules (`activation`, `openai_gelu`, `bias_activation_fusion`).

DST gets `config.json`, `model.safetensors`, and the tokenizer (the checkpoint's own vocab/merges files when it
carries them, else hfmm's CLIP BPE) and image processor files. Pickles are read with `weights_only=True`, archives
are checked before anything is extracted (into a temporary folder), and DST appears only once complete; an existing
DST needs --force. Errors are one line and exit with status 1.
"""

import argparse
import sys

from hfmm.conversion.io import command_line, run_script
from hfmm.conversion.nemo_checkpoints import convert_nemo_clip_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help=".nemo file, extracted .nemo folder or NeMo 2 checkpoint folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--max-shard-size", default="5GB", help="split the weights above this size (default 5GB)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert_nemo_clip_checkpoint(
            args.src, args.dst, force=args.force, max_shard_size=args.max_shard_size, arguments=command_line(argv)
        )
    except (ValueError, FileExistsError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {note}")
    print(f"wrote an hfmm CLIP to {result.dst} (weights: {result.weights})")
    return 0


if __name__ == "__main__":
    run_script(main)
