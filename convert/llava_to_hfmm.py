"""Convert a LLaVA checkpoint into an hfmm NeVA folder, exactly.

    python convert/llava_to_hfmm.py SRC DST [--llm LLM] [--vision CLIP] [--force] [--no-verify] [--max-shard-size 5GB]

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
import sys

from hfmm.conversion.io import command_line, run_script
from hfmm.conversion.llava import convert_llava_checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="LLaVA folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--llm", help="transformers causal-LM folder (for a projector-only SRC)")
    parser.add_argument("--vision", help="transformers CLIP folder (for a SRC without the vision tower)")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--no-verify", action="store_true", help="skip the logit check against transformers' Llava")
    parser.add_argument("--max-shard-size", default="5GB", help="split the weights above this size (default 5GB)")
    args = parser.parse_args(argv)
    try:
        result = convert_llava_checkpoint(
            args.src,
            args.dst,
            llm=args.llm,
            vision=args.vision,
            verify_outputs=not args.no_verify,
            force=args.force,
            max_shard_size=args.max_shard_size,
            arguments=command_line(argv),
        )
    except (ValueError, FileExistsError, OSError) as error:  # CheckpointError is a ValueError
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    for note in result.notes:
        print(f"note: {note}")
    if result.max_logit_difference is not None:
        print(f"verified against transformers' Llava: largest logit difference {result.max_logit_difference:.2g}")
    print(f"wrote an hfmm NeVA to {result.dst}")
    return 0


if __name__ == "__main__":
    run_script(main)
