"""Export an hfmm folder as a transformers-native checkpoint: a CLIP as `CLIPModel`, a NeVA as
`LlavaForConditionalGeneration` (see `convert/to_transformers.py` for what each can represent)."""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, CLIPImageProcessorPil, CLIPProcessor, CLIPTokenizer

from hfmm.conversion.common.writer import atomic_output_dir, check_destination
from hfmm.conversion.transformers.clip_mapping import to_transformers_model
from hfmm.conversion.transformers.llava import export_to_llava


def native_processor(model_config, tokenizer_dir) -> CLIPProcessor:
    """transformers' own `CLIPProcessor` for an hfmm CLIP: `AutoProcessor` loads it without hfmm or remote code.

    Its PIL backend (`backend="pil"`) gives OpenCLIP's pixels, except for a one-pixel shift of the crop when the
    resized long edge minus the crop size is 3 mod 4 (transformers floors the crop offset, torchvision rounds half to
    even); the default torchvision backend resizes uint8 tensors, a grey level or two from Pillow.
    """
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
    # The source's tokenizer_config.json names hfmm's remote-code classes; the export ships none of them.
    for key in ("auto_map", "processor_class"):
        tokenizer.init_kwargs.pop(key, None)
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def clip_logit_difference(model, native) -> float:
    """Largest |logits_per_image| difference between an hfmm CLIP and its native export on random inputs."""
    torch.manual_seed(0)
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size)
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 1929, 49407, 0, 0, 0, 0]])
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels).logits_per_image
        theirs = native(input_ids=ids, pixel_values=pixels).logits_per_image
    return (ours - theirs).abs().max().item()


def export_native(src: str | Path, dst: str | Path, *, verify_outputs: bool = True, force: bool = False) -> str:
    """Writes the native export of the hfmm folder `src` into `dst` (atomically); returns what was written.

    Raises `ValueError` naming the feature when transformers' own class cannot represent the model, or when the
    export's outputs differ from hfmm's (CLIP logits > 1e-4, NeVA logits > 1e-5).
    """
    from hfmm.models.clip import HfmmCLIPModel

    check_destination(dst, force=force)  # before any weight is read
    if AutoConfig.from_pretrained(src).model_type == "neva":
        difference = export_to_llava(src, dst, verify_outputs=verify_outputs, force=force)
        checked = "" if difference is None else f" (largest logit difference {difference:.2g})"
        return f"a transformers LlavaForConditionalGeneration{checked}"
    model = AutoModel.from_pretrained(src, dtype=torch.float32).eval()
    if not isinstance(model, HfmmCLIPModel):
        raise ValueError(f"{src} holds a {type(model).__name__}, not an hfmm CLIP.")
    native = to_transformers_model(model)
    if verify_outputs and (difference := clip_logit_difference(model, native)) > 1e-4:
        raise ValueError(f"exported logits differ from hfmm's by {difference:.3g}")
    with atomic_output_dir(dst, force=force) as tmp:
        native.save_pretrained(tmp)
        native_processor(model.config, src).save_pretrained(tmp)
    return "a transformers CLIPModel"
