"""NeVA conversation data: label masking per chat template, image expansion, bad samples skipped and counted."""

import json

import pytest
import torch
from neva_fixtures import tiny_neva
from PIL import Image

from hfmm.models.neva.processing_neva import CHAT_TEMPLATES, NevaProcessor
from hfmm.training.neva.data import (
    ConversationTransform,
    ModalityLengthGroupedSampler,
    NevaCollator,
    build_conversation_dataset,
    modality_lengths,
)

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


def test_modality_lengths_read_the_raw_rows_not_the_transform(tmp_path):
    rows = [
        {"id": "a", "image": "x.png", "conversations": [{"from": "human", "value": "<image>\nwhat"}, {"from": "gpt", "value": "a red square"}]},
        {"id": "b", "conversations": [{"from": "human", "value": "say hi"}, {"from": "gpt", "value": "hi"}]},
    ]  # fmt: skip
    (tmp_path / "data.json").write_text(json.dumps(rows))
    _, processor = tiny_neva()
    dataset = build_conversation_dataset(tmp_path / "data.json", processor, image_folder=tmp_path)  # x.png missing
    assert modality_lengths(dataset) == [5, -3]  # the transform would have had to open x.png


@pytest.mark.parametrize("world_size", [1, 2])
def test_modality_grouped_batches_hold_one_modality(world_size):
    generator = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 60, (50,), generator=generator).tolist()
    lengths = [size if i % 3 else -size for i, size in enumerate(sizes)]  # 17 text-only, 33 with images
    batch = 4
    sampler = ModalityLengthGroupedSampler(lengths, batch_size=batch, world_size=world_size, seed=7)
    order = list(sampler)
    assert sorted(order) == list(range(50)) and len(sampler) == 50
    step = batch * world_size
    full_steps = 33 // step + 17 // step
    for start in range(0, full_steps * step, step):
        megabatch = order[start : start + step]
        assert len({lengths[i] > 0 for i in megabatch}) == 1  # one modality for every device of this step
        assert [abs(lengths[i]) for i in megabatch] == sorted((abs(lengths[i]) for i in megabatch), reverse=True)
    # the modalities interleave across steps instead of running one after the other
    kinds = [lengths[order[start]] > 0 for start in range(0, full_steps * step, step)]
    assert 0 < sum(kinds) < len(kinds) and kinds != sorted(kinds) and kinds != sorted(kinds, reverse=True)
    assert list(ModalityLengthGroupedSampler(lengths, batch, world_size, seed=7)) == order  # same on every rank
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(50))


def test_modality_grouped_sampler_rejects_zero_lengths():
    with pytest.raises(ValueError, match="non-zero"):
        ModalityLengthGroupedSampler([3, 0, -2], batch_size=2)
