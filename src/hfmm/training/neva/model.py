"""The model of NeVA's two training stages: assembly from parts, freezing, LoRA/QLoRA, the projector file, saving.

Stage 1 (feature alignment): a NeVA assembled from a CLIP tower and a causal LM with a fresh projector; only the
projector trains. Stage 2 (fine-tuning): the projector (from stage 1) and the language model train, the tower stays
frozen; optionally with LoRA on the language model (the projector fully trained as a `modules_to_save`), optionally
on a 4-bit base (QLoRA).
"""

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    CLIPVisionModel,
    Trainer,
)

from hfmm.models.neva import NevaConfig, NevaForConditionalGeneration
from hfmm.models.neva.processing_neva import NevaProcessor
from hfmm.training.arguments import RecipeError, check_model_paths
from hfmm.training.neva.arguments import NevaModelArguments
from hfmm.training.trainer import as_own_class, gathered_state_dict
from hfmm.vocabulary import IMAGE_TOKEN, add_image_tokens, grow_embeddings

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "projector.safetensors"
PROJECTOR_PREFIX = "model.multi_modal_projector."


def assemble_neva(args: NevaModelArguments) -> tuple[NevaForConditionalGeneration, NevaProcessor]:
    """A NeVA from a transformers CLIP folder and a causal-LM folder, with a fresh projector and an `<image>` token."""
    if args.vision_tower is None or args.language_model is None:
        raise RecipeError("assembling a NeVA needs `vision_tower` and `language_model` (or give model_name_or_path).")
    tokenizer = AutoTokenizer.from_pretrained(args.language_model)
    add_image_tokens(tokenizer)
    dtype = getattr(torch, args.dtype)
    language_model = AutoModelForCausalLM.from_pretrained(args.language_model, dtype=dtype)
    vision_config = AutoConfig.from_pretrained(args.vision_tower)
    vision_config = getattr(vision_config, "vision_config", vision_config)
    vision = CLIPVisionModel.from_pretrained(args.vision_tower, config=vision_config, dtype=dtype)
    config = NevaConfig(
        vision_config=vision_config.to_dict(),
        text_config=language_model.config.to_dict(),
        projector_type=args.projector_type,
        vision_feature_layer=args.vision_feature_layer,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        conv_template=args.conv_template,
    )
    model = NevaForConditionalGeneration(config).to(dtype)
    model.model.vision_tower.load_state_dict(vision.state_dict())
    model.model.language_model.load_state_dict(language_model.model.state_dict())
    model.lm_head.load_state_dict(language_model.lm_head.state_dict())
    _, model.config.text_config.vocab_size = grow_embeddings(model, len(tokenizer))  # hfmm's one new-row policy
    image_processor = AutoImageProcessor.from_pretrained(args.vision_tower)
    processor = NevaProcessor.from_model_config(model.config, image_processor, tokenizer)
    return model, processor


def load_neva(args: NevaModelArguments) -> tuple[NevaForConditionalGeneration, NevaProcessor]:
    """The recipe's NeVA: loaded (optionally in 4 bits) or assembled; projector restored; freezing applied; LoRA."""
    check_model_paths(args)  # a missing local folder: one line now, not Hub retries, then "Repo id must be ..."
    if args.quantization is not None and args.lora is None:
        raise RecipeError("`quantization:` (QLoRA) needs a `lora:` section: a 4-bit base cannot be trained directly.")
    if args.model_name_or_path is not None:
        quantization = None
        if args.quantization is not None:
            q = args.quantization
            quantization = BitsAndBytesConfig(
                load_in_4bit=q.load_in_4bit, bnb_4bit_quant_type=q.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=getattr(torch, q.bnb_4bit_compute_dtype),
                bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            )  # fmt: skip
        model = AutoModelForImageTextToText.from_pretrained(
            args.model_name_or_path, quantization_config=quantization, dtype=getattr(torch, args.dtype)
        )
        processor = AutoProcessor.from_pretrained(args.model_name_or_path)
        if args.conv_template and processor.chat_template != NevaProcessor.chat_template_for(args.conv_template):
            processor.chat_template = NevaProcessor.chat_template_for(args.conv_template)
    else:
        if args.quantization is not None:
            raise RecipeError("QLoRA loads a saved NeVA in 4 bits: give model_name_or_path (e.g. stage 1's output).")
        model, processor = assemble_neva(args)
    if args.pretrained_projector is not None:
        load_projector(model, args.pretrained_projector)
    if args.freeze_vision_tower:
        model.freeze_vision_tower()
    if args.freeze_language_model:
        model.freeze_language_model()
    if args.lora is not None:
        model = add_lora(model, args)
    return model, processor


def add_lora(model: NevaForConditionalGeneration, args: NevaModelArguments):
    """PEFT LoRA on the language model's projections; the projector trains fully (`modules_to_save`)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if args.quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    names = "|".join(args.lora.target_modules)
    config = LoraConfig(
        r=args.lora.r,
        lora_alpha=args.lora.alpha,
        lora_dropout=args.lora.dropout,
        target_modules=rf".*language_model\.layers\.\d+\..*\.({names})",
        modules_to_save=["multi_modal_projector"],
    )
    model = get_peft_model(model, config)
    if args.freeze_vision_tower:  # prepare_model_for_kbit_training may have unfrozen nothing, but be explicit
        for name, parameter in model.named_parameters():
            if ".vision_tower." in name:
                parameter.requires_grad_(False)
    return model


def projector_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The projector's tensors, keyed as in `NevaMultiModalProjector`, from a NeVA's (or a PEFT NeVA's) state dict."""
    projector = {}
    for name, tensor in state.items():
        if "multi_modal_projector." in name and "original_module" not in name:
            key = name[name.index("multi_modal_projector.") + len("multi_modal_projector.") :]
            projector[key.replace("modules_to_save.default.", "")] = tensor.detach().contiguous().cpu()
    return projector


def save_projector(model, folder: str | Path) -> Path:
    path = Path(folder) / PROJECTOR_FILE
    save_file(projector_state(model.state_dict()), path)
    return path


def load_projector(model: NevaForConditionalGeneration, path: str | Path) -> None:
    path = Path(path)
    if path.is_dir():
        path = path / PROJECTOR_FILE
    if not path.is_file():
        raise RecipeError(f"pretrained_projector {path}: no such file (stage 1 writes {PROJECTOR_FILE}).")
    state = load_file(path)
    model.model.multi_modal_projector.load_state_dict(state, strict=True)
    logger.info("loaded the projector from %s", path)


def save_neva(trainer: Trainer, processor, args: NevaModelArguments, output_dir: str) -> None:
    """Stage output: the projector file always, and a full loadable NeVA (LoRA merged unless told otherwise).

    Under FSDP2 every rank must call it (the full weights are gathered first, see `save_sharded_neva`).
    """
    if trainer.is_fsdp_enabled:
        return save_sharded_neva(trainer, processor, args, output_dir)
    model = trainer.model
    if not trainer.is_world_process_zero():
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    save_projector(model, output_dir)
    if args.lora is not None and args.lora.merge_on_save and args.quantization is None:
        model = model.merge_and_unload()
    elif args.lora is not None:
        model.save_pretrained(Path(output_dir) / "adapter")  # a 4-bit base is not merged: adapters saved apart
        processor.save_pretrained(output_dir)
        return
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)


def save_sharded_neva(trainer: Trainer, processor, args: NevaModelArguments, output_dir: str) -> None:
    """`save_neva` under FSDP2: every rank gathers the full state dict (a collective), rank 0 writes from it alone.

    The sharded model itself is never merged or saved (its parameters are DTensor shards, and `fully_shard` swapped
    its classes): LoRA is merged on the gathered tensors (`merged_lora_state`), and the folder is what
    `save_pretrained` of NeVA's own class writes (hfmm's code files and `auto_map`, no torch `_fsdp_*.py`).
    """
    state = gathered_state_dict(trainer)  # full on rank 0, empty on the other ranks
    if trainer.is_world_process_zero():
        model = trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False)
        if args.lora is not None and args.lora.merge_on_save:
            state, model = merged_lora_state(model, state), model.get_base_model()
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        save_file(projector_state(state), Path(output_dir) / PROJECTOR_FILE)
        folder = Path(output_dir) / "adapter" if args.lora is not None and not args.lora.merge_on_save else output_dir
        with as_own_class(model):
            model.save_pretrained(folder, state_dict=state)
        processor.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def merged_lora_state(peft_model, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain NeVA state dict that PEFT's `merge_and_unload` would give, computed from a PEFT model's state dict.

    Each adapted weight becomes `W + transpose(B @ A) * scaling` (PEFT's `get_delta_weight`; on CPU, half precision
    is computed in fp32 as PEFT does), the trained projector copy replaces the original, PEFT's key parts go.
    `peft_model` supplies only the adapted layers' names, scaling and layout (plain Python values under FSDP).
    """
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import transpose

    adapter, merged = peft_model.active_adapter, dict(state)
    for name, layer in peft_model.named_modules():
        if not isinstance(layer, LoraLayer):
            continue
        prefix = name.replace("_checkpoint_wrapped_module.", "")  # FSDP's activation checkpointing wrapper
        lora_a, lora_b = (
            merged.pop(f"{prefix}.lora_A.{adapter}.weight"),
            merged.pop(f"{prefix}.lora_B.{adapter}.weight"),
        )
        weight = merged[f"{prefix}.base_layer.weight"]
        compute = torch.promote_types(weight.dtype, torch.float32)
        delta = transpose(lora_b.to(compute) @ lora_a.to(compute), layer.fan_in_fan_out) * layer.scaling[adapter]
        merged[f"{prefix}.base_layer.weight"] = weight + delta.to(weight.dtype)
    plain = {}
    for key, tensor in merged.items():
        if ".original_module." in key:
            continue
        key = key.removeprefix("base_model.model.").replace(f".modules_to_save.{adapter}.", ".")
        plain[key.replace(".base_layer.", ".")] = tensor
    left = sorted(key for key in plain if "lora_" in key)
    if left:
        raise RecipeError(f"cannot merge LoRA tensors {left[:3]} (only plain LoRA on Linear layers is merged).")
    return plain
