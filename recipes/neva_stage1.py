"""NeVA stage 1, feature alignment: train only the projector on image-caption conversations (`plain` template).

    accelerate launch recipes/neva_stage1.py --config recipes/neva/llama2_7b_stage1.yaml [--key value ...]
    accelerate launch --config_file recipes/accelerate/fsdp_neva.yaml recipes/neva_stage1.py --config ...  # FSDP2

Single process: `python recipes/neva_stage1.py --config recipes/neva/tiny_demo_stage1.yaml`, the same as
`hfmm train neva-stage1 --config recipes/neva/tiny_demo_stage1.yaml`. The recipe is `hfmm.training.neva.recipe`; every
YAML key is a field of `NevaModelArguments`, `NevaDataArguments` or `NevaTrainingArguments`
(`hfmm.training.neva.arguments`); `--key value` overrides a key. The output folder gets `projector.safetensors`
(stage 2's `pretrained_projector`) and a full loadable NeVA.
"""

from hfmm.training.cli import run_script

if __name__ == "__main__":
    run_script("neva-stage1")
