"""Train a NeVA in LLaVA's two stages through transformers' Trainer.

Stage 1, feature alignment: only the projector trains, on image-caption conversations (`plain` template). Stage 2,
fine-tuning: the projector and the language model (full, LoRA or QLoRA) train on multi-turn instruction data; the
vision tower stays frozen and `pretrained_projector` loads stage 1's projector.

    hfmm train neva-stage1 --config recipes/neva/tiny_demo_stage1.yaml [--key value ...]
    accelerate launch recipes/neva_stage1.py --config recipes/neva/llama2_7b_stage1.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/fsdp_neva.yaml recipes/neva_stage1.py --config ...  # FSDP2
    accelerate launch recipes/neva_stage2.py --config recipes/neva/llava15_7b_stage2.yaml [--key value ...]

Every YAML key is a field of `NevaModelArguments`, `NevaDataArguments` or `NevaTrainingArguments`
(`hfmm.training.neva.arguments`), `lora:` and `quantization:` are sections; `--key value` overrides a key. The output
folder gets `projector.safetensors` (stage 2's `pretrained_projector`) and a full loadable NeVA.
"""

import sys

from transformers import set_seed

from hfmm.hub.push import push
from hfmm.training.arguments import RecipeError, parse_recipe_argv
from hfmm.training.neva.arguments import NevaDataArguments, NevaModelArguments, NevaTrainingArguments
from hfmm.training.neva.data import NevaCollator, build_conversation_dataset
from hfmm.training.neva.model import load_neva, save_neva
from hfmm.training.neva.trainer import NevaTrainer


def check_stage(model_args: NevaModelArguments, stage: int) -> None:
    """Refuses a recipe that trains what its stage keeps frozen."""
    if stage == 1 and (not model_args.freeze_language_model or not model_args.freeze_vision_tower):
        raise RecipeError(
            "stage 1 trains only the projector: keep freeze_language_model and freeze_vision_tower true."
        )
    if stage == 2 and not model_args.freeze_vision_tower:
        raise RecipeError("stage 2 keeps the vision tower frozen: freeze_vision_tower must stay true.")


def main(argv: list[str] | None = None, stage: int = 1) -> dict:
    """Runs stage `stage` (1 or 2) of the recipe `--config RECIPE.yaml [--key value ...]` (default: `sys.argv[1:]`);
    returns the training metrics, the log history and the skipped-sample counts."""
    # ----------------------------------------------------------------------------------------------- arguments
    classes = (NevaModelArguments, NevaDataArguments, NevaTrainingArguments)
    model_args, data_args, training_args, config_file = parse_recipe_argv(
        classes, sys.argv[1:] if argv is None else argv
    )
    check_stage(model_args, stage)

    # --------------------------------------------------------------------------------------------------- model
    set_seed(training_args.seed)  # a fresh projector, resized embeddings and LoRA start the same in every run
    model, processor = load_neva(model_args)

    # ---------------------------------------------------------------------------------------------------- data
    train_dataset = build_conversation_dataset(
        data_args.train_data, processor, data_args.image_folder, data_args.model_max_length
    )
    collator = NevaCollator(processor.tokenizer.pad_token_id)

    # ------------------------------------------------------------------------------------------------- trainer
    trainer = NevaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # ---------------------------------------------------------------------------------------------------- save
    trainer.record_run([data_args.train_data], config_file)  # the card is rendered from the run's record
    save_neva(trainer, processor, model_args, training_args.output_dir)
    if training_args.push_to_hub and trainer.is_world_process_zero():  # one commit, with hfmm's card
        repo = trainer.hub_model_id or training_args.hub_model_id
        push(training_args.output_dir, repo, private=bool(training_args.hub_private_repo))
    return {"train": result.metrics, "log_history": trainer.state.log_history, "skipped": dict(collator.skipped)}
