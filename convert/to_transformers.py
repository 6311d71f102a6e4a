"""Export an hfmm CLIP folder as a transformers-native `CLIPModel` checkpoint, or an hfmm NeVA folder as a native
`LlavaForConditionalGeneration` checkpoint (either loads without hfmm or remote code).

    python convert/to_transformers.py SRC DST [--force] [--no-verify]

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
import sys

import hfmm  # noqa: F401  (registers hfmm's classes)
from hfmm.conversion.io import run_script
from hfmm.conversion.transformers_export import export_native


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="hfmm CLIP or NeVA folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    args = parser.parse_args(argv)
    try:
        written = export_native(args.src, args.dst, verify_outputs=not args.no_verify, force=args.force)
    except (ValueError, FileExistsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written} to {args.dst}")
    return 0


if __name__ == "__main__":
    run_script(main)
