"""NeVA stage 2, fine-tuning: projector and language model (full, LoRA or QLoRA) on multi-turn instruction data.

    accelerate launch recipes/neva_stage2.py --config recipes/neva/llava15_7b_stage2.yaml [--key value ...]

Single process: `python recipes/neva_stage2.py --config recipes/neva/tiny_demo_stage2.yaml`, the same as
`hfmm train neva-stage2 --config recipes/neva/tiny_demo_stage2.yaml`. Same keys as stage 1 (`NevaModelArguments`,
`NevaDataArguments`, `NevaTrainingArguments`), plus the optional `lora:` and `quantization:` sections. The vision
tower stays frozen; `pretrained_projector` loads stage 1's projector.
"""

from hfmm.training.cli import run_script

if __name__ == "__main__":
    run_script("neva-stage2")
