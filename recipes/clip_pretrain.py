"""Train a CLIP with hfmm's exact tiled contrastive loss through transformers' Trainer.

    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/clip_pretrain.py \
        --config recipes/clip/convnext_xxlarge_laion2b.yaml [--key value ...]

Single process: `python recipes/clip_pretrain.py --config recipes/clip/tiny_demo.yaml`, the same as
`hfmm train clip --config recipes/clip/tiny_demo.yaml`. The recipe is `hfmm.training.clip.recipe`; every YAML key is a
field of `CLIPModelArguments`, `CLIPDataArguments` or `CLIPTrainingArguments` (`hfmm.training.clip.arguments`);
`--key value` overrides a key.
"""

from hfmm.training.cli import run_script

if __name__ == "__main__":
    run_script("clip")
