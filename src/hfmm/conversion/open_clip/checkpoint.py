"""OpenCLIP checkpoints on disk -> hfmm CLIP folders: the source forms, the architecture and activation, the check
against open_clip's own forward.

Source forms:

- a hub-style folder (`push_to_hf_hub`, `hf-hub:` downloads): `open_clip_config.json` (`model_cfg`, `preprocess_cfg`)
  with `open_clip_model.safetensors`, `open_clip_pytorch_model.safetensors` or `open_clip_pytorch_model.bin`;
- a weights file (`.safetensors`, `.bin`, `.pt`, `.pth`, `.ckpt`), including open_clip training checkpoints
  (`{"epoch", "name", "state_dict": {"module.…"}, "optimizer", ...}`), with `model` naming the architecture: an hfmm
  preset or any open_clip model name (its config read from the installed open_clip).

The activation rule (OpenCLIP weights do not record it, and the wrong one moves features by ~3e-2):

1. an explicit `quick_gelu` (`--quick-gelu` / `--no-quick-gelu`) is used as given;
2. else a folder's `open_clip_config.json` decides, as it does for open_clip (`model_cfg.quick_gelu`, absent = GELU);
3. else the named architecture decides when everything that names it agrees: the hfmm preset of that name, the
   open_clip config of that name (`-quickgelu` names carry `quick_gelu: true`) and every open_clip pretrained weight
   registered under it. When they disagree (e.g. `ViT-B-32`: OpenAI and laion400m weights use QuickGELU, laion2b
   weights GELU) the activation is ambiguous and the conversion is refused until it is given explicitly.

timm image towers always use exact GELU; the rule then decides the text tower only.
"""

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hfmm.conversion.common.key_maps import build_model
from hfmm.conversion.common.readers import CheckpointError, read_json, read_state_dict
from hfmm.conversion.common.result import ConversionResult
from hfmm.conversion.common.verification import (
    check_differences,
    embedding_differences,
    model_class,
    write_clip_folder,
)
from hfmm.conversion.common.writer import check_destination
from hfmm.conversion.open_clip.mapping import OPEN_CLIP_KEYS, config_from_open_clip
from hfmm.models.clip import HfmmCLIPConfig, HfmmCLIPModel, available_presets

HUB_CONFIG = "open_clip_config.json"
# open_clip's own order of preference in a local or hub folder.
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass
class OpenCLIPCheckpoint:
    """
    An OpenCLIP checkpoint resolved for conversion.

    Args:
        weights (`Path`): the weights file.
        state_dict (`Mapping[str, torch.Tensor]`): its tensors, read lazily, `module.` prefixes removed.
        config ([`HfmmCLIPConfig`]): the hfmm config of the converted model.
        open_clip_cfg (`dict`, *optional*): the OpenCLIP model config that builds the reference, when known.
        quick_gelu (`bool`): the activation the checkpoint was trained with.
        notes (`list[str]`): where the architecture, activation and preprocessing came from.
    """

    weights: Path
    state_dict: Mapping[str, torch.Tensor]
    config: HfmmCLIPConfig
    open_clip_cfg: dict | None
    quick_gelu: bool
    notes: list[str] = field(default_factory=list)


def _open_clip():
    try:
        import open_clip
    except ImportError:
        return None
    return open_clip


# --- where the files are ------------------------------------------------------------------------------------------


def locate(src: str | Path) -> tuple[Path, dict | None]:
    """The weights file of `src` and the parsed `open_clip_config.json` of a hub-style folder (`None` for a file)."""
    src = Path(src)
    if src.is_dir():
        weights = next((src / name for name in HUB_WEIGHTS if (src / name).is_file()), None)
        if weights is None:
            hint = (
                " (a transformers folder? use convert/transformers_to_hfmm.py)"
                if (src / "config.json").is_file()
                else ""
            )
            raise CheckpointError(
                f"{src}: no OpenCLIP weights in this folder, expected one of {list(HUB_WEIGHTS)}{hint}."
            )
        config_path = src / HUB_CONFIG
        return weights, _read_hub_config(config_path) if config_path.is_file() else None
    if src.is_file():
        if src.suffix not in WEIGHT_SUFFIXES:
            raise CheckpointError(f"{src}: not an OpenCLIP weights file; expected one of {list(WEIGHT_SUFFIXES)}.")
        return src, None
    raise CheckpointError(f"{src}: no such file or folder.")


def _read_hub_config(path: Path) -> dict:
    hub_config = read_json(path)
    if not isinstance(hub_config, dict) or not isinstance(hub_config.get("model_cfg"), dict):
        raise CheckpointError(f"{path}: no `model_cfg` object (is it an open_clip_config.json?).")
    return hub_config


# --- architecture and activation of a name ------------------------------------------------------------------------


def name_activations(name: str) -> dict[str, bool]:
    """Everything that names the architecture `name` and what it says of the activation (`True`: QuickGELU)."""
    found = {}
    if name in available_presets():
        found[f"hfmm preset {name}"] = HfmmCLIPConfig.from_preset(name).text_config.hidden_act == "quick_gelu"
    open_clip = _open_clip()
    if open_clip is not None:
        from open_clip.pretrained import get_pretrained_cfg

        if (cfg := open_clip.get_model_config(name)) is not None:
            found[f"open_clip config {name}"] = bool(cfg.get("quick_gelu", False))
        for tag in open_clip.list_pretrained_tags_by_model(name):
            found[f"open_clip weights {name}:{tag}"] = bool(get_pretrained_cfg(name, tag).get("quick_gelu", False))
    return found


def activation_of_name(name: str) -> bool:
    """The activation every source naming `name` agrees on; `ValueError` when they disagree (see the module doc)."""
    found = name_activations(name)
    votes = {value: [source for source, v in found.items() if v == value] for value in set(found.values())}
    if len(votes) > 1:
        examples = "; ".join(
            f"{'QuickGELU' if value else 'GELU'} for {', '.join(sources[:2])}{' ...' if len(sources) > 2 else ''}"
            for value, sources in sorted(votes.items())
        )
        raise ValueError(
            f"the activation of {name} is ambiguous ({examples}); pass --quick-gelu or --no-quick-gelu to say which "
            "one the checkpoint was trained with."
        )
    return next(iter(votes), False)


def _preset_config(name: str, quick_gelu: bool, timm_model_kwargs: dict | None) -> HfmmCLIPConfig:
    config = HfmmCLIPConfig.from_preset(name, source_checkpoint=None)
    act = "quick_gelu" if quick_gelu else "gelu"
    config.text_config.hidden_act = act
    if config.vision_config.model_type == "hfmm_clip_vision_model":
        config.vision_config.hidden_act = act
    elif timm_model_kwargs:
        config.vision_config.timm_model_kwargs = dict(timm_model_kwargs)
    return config


def resolve_name(name: str, quick_gelu: bool | None, timm_model_kwargs: dict | None = None):
    """Config, OpenCLIP model config (or `None`), activation and notes of the architecture named `name`."""
    open_clip = _open_clip()
    open_clip_cfg = open_clip.get_model_config(name) if open_clip is not None else None
    is_preset = name in available_presets()
    if not is_preset and open_clip_cfg is None:
        known = "" if open_clip is not None else " (open_clip, which knows the other names, is not installed)"
        raise ValueError(
            f"unknown model {name!r}: not an hfmm preset {available_presets()} nor an open_clip model{known}."
        )
    notes = []
    if quick_gelu is None:
        quick_gelu = activation_of_name(name)
        notes.append(f"activation {'QuickGELU' if quick_gelu else 'GELU'}: every source naming {name} agrees")
    if is_preset:
        config = _preset_config(name, quick_gelu, timm_model_kwargs)
        notes.append(f"architecture and preprocessing from the hfmm preset {name}")
    else:
        config = config_from_open_clip(open_clip_cfg, quick_gelu=quick_gelu, timm_model_kwargs=timm_model_kwargs)
        notes.append(
            f"architecture from open_clip's {name} config; preprocessing: OpenCLIP defaults (OpenAI mean/std)"
        )
    return config, open_clip_cfg, quick_gelu, notes


def resolve_hub_config(hub_config: dict, quick_gelu: bool | None, timm_model_kwargs: dict | None = None):
    """Config, OpenCLIP model config, activation and notes of a hub-style folder's `open_clip_config.json`."""
    open_clip_cfg = hub_config["model_cfg"]
    preprocess = hub_config.get("preprocess_cfg") or {}
    notes = [
        f"architecture from {HUB_CONFIG}",
        f"preprocessing from its preprocess_cfg {preprocess}"
        if preprocess
        else "preprocessing: OpenCLIP defaults (OpenAI mean/std, bicubic), as it has no preprocess_cfg",
    ]
    if quick_gelu is None:
        quick_gelu = bool(open_clip_cfg.get("quick_gelu", False))
        notes.append(f"activation {'QuickGELU' if quick_gelu else 'GELU'} from {HUB_CONFIG}")
    config = config_from_open_clip(
        open_clip_cfg, quick_gelu=quick_gelu, preprocess=preprocess, timm_model_kwargs=timm_model_kwargs
    )
    return config, open_clip_cfg, quick_gelu, notes


# --- reading ------------------------------------------------------------------------------------------------------


def read_open_clip_checkpoint(
    src: str | Path,
    *,
    model: str | None = None,
    quick_gelu: bool | None = None,
    timm_model_kwargs: dict | None = None,
) -> OpenCLIPCheckpoint:
    """
    Resolves an OpenCLIP checkpoint in any of the source forms of this module.

    Args:
        src (`str` or `Path`):
            Hub-style folder or weights file.
        model (`str`, *optional*):
            Architecture of a source without `open_clip_config.json`: an hfmm preset or an open_clip model name.
        quick_gelu (`bool`, *optional*):
            The activation; decided by the rule of this module's docstring when `None`.
        timm_model_kwargs (`dict`, *optional*):
            Extra timm trunk arguments (e.g. `depths` of a shrunk test model), which OpenCLIP configs cannot hold.
    """
    weights, hub_config = locate(src)
    explicit = [] if quick_gelu is None else [f"activation {'QuickGELU' if quick_gelu else 'GELU'}: given explicitly"]
    if hub_config is not None:
        if model is not None:
            raise ValueError(
                f"{src} carries its own {HUB_CONFIG}; drop --model (it names the architecture of bare weights)."
            )
        config, open_clip_cfg, quick_gelu, notes = resolve_hub_config(hub_config, quick_gelu, timm_model_kwargs)
    elif model is None:
        raise ValueError(
            f"{src} carries no {HUB_CONFIG}; pass --model NAME (an hfmm preset or an open_clip model name)."
        )
    else:
        config, open_clip_cfg, quick_gelu, notes = resolve_name(model, quick_gelu, timm_model_kwargs)
    # Memory-mapped: every rule of the key map is zero-copy but for two small transposes, so the converted model
    # holds the file's own pages, each once.
    state_dict = read_state_dict(weights)
    return OpenCLIPCheckpoint(weights, state_dict, config, open_clip_cfg, quick_gelu, explicit + notes)


# --- verification -------------------------------------------------------------------------------------------------


def open_clip_reference(checkpoint: OpenCLIPCheckpoint) -> torch.nn.Module:
    """open_clip's own model of the checkpoint's architecture, holding the checkpoint's tensors (fp32)."""
    import open_clip
    from accelerate import init_empty_weights

    cfg = {k: v for k, v in checkpoint.open_clip_cfg.items() if k not in ("quick_gelu", "custom_text")}
    model_cls = open_clip.CustomTextCLIP if checkpoint.open_clip_cfg.get("custom_text") else open_clip.CLIP
    with init_empty_weights(include_buffers=False):
        reference = model_cls(**cfg, quick_gelu=checkpoint.quick_gelu)
    expected = reference.state_dict()
    tensors = {}
    for key, meta in expected.items():
        if key not in checkpoint.state_dict:
            raise CheckpointError(f"open_clip's model needs {key!r}, which the checkpoint lacks.")
        tensors[key] = checkpoint.state_dict[key].reshape(meta.shape)  # logit_scale: () or (1,)
    reference.load_state_dict(tensors, strict=True, assign=True)
    return reference.float().eval()


def verify(model: HfmmCLIPModel, checkpoint: OpenCLIPCheckpoint) -> tuple[dict | None, str | None]:
    """Embedding differences against open_clip, or `None` and the reason the check could not run."""
    if _open_clip() is None:
        return None, "open_clip is not installed: verification skipped"
    if checkpoint.open_clip_cfg is None:
        return None, "open_clip has no config of this architecture: verification skipped"
    if getattr(checkpoint.config.vision_config, "timm_model_kwargs", None):
        return None, "open_clip cannot build a timm trunk with timm_model_kwargs: verification skipped"
    reference = open_clip_reference(checkpoint)
    differences = embedding_differences(model, reference.encode_image, reference.encode_text)
    check_differences(differences, "open_clip")
    return differences, None


# --- conversion ---------------------------------------------------------------------------------------------------


def convert_open_clip_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    model: str | None = None,
    quick_gelu: bool | None = None,
    verify_outputs: bool = True,
    force: bool = False,
    max_shard_size: str = "5GB",
    timm_model_kwargs: dict | None = None,
    progress: bool = False,
    arguments: list[str] | None = None,
) -> ConversionResult:
    """
    Converts an OpenCLIP checkpoint into an hfmm CLIP folder (`config.json`, safetensors weights, modeling files,
    tokenizer and image processor), exactly.

    The model is built on the meta device and assigned the converted tensors: memory-mapped views of the source file
    (q/k/v are slices of the fused `in_proj` storage; only the two projections are transposed copies), so memory
    holds the checkpoint's pages once. open_clip's reference model, when verifying, is assigned the same views (fp32
    checkpoints; others get fp32 copies). Nothing is written when a step fails; `dst` appears only once complete.

    Args:
        src (`str` or `Path`):
            Hub-style folder or weights file (see the module docstring).
        dst (`str` or `Path`):
            Output folder.
        model (`str`, *optional*):
            Architecture of a source without `open_clip_config.json`.
        quick_gelu (`bool`, *optional*):
            Activation, when the rule of the module docstring should not decide.
        verify_outputs (`bool`, *optional*, defaults to `True`):
            Compare image and text embeddings with open_clip's (≤ 1e-5) before writing, when open_clip is installed.
        force (`bool`, *optional*, defaults to `False`):
            Replace an existing `dst`.
        max_shard_size (`str`, *optional*, defaults to `"5GB"`):
            Weights above this size are split into shards.
        timm_model_kwargs (`dict`, *optional*):
            Extra timm trunk arguments stored in the config (shrunk test models).
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar.
        arguments (`list[str]`, *optional*):
            The converter script's command-line arguments, recorded in `conversion.json` so the conversion can be
            re-run (the model card shows the command).
    """
    check_destination(dst, force)
    checkpoint = read_open_clip_checkpoint(
        src, model=model, quick_gelu=quick_gelu, timm_model_kwargs=timm_model_kwargs
    )
    hfmm_model = build_model(
        model_class(checkpoint.config), checkpoint.config, checkpoint.state_dict, OPEN_CLIP_KEYS, progress=progress
    )
    result = ConversionResult(Path(dst), notes=list(checkpoint.notes))
    if verify_outputs:
        if progress:  # the bar has finished; building open_clip's model and comparing can take a minute or two
            print("verifying against open_clip: building its model and comparing embeddings ...", file=sys.stderr)
        result.differences, skipped = verify(hfmm_model, checkpoint)
        if skipped:
            result.notes.append(skipped)
    else:
        result.notes.append("verification skipped (--no-verify)")
    provenance = result.provenance("convert/open_clip_to_hfmm.py", src, arguments)
    write_clip_folder(hfmm_model, dst, force=force, max_shard_size=max_shard_size, provenance=provenance)
    return result
