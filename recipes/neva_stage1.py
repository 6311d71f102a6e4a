"""NeVA stage 1, feature alignment: train only the projector on image-caption conversations (`plain` template).

    accelerate launch recipes/neva_stage1.py --config recipes/neva/llama2_7b_stage1.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/fsdp_neva.yaml recipes/neva_stage1.py --config ...  # FSDP2

Single process: `python recipes/neva_stage1.py --config recipes/neva/tiny_demo_stage1.yaml`. Every YAML key is a field
of `NevaModelArguments`, `NevaDataArguments` or `transformers.TrainingArguments`; `--key value` overrides a key. The
output folder gets `projector.safetensors` (stage 2's `pretrained_projector`) and a full loadable NeVA.
"""

import sys

# isort: off
import hfmm  # noqa: F401  (first: registers hfmm's classes, and its log filters precede transformers' imports)

# isort: on
from transformers import TrainingArguments, set_seed

from hfmm.cards import push, record_training_run
from hfmm.training.arguments import NevaDataArguments, NevaModelArguments, RecipeError, parse_recipe
from hfmm.training.neva import NevaTrainer, load_neva, save_neva
from hfmm.training.neva_data import NevaCollator, build_conversation_dataset, modality_lengths


def parse(argv: list[str]):
    if "--config" not in argv:
        raise RecipeError("usage: neva_stage1.py --config RECIPE.yaml [--key value ...]")
    index = argv.index("--config")
    config_file, overrides = argv[index + 1], argv[:index] + argv[index + 2 :]
    return (
        *parse_recipe((NevaModelArguments, NevaDataArguments, TrainingArguments), config_file, overrides),
        config_file,
    )


def main(argv: list[str] | None = None, *, stage: int = 1) -> dict:
    model_args, data_args, training_args, config_file = parse(sys.argv[1:] if argv is None else argv)
    if stage == 1 and (not model_args.freeze_language_model or not model_args.freeze_vision_tower):
        raise RecipeError(
            "stage 1 trains only the projector: keep freeze_language_model and freeze_vision_tower true."
        )
    if stage == 2 and not model_args.freeze_vision_tower:
        raise RecipeError("stage 2 keeps the vision tower frozen: freeze_vision_tower must stay true.")
    training_args.remove_unused_columns = False  # the collator reads the transform's columns

    set_seed(training_args.seed)  # a fresh projector, resized embeddings and LoRA start the same in every run
    model, processor = load_neva(model_args)
    train_dataset = build_conversation_dataset(
        data_args.train_data, processor, data_args.image_folder, data_args.model_max_length
    )
    collator = NevaCollator(processor.tokenizer.pad_token_id)
    trainer = NevaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=collator,
        processing_class=processor,
        projector_lr=model_args.projector_lr,
        modality_lengths=modality_lengths(train_dataset) if data_args.group_by_modality_length else None,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    # the run's record (steps, hardware, recipe) is what the model card is rendered from
    record_training_run(trainer, training_args.output_dir, [data_args.train_data], config_file)
    save_neva(trainer, processor, model_args, training_args.output_dir)
    if training_args.push_to_hub and trainer.is_world_process_zero():  # one commit, with hfmm's card
        repo = trainer.hub_model_id or training_args.hub_model_id
        push(training_args.output_dir, repo, private=bool(training_args.hub_private_repo))
    return {"train": result.metrics, "log_history": trainer.state.log_history, "skipped": dict(collator.skipped)}


if __name__ == "__main__":
    try:
        main()
    except RecipeError as error:
        sys.exit(f"error: {error}")
