"""The eval JSON: its task names, one result record, and writing the report.

Every task returns one result and `run_eval` (and `hfmm eval`) writes them under one schema, which the model cards
read (`hfmm.hub.cards.load_eval_report`):

```json
{"model": "path/or/name",
 "results": [{"task": "zero-shot-image-classification", "dataset": {"name": "colours", "split": "test"},
              "metrics": {"top1": 0.95, "top5": 1.0}},
             {"task": "image-text-retrieval", "dataset": {"name": "shapes", "split": "test"},
              "metrics": {"image_to_text_R@1": 0.4, "image_to_text_R@5": 0.8, "image_to_text_R@10": 0.9,
                          "text_to_image_R@1": 0.3, "text_to_image_R@5": 0.7, "text_to_image_R@10": 0.9}},
             {"task": "visual-question-answering", "dataset": {"name": "questions", "split": "test"},
              "metrics": {"exact_match": 0.875}}]}
```

Metrics are fractions in [0, 1]. Unreadable images are skipped with a warning (and leave the denominators).
"""

import json
from pathlib import Path

ZERO_SHOT_TASK = "zero-shot-image-classification"
RETRIEVAL_TASK = "image-text-retrieval"
VQA_TASK = "visual-question-answering"
# the names `run_eval` and `hfmm eval --task` accept, short and long, and the task each names
TASKS = {
    "vqa": VQA_TASK,
    VQA_TASK: VQA_TASK,
    "zero-shot": ZERO_SHOT_TASK,
    ZERO_SHOT_TASK: ZERO_SHOT_TASK,
    "retrieval": RETRIEVAL_TASK,
    RETRIEVAL_TASK: RETRIEVAL_TASK,
}


def task_result(task: str, name: str, split: str, metrics: dict[str, float]) -> dict:
    """One entry of the report's `results`: `{"task", "dataset": {"name", "split"}, "metrics"}`."""
    return {"task": task, "dataset": {"name": name, "split": split}, "metrics": metrics}


def write_report(report: dict, output: str | Path) -> Path:
    """Writes the eval JSON to `output`, creating its parent folders."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    return output
