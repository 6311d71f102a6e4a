"""NeVA training data: LLaVA-style conversations through `datasets`, tokenised with the processor's chat template,
labels on the assistant turns only.

A sample is `{"id", "image": path | [paths] (optional), "conversations": [{"from": "human" | "gpt" | "system",
"value": "<image>\\n..."}]}` (LLaVA's JSON list, or JSON lines). Image paths are relative to `image_folder`.

Label masking uses the chat template itself: for each assistant turn, the conversation rendered up to that turn with
the generation prompt is a prefix of the conversation rendered with the turn, and the characters in between (the
answer and its end-of-turn text) are the supervised span; tokens whose character offsets start in a supervised span
get labels, all others -100. So every template that renders turns in order works, with no template-specific code.
"""

import json
import logging
from collections import Counter
from pathlib import Path

import torch
from datasets import Dataset
from PIL import Image

logger = logging.getLogger(__name__)

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SKIP_REASONS = ("missing_image", "corrupt_image", "image_count_mismatch", "no_assistant_turn", "too_long")


def load_conversations(path: str | Path) -> Dataset:
    """A LLaVA-style JSON list or JSON-lines file as a `datasets.Dataset` (`image` normalised to a list of paths)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such conversation file.")
    text = path.read_text()
    try:
        rows = (
            json.loads(text)
            if text.lstrip().startswith("[")
            else [json.loads(line) for line in text.splitlines() if line.strip()]
        )
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a JSON list or JSON lines file ({error}).") from error
    normalised = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("conversations"), list):
            raise ValueError(f"{path}: sample {index} has no `conversations` list.")
        image = row.get("image")
        images = [] if image is None else [image] if isinstance(image, str) else list(image)
        turns = [
            {"from": str(turn.get("from", "")), "value": str(turn.get("value", ""))} for turn in row["conversations"]
        ]
        normalised.append({"id": str(row.get("id", index)), "images": images, "conversations": turns})
    return Dataset.from_list(normalised)


def to_messages(conversations: list[dict]) -> list[dict]:
    messages = []
    for turn in conversations:
        role = ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"unknown speaker {turn['from']!r} (expected human, gpt or system).")
        messages.append({"role": role, "content": turn["value"]})
    return messages


def supervised_spans(processor, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation (images expanded) and the character spans of its assistant turns."""
    expand = _expander(processor)
    full = expand(processor.apply_chat_template(messages, tokenize=False))
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = expand(processor.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True))
        through = expand(processor.apply_chat_template(messages[: index + 1], tokenize=False))
        if not (through.startswith(before) and full.startswith(through)):
            raise ValueError("the chat template does not render turns as prefixes of each other; cannot mask labels.")
        spans.append((len(before), len(through)))
    return full, spans


def _expander(processor):
    tokens = processor.replace_image_token({}, 0)
    return lambda text: text.replace(processor.image_token, tokens)


class ConversationTransform:
    """Raw rows -> `input_ids`, `labels`, `pixel_values` (or a `skip_reason`), for `Dataset.with_transform`."""

    def __init__(self, processor, image_folder: str | Path | None = None, model_max_length: int | None = None):
        self.processor = processor
        self.image_folder = Path(image_folder) if image_folder is not None else None
        self.max_length = model_max_length or processor.tokenizer.model_max_length
        self.truncated = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {"input_ids": [], "labels": [], "pixel_values": [], "skip_reason": []}
        for images, conversations in zip(batch["images"], batch["conversations"]):
            example = self.example(images, conversations)
            for key in out:
                out[key].append(example.get(key))
        return out

    def example(self, images: list[str], conversations: list[dict]) -> dict:
        messages = to_messages(conversations)
        if not any(message["role"] == "assistant" for message in messages):
            return {"skip_reason": "no_assistant_turn"}
        tags = sum(message["content"].count(self.processor.image_token) for message in messages)
        if tags != len(images):
            return {"skip_reason": "image_count_mismatch"}
        pixels = None
        if images:
            opened = []
            for name in images:
                path = self.image_folder / name if self.image_folder is not None else Path(name)
                if not path.is_file():
                    return {"skip_reason": "missing_image"}
                try:
                    with Image.open(path) as image:
                        image.load()  # decoded now, so the file can close; an RGB image is kept, not copied
                        opened.append(image if image.mode == "RGB" else image.convert("RGB"))
                except Exception:  # decoders raise many types
                    return {"skip_reason": "corrupt_image"}
            pixels = self.processor.image_processor(opened, return_tensors="pt")["pixel_values"]
        text, spans = supervised_spans(self.processor, messages)
        encoded = self.processor.tokenizer(text, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
        labels = [
            token if end > start and any(a <= start < b for a, b in spans) else -100
            for token, (start, end) in zip(ids, offsets)
        ]
        if len(ids) > self.max_length:
            image_id = self.processor.image_token_id
            if image_id in ids[self.max_length :]:
                return {"skip_reason": "too_long"}  # cutting image tokens would leave features without places
            ids, labels = ids[: self.max_length], labels[: self.max_length]
            self.truncated += 1
            if self.truncated == 1:
                logger.warning("a sample is longer than model_max_length=%d and was truncated", self.max_length)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixels}


class NevaCollator:
    """Pads a batch of conversations (`labels` -100 where padded), stacks all its images in order, and drops skipped
    samples, counting them by reason (`skipped`); a batch with no usable sample raises `ValueError`."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id
        self.skipped: Counter = Counter({reason: 0 for reason in SKIP_REASONS})

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        good = []
        for feature in features:
            reason = feature.get("skip_reason")
            if reason is not None:
                if self.skipped[reason] == 0:
                    logger.warning("skipping samples: %s (counted in the logs as skipped_%s)", reason, reason)
                self.skipped[reason] += 1
            else:
                good.append(feature)
        if not good:
            raise ValueError(f"every sample of a batch was skipped ({dict(self.skipped)}): check the data paths.")
        length = max(len(feature["input_ids"]) for feature in good)
        input_ids = torch.full((len(good), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(good), length), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(good), length), dtype=torch.long)
        for row, feature in enumerate(good):
            n = len(feature["input_ids"])
            input_ids[row, :n] = torch.as_tensor(feature["input_ids"])
            labels[row, :n] = torch.as_tensor(feature["labels"])
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
        pixels = [torch.as_tensor(feature["pixel_values"]) for feature in good if feature["pixel_values"] is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        return batch


def build_conversation_dataset(path: str | Path, processor, image_folder=None, model_max_length=None) -> Dataset:
    """`load_conversations` with the tokenising transform attached lazily (`with_transform`)."""
    transform = ConversationTransform(processor, image_folder, model_max_length)
    return load_conversations(path).with_transform(transform)


def modality_lengths(dataset: Dataset) -> list[int]:
    """LLaVA's `modality_lengths`: a cheap length per sample (words in its turns), positive when it has images and
    negative when it is text only. Read from the raw rows, so the tokenising transform never runs."""
    raw = dataset.with_format(None)
    return [
        (1 if images else -1) * max(1, sum(len(turn["value"].split()) for turn in conversations))
        for images, conversations in zip(raw["images"], raw["conversations"])
    ]


class ModalityLengthGroupedSampler(torch.utils.data.Sampler):
    """LLaVA's `group_by_modality_length`: every device batch holds one modality (image-text or text only), and the
    samples of one step have similar lengths, so little padding is computed.

    Each modality is shuffled and cut into megabatches of `batch_size * world_size` samples (one step's worth);
    a megabatch is sorted by length, longest first. The full megabatches of both modalities are shuffled together;
    the two partial ones go last (the only step that can mix modalities). One index per sample per epoch; the
    order depends only on `seed` and the epoch, so every rank draws the same one.

    Args:
        lengths (`list[int]`): `modality_lengths` of the dataset: sign = modality, magnitude = length.
        batch_size (`int`): samples per device batch (times gradient accumulation steps).
        world_size (`int`, *optional*, defaults to 1): processes sharing each step.
        seed (`int`, *optional*, defaults to 0): shuffling seed; the epoch is added to it.
    """

    def __init__(self, lengths: list[int], batch_size: int, world_size: int = 1, seed: int = 0):
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size and world_size must be >= 1 (got {batch_size}, {world_size}).")
        if any(length == 0 for length in lengths):
            raise ValueError("modality lengths must be non-zero: the sign tells the modality.")
        self.lengths, self.megabatch, self.seed, self.epoch = list(lengths), batch_size * world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        full, partial = [], []
        for sign in (1, -1):
            group = torch.tensor([i for i, length in enumerate(self.lengths) if length * sign > 0], dtype=torch.long)
            group = group[torch.randperm(len(group), generator=generator)].tolist()
            for start in range(0, len(group), self.megabatch):
                chunk = sorted(group[start : start + self.megabatch], key=lambda i: -abs(self.lengths[i]))
                (full if len(chunk) == self.megabatch else partial).append(chunk)
        order = torch.randperm(len(full), generator=generator).tolist()
        for chunk in [full[i] for i in order] + partial:
            yield from chunk
