"""transformers folders as the parts of a NeVA, shared by the LLaVA and NeMo NeVA converters: a CLIP vision tower
(`--vision`), a causal language model (`--llm`) and the image processor, and the `<image>` token a NeVA adds to its
source's vocabulary.
"""

from pathlib import Path

import torch
from transformers import AutoImageProcessor

from hfmm.conversion.common.key_maps import KeyMap, same
from hfmm.conversion.common.readers import CheckpointError, image_processor_file, read_model_folder
from hfmm.models.neva import NevaForConditionalGeneration
from hfmm.vocabulary import IMAGE_TOKEN, PAD_TOKEN, RESIZE_SEED, add_image_tokens, grow_embeddings

# The CLIP vision tower's own keys, and any key of a causal LM but the rotary `inv_freq` buffers old checkpoints carry
# (dropped), so that no key has two rules.
VISION = r"(embeddings\.(?:class_embedding|patch_embedding\.weight|position_embedding\.weight)|(?:pre_layrnorm|post_layernorm)\.(?:weight|bias)|encoder\.layers\.\d+\..+)"
LANGUAGE_MODEL = r"((?!.*\.rotary_emb\.inv_freq$).+)"

# The parts given with --vision (a transformers CLIPModel or CLIPVisionModel folder) and --llm (a causal LM folder).
VISION_PART_KEYS = KeyMap(
    {
        rf"vision_model\.{VISION}": ("model.vision_tower.{0}", same),
        rf"{VISION}": ("model.vision_tower.{0}", same),
        r"(?:vision_model\.)?embeddings\.position_ids": None,
        r"(?:text_model|visual_projection|text_projection|logit_scale).*": None,
    },
    source="transformers CLIP (--vision)",
)
LLM_PART_KEYS = KeyMap(
    {
        rf"model\.{LANGUAGE_MODEL}": ("model.language_model.{0}", same),
        r"lm_head\.weight": ("lm_head.weight", same),
        r".*\.rotary_emb\.inv_freq": None,
    },
    source="transformers causal LM (--llm)",
)
# A NeVA assembled from parts already under its own names: `build_model` checks every key and shape.
IDENTITY = KeyMap({r"(.+)": ("{0}", same)}, source="assembled NeVA")


def read_part(folder: Path, key_map: KeyMap) -> dict[str, torch.Tensor]:
    """The tensors of a transformers folder under NeVA names (`key_map`: `VISION_PART_KEYS` or `LLM_PART_KEYS`;
    unknown keys raise, naming the part)."""
    return key_map.convert(read_model_folder(folder))


def load_image_processor(*folders: Path, pad: bool):
    """The tower's image processor (the first folder that has one); LLaVA-1.5's `pad` aspect ratio as Llava's."""
    for folder in folders:
        if folder is not None and image_processor_file(folder) is not None:
            processor = AutoImageProcessor.from_pretrained(folder)  # reads either file transformers writes
            break
    else:
        searched = [str(f) for f in folders if f is not None]
        raise CheckpointError(f"no preprocessor_config.json or processor_config.json (image processor) in {searched}.")
    if pad:
        from transformers import LlavaImageProcessorPil

        keep = ("size", "crop_size", "do_center_crop", "do_resize", "resample", "do_rescale", "rescale_factor",
                "do_normalize", "image_mean", "image_std", "do_convert_rgb")  # fmt: skip
        settings = {key: value for key, value in processor.to_dict().items() if key in keep}
        processor = LlavaImageProcessorPil(**settings, do_pad=True)
    return processor


def add_image_token(model: NevaForConditionalGeneration, tokenizer, notes: list[str]) -> None:
    """Adds `<image>` (and `<pad>`) to `tokenizer` and grows `model`'s embeddings by hfmm's one policy for new
    token rows (`hfmm.vocabulary`: padded to a multiple of 64, seeded draws from N(μ, 1e-5·Σ) of the old rows)."""
    added = add_image_tokens(tokenizer)
    old, new = grow_embeddings(model, len(tokenizer))
    model.config.text_config.vocab_size = new
    model.config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    notes.append(
        f"added {added} special token(s) ({IMAGE_TOKEN}, {PAD_TOKEN}); embeddings {old} -> {new} rows "
        f"(new rows from N(mean, 1e-5 cov) of the old ones, seed {RESIZE_SEED})"
    )
