"""Train a CLIP with hfmm's exact tiled contrastive loss through transformers' Trainer.

    hfmm train clip --config recipes/clip/tiny_demo.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/clip_pretrain.py \\
        --config recipes/clip/convnext_xxlarge_laion2b.yaml [--key value ...]

Every YAML key is a field of `CLIPModelArguments`, `CLIPDataArguments` or `CLIPTrainingArguments`
(`hfmm.training.clip.arguments`); `--key value` overrides a key.
"""

import sys

from transformers import set_seed

from hfmm.evaluation import ZeroShotEvalCallback
from hfmm.training.arguments import parse_recipe_argv
from hfmm.training.clip.arguments import CLIPDataArguments, CLIPModelArguments, CLIPTrainingArguments
from hfmm.training.clip.data import CLIPCollator, build_eval_dataset, build_train_dataset, configure_streaming
from hfmm.training.clip.model import load_model_and_processor
from hfmm.training.clip.trainer import CLIPTrainer


def main(argv: list[str] | None = None) -> dict:
    """Runs the recipe `--config RECIPE.yaml [--key value ...]` (default: `sys.argv[1:]`); returns the training
    metrics and the log history."""
    # ----------------------------------------------------------------------------------------------- arguments
    classes = (CLIPModelArguments, CLIPDataArguments, CLIPTrainingArguments)
    model_args, data_args, training_args, config_file = parse_recipe_argv(
        classes, sys.argv[1:] if argv is None else argv
    )

    # --------------------------------------------------------------------------------------------------- model
    set_seed(training_args.seed)  # a fresh preset's weights: the same on every rank and in every run of the recipe
    model, processor = load_model_and_processor(model_args, loss=training_args.loss)

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
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)

    # ---------------------------------------------------------------------------------------------------- save
    # the run's record first: with push_to_hub, save_model uploads, and the card is rendered from it
    trainer.record_run([data_args.train_data], config_file)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        processor.save_pretrained(training_args.output_dir)
    return {"train": result.metrics, "log_history": trainer.state.log_history}
