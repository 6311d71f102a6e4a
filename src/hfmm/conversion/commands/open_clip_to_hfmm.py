"""Convert an OpenCLIP checkpoint into an hfmm CLIP folder, exactly.

    hfmm convert open-clip SRC DST [--model NAME] [--quick-gelu | --no-quick-gelu] [--no-verify] [--force]
        [--max-shard-size 5GB]
    python convert/open_clip_to_hfmm.py SRC DST ...   (the same command)

SRC is a hub-style folder (`open_clip_config.json` + `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`)
or a weights file (`.safetensors`, `.bin`, `.pt`), open_clip training checkpoints included (`state_dict` with DDP
`module.` prefixes). Bare weights need `--model NAME`: an hfmm preset or any open_clip model name, e.g.
`ViT-B-16-quickgelu` (its config is read from the installed open_clip).

The activation is not stored in OpenCLIP weights. It comes from `--quick-gelu`/`--no-quick-gelu`, else from SRC's
`open_clip_config.json`, else from NAME when everything that names it agrees (the hfmm preset, the open_clip config and
open_clip's pretrained weights of that name); when they disagree (`ViT-B-32`: OpenAI weights use QuickGELU, laion2b
weights GELU) the command stops and asks for the flag.

DST gets `config.json`, `model.safetensors` (sharded above --max-shard-size), the modeling files and the OpenCLIP-exact
tokenizer and image processor (image size, mean/std, interpolation from `preprocess_cfg`, else from the preset or
OpenCLIP's defaults). When open_clip is installed, its own model is built from the same weights and image and text
embeddings must agree within 1e-5 before anything is written. DST appears only once complete; an existing DST needs
--force.
"""

import argparse

from hfmm.conversion.common.script import add_common_arguments, print_report, script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "hub-style folder or weights file (.safetensors, .bin, .pt)")
    parser.add_argument("--model", help="architecture of bare weights: an hfmm preset or an open_clip model name")
    parser.add_argument(
        "--quick-gelu",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the checkpoint uses QuickGELU (--no-quick-gelu: exact GELU); default: from the config or NAME",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the embedding check against open_clip")


def run(args: argparse.Namespace, arguments: list[str]) -> None:
    # Imported here, not at the top: `hfmm --help` and the other commands do not load the converters.
    from hfmm.conversion.open_clip.checkpoint import convert_open_clip_checkpoint

    result = convert_open_clip_checkpoint(
        args.src,
        args.dst,
        model=args.model,
        quick_gelu=args.quick_gelu,
        verify_outputs=not args.no_verify,
        force=args.force,
        max_shard_size=args.max_shard_size,
        progress=True,
        arguments=arguments,
    )
    print_report(result, "an hfmm CLIP", reference="open_clip")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)
