"""NeVA stage 2, fine-tuning: projector and language model (full, LoRA or QLoRA) on multi-turn instruction data.

    accelerate launch recipes/neva_stage2.py --config recipes/neva/llava15_7b_stage2.yaml [--key value ...]

Single process: `python recipes/neva_stage2.py --config recipes/neva/tiny_demo_stage2.yaml`. Same keys as stage 1
(`NevaModelArguments`, `NevaDataArguments`, `TrainingArguments`), plus the optional `lora:` and `quantization:`
sections. The vision tower stays frozen; `pretrained_projector` loads stage 1's projector.
"""

import importlib.util
import sys
from pathlib import Path

from hfmm.training.arguments import RecipeError

_spec = importlib.util.spec_from_file_location("neva_stage1", Path(__file__).with_name("neva_stage1.py"))
_stage1 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_stage1)  # one recipe body for both stages; only the checks differ


def main(argv: list[str] | None = None) -> dict:
    return _stage1.main(argv, stage=2)


if __name__ == "__main__":
    try:
        main()
    except RecipeError as error:
        sys.exit(f"error: {error}")
