"""Model cards rendered from what a model folder says about itself.

A card is rendered with huggingface_hub's `ModelCard.from_template` from `model_cards/clip.md` or `model_cards/neva.md`
and structured data only: `config.json` (architecture, sizes, preprocessing), the safetensors headers (parameter
count), `conversion.json` (written by the converters) or `training_run.json` and `recipe.yaml` (written by the recipes,
`hfmm.hub.record`), an eval JSON from `hfmm eval` (its `results` become the card's `model-index`, values unchanged),
and the installed framework versions. `trainer_model_card` is the card a `Trainer.push_to_hub` uploads.
"""

import json
import math
import platform
import shlex
from importlib import metadata
from pathlib import Path

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

from hfmm.conversion.common.writer import PROVENANCE_FILE
from hfmm.hub.record import RECIPE_FILE, TRAINING_RUN_FILE, record_training_run
from hfmm.resources import model_cards_dir

PIPELINE_TAGS = {"hfmm_clip": "zero-shot-image-classification", "hfmm_siglip": "zero-shot-image-classification",
                 "neva": "image-text-to-text"}  # fmt: skip
TASK_NAMES = {
    "zero-shot-image-classification": "Zero-shot image classification",
    "image-text-retrieval": "Image-text retrieval",
    "visual-question-answering": "Visual question answering",
}
METRIC_NAMES = {"top1": "top-1 accuracy", "top5": "top-5 accuracy", "exact_match": "exact match"}
FRAMEWORKS = ("hfmm", "transformers", "torch", "huggingface_hub", "open_clip_torch", "timm", "peft", "accelerate")


class CardError(ValueError):
    """A model folder or an eval JSON the card cannot be rendered from."""


# --------------------------------------------------------------------------------------------------- reading


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise CardError(f"{path}: no {what} found.") from error
    except json.JSONDecodeError as error:
        raise CardError(f"{path}: {what} is not valid JSON ({error}).") from error
    if not isinstance(data, dict):
        raise CardError(f"{path}: {what} must be a JSON object.")
    return data


def load_eval_report(path: str | Path) -> dict:
    """An `hfmm eval` JSON, checked: `{"model", "results": [{"task", "dataset": {"name", "split"}, "metrics"}]}`."""
    report = _read_json(Path(path), "eval JSON")
    results = report.get("results")
    if not isinstance(results, list) or not results:
        raise CardError(f"{path}: an eval JSON needs a non-empty `results` list (see `hfmm eval`).")
    for index, result in enumerate(results):
        dataset, metrics = result.get("dataset"), result.get("metrics")
        if result.get("task") not in TASK_NAMES or not isinstance(dataset, dict) or "name" not in dataset:
            raise CardError(f"{path}: result {index} needs a known `task` ({sorted(TASK_NAMES)}) and `dataset.name`.")
        if not isinstance(metrics, dict) or not all(isinstance(v, (int, float)) for v in metrics.values()):
            raise CardError(f"{path}: result {index} needs numeric `metrics`.")
    return report


def eval_results(report: dict) -> list[EvalResult]:
    """One `EvalResult` per metric of each eval JSON result; `metric_type` is the JSON's metric key and
    `metric_value` its value, unchanged, so the card's `model-index` reads back as the JSON."""
    found = []
    for result in report["results"]:
        dataset = result["dataset"]
        for key, value in result["metrics"].items():
            found.append(
                EvalResult(
                    task_type=result["task"],
                    task_name=TASK_NAMES[result["task"]],
                    dataset_type=dataset["name"],
                    dataset_name=dataset["name"],
                    dataset_split=dataset.get("split"),
                    metric_type=key,
                    metric_name=METRIC_NAMES.get(key, key.replace("_", " ")),
                    metric_value=value,
                )
            )
    return found


def parameter_count(folder: Path) -> int | None:
    """Parameters in the folder's safetensors files, from their headers (nothing is loaded)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            total += sum(math.prod(handle.get_slice(key).get_shape()) for key in handle.keys())
    return total


def framework_versions() -> list[tuple[str, str]]:
    versions = []
    for name in FRAMEWORKS:
        try:
            versions.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    return versions + [("Python", platform.python_version())]


# ------------------------------------------------------------------------------------------------- structure


def _tower_rows(prefix: str, config: dict) -> list[tuple[str, str]]:
    if config.get("model_type") == "hfmm_convnext_vision_model":
        return [(f"{prefix}", f"timm `{config['timm_model_name']}` (width {config['hidden_size']})"),
                (f"{prefix} image size", str(config["image_size"]))]  # fmt: skip
    rows = [(prefix, f"{config['num_hidden_layers']} layers, width {config['hidden_size']}, "
                     f"{config['num_attention_heads']} heads, MLP {config['intermediate_size']}")]  # fmt: skip
    if "patch_size" in config:
        rows.append((f"{prefix} image size / patch", f"{config['image_size']} / {config['patch_size']}"))
    if "vocab_size" in config:
        rows.append((f"{prefix} context / vocabulary", f"{config.get('max_position_embeddings')} / "
                                                      f"{config['vocab_size']}"))  # fmt: skip
    return rows


def architecture(config: dict, parameters: int | None) -> list[tuple[str, str]]:
    """Rows of the card's architecture table, from `config.json`."""
    model_type = config.get("model_type")
    rows = [("Model type", f"`{model_type}` ({', '.join(config.get('architectures') or [])})")]
    if model_type == "neva":
        text = config["text_config"]
        rows += _tower_rows("Vision tower", config["vision_config"])
        rows += [
            ("Vision feature layer", str(config.get("vision_feature_layer"))),
            ("Projector", f"`{config.get('projector_type')}`"),
            (
                "Language model",
                f"`{text.get('model_type')}`, {text['num_hidden_layers']} layers, width "
                f"{text['hidden_size']}, vocabulary {text['vocab_size']}",
            ),  # fmt: skip
            ("Image tokens per image", str(config.get("image_seq_length"))),
            ("Chat template", f"`{config.get('conv_template')}`"),
        ]
    else:
        rows += _tower_rows("Image tower", config["vision_config"])
        rows += _tower_rows("Text tower", config["text_config"])
        rows.append(("Embedding dimension", str(config.get("projection_dim"))))
    if parameters is not None:
        rows.append(("Parameters", f"{parameters:,}"))
    return rows


def preprocessing(config: dict) -> str | None:
    vision = config.get("vision_config", {})
    if "image_mean" not in vision:
        return None
    return (
        f"{vision.get('resize_mode', 'shortest')} resize to {vision.get('image_size')} px "
        f"({vision.get('interpolation', 'bicubic')}), mean {list(vision['image_mean'])}, std {list(vision['image_std'])}"
    )


def _training_section(run: dict | None, recipe: Path | None) -> dict | None:
    if run is None and recipe is None:
        return None
    run = run or {}
    settings = dict(run.get("hyperparameters") or {})
    recipe_text = None
    if recipe is not None:
        try:
            recipe_text = recipe.read_text()
            parsed = yaml.safe_load(recipe_text) or {}
        except (OSError, yaml.YAMLError) as error:
            raise CardError(f"{recipe}: cannot read the recipe ({error}).") from error
        settings = {**{k: v for k, v in parsed.items() if not isinstance(v, dict)}, **settings}
    steps, hardware = run.get("steps"), run.get("hardware") or {}
    parts = []
    if steps is not None:
        parts.append(f"Trained for {steps} step{'s' * (steps != 1)} ({run.get('epochs') or 0:.3g} epochs)")
    if hardware:
        parts.append(f"on {hardware.get('processes', 1)} × {hardware.get('device', 'unknown device')}")
    if run.get("datasets"):
        parts.append("on " + ", ".join(f"`{name}`" for name in run["datasets"]))
    return {
        "summary": (" ".join(parts) + ".") if parts else "Trained with an hfmm recipe.",
        "hyperparameters": sorted((k, v) for k, v in settings.items() if k not in ("output_dir", "report_to")),
        "recipe": recipe_text.strip() if recipe_text else None,
        "recipe_name": recipe.name if recipe is not None else None,
    }


# weight files whose name says nothing about the model: the card takes their folder's name instead
GENERIC_WEIGHT_NAMES = ("open_clip_pytorch_model", "open_clip_model", "pytorch_model", "model", "model_weights")
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".safetensors", ".nemo", ".tar", ".gz")


def card_title(folder: Path, repo_id: str | None, conversion: dict | None, run: dict | None) -> str:
    """The model's name on its card: the Hub id given, else the converted source's or the training recipe's name
    (`CLIP-ViT-B-32-laion2B-s34B-b79K`, `tiny_demo`), else the folder's (often just "clip" or "stage2")."""
    if repo_id:
        return repo_id.split("/")[-1]
    source = str((conversion or {}).get("source") or "").rstrip("/")
    if source:
        path = Path(source)
        if path.suffix not in WEIGHT_SUFFIXES:
            return path.name  # a folder or Hub id
        return path.parent.name if path.stem in GENERIC_WEIGHT_NAMES else path.stem
    if (run or {}).get("recipe"):
        return Path(run["recipe"]).stem
    return folder.resolve().name


def _evaluation_rows(report: dict | None) -> list[dict]:
    rows = []
    for result in (report or {}).get("results", []):
        for key, value in result["metrics"].items():
            rows.append({"task": TASK_NAMES[result["task"]], "dataset": result["dataset"]["name"],
                         "split": result["dataset"].get("split", ""), "metric": METRIC_NAMES.get(key, key),
                         "value": f"{value:.4f}"})  # fmt: skip
    return rows


def _eval_input(folder: Path, eval_report: dict | str | Path | None) -> tuple[dict | None, str | None]:
    """The eval JSON for the card (the one given, else the folder's `eval.json`) and its file name, when read from one."""
    if eval_report is None and (folder / "eval.json").is_file():
        eval_report = folder / "eval.json"
    if isinstance(eval_report, (str, Path)):
        return load_eval_report(eval_report), Path(eval_report).name
    return eval_report, None


def _conversion_record(folder: Path) -> dict | None:
    """The folder's `conversion.json`, with the measured difference and the converter's command as card text."""
    if not (folder / PROVENANCE_FILE).is_file():
        return None
    conversion = _read_json(folder / PROVENANCE_FILE, "conversion record")
    difference = conversion.get("max_difference_from_source")
    conversion["difference_text"] = (
        ", ".join(f"{k} {v:.2g}" for k, v in difference.items()) if isinstance(difference, dict) else f"{difference}"
    )
    # The exact arguments the converter script ran with (older records have none: source and repo name then).
    arguments = conversion.get("arguments")
    conversion["arguments_text"] = shlex.join(arguments) if isinstance(arguments, list) else None
    return conversion


def _origin(conversion: dict | None, *, trained: bool) -> str:
    if conversion:
        return "converted from an existing checkpoint"
    return "trained with hfmm" if trained else "saved with hfmm"


# --------------------------------------------------------------------------------------------------- render


def render_card(
    model_dir: str | Path,
    *,
    eval_report: dict | str | Path | None = None,
    recipe: str | Path | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    base_model: str | list[str] | None = None,
    datasets: list[str] | None = None,
    training_run: dict | None = None,
    native: bool = False,
) -> ModelCard:
    """
    The card of a saved hfmm model, from its folder and the given structured data.

    Args:
        model_dir (`str` or `Path`): a saved hfmm CLIP, SigLIP or NeVA folder.
        eval_report (`dict`, `str` or `Path`, *optional*): an `hfmm eval` JSON (or its path); its results become the
            card's `model-index`. Defaults to the folder's `eval.json` when there is one.
        recipe (`str` or `Path`, *optional*): the recipe YAML the model was trained with.
        repo_id (`str`, *optional*): the Hub id the usage snippet loads; defaults to the folder name.
        license (`str`, *optional*), base_model (`str` or `list[str]`, *optional*), datasets (`list[str]`,
            *optional*): front-matter fields (`datasets`: Hub dataset ids; the training data's paths are in the body).
        training_run (`dict`, *optional*): what `record_training_run` writes; defaults to the folder's
            `training_run.json`.
        native (`bool`, *optional*, defaults to `False`): the card of the folder's native transformers export
            (`CLIPModel` / `LlavaForConditionalGeneration`: no remote code).
    """
    folder = Path(model_dir)
    config = _read_json(folder / "config.json", "config.json")
    model_type = config.get("model_type")
    if model_type not in PIPELINE_TAGS:
        raise CardError(f"{folder}: model_type {model_type!r} is not an hfmm model ({sorted(PIPELINE_TAGS)}).")
    eval_report, eval_source = _eval_input(folder, eval_report)
    conversion = _conversion_record(folder)
    if recipe is None and (folder / RECIPE_FILE).is_file():
        recipe = folder / RECIPE_FILE
    if training_run is None and (folder / TRAINING_RUN_FILE).is_file():
        training_run = _read_json(folder / TRAINING_RUN_FILE, "training run record")
    neva = model_type == "neva"
    custom_code = bool(config.get("auto_map")) and not native
    title, explicit_repo = card_title(folder, repo_id, conversion, training_run), repo_id is not None
    repo_id = repo_id or folder.resolve().name
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS[model_type],
        license=license,
        base_model=base_model,
        datasets=datasets,
        tags=["hfmm", "llava" if neva else "clip", *(["custom_code"] if custom_code else [])],
        model_name=repo_id if explicit_repo else title,
        eval_results=eval_results(eval_report) if eval_report else None,
    )
    kind = "NeVA (LLaVA-style) vision-language model" if neva else "CLIP-style contrastive image-text model"
    origin = _origin(conversion, trained=bool(training_run or recipe))
    return ModelCard.from_template(
        card_data,
        template_path=str(model_cards_dir() / ("neva.md" if neva else "clip.md")),
        model_name=repo_id.split("/")[-1],
        title=title,
        repo_id=repo_id,
        summary=f"A {kind}, {origin}, in the Hugging Face–native format of hfmm.",
        custom_code=custom_code,
        architecture=architecture(config, parameter_count(folder)),
        preprocessing=preprocessing(config),
        conversion=conversion,
        training=_training_section(training_run, Path(recipe) if recipe else None),
        evaluation=_evaluation_rows(eval_report),
        eval_source=eval_source,
        versions=framework_versions(),
    )


def write_card(model_dir: str | Path, **kwargs) -> Path:
    """Renders `render_card(model_dir, **kwargs)` into `model_dir/README.md`."""
    path = Path(model_dir) / "README.md"
    render_card(model_dir, **kwargs).save(path)
    return path


def trainer_model_card(trainer, *, license=None, finetuned_from=None, dataset_tags=None, **_) -> Path | None:
    """The card `Trainer.push_to_hub` uploads, rendered by hfmm (called from the trainers' `create_model_card`, with
    its keywords): the run is recorded first if the recipe has not done so."""
    if not trainer.is_world_process_zero():
        return None
    output = Path(trainer.args.output_dir)
    if not (output / TRAINING_RUN_FILE).is_file():
        record_training_run(trainer, output)
    tags = [dataset_tags] if isinstance(dataset_tags, str) else dataset_tags
    return write_card(
        output, repo_id=trainer.hub_model_id, license=license, base_model=finetuned_from, datasets=tags or None
    )
