"""Evaluation of hfmm models: CLIP zero-shot classification and image-text retrieval, NeVA visual question answering,
all reported in one eval JSON that the model cards read.

- `data`: reading labelled and captioned image sets, a dataset's name and split, loading image files.
- `clip`: embeddings, the zero-shot classifier, top-k accuracy and retrieval recall (OpenCLIP / CLIP_benchmark).
- `neva`: VQA by normalised exact match.
- `results`: the eval JSON schema and task names; `run`: `run_eval`, what `hfmm eval` calls.
- `callbacks`: `ZeroShotEvalCallback`, zero-shot accuracy at each `Trainer.evaluate`.

Usage:
    `run_eval("model_dir", [("zero-shot", "data/colours/test"), ("retrieval", "data/test.csv")], "eval.json")`
"""

from hfmm.evaluation.callbacks import ZeroShotEvalCallback
from hfmm.evaluation.clip import (
    DEFAULT_TEMPLATES,
    embed_images,
    embed_texts,
    evaluate_zero_shot,
    fill_template,
    image_text_retrieval,
    retrieval_recall,
    topk_accuracy,
    zero_shot_classification,
    zero_shot_classifier,
)
from hfmm.evaluation.data import (
    IMAGE_EXTENSIONS,
    CaptionedImages,
    LabelledImages,
    dataset_identity,
    load_classification_data,
    load_images,
    load_retrieval_data,
    read_rows,
)
from hfmm.evaluation.neva import normalize_answer, visual_question_answering
from hfmm.evaluation.results import RETRIEVAL_TASK, TASKS, VQA_TASK, ZERO_SHOT_TASK, task_result, write_report
from hfmm.evaluation.run import run_eval

__all__ = [
    "DEFAULT_TEMPLATES",
    "IMAGE_EXTENSIONS",
    "RETRIEVAL_TASK",
    "TASKS",
    "VQA_TASK",
    "ZERO_SHOT_TASK",
    "CaptionedImages",
    "LabelledImages",
    "ZeroShotEvalCallback",
    "dataset_identity",
    "embed_images",
    "embed_texts",
    "evaluate_zero_shot",
    "fill_template",
    "image_text_retrieval",
    "load_classification_data",
    "load_images",
    "load_retrieval_data",
    "normalize_answer",
    "read_rows",
    "retrieval_recall",
    "run_eval",
    "task_result",
    "topk_accuracy",
    "visual_question_answering",
    "write_report",
    "zero_shot_classification",
    "zero_shot_classifier",
]
