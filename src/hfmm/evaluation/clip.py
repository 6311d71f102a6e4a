"""Zero-shot classification and image-text retrieval of CLIP models, as OpenCLIP and CLIP_benchmark compute them.

- Zero-shot classification: each class name is put in every prompt template; the text embeddings are normalised,
  averaged over templates and renormalised (one classifier column per class); normalised image embeddings give
  `logits = 100 * image @ classifier`; top-1 and top-5 accuracy (top-5 only with at least 5 classes).
- Retrieval (CLIP_benchmark's `zeroshot_retrieval`): cosine scores between every caption and every distinct image.
  `text_to_image_R@k`: fraction of captions whose image is among the k best images. `image_to_text_R@k`: fraction of
  images with at least one of their captions among the k best captions. k larger than the candidates counts as all.

Each task returns one result of the eval JSON (`hfmm.evaluation.results`).
"""

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from hfmm.evaluation.data import LabelledImages, load_classification_data, load_images, load_retrieval_data
from hfmm.evaluation.results import RETRIEVAL_TASK, ZERO_SHOT_TASK, task_result

DEFAULT_TEMPLATES = ("a photo of a {}.",)
RECALL_KS = (1, 5, 10)
ZERO_SHOT_SCALE = 100.0  # OpenCLIP's fixed zero-shot logit scale (not the model's logit_scale)


# ---------------------------------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------------------------------


def _device_and_dtype(model) -> tuple[torch.device, torch.dtype]:
    parameter = next(p for p in model.parameters() if p.is_floating_point())
    return parameter.device, parameter.dtype


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise ValueError(f"batch_size must be positive, got {size}.")
    for start in range(0, len(items), size):
        yield items[start : start + size]


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
        images, readable = load_images([paths[i] for i in indices])
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


def fill_template(template: str, classname: str) -> str:
    """The prompt of `classname`: `template` with its `{}` (or `{c}`) replaced; a template without one is refused."""
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
    texts = [fill_template(template, name) for name in classnames for template in templates]
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
    return task_result(ZERO_SHOT_TASK, data.name, data.split, metrics)


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
    captions = [i for i, image in enumerate(data.caption_images) if image in position]  # those of readable images
    text_embeds = embed_texts(model, processor.tokenizer, [data.captions[i] for i in captions], batch_size=batch_size)
    caption_images = torch.tensor([position[data.caption_images[i]] for i in captions])
    metrics = retrieval_recall(image_embeds, text_embeds, caption_images)
    return task_result(RETRIEVAL_TASK, data.name, data.split, metrics)
