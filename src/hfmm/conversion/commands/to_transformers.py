"""Export an hfmm CLIP or NeVA folder as a transformers-native checkpoint, which loads without hfmm.

    hfmm convert to-transformers SRC DST [--force] [--no-verify]
    python convert/to_transformers.py SRC DST ...   (the same command)

A CLIP becomes a `CLIPModel` checkpoint, a NeVA an `LlavaForConditionalGeneration` checkpoint; neither needs remote
code.

NeVA: Llava holds NeVAs with the mlp2x_gelu projector, no image start/end tokens and a transformers CLIP vision
tower; others are refused with the reason. The export gets a `LlavaProcessor` with the NeVA's own tokenizer, image
processor and chat template (the prompt expands to the same image tokens); transformers' Llava has no
`image-text-to-text` check of image modes or context length (hfmm's processor raises on those).

CLIP:
Refuses, naming the feature, models that `CLIPModel` cannot represent (ConvNeXt towers, several class tokens,
a patch-embedding bias, average pooling, a logit bias). The export carries transformers' own `CLIPProcessor`
(`AutoProcessor` loads it without hfmm): its `CLIPTokenizer` skips OpenCLIP's ftfy/HTML text cleaning and pads with
the end-of-text token (the embeddings are the same); its `CLIPImageProcessor` gives OpenCLIP's pixels on RGB images
with `backend="pil"` except for a one-pixel crop shift when the resized long edge minus the crop size is 3 mod 4,
drifts a grey level or two with the default torchvision backend, and composites transparent images on white before
resizing (README, "Export to a transformers-native CLIPModel", has the measured numbers). DST is checked first.
"""

import argparse

from hfmm.conversion.common.script import add_common_arguments, script_main


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, "hfmm CLIP or NeVA folder", max_shard_size=False)
    parser.add_argument("--no-verify", action="store_true", help="skip the output comparison")


def run(args: argparse.Namespace, arguments: list[str]) -> None:
    # Imported here, not at the top: `hfmm --help` and the other commands do not load the converters.
    from hfmm.conversion.transformers.export import export_native

    written = export_native(args.src, args.dst, verify_outputs=not args.no_verify, force=args.force)
    print(f"wrote {written} to {args.dst}")


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)
