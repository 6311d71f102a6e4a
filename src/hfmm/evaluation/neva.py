"""Visual question answering of a NeVA, scored by normalised exact match (task `"visual-question-answering"`,
metric `exact_match`).

The data is a LLaVA-style JSON of one-question conversations (image paths relative to the file's folder). The model
answers greedily through its chat template, and an answer counts when it equals the reference (the `answer` field, or
else the first assistant turn) after normalisation: lower case, punctuation and the articles a/an/the removed, spaces
collapsed.
"""

import json
import logging
import string
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from hfmm.evaluation.data import dataset_identity
from hfmm.evaluation.results import VQA_TASK, task_result

logger = logging.getLogger(__name__)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed (VQA exact match)."""
    text = "".join(" " if char in string.punctuation else char for char in text.lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


def _question_and_reference(sample: dict) -> tuple[str, str]:
    """The sample's first user turn, and its `answer` field or else its first assistant turn."""
    turns = sample["conversations"]
    question = next(turn["value"] for turn in turns if turn["from"] in ("human", "user"))
    reference = sample.get("answer") or next(turn["value"] for turn in turns if turn["from"] in ("gpt", "assistant"))
    return question, reference


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _greedy_answer(model, processor, question: str, image: Image.Image | None, max_new_tokens: int) -> str:
    prompt = processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    inputs = processor(images=image, text=prompt).to(model.device)
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)  # the new tokens


@torch.no_grad()
def visual_question_answering(
    model, processor, dataset_path: str | Path, *, max_new_tokens: int = 16, progress: bool = True, **_
) -> dict:
    """Greedy answers of a NeVA to a LLaVA-style JSON of questions, scored by normalised exact match; a sample whose
    image cannot be read is skipped with a warning."""
    path = Path(dataset_path)
    if not path.is_file():
        raise ValueError(f"Evaluation data {path} does not exist.")
    correct = total = 0
    for sample in tqdm(json.loads(path.read_text()), desc=f"vqa {path.name}", disable=not progress):
        question, reference = _question_and_reference(sample)
        try:
            image = _read_rgb(path.parent / sample["image"]) if sample.get("image") else None
        except OSError as error:
            logger.warning("skipping %s: %s", sample["image"], error)
            continue
        answer = _greedy_answer(model, processor, question, image, max_new_tokens)
        correct += normalize_answer(answer) == normalize_answer(reference)
        total += 1
    if total == 0:
        raise ValueError(f"{path}: no question could be evaluated.")
    name, split = dataset_identity(path)
    return task_result(VQA_TASK, name, split, {"exact_match": correct / total})
