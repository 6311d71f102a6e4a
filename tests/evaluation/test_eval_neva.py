"""hfmm.evaluation.neva: VQA exact match, on a stand-in NeVA whose answers are known."""

import json

import pytest
import torch
from colour_oracle import PRIMARIES, flat_image
from transformers import BatchFeature

from hfmm.evaluation import normalize_answer, visual_question_answering

WORDS = ["none", *PRIMARIES]  # token i decodes as WORDS[i]


class ColourAnswerer:
    """A stand-in NeVA processor: the prompt is three `none` tokens, the image the token of its colour."""

    def __init__(self):
        self.prompts = []

    def apply_chat_template(self, messages, add_generation_prompt=False):
        assert add_generation_prompt and [m["role"] for m in messages] == ["user"]
        self.prompts.append(messages[0]["content"])
        return f"USER: {messages[0]['content']} ASSISTANT:"

    def __call__(self, images=None, text=None):
        rgb = () if images is None else tuple(c // 255 for c in images.getpixel((0, 0)))
        word = 1 + list(PRIMARIES.values()).index(rgb) if images is not None else 0
        return BatchFeature({"input_ids": torch.zeros(1, 3, dtype=torch.long), "pixel_values": torch.tensor([[word]])})

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(WORDS[i] for i in ids.tolist())


class ColourNeva:
    """A stand-in NeVA that answers greedily with the image's colour (prompt tokens first, as `generate` returns)."""

    device = torch.device("cpu")

    def generate(self, input_ids, pixel_values, max_new_tokens, do_sample):
        assert not do_sample and max_new_tokens >= 1
        return torch.cat([input_ids, pixel_values], dim=1)


def question(colour_file: str | None, reply: str, **fields) -> dict:
    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": reply}]
    return {**({"image": colour_file} if colour_file else {}), "conversations": turns, **fields}


def test_vqa_scores_normalised_exact_matches(tmp_path):
    for colour in ("red", "blue", "green"):
        flat_image(colour).save(tmp_path / f"{colour}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    samples = [
        question("red.png", "Red."),  # matches after normalisation
        question("blue.png", "The blue one"),  # "blue one" != "blue"
        question("green.png", "purple", answer="a green"),  # the `answer` field wins over the assistant turn
        question("broken.png", "red"),  # unreadable: skipped, not counted
        question(None, "None!"),  # no image: the processor gets none
    ]
    (tmp_path / "val.json").write_text(json.dumps(samples))
    processor = ColourAnswerer()
    result = visual_question_answering(ColourNeva(), processor, tmp_path / "val.json", progress=False)
    assert result == {
        "task": "visual-question-answering",
        "dataset": {"name": tmp_path.name, "split": "val"},
        "metrics": {"exact_match": 3 / 4},
    }
    assert processor.prompts[0] == "<image>\nWhat colour?"  # the first user turn is the question


def test_vqa_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        visual_question_answering(ColourNeva(), ColourAnswerer(), tmp_path / "nowhere.json")
    (tmp_path / "q.json").write_text(json.dumps([question("missing.png", "red")]))
    with pytest.raises(ValueError, match="no question could be evaluated"):
        visual_question_answering(ColourNeva(), ColourAnswerer(), tmp_path / "q.json", progress=False)


def test_answers_are_normalised_before_matching():
    assert normalize_answer(" The Red.") == normalize_answer("red") == "red"
    assert normalize_answer("An apple, a pear & THE plum!") == "apple pear plum"
    assert normalize_answer("dark-blue") == "dark blue" and normalize_answer("theatre") == "theatre"
