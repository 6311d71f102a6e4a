"""Convert an OpenCLIP checkpoint into an hfmm CLIP folder, exactly.

    python convert/open_clip_to_hfmm.py SRC DST [--model NAME] [--quick-gelu | --no-quick-gelu] [--no-verify] [--force]
        [--max-shard-size 5GB]

SRC is a hub-style folder (`open_clip_config.json` + `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`)
or a weights file (`.safetensors`, `.bin`, `.pt`), open_clip training checkpoints included (`state_dict` with DDP
`module.` prefixes). Bare weights need `--model NAME`: an hfmm preset or any open_clip model name, e.g.
`ViT-B-16-quickgelu` (its config is read from the installed open_clip).

The activation is not stored in OpenCLIP weights. It comes from `--quick-gelu`/`--no-quick-gelu`, else from SRC's
`open_clip_config.json`, else from NAME when everything that names it agrees (the hfmm preset, the open_clip config and
open_clip's pretrained weights of that name); when they disagree (`ViT-B-32`: OpenAI weights use QuickGELU, laion2b
weights GELU) the script stops and asks for the flag.

DST gets `config.json`, `model.safetensors` (sharded above --max-shard-size), the modeling files and the OpenCLIP-exact
tokenizer and image processor (image size, mean/std, interpolation from `preprocess_cfg`, else from the preset or
OpenCLIP's defaults). When open_clip is installed, its own model is built from the same weights and image and text
embeddings must agree within 1e-5 before anything is written. DST appears only once complete; an existing DST needs
--force.
"""

import argparse
import sys

from hfmm.conversion.io import command_line, run_script
from hfmm.conversion.open_clip_checkpoints import convert_open_clip_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="hub-style folder or weights file (.safetensors, .bin, .pt)")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--model", help="architecture of bare weights: an hfmm preset or an open_clip model name")
    parser.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the checkpoint uses QuickGELU (--no-quick-gelu: exact GELU); default: from the config or NAME",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the embedding check against open_clip")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--max-shard-size", default="5GB", help="split the weights above this size (default 5GB)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        result = convert_open_clip_checkpoint(
            args.src,
            args.dst,
            model=args.model,
            quick_gelu=args.quick_gelu,
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
        print(f"verified against open_clip: largest embedding difference {found}")
    print(f"wrote an hfmm CLIP to {result.dst}")
    return 0


if __name__ == "__main__":
    run_script(main)
