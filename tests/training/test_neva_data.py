"""NeVA conversation data: label masking per chat template, image expansion, bad samples skipped and counted."""

import json

import pytest
import torch
from neva_fixtures import tiny_neva
from PIL import Image

from hfmm.models.neva.processing_neva import CHAT_TEMPLATES, NevaProcessor
from hfmm.training.neva_data import ConversationTransform, NevaCollator, build_conversation_dataset

CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat colour is the square?"},
    {"from": "gpt", "value": "Red."},
    {"from": "human", "value": "Where is it?"},
    {"from": "gpt", "value": "On the left."},
]
# what each template supervises: every assistant answer with its end-of-turn text, nothing else
SUPERVISED = {
    "v1": [" Red.</s>", " On the left.</s>"],
    "llama_2": [" Red. </s>", " On the left. </s>"],
    "nvgpt": ["Red.\n", "On the left.\n"],
    "plain": ["Red.\nOn the left.\n"],  # plain renders a user turn as its images only: the answers are adjacent
}


def supervised_runs(ids: list[int], labels: list[int], tokenizer) -> list[str]:
    runs, current = [], []
    for token, label in zip(ids, labels):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def square(path):
    image = Image.new("RGB", (40, 30), "white")
    image.paste((220, 20, 20), (4, 5, 20, 25))
    image.save(path)
    return path.name


@pytest.mark.parametrize("template", CHAT_TEMPLATES)
def test_exactly_the_assistant_turns_are_supervised(tmp_path, template):
    _, processor = tiny_neva()
    processor.chat_template = NevaProcessor.chat_template_for(template)
    transform = ConversationTransform(processor, image_folder=tmp_path)
    example = transform.example([square(tmp_path / "a.png")], CONVERSATION)
    assert example.get("skip_reason") is None
    assert supervised_runs(example["input_ids"], example["labels"], processor.tokenizer) == SUPERVISED[template]
    assert example["input_ids"].count(processor.image_token_id) == processor.image_seq_length
    assert example["pixel_values"].shape == (1, 3, 28, 28)


def test_bad_samples_are_skipped_and_counted_and_the_rest_trains(tmp_path):
    model, processor = tiny_neva()
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    good = {"id": "good", "image": square(tmp_path / "a.png"), "conversations": CONVERSATION}
    rows = [
        good,
        {"id": "missing", "image": "nowhere.png", "conversations": CONVERSATION},
        {"id": "corrupt", "image": "broken.png", "conversations": CONVERSATION},
        {"id": "no-answer", "image": "a.png", "conversations": CONVERSATION[:1]},
        {
            "id": "two-tags",
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image> <image>"}, {"from": "gpt", "value": "Red."}],
        },  # fmt: skip
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    dataset = build_conversation_dataset(path, processor, image_folder=tmp_path)
    collator = NevaCollator(processor.tokenizer.pad_token_id)
    batch = collator([dataset[i] for i in range(len(rows))])
    assert dict(collator.skipped) == {"missing_image": 1, "corrupt_image": 1, "image_count_mismatch": 1,
                                      "no_assistant_turn": 1, "too_long": 0}  # fmt: skip
    assert batch["input_ids"].shape[0] == 2 and batch["pixel_values"].shape == (1, 3, 28, 28)
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()
    loss = model(**batch).loss  # a mixed batch (one image, one text-only sample) runs
    assert torch.isfinite(loss)


def test_long_samples_are_truncated_unless_images_would_be_cut(tmp_path):
    _, processor = tiny_neva()
    long_answer = [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": " red" * 200}]
    transform = ConversationTransform(processor, image_folder=tmp_path, model_max_length=120)
    example = transform.example([square(tmp_path / "a.png")], long_answer)
    assert len(example["input_ids"]) == 120 and transform.truncated == 1
    late_image = [{"from": "human", "value": " red" * 200 + "<image>"}, {"from": "gpt", "value": "Red."}]
    assert transform.example(["a.png"], late_image)["skip_reason"] == "too_long"
