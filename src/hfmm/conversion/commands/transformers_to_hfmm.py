"""Convert a transformers-native `CLIPModel` folder into an hfmm CLIP folder, exactly.

    hfmm convert transformers SRC DST [--force] [--no-verify] [--max-shard-size 5GB]
    python convert/transformers_to_hfmm.py SRC DST ...   (the same command)

The reverse of `hfmm convert to-transformers`. SRC holds `config.json` (`model_type: clip`) and `model.safetensors` or
`pytorch_model.bin` (sharded or not), as most OpenAI and LAION CLIP repos on the Hub do. Weights are copied unchanged
(`logit_scale` becomes a 1-element tensor); each tower keeps its `hidden_act`; image size, mean/std and interpolation
come from `preprocessor_config.json`. transformers' legacy `eos_token_id: 2` configs pool at the argmax of the token
ids, hfmm at the first 49407: the same position for real tokenizer output. DST gets hfmm's OpenCLIP-exact tokenizer
(the folder's vocabulary must be CLIP's BPE vocabulary) and image processor. Image and text embeddings are compared
with transformers' own `CLIPModel` (within 1e-5) before anything is written; DST appears only once complete, and an
existing DST needs --force.
"""

import argparse

from hfmm.conversion.common.script import add_common_arguments, print_report, script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "transformers CLIPModel folder")
    parser.add_argument("--no-verify", action="store_true", help="skip the embedding check against CLIPModel")


def run(args: argparse.Namespace, arguments: list[str]) -> None:
    # Imported here, not at the top: `hfmm --help` and the other commands do not load the converters.
    from hfmm.conversion.transformers.clip import convert_transformers_checkpoint

    result = convert_transformers_checkpoint(
        args.src,
        args.dst,
        verify_outputs=not args.no_verify,
        force=args.force,
        max_shard_size=args.max_shard_size,
        progress=True,
        arguments=arguments,
    )
    print_report(result, "an hfmm CLIP", reference="transformers' CLIPModel")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)
