"""Train a CLIP with hfmm's exact tiled contrastive loss through transformers' Trainer.

    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/clip_pretrain.py \
        --config recipes/clip/convnext_xxlarge_laion2b.yaml [--key value ...]

Single process: `python recipes/clip_pretrain.py --config recipes/clip/tiny_demo.yaml`. Every YAML key is a field of
`CLIPModelArguments`, `CLIPDataArguments` or `transformers.TrainingArguments`; `--key value` overrides a key.
"""

import sys

# isort: off
import hfmm  # noqa: F401  (first: registers hfmm's classes, and its log filters precede transformers' imports)

# isort: on
from transformers import TrainingArguments, set_seed

from hfmm.cards import record_training_run
from hfmm.training.arguments import CLIPDataArguments, CLIPModelArguments, RecipeError, parse_recipe
from hfmm.training.data import CLIPCollator, build_eval_dataset, build_train_dataset, configure_streaming
from hfmm.training.evaluation import ZeroShotEvalCallback
from hfmm.training.models import load_model_and_processor
from hfmm.training.trainer import CLIPTrainer


def parse(argv: list[str]):
    if "--config" not in argv:
        raise RecipeError("usage: clip_pretrain.py --config RECIPE.yaml [--key value ...]")
    index = argv.index("--config")
    config_file, overrides = argv[index + 1], argv[:index] + argv[index + 2 :]
    return (
        *parse_recipe((CLIPModelArguments, CLIPDataArguments, TrainingArguments), config_file, overrides),
        config_file,
    )


def main(argv: list[str] | None = None) -> dict:
    # ----------------------------------------------------------------------------------------------- arguments
    model_args, data_args, training_args, config_file = parse(sys.argv[1:] if argv is None else argv)
    # Images and captions are decoded by the collator: the Trainer must not drop the raw columns.
    training_args.remove_unused_columns = False

    # --------------------------------------------------------------------------------------------------- model
    set_seed(training_args.seed)  # a fresh preset's weights: the same on every rank and in every run of the recipe
    model, processor = load_model_and_processor(model_args)

    # ---------------------------------------------------------------------------------------------------- data
    configure_streaming(training_args, data_args)  # streamed shards: each rank reads its own; the run's length
    train_dataset = build_train_dataset(data_args, processor, seed=training_args.seed)
    eval_dataset = build_eval_dataset(data_args, processor) if data_args.eval_data else None
    callbacks = []
    if data_args.zero_shot_eval_data:
        callbacks.append(ZeroShotEvalCallback(processor, data_args.zero_shot_eval_data, data_args.zero_shot_templates))

    # ------------------------------------------------------------------------------------------------- trainer
    trainer = CLIPTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=CLIPCollator(),
        processing_class=processor,
        callbacks=callbacks,
        loss=model_args.loss,
        loss_mode=model_args.loss_mode,
        loss_tile_size=model_args.loss_tile_size,
        grad_cache_chunk_size=model_args.grad_cache_chunk_size,
        max_logit_scale=model_args.max_logit_scale,
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # ---------------------------------------------------------------------------------------------------- save
    # the run's record first: with push_to_hub, save_model uploads, and the card is rendered from it
    record_training_run(trainer, training_args.output_dir, [data_args.train_data], config_file)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    return {"train": result.metrics, "log_history": trainer.state.log_history}


if __name__ == "__main__":
    try:
        main()
    except RecipeError as error:
        sys.exit(f"error: {error}")
