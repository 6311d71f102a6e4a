"""Export an hfmm CLIP folder as a transformers-native `CLIPModel` checkpoint, or an hfmm NeVA folder as a native
`LlavaForConditionalGeneration` checkpoint (either loads without hfmm or remote code).

    python convert/to_transformers.py SRC DST [--force] [--no-verify]

NeVA: Llava holds NeVAs with the mlp2x_gelu projector, no image start/end tokens and a transformers CLIP vision
tower; others are refused with the reason. The export gets a `LlavaProcessor` with the NeVA's own tokenizer, image
processor and chat template (the prompt expands to the same image tokens); transformers' Llava has no
`image-text-to-text` check of image modes or context length (hfmm's processor raises on those).

CLIP:
Refuses, naming the feature, models that `CLIPModel` cannot represent (ConvNeXt towers, several class tokens,
a patch-embedding bias, average pooling, a logit bias). The exported tokenizer is transformers' `CLIPTokenizer`,
which skips OpenCLIP's ftfy/HTML text cleaning and
pads with the end-of-text token (the embeddings are the same); the image processor is transformers' PIL-backend
`CLIPImageProcessor`, which composites transparent images on white before resizing. Both drift from hfmm's
processor on such inputs only.
"""

import argparse
import sys

import torch
from transformers import AutoConfig, AutoModel, CLIPImageProcessorPil, CLIPTokenizer

import hfmm  # noqa: F401  (registers hfmm's classes)
from hfmm.conversion.io import atomic_output_dir
from hfmm.conversion.llava import export_to_llava
from hfmm.conversion.transformers_clip import to_transformers_model
from hfmm.models.clip import HfmmCLIPModel


def native_processors(model_config, tokenizer_dir):
    vision = model_config.vision_config
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": vision.image_size},
        crop_size={"height": vision.image_size, "width": vision.image_size},
        image_mean=list(vision.image_mean),
        image_std=list(vision.image_std),
        resample={"bicubic": 3, "bilinear": 2, "nearest": 0}[vision.interpolation],
    )
    # Pad with the end-of-text token (transformers' convention; pooling takes the first one). A "!" pad token
    # would become special in CLIPTokenizer and split "!" out of every text.
    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_dir, pad_token="<end_of_text>")
    return image_processor, tokenizer


def verify(model: HfmmCLIPModel, native, config) -> float:
    torch.manual_seed(0)
    size = config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 1929, 49407, 0, 0, 0, 0]])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits_per_image
        theirs = native(input_ids=ids, pixel_values=pixels).logits_per_image
    return (ours - theirs).abs().max().item()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="hfmm CLIP or NeVA folder")
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    parser.add_argument("--no-verify", action="store_true", help="skip the output comparison")
    args = parser.parse_args(argv)
    try:
        if AutoConfig.from_pretrained(args.src).model_type == "neva":
            difference = export_to_llava(args.src, args.dst, verify_outputs=not args.no_verify, force=args.force)
            checked = "" if difference is None else f" (largest logit difference {difference:.2g})"
            print(f"wrote a transformers LlavaForConditionalGeneration to {args.dst}{checked}")
            return 0
        model = AutoModel.from_pretrained(args.src, dtype=torch.float32).eval()
        if not isinstance(model, HfmmCLIPModel):
            raise ValueError(f"{args.src} holds a {type(model).__name__}, not an hfmm CLIP.")
        native = to_transformers_model(model)
        if not args.no_verify and (diff := verify(model, native, model.config)) > 1e-4:
            raise ValueError(f"exported logits differ from hfmm's by {diff:.3g}")
        with atomic_output_dir(args.dst, force=args.force) as tmp:
            native.save_pretrained(tmp)
            for processor in native_processors(model.config, args.src):
                processor.save_pretrained(tmp)
    except (ValueError, FileExistsError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote a transformers CLIPModel to {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
