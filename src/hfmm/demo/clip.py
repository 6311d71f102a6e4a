"""`hfmm demo` / `make demo`: a tiny CLIP that learns, end to end, on 2 CPU cores in a few minutes.

1. render captioned coloured shapes with Pillow (train), and held-out images for evaluation;
2. train a tiny CLIP with the exact tiled loss through the real recipe (`hfmm train clip`, i.e.
   `hfmm.training.clip.recipe`, with `recipes/clip/tiny_demo.yaml`) and transformers' Trainer (its progress bar shows);
3. reload the saved folder through the Auto classes and classify held-out images zero-shot with
   `pipeline("zero-shot-image-classification")`, then run `hfmm eval` (template-averaged zero-shot top-1/top-5,
   image-text retrieval recall) and save its JSON beside the model.
"""

import csv
import json
from collections import Counter
from pathlib import Path

from PIL import Image
from transformers import pipeline

from hfmm.demo.synthetic import COLOURS, ZERO_SHOT_TEMPLATES, make_colour_imagefolder, make_shapes_dataset
from hfmm.evaluation import run_eval
from hfmm.resources import recipes_dir
from hfmm.training.clip import recipe


def make_data(data: Path, n_train: int, n_eval: int) -> dict[str, Path]:
    print(f"rendering {n_train} training and {2 * n_eval} held-out images into {data}")
    return {
        "train": make_shapes_dataset(data, n_train, seed=0, split="train"),
        # in its own folder, so `hfmm eval` (and the card) name the dataset "shapes" rather than "data"
        "retrieval": make_shapes_dataset(data / "shapes", n_eval, seed=1, split="test"),
        "colours": make_colour_imagefolder(data / "colours", n_eval, seed=2),
    }


def pipeline_accuracy(model_dir: Path, colours_dir: Path, template: str) -> float:
    """Zero-shot colour accuracy of the pipeline on the held-out class folders."""
    classifier = pipeline("zero-shot-image-classification", model=str(model_dir))
    labels = list(COLOURS)
    truth = [(label, path) for label in labels for path in sorted((colours_dir / label).glob("*.png"))]
    images = [Image.open(path) for _, path in truth]
    predictions = classifier(images, candidate_labels=labels, hypothesis_template=template, batch_size=32)
    return sum(rows[0]["label"] == label for rows, (label, _) in zip(predictions, truth)) / len(truth)


def retrieval_chance(captions_csv: Path) -> tuple[float, float]:
    """Chance R@1 (1 / number of images) and the attainable R@1: images that share a caption are indistinguishable."""
    with open(captions_csv, newline="") as handle:
        captions = [row["caption"] for row in csv.DictReader(handle)]
    counts = Counter(captions)
    return 1 / len(captions), len(counts) / len(captions)  # each distinct caption: 1/k for each of its k images


def run_clip_demo(out: Path, *, n_train: int = 2000, n_eval: int = 400, epochs: float | None = None) -> dict:
    """Runs the whole demo into `out`; returns the eval JSON (with the pipeline accuracy added)."""
    out = Path(out)
    paths = make_data(out / "data", n_train, n_eval)
    model_dir = out / "clip"
    overrides = ["--train_data", str(paths["train"]), "--output_dir", str(model_dir)]
    if epochs is not None:
        overrides += ["--num_train_epochs", str(epochs)]
    recipe.main(["--config", str(recipes_dir() / "clip" / "tiny_demo.yaml"), *overrides])

    template = "a {} square"
    accuracy = pipeline_accuracy(model_dir, paths["colours"], template)
    tasks = [("zero-shot", paths["colours"]), ("retrieval", paths["retrieval"])]
    report = run_eval(model_dir, tasks, output=model_dir / "eval.json", templates=ZERO_SHOT_TEMPLATES, progress=False)
    report["pipeline_zero_shot_top1"] = accuracy
    (model_dir / "eval.json").write_text(json.dumps(report, indent=2) + "\n")

    chance = 1 / len(COLOURS)
    print(
        f"\nheld-out zero-shot colour accuracy through the pipeline ({template!r}): {accuracy:.1%} (chance {chance:.1%})"
    )
    for result in report["results"]:
        metrics = ", ".join(f"{k} {v:.1%}" for k, v in result["metrics"].items())
        print(f"hfmm eval {result['task']} on {result['dataset']['name']}: {metrics}")
    chance, attainable = retrieval_chance(paths["retrieval"])
    print(
        f"retrieval: R@1 by chance {chance:.2%}; held-out images repeat captions (a caption cannot tell them apart), "
        f"so the attainable R@1 is {attainable:.1%}"
    )
    print(f"model, processor and eval.json saved in {model_dir}")
    return report
