"""Zero-shot classification and image-text retrieval of CLIP models, as OpenCLIP and CLIP_benchmark compute them.

- Zero-shot classification: each class name is put in every prompt template; the text embeddings are normalised,
  averaged over templates and renormalised (one classifier column per class); normalised image embeddings give
  `logits = 100 * image @ classifier`; top-1 and top-5 accuracy (top-5 only with at least 5 classes).
- Retrieval (CLIP_benchmark's `zeroshot_retrieval`): cosine scores between every caption and every distinct image.
  `text_to_image_R@k`: fraction of captions whose image is among the k best images. `image_to_text_R@k`: fraction of
  images with at least one of their captions among the k best captions. k larger than the candidates counts as all.

Results follow one JSON schema (written by `run_eval` and `hfmm eval`, read by the model cards):

```json
{"model": "path/or/name",
 "results": [{"task": "zero-shot-image-classification", "dataset": {"name": "colours", "split": "test"},
              "metrics": {"top1": 0.95, "top5": 1.0}},
             {"task": "image-text-retrieval", "dataset": {"name": "shapes", "split": "test"},
              "metrics": {"image_to_text_R@1": 0.4, "image_to_text_R@5": 0.8, "image_to_text_R@10": 0.9,
                          "text_to_image_R@1": 0.3, "text_to_image_R@5": 0.7, "text_to_image_R@10": 0.9}}]}
```

Metrics are fractions in [0, 1]. Unreadable images are skipped with a warning (and leave the denominators).

- Visual question answering (NeVA, `"task": "visual-question-answering"`, `"metrics": {"exact_match": ...}`): a
  LLaVA-style JSON of one-question conversations (image paths relative to the file's folder); the model answers
  greedily through its chat template, and an answer counts when it equals the reference (the first assistant turn, or
  an `answer` field) after normalisation: lower case, punctuation and the articles a/an/the removed, spaces collapsed.
"""

import csv
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm
from transformers import TrainerCallback

logger = logging.getLogger(__name__)

ZERO_SHOT_TASK = "zero-shot-image-classification"
RETRIEVAL_TASK = "image-text-retrieval"
VQA_TASK = "visual-question-answering"
TASKS = {
    "vqa": VQA_TASK,
    VQA_TASK: VQA_TASK,
    "zero-shot": ZERO_SHOT_TASK,
    ZERO_SHOT_TASK: ZERO_SHOT_TASK,
    "retrieval": RETRIEVAL_TASK,
    RETRIEVAL_TASK: RETRIEVAL_TASK,
}
DEFAULT_TEMPLATES = ("a photo of a {}.",)
RECALL_KS = (1, 5, 10)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
SPLIT_NAMES = ("train", "val", "validation", "test", "eval")
ZERO_SHOT_SCALE = 100.0  # OpenCLIP's fixed zero-shot logit scale (not the model's logit_scale)


# ---------------------------------------------------------------------------------------------------------------------
# Reading evaluation data
# ---------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LabelledImages:
    """Images with class indices, for zero-shot classification."""

    paths: list[Path]
    labels: list[int]
    classnames: list[str]
    name: str
    split: str


@dataclasses.dataclass
class CaptionedImages:
    """Distinct images and their captions (`caption_images[i]` is the index of caption i's image), for retrieval."""

    paths: list[Path]
    captions: list[str]
    caption_images: list[int]
    name: str
    split: str


def dataset_identity(path: str | Path) -> tuple[str, str]:
    """
    `(name, split)` of a dataset path: `data/colours/test` -> `("colours", "test")`, `data/shapes/test.csv` ->
    `("shapes", "test")`; otherwise the folder or file stem and `"test"`.
    """
    path = Path(path).expanduser().resolve()
    stem = path.stem if path.is_file() else path.name
    if stem.lower() in SPLIT_NAMES:
        return path.parent.name, stem
    return stem, "test"


def read_rows(path: str | Path, *, csv_separator: str = ",") -> list[dict]:
    """Rows of a CSV (header row, `csv_separator`) or JSONL file, as dicts."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"Evaluation data {path} does not exist.")
    if path.suffix.lower() in (".jsonl", ".json"):
        with open(path) as file:
            rows = [json.loads(line) for line in file if line.strip()]
    elif path.suffix.lower() in (".csv", ".tsv"):
        with open(path, newline="") as file:
            rows = list(csv.DictReader(file, delimiter=csv_separator))
    else:
        raise ValueError(f"Evaluation data {path} must be a .csv/.tsv or .jsonl file (or a folder for zero-shot).")
    if not rows:
        raise ValueError(f"Evaluation data {path} holds no rows.")
    return rows


def _column(rows: list[dict], column: str, path: Path) -> list:
    if column not in rows[0]:
        raise ValueError(f"{path} has no column {column!r}; its columns are {list(rows[0])}.")
    return [row[column] for row in rows]


def _resolve(root: Path, value) -> Path:
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _class_folder(folder: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{folder} has no class subfolders (expected <folder>/<class name>/<image files>).")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    # Folder names become prompt words: "great_white_shark" -> "great white shark".
    return paths, labels, [name.replace("_", " ") for name in classes]


def _label_table(path: Path, image_column: str, label_column: str, csv_separator: str):
    rows = read_rows(path, csv_separator=csv_separator)
    images = [_resolve(path.parent, value) for value in _column(rows, image_column, path)]
    raw = [str(value).strip() for value in _column(rows, label_column, path)]
    if all(value.isdigit() for value in raw):  # class indices: names must come from `classnames`
        return images, [int(value) for value in raw], None
    classes = sorted(set(raw))
    index = {name: i for i, name in enumerate(classes)}
    return images, [index[value] for value in raw], classes


def load_classification_data(
    dataset_path: str | Path,
    *,
    classnames: Sequence[str] | None = None,
    image_column: str = "image",
    label_column: str = "label",
    csv_separator: str = ",",
) -> LabelledImages:
    """
    Images and labels from a folder of class subfolders, or a CSV/JSONL file with `image` and `label` columns.

    Class order: sorted folder names, or sorted string labels, or the integer labels themselves (0, 1, ...).
    `classnames` replaces the names used in prompts (one per class, in that order); integer labels require it.
    Folder names have `_` replaced by spaces.
    """
    path = Path(dataset_path).expanduser()
    if path.is_dir():
        images, labels, names = _class_folder(path)
    elif path.exists():
        images, labels, names = _label_table(path, image_column, label_column, csv_separator)
    else:
        raise ValueError(f"Zero-shot data {path} does not exist (a folder of class folders, or a CSV/JSONL file).")
    if not images:
        raise ValueError(f"{path} holds no images (folders: files with extensions {IMAGE_EXTENSIONS}).")
    if classnames is not None:
        if names is not None and len(classnames) != len(names):
            raise ValueError(f"{path} has {len(names)} classes {names} but {len(classnames)} classnames were given.")
        names = [str(name) for name in classnames]
    if names is None:
        raise ValueError(f"{path} has integer labels: pass `classnames` (one name per class index).")
    if max(labels) >= len(names):
        raise ValueError(f"{path} has labels up to {max(labels)} but only {len(names)} classnames were given.")
    return LabelledImages(images, labels, names, *dataset_identity(path))


def load_retrieval_data(
    dataset_path: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    csv_separator: str = ",",
) -> CaptionedImages:
    """
    Captioned images from a CSV/JSONL file with one (image path, caption) pair per row; rows that repeat an image
    path give that image several captions. Relative paths are resolved against the file's folder.
    """
    path = Path(dataset_path).expanduser()
    rows = read_rows(path, csv_separator=csv_separator)
    images = [_resolve(path.parent, value) for value in _column(rows, image_column, path)]
    captions = ["" if value is None else str(value) for value in _column(rows, caption_column, path)]
    distinct: dict[Path, int] = {}
    caption_images = [distinct.setdefault(image, len(distinct)) for image in images]
    return CaptionedImages(list(distinct), captions, caption_images, *dataset_identity(path))


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------


def _device_and_dtype(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    return parameter.device, parameter.dtype


def _batches(items: Sequence, size: int):
    if size < 1:
        raise ValueError(f"batch_size must be positive, got {size}.")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _load_images(paths: Sequence[Path]) -> tuple[list[Image.Image], list[int]]:
    images, kept = [], []
    for index, path in enumerate(paths):
        try:
            image = Image.open(path)
            image.load()
        except Exception as error:  # decoders raise many types; an unreadable file is skipped, not fatal
            logger.warning("Skipping unreadable image %s: %s: %s", path, type(error).__name__, error)
            continue
        images.append(image)
        kept.append(index)
    return images, kept


@torch.inference_mode()
def embed_images(
    model, image_processor, paths: Sequence[Path], *, batch_size: int = 64, progress: bool = True, desc: str = "images"
) -> tuple[torch.Tensor, list[int]]:
    """
    Normalised image embeddings `(num_readable, embed_dim)` (float32, on CPU) and the indices of the readable paths.
    """
    device, dtype = _device_and_dtype(model)
    embeddings, kept = [], []
    batches = list(_batches(range(len(paths)), batch_size))
    for indices in tqdm(batches, desc=desc, disable=not progress, leave=False):
        images, readable = _load_images([paths[i] for i in indices])
        if not images:
            continue
        pixels = image_processor(images, return_tensors="pt")["pixel_values"].to(device=device, dtype=dtype)
        features = model.get_image_features(pixel_values=pixels).pooler_output  # (B, E)
        embeddings.append(F.normalize(features.float(), dim=-1).cpu())
        kept += [indices[i] for i in readable]
    if not embeddings:
        raise ValueError("None of the evaluation images could be read.")
    return torch.cat(embeddings), kept


@torch.inference_mode()
def embed_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = 64) -> torch.Tensor:
    """Normalised text embeddings `(len(texts), embed_dim)` (float32, on CPU), tokenized as OpenCLIP does."""
    device, _ = _device_and_dtype(model)
    embeddings = []
    for chunk in _batches(list(texts), batch_size):
        tokens = tokenizer(chunk, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)
        ids = torch.tensor(tokens["input_ids"], device=device)  # (B, context_length)
        features = model.get_text_features(input_ids=ids).pooler_output  # (B, E)
        embeddings.append(F.normalize(features.float(), dim=-1).cpu())
    return torch.cat(embeddings)


def _format(template: str, classname: str) -> str:
    if "{}" not in template and "{c}" not in template:
        raise ValueError(f"Template {template!r} must contain '{{}}' (or '{{c}}') where the class name goes.")
    return template.replace("{c}", "{}").format(classname)


def zero_shot_classifier(
    model, tokenizer, classnames: Sequence[str], templates: Sequence[str], *, batch_size: int = 64
) -> torch.Tensor:
    """
    OpenCLIP's zero-shot classifier `(embed_dim, num_classes)`: per class, the normalised embeddings of every
    template, averaged and renormalised.
    """
    texts = [_format(template, name) for name in classnames for template in templates]
    embeddings = embed_texts(model, tokenizer, texts, batch_size=batch_size)  # (C * T, E)
    per_class = embeddings.view(len(classnames), len(templates), -1).mean(dim=1)  # (C, E)
    return F.normalize(per_class, dim=-1).t()  # (E, C)


# ---------------------------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------------------------


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """`{"top1": ..., "top5": ...}` from `(num_images, num_classes)` logits; a k above the class count is left out."""
    metrics = {}
    for k in ks:
        if k <= logits.shape[1]:
            best = logits.topk(k, dim=1).indices  # (N, k)
            metrics[f"top{k}"] = (best == labels[:, None]).any(dim=1).double().mean().item()
    return metrics


def _recall(scores: torch.Tensor, positives: torch.Tensor, k: int, chunk: int = 1024) -> float:
    """Fraction of rows of `scores` (queries x candidates) with a positive among their k best candidates."""
    k = min(k, scores.shape[1])
    hits = []
    for start in range(0, scores.shape[0], chunk):
        best = scores[start : start + chunk].topk(k, dim=1).indices  # (n, k)
        hits.append(positives[start : start + chunk].gather(1, best).any(dim=1))
    return torch.cat(hits).double().mean().item()  # double: 397/400 reads 0.9925


def retrieval_recall(
    image_embeds: torch.Tensor, text_embeds: torch.Tensor, caption_images: torch.Tensor, ks: Sequence[int] = RECALL_KS
) -> dict[str, float]:
    """
    CLIP_benchmark's retrieval recalls from normalised embeddings.

    Args:
        image_embeds (`torch.Tensor` of shape `(num_images, embed_dim)`): normalised image embeddings.
        text_embeds (`torch.Tensor` of shape `(num_texts, embed_dim)`): normalised caption embeddings.
        caption_images (`torch.Tensor` of shape `(num_texts,)`): index of each caption's image.
        ks (`Sequence[int]`, *optional*, defaults to `(1, 5, 10)`): the k of R@k.

    Returns:
        `dict[str, float]`: `image_to_text_R@k` for every k, then `text_to_image_R@k`.
    """
    scores = text_embeds @ image_embeds.t()  # (T, I)
    positives = torch.zeros_like(scores, dtype=torch.bool)
    positives[torch.arange(len(caption_images)), caption_images] = True
    metrics = {f"image_to_text_R@{k}": _recall(scores.t(), positives.t(), k) for k in ks}
    metrics.update({f"text_to_image_R@{k}": _recall(scores, positives, k) for k in ks})
    return metrics


# ---------------------------------------------------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------------------------------------------------


def _result(task: str, name: str, split: str, metrics: dict) -> dict:
    return {"task": task, "dataset": {"name": name, "split": split}, "metrics": metrics}


def evaluate_zero_shot(
    model, processor, data: LabelledImages, templates: Sequence[str], *, batch_size: int = 64, progress: bool = True
) -> dict[str, float]:
    """Top-1/top-5 accuracy of `model` on already loaded `data` (see `zero_shot_classification`)."""
    classifier = zero_shot_classifier(model, processor.tokenizer, data.classnames, templates, batch_size=batch_size)
    image_embeds, kept = embed_images(
        model, processor.image_processor, data.paths, batch_size=batch_size, progress=progress, desc="zero-shot"
    )
    logits = ZERO_SHOT_SCALE * image_embeds @ classifier  # (N, C)
    return topk_accuracy(logits, torch.tensor([data.labels[i] for i in kept]))


def zero_shot_classification(
    model,
    processor,
    dataset_path: str | Path,
    *,
    templates: Sequence[str] | None = None,
    classnames: Sequence[str] | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """
    Zero-shot classification accuracy of a CLIP model, OpenCLIP's recipe.

    Args:
        model (`HfmmCLIPModel` or any model with transformers' `get_image_features`/`get_text_features`):
            The model, used as it is (its device and dtype; call `model.eval()` first).
        processor (`HfmmCLIPProcessor`):
            Its `image_processor` and `tokenizer`.
        dataset_path (`str` or `Path`):
            A folder of class subfolders, or a CSV/JSONL file with `image` and `label` columns (see
            `load_classification_data`).
        templates (`Sequence[str]`, *optional*, defaults to `("a photo of a {}.",)`):
            Prompt templates, with `{}` (or `{c}`) where the class name goes; averaged per class.
        classnames (`Sequence[str]`, *optional*):
            Names used in prompts, one per class in class order (default: the folder names or labels).
        batch_size (`int`, *optional*, defaults to 64):
            Images or texts per forward pass.
        progress (`bool`, *optional*, defaults to `True`):
            Show a tqdm progress bar.

    Returns:
        `dict`: one result of the eval JSON schema, task `"zero-shot-image-classification"`, metrics `top1` (and
        `top5` with at least 5 classes).
    """
    data = load_classification_data(dataset_path, classnames=classnames)
    templates = list(templates or DEFAULT_TEMPLATES)
    metrics = evaluate_zero_shot(model, processor, data, templates, batch_size=batch_size, progress=progress)
    return _result(ZERO_SHOT_TASK, data.name, data.split, metrics)


def image_text_retrieval(
    model,
    processor,
    dataset_path: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    csv_separator: str = ",",
    batch_size: int = 64,
    progress: bool = True,
) -> dict:
    """
    Image-to-text and text-to-image recall@1/5/10 of a CLIP model, CLIP_benchmark's semantics.

    Args:
        model, processor: as for `zero_shot_classification`.
        dataset_path (`str` or `Path`):
            CSV/JSONL file of (image path, caption) rows; an image on several rows has several captions.
        image_column (`str`, *optional*, defaults to `"image"`): column of image paths.
        caption_column (`str`, *optional*, defaults to `"caption"`): column of captions.
        csv_separator (`str`, *optional*, defaults to `","`): CSV separator.
        batch_size (`int`, *optional*, defaults to 64): images or texts per forward pass.
        progress (`bool`, *optional*, defaults to `True`): show a tqdm progress bar.

    Returns:
        `dict`: one result of the eval JSON schema, task `"image-text-retrieval"`.
    """
    data = load_retrieval_data(
        dataset_path, image_column=image_column, caption_column=caption_column, csv_separator=csv_separator
    )
    image_embeds, kept = embed_images(
        model, processor.image_processor, data.paths, batch_size=batch_size, progress=progress, desc="retrieval"
    )
    position = {image: row for row, image in enumerate(kept)}  # image index -> row of image_embeds
    captions = [i for i, image in enumerate(data.caption_images) if image in position]
    text_embeds = embed_texts(model, processor.tokenizer, [data.captions[i] for i in captions], batch_size=batch_size)
    caption_images = torch.tensor([position[data.caption_images[i]] for i in captions])
    metrics = retrieval_recall(image_embeds, text_embeds, caption_images)
    return _result(RETRIEVAL_TASK, data.name, data.split, metrics)


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
            Model folder or Hub id (loaded with `AutoModel`/`AutoProcessor`; hfmm registers its classes).
        tasks (`Sequence[tuple[str, str | Path]]`):
            Pairs such as `("zero-shot", "data/colours")`, `("retrieval", "data/test.csv")`; the long task names
            `"zero-shot-image-classification"` and `"image-text-retrieval"` are accepted too.
        output (`str` or `Path`, *optional*):
            Where to write the JSON (parent folders are created).
        templates (`Sequence[str]`, *optional*):
            Zero-shot prompt templates (default `("a photo of a {}.",)`).
        batch_size (`int`, *optional*, defaults to 64): images or texts per forward pass.
        device (`str`, *optional*): defaults to `"cuda"` when available, else `"cpu"`.
        progress (`bool`, *optional*, defaults to `True`): show tqdm progress bars.

    Returns:
        `dict`: `{"model": str(model_path), "results": [...]}`, see the module docstring.
    """
    from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

    import hfmm  # noqa: F401  (registers hfmm's classes with the Auto classes)

    if not tasks:
        raise ValueError("Give at least one (task, dataset) pair.")
    unknown = sorted({task for task, _ in tasks} - set(TASKS))
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}; choose from {sorted(TASKS)}.")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    generative = {TASKS[task] == VQA_TASK for task, _ in tasks}
    if len(generative) > 1:
        raise ValueError("VQA scores a NeVA, the other tasks a CLIP: run them separately.")
    loader = AutoModelForImageTextToText if generative.pop() else AutoModel
    model = loader.from_pretrained(model_path).to(device).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    results = []
    for task, dataset_path in tasks:
        if TASKS[task] == ZERO_SHOT_TASK:
            kwargs = {"templates": templates}
            run = zero_shot_classification
        elif TASKS[task] == VQA_TASK:
            kwargs, run = {}, visual_question_answering
        else:
            kwargs, run = {}, image_text_retrieval
        results.append(run(model, processor, dataset_path, batch_size=batch_size, progress=progress, **kwargs))
    report = {"model": str(model_path), "results": results}
    if output is not None:
        output = Path(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
    return report


def normalize_answer(text: str) -> str:
    """Lower case, punctuation and the articles a/an/the removed, whitespace collapsed (VQA exact match)."""
    import string

    text = "".join(" " if char in string.punctuation else char for char in text.lower())
    return " ".join(word for word in text.split() if word not in ("a", "an", "the"))


@torch.no_grad()
def visual_question_answering(
    model, processor, dataset_path: str | Path, *, max_new_tokens: int = 16, progress: bool = True, **_
) -> dict:
    """Greedy answers of a NeVA to a LLaVA-style JSON of questions, scored by normalised exact match."""
    path = Path(dataset_path)
    if not path.is_file():
        raise ValueError(f"Evaluation data {path} does not exist.")
    samples = json.loads(path.read_text())
    correct = total = 0
    for sample in tqdm(samples, desc=f"vqa {path.name}", disable=not progress):
        turns = sample["conversations"]
        question = next(turn["value"] for turn in turns if turn["from"] in ("human", "user"))
        reference = sample.get("answer") or next(
            turn["value"] for turn in turns if turn["from"] in ("gpt", "assistant")
        )
        prompt = processor.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        images = None
        if sample.get("image"):
            try:
                with Image.open(path.parent / sample["image"]) as image:
                    images = image.convert("RGB")
            except OSError as error:
                logger.warning("skipping %s: %s", sample["image"], error)
                continue
        inputs = processor(images=images, text=prompt).to(model.device)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        answer = processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
        correct += normalize_answer(answer) == normalize_answer(reference)
        total += 1
    if total == 0:
        raise ValueError(f"{path}: no question could be evaluated.")
    name, split = dataset_identity(path)
    return _result(VQA_TASK, name, split, {"exact_match": correct / total})


# ---------------------------------------------------------------------------------------------------------------------
# Trainer callback
# ---------------------------------------------------------------------------------------------------------------------


class ZeroShotEvalCallback(TrainerCallback):
    """
    Zero-shot classification of the model being trained, at every evaluation of a `Trainer`.

    On `on_evaluate` it computes top-1 (and top-5) accuracy with the live model and adds `eval_zero_shot_top1`,
    `eval_zero_shot_top5` to the evaluation's metrics (so `metric_for_best_model="eval_zero_shot_top1"` works) and to
    the matching entry of `state.log_history`. It runs after the Trainer has logged the evaluation, so loggers such
    as TensorBoard or W&B do not receive these keys; they are written to the Python log (`logger.info`).
    `Trainer.evaluate` only runs with an `eval_dataset`, so the recipe needs one for this callback to fire.

    The model is put in eval mode for the computation and restored afterwards. Every rank computes the same metrics
    (needed for sharded models whose forward is collective). The model's `get_image_features`/`get_text_features`
    are called directly, which FSDP2's root-module hooks do not cover.

    Args:
        processor (`HfmmCLIPProcessor`):
            Image processor and tokenizer of the model.
        dataset_path (`str` or `Path`):
            Folder of class subfolders (or CSV/JSONL with `image`, `label`); read once here.
        templates (`Sequence[str]`, *optional*, defaults to `("a photo of a {}.",)`):
            Prompt templates, averaged per class.
        classnames (`Sequence[str]`, *optional*):
            Prompt names of the classes, in class order.
        batch_size (`int`, *optional*, defaults to 64):
            Images or texts per forward pass.
    """

    def __init__(
        self,
        processor,
        dataset_path: str | Path,
        templates: Sequence[str] | None = None,
        *,
        classnames: Sequence[str] | None = None,
        batch_size: int = 64,
    ):
        self.processor = processor
        self.data = load_classification_data(dataset_path, classnames=classnames)
        self.templates = list(templates or DEFAULT_TEMPLATES)
        for template in self.templates:
            _format(template, "x")  # a template without a slot fails now, not at the first evaluation
        self.batch_size = batch_size

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kwargs):
        if model is None:
            raise ValueError("ZeroShotEvalCallback needs the model (the Trainer passes it to its callbacks).")
        was_training = model.training
        model.eval()
        try:
            scores = evaluate_zero_shot(
                model, self.processor, self.data, self.templates, batch_size=self.batch_size, progress=False
            )
        finally:
            model.train(was_training)
        new = {f"eval_zero_shot_{name}": value for name, value in scores.items()}
        if metrics is not None:
            metrics.update(new)
        last = state.log_history[-1] if state.log_history else None
        if last is not None and last.get("step") == state.global_step and any(k.startswith("eval_") for k in last):
            last.update(new)
        else:
            state.log_history.append({**new, "epoch": state.epoch, "step": state.global_step})
        logger.info("Zero-shot on %s/%s at step %d: %s", self.data.name, self.data.split, state.global_step, new)
        return control
