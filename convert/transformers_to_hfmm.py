"""Convert a transformers-native `CLIPModel` folder into an hfmm CLIP folder, exactly (the reverse of to_transformers.py).

    python convert/transformers_to_hfmm.py SRC DST [--force] [--no-verify] [--max-shard-size 5GB]

SRC holds `config.json` (`model_type: clip`) and `model.safetensors` or `pytorch_model.bin` (sharded or not), as most
OpenAI and LAION CLIP repos on the Hub do. Weights are copied unchanged (`logit_scale` becomes a 1-element tensor);
each tower keeps its `hidden_act`; image size, mean/std and interpolation come from `preprocessor_config.json`.
transformers' legacy `eos_token_id: 2` configs pool at the argmax of the token ids, hfmm at the first 49407: the same
position for real tokenizer output. DST gets hfmm's OpenCLIP-exact tokenizer (the folder's vocabulary must be CLIP's
BPE vocabulary) and image processor. Image and text embeddings are compared with transformers' own `CLIPModel`
(within 1e-5) before anything is written; DST appears only once complete, and an existing DST needs --force.
"""

import argparse
import sys

from hfmm.conversion.io import command_line, run_script
from hfmm.conversion.transformers_checkpoints import convert_transformers_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="transformers CLIPModel folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--no-verify", action="store_true", help="skip the embedding check against CLIPModel")
    parser.add_argument("--max-shard-size", default="5GB", help="split the weights above this size (default 5GB)")
    args = parser.parse_args(argv)
    try:
        result = convert_transformers_checkpoint(
            args.src,
            args.dst,
            verify_outputs=not args.no_verify,
            force=args.force,
            max_shard_size=args.max_shard_size,
            progress=True,
            arguments=command_line(argv),
        )
    except (ValueError, FileExistsError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {note}")
    if result.differences is not None:
        found = ", ".join(f"{tower} {diff:.2g}" for tower, diff in result.differences.items())
        print(f"verified against transformers' CLIPModel: largest embedding difference {found}")
    print(f"wrote an hfmm CLIP to {result.dst}")
    return 0


if __name__ == "__main__":
    run_script(main)
