"""Tokenizer, image processor and processor for hfmm CLIP models, numerically identical to OpenCLIP's.

- `HfmmCLIPTokenizer` gives the ids of `open_clip.get_tokenizer(...)` (OpenCLIP's `SimpleTokenizer`, `clean="lower"`)
  when called with `padding="max_length", max_length=77, truncation=True`.
- `HfmmCLIPImageProcessor` gives the pixels of OpenCLIP's eval transform (`open_clip.image_transform(...,
  is_train=False)`) for PIL images, bit for bit.
- `HfmmCLIPProcessor` pairs the two.

This file is self-contained (torch, transformers and its `tokenizers`, ftfy, Pillow, numpy) because it is shipped to
the Hub as remote code: `save_pretrained` copies it next to the files it writes and records it in `auto_map`, so
`AutoProcessor.from_pretrained(dir, trust_remote_code=True)` works without hfmm installed.
"""

import html
import json
import os
import re
import unicodedata
from pathlib import Path

import ftfy
import numpy as np
import torch
from PIL import Image, ImageOps
from tokenizers import Regex, pre_tokenizers
from transformers import BatchFeature, CLIPTokenizer
from transformers.image_processing_utils import BaseImageProcessor
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ImagesKwargs, ProcessorMixin

# Package data: vocab.json + merges.txt derived from OpenCLIP's BPE file (see convert/build_clip_vocab.py). Absent
# when this file runs as Hub remote code, where the tokenizer is loaded from tokenizer.json instead.
VOCAB_DIRECTORY = Path(__file__).resolve().parent / "tokenizer"

# OpenCLIP's pre-tokenizer pattern (`SimpleTokenizer.pat`), applied to lower-cased text. OpenCLIP compiles it with
# `regex.IGNORECASE`, which has two effects on lower-case text, reproduced here: "ſ" (U+017F) matches "s" in the
# special tokens and contractions, and U+0345 (which case-folds to a letter) is matched by no alternative, so it is
# dropped like whitespace.
_OPENCLIP_PATTERN = (
    r"<start_of_text>|<ſtart_of_text>|<end_of_text>|'s|'ſ|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+"
)
_SPECIAL_LIKE = re.compile(r"<(?:start|ſtart|end)_of_text>")  # the strings of the pattern's first alternatives


def clean_text(text: str) -> str:
    """OpenCLIP's `clean="lower"`: ftfy, HTML unescaped twice, whitespace collapsed and stripped, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _is_punctuation(char: str) -> bool:
    r"""Whether OpenCLIP's pattern puts `char` in a punctuation run (`[^\s\p{L}\p{N}]+`, IGNORECASE)."""
    return not char.isspace() and unicodedata.category(char)[0] not in "LN" and char != "\u0345"


def _hide_glued_special_tokens(text: str) -> str:
    """
    Keeps the backend from matching special-token strings that OpenCLIP's pattern does not match.

    OpenCLIP only recognises `<start_of_text>`/`<end_of_text>` where a match attempt starts, i.e. not right after
    punctuation (`"(<end_of_text>"` gives `(<`, `end`, `_`, ...), while the backend matches special tokens anywhere.
    Such occurrences get U+0345 after their `<`: the pre-tokenizer drops it (like OpenCLIP) at a place that is a
    word boundary anyway, so the pieces are OpenCLIP's.
    """
    if "_of_text>" not in text:
        return text
    pieces, copied, matched_end = [], 0, 0
    for match in _SPECIAL_LIKE.finditer(text):
        start = match.start()
        if start == 0 or start == matched_end or not _is_punctuation(text[start - 1]):
            matched_end = match.end()  # OpenCLIP's pattern matches here
        elif match.group() != "<ſtart_of_text>":  # (never a special token)
            pieces += [text[copied : start + 1], "\u0345"]
            copied = start + 1
    return "".join(pieces) + text[copied:]


def _clean_nested(text):
    """Cleans every string of a text input (a string, a batch, pairs or pre-split words) as OpenCLIP does."""
    if isinstance(text, str):
        return _hide_glued_special_tokens(clean_text(text))
    if isinstance(text, (list, tuple)):
        return type(text)(_clean_nested(item) for item in text)
    return text


class HfmmCLIPTokenizer(CLIPTokenizer):
    """
    CLIP byte-level BPE tokenizer that reproduces OpenCLIP's `SimpleTokenizer` (`clean="lower"`) exactly.

    It is transformers' `CLIPTokenizer` (a `tokenizers` backend) with OpenCLIP's conventions:

    - every text goes through OpenCLIP's cleaning (`ftfy.fix_text`, `html.unescape` twice, whitespace collapsed,
      lower case) in Python before it reaches the backend, for `__call__`, `encode`, `tokenize`, batches and
      pairs alike; the backend itself has no normalizer (calling `backend_tokenizer` directly skips the cleaning);
    - OpenCLIP's special-token strings: `<start_of_text>` (bos, 49406) and `<end_of_text>` (eos, 49407), and its
      pre-tokenizer pattern, so `<|startoftext|>` in a text is ordinary text as it is in OpenCLIP;
    - padding with `"!"` (id 0), as OpenCLIP pads with zeros. `"!"` stays an ordinary token inside texts.

    `tokenizer(texts, padding="max_length", max_length=77, truncation=True)` gives OpenCLIP's ids: truncation keeps
    the first 75 text tokens and ends with `<end_of_text>`, which is OpenCLIP's "truncate, then set the last id to
    EOT". Literal special-token strings behave as in OpenCLIP too (a special id, except when glued to preceding
    punctuation). The one known difference: characters unassigned in Python's Unicode tables (Unicode 14 for
    Python 3.11) may be grouped differently, as OpenCLIP's `regex` and the `tokenizers` backend ship other Unicode
    versions. Offsets (`return_offsets_mapping`) refer to the cleaned text.

    Args:
        vocab (`dict[str, int]`, *optional*):
            Token to id map (49,408 entries for CLIP). See `from_package`.
        merges (`list[tuple[str, str]]`, *optional*):
            BPE merges, in priority order.
        unk_token (`str`, *optional*, defaults to `"<end_of_text>"`):
            Unknown token (byte-level BPE never produces it).
        bos_token (`str`, *optional*, defaults to `"<start_of_text>"`):
            Token prepended to every text.
        eos_token (`str`, *optional*, defaults to `"<end_of_text>"`):
            Token appended to every text; the text tower pools at its position.
        pad_token (`str`, *optional*, defaults to `"!"`):
            Padding token. `"!"` has id 0, OpenCLIP's padding id.
        model_max_length (`int`, *optional*, defaults to 77):
            Context length of the text tower.

    Example:

    ```python
    >>> tokenizer = HfmmCLIPTokenizer.from_package()
    >>> tokenizer(["a photo of a cat"], padding="max_length", max_length=77, truncation=True)["input_ids"][0][:7]
    [49406, 320, 1125, 539, 320, 2368, 49407]
    ```
    """

    _auto_class = "AutoTokenizer"

    def __init__(
        self,
        vocab: dict[str, int] | None = None,
        merges: list[tuple[str, str]] | None = None,
        unk_token: str = "<end_of_text>",
        bos_token: str = "<start_of_text>",
        eos_token: str = "<end_of_text>",
        pad_token: str = "!",
        model_max_length: int = 77,
        **kwargs,
    ):
        # The pad token is set after the backend is built: registered as a special token, "!" would be split out
        # of every text ("wow!!" would become "wow", "!", "!" instead of "wow", "!!").
        super().__init__(
            vocab=vocab,
            merges=merges,
            unk_token=unk_token,
            bos_token=bos_token,
            eos_token=eos_token,
            pad_token=None,
            model_max_length=model_max_length,
            **kwargs,
        )
        self.pad_token = pad_token
        # Cleaning happens in Python (`_encode_plus`); a backend normalizer could only disagree with it (its NFC
        # and its Unicode tables differ from Python's `str.lower`).
        self._tokenizer.normalizer = None
        self._tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_OPENCLIP_PATTERN), behavior="removed", invert=True),
                # Bytes to symbols only: CLIPTokenizer's default `use_regex=True` would split words again with
                # GPT-2's pattern, e.g. "'ſ" into "'" and "ſ".
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    @classmethod
    def from_package(cls, directory: str | os.PathLike | None = None, **kwargs) -> "HfmmCLIPTokenizer":
        """
        Builds the tokenizer offline from `vocab.json` + `merges.txt`.

        Args:
            directory (`str` or `os.PathLike`, *optional*):
                Folder holding `vocab.json` and `merges.txt`. Defaults to the `tokenizer/` folder next to this file,
                which hfmm ships (it is absent when this file runs as Hub remote code: pass a folder, or use
                `from_pretrained`).
            kwargs:
                Passed to the constructor, e.g. `model_max_length`.
        """
        directory = Path(directory) if directory is not None else VOCAB_DIRECTORY
        vocab_file, merges_file = directory / "vocab.json", directory / "merges.txt"
        if not (vocab_file.is_file() and merges_file.is_file()):
            raise ValueError(f"No vocab.json and merges.txt in {directory}; pass the folder that holds them.")
        vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
        lines = merges_file.read_text(encoding="utf-8").split("\n")[1:]  # line 0 is "#version: 0.2"
        merges = [tuple(line.split(" ")) for line in lines if line]
        return cls(vocab=vocab, merges=merges, **kwargs)

    def _encode_plus(self, text, text_pair=None, **kwargs):
        # Every encoding path (`__call__`, `encode`, `tokenize`, batches, pairs, targets) goes through here.
        return super()._encode_plus(text=_clean_nested(text), text_pair=_clean_nested(text_pair), **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# Image processor
# ---------------------------------------------------------------------------------------------------------------------

_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
_RESIZE_MODES = ("shortest", "squash", "longest")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_CHANNEL_COUNTS = (1, 2, 3, 4)  # L, LA, RGB, RGBA


class HfmmCLIPImagesKwargs(ImagesKwargs, total=False):
    """`ImagesKwargs` plus OpenCLIP's preprocessing options (see `HfmmCLIPImageProcessor`)."""

    resize_mode: str | None
    interpolation: str | None
    fill_color: int | None


def _check_size(size) -> tuple[int, int]:
    """`size` (an int, or `(height, width)`) as a `(height, width)` tuple of positive ints."""
    pair = (size, size) if isinstance(size, int) else tuple(size) if isinstance(size, (list, tuple)) else ()
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in pair):
        raise ValueError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return pair


def _check_channel_stats(name: str, value) -> tuple[float, float, float]:
    """`image_mean`/`image_std` (a float or 3 floats) as a tuple of 3 floats."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        stats = (value,) * 3
    else:
        stats = tuple(value) if isinstance(value, (list, tuple)) else ()
    if len(stats) != 3 or not all(isinstance(v, (int, float)) for v in stats):
        raise ValueError(f"{name} must be a float or 3 floats (one per RGB channel), got {value!r}")
    if name == "image_std" and any(v == 0 for v in stats):
        raise ValueError(f"image_std must not contain zeros, got {value!r}")
    return tuple(float(v) for v in stats)


def _check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _sixteen_to_eight_bit(values: np.ndarray) -> np.ndarray:
    """16-bit values (clipped to [0, 65535]) to 8 bit as round(value / 257): 65535 -> 255, 257 * k -> k."""
    values = np.clip(values.astype(np.int64), 0, 65535)
    return ((values + 128) // 257).astype(np.uint8)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """A channels-last `(height, width[, channels])` array to a PIL image (see `HfmmCLIPImageProcessor`)."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[-1] not in _CHANNEL_COUNTS:
        raise ValueError(
            f"Expected an image array of shape (height, width) or (height, width, channels) with 1 to 4 channels "
            f"(channels last; torch tensors are channels first), got shape {tuple(array.shape)}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"Image array is empty: shape {tuple(array.shape)}")
    pixels = _to_uint8(array)
    return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels))


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Pixel values to uint8: bool, uint8, uint16 (scaled), other ints in [0, 255], floats in [0, 1] (scaled)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return _sixteen_to_eight_bit(array)
    if np.issubdtype(array.dtype, np.integer):
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(
                f"Integer image of dtype {array.dtype} has values in [{array.min()}, {array.max()}]; expected "
                f"[0, 255] (pass 16-bit images as uint16)"
            )
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or (array.size and (array.min() < 0 or array.max() > 1)):
            raise ValueError(f"Float images must hold finite values in [0, 1]; got dtype {array.dtype} out of range")
        return np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    raise ValueError(f"Unsupported image array dtype {array.dtype}")


def _open_image(path: str | os.PathLike) -> Image.Image:
    if not os.path.isfile(path):
        raise ValueError(f"Image path {str(path)!r} is not a file (URLs are not fetched; pass a PIL image instead)")
    try:
        image = Image.open(path)
        image.load()
    except OSError as err:
        raise ValueError(f"Cannot read an image from {str(path)!r}: {err}") from err
    return image


def _to_pil(image) -> Image.Image:
    """One input image as a PIL image; 16-bit images become 8-bit `L` images (round(value / 257))."""
    if isinstance(image, (str, os.PathLike)):
        image = _open_image(image)
    elif isinstance(image, np.ndarray):
        image = _array_to_pil(image)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.ndim == 3:
            if tensor.shape[0] not in _CHANNEL_COUNTS:
                raise ValueError(
                    f"Expected an image tensor of shape (channels, height, width) with 1 to 4 channels (channels "
                    f"first; numpy arrays are channels last), got shape {tuple(tensor.shape)}"
                )
            tensor = tensor.permute(1, 2, 0)
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.float()
        image = _array_to_pil(tensor.numpy())
    elif not isinstance(image, Image.Image):
        raise ValueError(
            f"Unsupported image input of type {type(image).__name__}: expected a PIL image, a path to an image "
            f"file, a numpy array (height, width[, channels]) or a torch tensor ([channels,] height, width)"
        )
    if image.width == 0 or image.height == 0:
        raise ValueError(f"Image is empty: size {image.size}")
    if image.mode in _SIXTEEN_BIT_MODES:
        image = Image.fromarray(_sixteen_to_eight_bit(np.asarray(image)))
    return image


def _as_image_list(images) -> list:
    """A single image, a list/tuple of images or a batched (4-D) array/tensor as a flat list of images."""
    if isinstance(images, (list, tuple)):
        flat = [item for image in images for item in _as_image_list(image)]
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        flat = list(images)
    else:
        flat = [images]
    if not flat:
        raise ValueError("No images given")
    return flat


def _resize(image: Image.Image, size: tuple[int, int], resample: int) -> Image.Image:
    """PIL resize to `(height, width)`; a no-op at that size already (torchvision `F.resize` on PIL images)."""
    if size == (image.height, image.width):
        return image
    return image.resize((size[1], size[0]), resample)


def _shortest_edge_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Output `(height, width)` of OpenCLIP's `resize_mode="shortest"` resize."""
    target_h, target_w = size
    if target_h == target_w:
        # torchvision `Resize(int)`: short edge to `size`, long edge truncated (`_compute_resized_output_size`).
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = target_h, int(target_h * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    # OpenCLIP `ResizeKeepRatio(longest=0)` for non-square targets: both edges rounded.
    ratio = min(height / target_h, width / target_w)
    return round(height / ratio), round(width / ratio)


def _longest_edge_size(height: int, width: int, size: tuple[int, int]) -> tuple[int, int]:
    """Output `(height, width)` of OpenCLIP's `ResizeKeepRatio(longest=1)`: fit inside `size`, rounded."""
    ratio = max(height / size[0], width / size[1])
    return round(height / ratio), round(width / ratio)


def _pad(image: Image.Image, ltrb: list[int], fill: int) -> Image.Image:
    """Constant padding as torchvision's `F.pad` on PIL images (fill per band, palette kept for `P` images)."""
    bands = len(image.getbands())
    color = fill if bands == 1 else (fill,) * bands
    palette = image.getpalette() if image.mode == "P" else None
    padded = ImageOps.expand(image, border=tuple(ltrb), fill=color)
    if palette is not None:
        padded.putpalette(palette)
    return padded


def _center_crop_or_pad(image: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """Center crop to `(height, width)`, padding first if smaller (torchvision `F.center_crop` rounding)."""
    crop_h, crop_w = size
    if crop_w > image.width or crop_h > image.height:
        pad_w, pad_h = max(crop_w - image.width, 0), max(crop_h - image.height, 0)
        image = _pad(image, [pad_w // 2, pad_h // 2, (pad_w + 1) // 2, (pad_h + 1) // 2], fill)
        if (image.height, image.width) == (crop_h, crop_w):
            return image
    top = int(round((image.height - crop_h) / 2.0))
    left = int(round((image.width - crop_w) / 2.0))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _to_rgb(image: Image.Image) -> Image.Image:
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"Cannot convert a {image.mode!r} image to RGB: {err}") from err


def transform_image(
    image: Image.Image, size: tuple[int, int], resize_mode: str, interpolation: str, fill_color: int
) -> np.ndarray:
    """
    OpenCLIP's eval geometry on one PIL image: resize, center crop (or pad), then conversion to RGB *after* the
    resize, as OpenCLIP's `MaybeConvertMode` does. Returns a uint8 array of shape `(height, width, 3)`.
    """
    resample = _INTERPOLATIONS[interpolation]
    if resize_mode == "squash":
        image = _resize(image, size, resample)
    elif resize_mode == "longest":
        image = _resize(image, _longest_edge_size(image.height, image.width, size), resample)
        image = _center_crop_or_pad(image, size, fill_color)
    else:
        image = _resize(image, _shortest_edge_size(image.height, image.width, size), resample)
        image = _center_crop_or_pad(image, size, 0)
    return np.asarray(_to_rgb(image), dtype=np.uint8)


class HfmmCLIPImageProcessor(BaseImageProcessor):
    r"""
    OpenCLIP's evaluation preprocessing (`open_clip.image_transform(..., is_train=False)`), bit for bit on PIL images.

    Each image is resized with Pillow (antialiased, like torchvision's `Resize` on PIL images), center cropped,
    converted to RGB (after the resize, so alpha and palettes are resampled as OpenCLIP resamples them), scaled to
    [0, 1] and normalized with `image_mean`/`image_std`.

    Accepted inputs, alone or in a list:

    - PIL images of any mode Pillow converts to RGB (RGB, L, LA, P with or without transparency, RGBA, CMYK, 1, F,
      ...). 16-bit images (`I;16`, `I;16B`, `I;16L`, `I;16N` and `I`, read as 16-bit) are first scaled to 8-bit `L`
      as round(value / 257) (OpenCLIP's `convert("RGB")` would saturate them). `F` images keep Pillow's meaning
      (0-255, clipped by the RGB conversion), as in OpenCLIP. EXIF orientation is not applied, as in OpenCLIP.
    - paths (`str` or `os.PathLike`) of image files, opened with `PIL.Image.open`;
    - numpy arrays, channels last: `(height, width)` or `(height, width, channels)` with 1 (L), 2 (LA), 3 (RGB)
      or 4 (RGBA) channels, or a batch `(batch_size, height, width, channels)`;
    - torch tensors, channels first: `(height, width)` or `(channels, height, width)`, or a batch
      `(batch_size, channels, height, width)`.

    Array and tensor values: uint8 as is; uint16 scaled as round(value / 257); bool as 0/255; other integers must lie
    in [0, 255]; floats must lie in [0, 1] and are scaled as round(value * 255).

    Args:
        size (`int` or `tuple[int, int]`, *optional*, defaults to 224):
            Output size, square or `(height, width)`.
        resize_mode (`str`, *optional*, defaults to `"shortest"`):
            `"shortest"`: resize the shortest edge to `size` (torchvision `Resize(size)`: the long edge is
            truncated), then center crop. `"squash"`: resize to `size` ignoring the aspect ratio. `"longest"`: resize
            keeping the aspect ratio to fit inside `size` (edges rounded), then center pad with `fill_color`.
            (For a non-square `size`, OpenCLIP's `"shortest"` always resamples bicubic; here `interpolation` holds.)
        interpolation (`str`, *optional*, defaults to `"bicubic"`):
            `"bicubic"`, `"bilinear"` or `"nearest"` (Pillow forces nearest for `P` and `1` images, as in OpenCLIP).
        image_mean (`float` or `tuple[float, float, float]`, *optional*, defaults to OpenAI CLIP's mean):
            Per-channel mean subtracted after scaling to [0, 1].
        image_std (`float` or `tuple[float, float, float]`, *optional*, defaults to OpenAI CLIP's std):
            Per-channel standard deviation divided by after subtracting the mean.
        fill_color (`int`, *optional*, defaults to 0):
            Padding value of `resize_mode="longest"`, in the image's own mode before the RGB conversion (a palette
            index for `P` images), as in OpenCLIP.

    Example:

    ```python
    >>> from PIL import Image
    >>> processor = HfmmCLIPImageProcessor(size=224)
    >>> processor(Image.new("RGB", (640, 480)))["pixel_values"].shape
    torch.Size([1, 3, 224, 224])
    ```
    """

    model_input_names = ["pixel_values"]
    valid_kwargs = HfmmCLIPImagesKwargs
    _auto_class = "AutoImageProcessor"

    def __init__(
        self,
        size: int | tuple[int, int] = 224,
        resize_mode: str = "shortest",
        interpolation: str = "bicubic",
        image_mean: float | tuple[float, float, float] = OPENAI_CLIP_MEAN,
        image_std: float | tuple[float, float, float] = OPENAI_CLIP_STD,
        fill_color: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        options = self._check_options(size, resize_mode, interpolation, image_mean, image_std, fill_color)
        self.size = size if isinstance(size, int) else list(size)
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        self.image_mean = list(options["image_mean"])
        self.image_std = list(options["image_std"])
        self.fill_color = fill_color

    @classmethod
    def from_vision_config(cls, vision_config, **kwargs) -> "HfmmCLIPImageProcessor":
        """
        Builds the processor from a vision tower config: reads `image_size` and, when present, `resize_mode`,
        `interpolation`, `image_mean` and `image_std`. `kwargs` override them.
        """
        options = {"size": vision_config.image_size}
        for name in ("resize_mode", "interpolation", "image_mean", "image_std"):
            if getattr(vision_config, name, None) is not None:
                options[name] = getattr(vision_config, name)
        return cls(**{**options, **kwargs})

    @staticmethod
    def _check_options(size, resize_mode, interpolation, image_mean, image_std, fill_color) -> dict:
        if not isinstance(fill_color, int) or isinstance(fill_color, bool):
            raise ValueError(f"fill_color must be an int, got {fill_color!r}")
        return {
            "size": _check_size(size),
            "resize_mode": _check_choice("resize_mode", resize_mode, _RESIZE_MODES),
            "interpolation": _check_choice("interpolation", interpolation, tuple(_INTERPOLATIONS)),
            "image_mean": _check_channel_stats("image_mean", image_mean),
            "image_std": _check_channel_stats("image_std", image_std),
            "fill_color": fill_color,
        }

    def fetch_images(self, images):
        # `ProcessorMixin` calls this first. Transformers' default opens paths with EXIF transposition and an RGB
        # conversion before the resize, which OpenCLIP does not do: `preprocess` opens paths itself.
        return images

    def preprocess(self, images, return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """
        Preprocesses one image or a batch of images (see the class docstring for the accepted inputs).

        Args:
            images:
                The image(s).
            return_tensors (`str`, *optional*, defaults to `"pt"`):
                `"pt"` (also used for `None`) or `"np"`.
            kwargs:
                Per-call overrides of `size`, `resize_mode`, `interpolation`, `image_mean`, `image_std`,
                `fill_color`.

        Returns:
            `BatchFeature` with `pixel_values` of shape `(batch_size, 3, height, width)`, float32.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be 'pt' or 'np', got {return_tensors!r}")
        options = self._resolve_options(kwargs)
        geometry = {key: options[key] for key in ("size", "resize_mode", "interpolation", "fill_color")}
        arrays = [transform_image(_to_pil(image), **geometry) for image in _as_image_list(images)]
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, H, W) uint8
        # The same float32 operations as torchvision's `ToTensor` then `Normalize`, so results match bit for bit.
        mean = torch.tensor(options["image_mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(options["image_std"], dtype=torch.float32).view(1, 3, 1, 1)
        pixel_values = pixels.float().div(255).sub(mean).div(std)
        if return_tensors == "np":
            pixel_values = pixel_values.numpy()
        return BatchFeature({"pixel_values": pixel_values})

    def _resolve_options(self, overrides: dict) -> dict:
        names = ("size", "resize_mode", "interpolation", "image_mean", "image_std", "fill_color")
        unknown = sorted(key for key, value in overrides.items() if key not in names and value is not None)
        if unknown:
            raise ValueError(f"Unsupported image processor arguments {unknown}; supported: {', '.join(names)}")
        values = {name: getattr(self, name) if overrides.get(name) is None else overrides[name] for name in names}
        return self._check_options(**values)


# ---------------------------------------------------------------------------------------------------------------------
# Processor
# ---------------------------------------------------------------------------------------------------------------------


class HfmmCLIPProcessor(ProcessorMixin):
    r"""
    Image processor and tokenizer of an hfmm CLIP model in one object.

    By default texts are padded to `tokenizer.model_max_length` (77) with id 0 and truncated, so `input_ids` equal
    OpenCLIP's token tensors; pass `padding=True` for the shortest padding (the model pools at the first
    `<end_of_text>`, so the embeddings are the same). Tensors are returned as torch tensors by default.

    Args:
        image_processor (`HfmmCLIPImageProcessor`):
            The image processor.
        tokenizer (`HfmmCLIPTokenizer`):
            The tokenizer.

    Example:

    ```python
    >>> from PIL import Image
    >>> processor = HfmmCLIPProcessor(HfmmCLIPImageProcessor(), HfmmCLIPTokenizer.from_package())
    >>> inputs = processor(text=["a photo of a cat"], images=Image.new("RGB", (640, 480)))
    >>> inputs["input_ids"].shape, inputs["pixel_values"].shape
    (torch.Size([1, 77]), torch.Size([1, 3, 224, 224]))
    ```
    """

    _auto_class = "AutoProcessor"
    text_kwargs = {"padding": "max_length", "truncation": True}

    def __init__(self, image_processor=None, tokenizer=None, **kwargs):
        super().__init__(image_processor, tokenizer, **kwargs)

    @classmethod
    def from_vision_config(
        cls, vision_config, tokenizer_directory: str | os.PathLike | None = None
    ) -> "HfmmCLIPProcessor":
        """
        Builds the processor from a vision tower config (see `HfmmCLIPImageProcessor.from_vision_config`) and the
        tokenizer from `vocab.json` + `merges.txt` (see `HfmmCLIPTokenizer.from_package`).
        """
        return cls(
            image_processor=HfmmCLIPImageProcessor.from_vision_config(vision_config),
            tokenizer=HfmmCLIPTokenizer.from_package(tokenizer_directory),
        )

    def __call__(self, text=None, images=None, **kwargs) -> BatchFeature:
        """
        Tokenizes `text` and/or preprocesses `images`.

        Args:
            text (`str` or `list[str]`, *optional*):
                Text(s) to tokenize.
            images (*optional*):
                Image(s), in any form `HfmmCLIPImageProcessor` accepts.
            kwargs:
                Tokenizer and image processor arguments, e.g. `padding=True`, `return_tensors="np"`.

        Returns:
            `BatchFeature` with `input_ids` and `attention_mask` (when `text` is given) and `pixel_values` (when
            `images` are given).
        """
        kwargs.setdefault("return_tensors", "pt")
        return super().__call__(images=images, text=text, **kwargs)


__all__ = ["HfmmCLIPImageProcessor", "HfmmCLIPProcessor", "HfmmCLIPTokenizer", "clean_text", "transform_image"]
