"""Convert a LLaVA checkpoint into an hfmm NeVA folder, exactly.

    hfmm convert llava SRC DST [--llm LLM] [--vision CLIP] [--force] [--no-verify] [--max-shard-size 5GB]
    python convert/llava_to_hfmm.py SRC DST ...   (the same command)

SRC is one of:
  * a transformers `LlavaForConditionalGeneration` folder (llava-hf style; any of the key layouts transformers has
    written), verified against transformers' Llava (logits within 1e-5) before anything is written;
  * an original haotian-liu LLaVA folder (`model_type: llava_llama`, `model.mm_projector.*`): give --vision (the CLIP
    tower's transformers folder: LLaVA loads it by name at run time, and most folders do not carry its weights).
    LLaVA splices images in at id -200; the NeVA gets an `<image>` special token instead (and `<pad>` when the
    tokenizer has none), with the embeddings resized as transformers' own converter does: to a multiple of 64, new
    rows drawn from N(mean, 1e-5 cov) of the old rows with a fixed seed (0), so a conversion is reproducible.
    With an mlp2x_gelu projector and no start/end tokens it is verified against transformers' Llava reading the same
    folder through a key_mapping (and the --vision tower through CLIPVisionModel); a linear projector or
    `mm_use_im_start_end` (which Llava cannot hold) is checked key by key and shape by shape only;
  * a stage-1 folder holding only `mm_projector.bin`: give --llm (a transformers causal-LM folder) and --vision;
    verified against a Llava assembled from the three parts by transformers' loaders.
DST gets config.json (model_type neva), model.safetensors, the tokenizer, the image processor and the chat template
(the source's, else `v1`). DST appears only once complete; an existing DST needs --force.
"""

import argparse

from hfmm.conversion.common.script import add_common_arguments, print_report, script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "LLaVA folder")
    parser.add_argument("--llm", help="transformers causal-LM folder (for a projector-only SRC)")
    parser.add_argument("--vision", help="transformers CLIP folder (for a SRC without the vision tower)")
    parser.add_argument("--no-verify", action="store_true", help="skip the logit check against transformers' Llava")


def run(args: argparse.Namespace, arguments: list[str]) -> None:
    # Imported here, not at the top: `hfmm --help` and the other commands do not load the converters.
    from hfmm.conversion.transformers.llava import convert_llava_checkpoint

    result = convert_llava_checkpoint(
        args.src,
        args.dst,
        llm=args.llm,
        vision=args.vision,
        verify_outputs=not args.no_verify,
        force=args.force,
        max_shard_size=args.max_shard_size,
        arguments=arguments,
    )
    print_report(result, "an hfmm NeVA", reference="transformers' Llava")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)
