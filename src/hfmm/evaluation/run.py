"""`run_eval`: loads a saved model and its processor, runs each (task, dataset) pair and returns (and writes) the
eval JSON of `hfmm.evaluation.results`; what `hfmm eval` and the demos call."""

from collections.abc import Sequence
from pathlib import Path

import torch

from hfmm.evaluation.clip import image_text_retrieval, zero_shot_classification
from hfmm.evaluation.neva import visual_question_answering
from hfmm.evaluation.results import RETRIEVAL_TASK, TASKS, VQA_TASK, ZERO_SHOT_TASK, write_report

RUNNERS = {
    ZERO_SHOT_TASK: zero_shot_classification,
    RETRIEVAL_TASK: image_text_retrieval,
    VQA_TASK: visual_question_answering,
}


def _generative(tasks: Sequence[tuple[str, str | Path]]) -> bool:
    """Whether the tasks score a NeVA (VQA) rather than a CLIP; they must not mix."""
    if not tasks:
        raise ValueError("Give at least one (task, dataset) pair.")
    unknown = sorted({task for task, _ in tasks} - set(TASKS))
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}; choose from {sorted(TASKS)}.")
    generative = {TASKS[task] == VQA_TASK for task, _ in tasks}
    if len(generative) > 1:
        raise ValueError("VQA scores a NeVA, the other tasks a CLIP: run them separately.")
    return generative.pop()


def _load(model_path: str | Path, generative: bool, device: str):
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    import hfmm  # noqa: F401  (registers hfmm's classes with the Auto classes)

    loader = AutoModelForImageTextToText if generative else AutoModel
    model = loader.from_pretrained(model_path).to(device).eval()
    return model, AutoProcessor.from_pretrained(model_path)


def run_eval(
    model_path: str | Path,
    tasks: Sequence[tuple[str, str | Path]],
    output: str | Path | None = None,
    *,
    templates: Sequence[str] | None = None,
    batch_size: int = 64,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """
    Loads a saved model and its processor, runs each `(task, dataset_path)` and returns (and writes) the eval JSON.

    Args:
        model_path (`str` or `Path`):
            Model folder or Hub id (loaded with `AutoModel`, or `AutoModelForImageTextToText` for VQA, and
            `AutoProcessor`; hfmm registers its classes).
        tasks (`Sequence[tuple[str, str | Path]]`):
            Pairs such as `("zero-shot", "data/colours")`, `("retrieval", "data/test.csv")`, `("vqa", "q.json")`;
            the long task names of `TASKS` are accepted too. VQA (a NeVA) cannot be mixed with the CLIP tasks.
        output (`str` or `Path`, *optional*):
            Where to write the JSON (parent folders are created).
        templates (`Sequence[str]`, *optional*):
            Zero-shot prompt templates (default `("a photo of a {}.",)`).
        batch_size (`int`, *optional*, defaults to 64): images or texts per forward pass.
        device (`str`, *optional*): defaults to `"cuda"` when available, else `"cpu"`.
        progress (`bool`, *optional*, defaults to `True`): show tqdm progress bars.

    Returns:
        `dict`: `{"model": str(model_path), "results": [...]}`, see `hfmm.evaluation.results`.
    """
    generative = _generative(tasks)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = _load(model_path, generative, device)
    results = []
    for task, dataset_path in tasks:
        kwargs = {"templates": templates} if TASKS[task] == ZERO_SHOT_TASK else {}
        run = RUNNERS[TASKS[task]]
        results.append(run(model, processor, dataset_path, batch_size=batch_size, progress=progress, **kwargs))
    report = {"model": str(model_path), "results": results}
    if output is not None:
        write_report(report, output)
    return report
