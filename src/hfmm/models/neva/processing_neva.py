"""NeVA processor: the vision tower's image processor and the language model's tokenizer, with chat templates.

Each `<image>` in a prompt becomes `image_seq_length` image tokens (wrapped in start/end tokens when the model uses
them), so the prompt carries exactly one token per image feature. The four NeMo conversation formats (`nvgpt`,
`llama_2`, `v1`, `plain`) are Jinja chat templates: `NevaProcessor.chat_template_for(name)`.
Self-contained (imports only transformers and PIL) for remote-code loading.
"""

from pathlib import Path

from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.processing_utils import ProcessorMixin

TEMPLATES_DIR = Path(__file__).parent / "chat_templates"
CHAT_TEMPLATES = ("nvgpt", "llama_2", "v1", "plain")
# PIL modes that convert to RGB without losing meaning; 32-bit integer and float images ("I", "F") and 16-bit ones
# would be clipped to 0..255 by that conversion.
RGB_CONVERTIBLE_MODES = ("RGB", "RGBA", "RGBX", "L", "LA", "La", "P", "PA", "1", "CMYK", "YCbCr", "LAB", "HSV")


def check_image(image) -> None:
    """Raises a `ValueError` for an image that is not a picture the vision tower can take."""
    if isinstance(image, Image.Image):
        if image.mode not in RGB_CONVERTIBLE_MODES:
            raise ValueError(
                f"Image mode {image.mode!r} is not supported: convert it to RGB yourself (modes that convert "
                f"without loss of meaning: {', '.join(RGB_CONVERTIBLE_MODES)})."
            )
        return
    if isinstance(image, (str, Path)):
        return  # a path or URL: the image processor loads it
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) == 2:
        return  # grayscale
    if len(shape) != 3 or not ({shape[0], shape[-1]} & {1, 3, 4}):
        raise ValueError(
            f"An image array must be (height, width), (height, width, channels) or (channels, height, width) "
            f"with 1, 3 or 4 channels; got shape {shape}."
        )


def _flat_images(images) -> list:
    if images is None:
        return []
    if isinstance(images, (list, tuple)):
        return [image for item in images for image in _flat_images(item)]
    if getattr(images, "ndim", 0) == 4:
        return list(images)
    return [images]


class NevaProcessor(ProcessorMixin):
    r"""
    Image processor and tokenizer of a NeVA in one object.

    Args:
        image_processor ([`CLIPImageProcessor`] or compatible):
            Preprocessing of the vision tower.
        tokenizer ([`PreTrainedTokenizerBase`]):
            The language model's tokenizer; `image_token` (and the start/end tokens) must be single special tokens.
        chat_template (`str`, *optional*):
            Jinja chat template; `NevaProcessor.chat_template_for(name)` gives NeMo's four.
        image_seq_length (`int`, *optional*, defaults to 256):
            Image tokens per image (the model config's `image_seq_length`).
        image_token (`str`, *optional*, defaults to `"<image>"`):
            Placeholder in prompts, and the token each image feature replaces.
        im_start_token (`str`, *optional*):
            Token before each image's tokens (for models with `use_im_start_end`).
        im_end_token (`str`, *optional*):
            Token after each image's tokens.

    Example:

    ```python
    >>> processor = NevaProcessor(image_processor, tokenizer, chat_template=NevaProcessor.chat_template_for("v1"),
    ...                           image_seq_length=4)
    >>> messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    >>> processor.apply_chat_template(messages, add_generation_prompt=True)
    "A chat between ... USER: <image>\nWhat colour? ASSISTANT:"
    ```
    """

    _auto_class = "AutoProcessor"

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        chat_template: str | None = None,
        image_seq_length: int = 256,
        image_token: str = "<image>",
        im_start_token: str | None = None,
        im_end_token: str | None = None,
        **kwargs,
    ):
        if (im_start_token is None) != (im_end_token is None):
            raise ValueError("Give both `im_start_token` and `im_end_token`, or neither.")
        self.image_seq_length = image_seq_length
        self.image_token = image_token
        self.im_start_token, self.im_end_token = im_start_token, im_end_token
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        for token in (image_token, im_start_token, im_end_token):
            if token is not None and len(tokenizer.encode(token, add_special_tokens=False)) != 1:
                raise ValueError(f"{token!r} must be a single token of the tokenizer (add it as a special token).")
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    @staticmethod
    def chat_template_for(name: str) -> str:
        """The Jinja chat template of one of NeMo's conversation formats: `nvgpt`, `llama_2`, `v1`, `plain`."""
        if name not in CHAT_TEMPLATES:
            raise ValueError(f"Unknown conversation template {name!r}; available: {list(CHAT_TEMPLATES)}.")
        return (TEMPLATES_DIR / f"{name}.jinja").read_text()

    @classmethod
    def from_model_config(cls, config, image_processor, tokenizer, chat_template: str | None = None, **kwargs):
        """Processor matching a `NevaConfig`: its image token, image_seq_length and start/end tokens."""
        ids_to_tokens = tokenizer.convert_ids_to_tokens
        start_end = {}
        if config.use_im_start_end:
            start_end = {
                "im_start_token": ids_to_tokens(config.im_start_token_id),
                "im_end_token": ids_to_tokens(config.im_end_token_id),
            }
        if chat_template is None and config.conv_template is not None:
            chat_template = cls.chat_template_for(config.conv_template)
        return cls(
            image_processor,
            tokenizer,
            chat_template=chat_template,
            image_seq_length=config.image_seq_length,
            image_token=ids_to_tokens(config.image_token_id),
            **start_end,
            **kwargs,
        )

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        tokens = self.image_token * self.image_seq_length
        if self.im_start_token is not None:
            tokens = self.im_start_token + tokens + self.im_end_token
        return tokens

    def validate_inputs(self, images=None, text=None, **kwargs):
        super().validate_inputs(images=images, text=text, **kwargs)
        for image in _flat_images(images):
            check_image(image)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """
        Preprocesses `images` and tokenizes `text`, expanding each `<image>` into the model's image tokens.

        Returns:
            `BatchFeature` with `input_ids`, `attention_mask` and (with images) `pixel_values`; torch tensors unless
            `return_tensors` says otherwise.
        """
        kwargs.setdefault("return_tensors", "pt")
        inputs = super().__call__(images=images, text=text, **kwargs)
        max_length = getattr(self.tokenizer, "model_max_length", None)
        if "input_ids" in inputs and max_length is not None and max_length < 10**8:
            length = max(len(ids) for ids in inputs["input_ids"])
            if length > max_length:
                raise ValueError(
                    f"The prompt has {length} tokens with its images expanded, more than the tokenizer's "
                    f"model_max_length ({max_length})."
                )
        return inputs

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values"]


__all__ = ["CHAT_TEMPLATES", "NevaProcessor", "check_image"]
