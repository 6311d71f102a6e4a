"""Lets accelerate keep its FSDP plugin on CPU processes, so FSDP2 runs under gloo in tests. Test code only.

accelerate turns `distributed_type` into FSDP only for GPU-like device types (`AcceleratorState.__init__` checks
MULTI_GPU, MULTI_XPU, ...); on `use_cpu=True` processes it stays MULTI_CPU and the plugin is dropped, although
`fully_shard` itself works on a gloo mesh. This file is on `PYTHONPATH` only for the FSDP tests (Python imports
`sitecustomize` at start-up, before the script runs), so `accelerate launch --config_file recipes/accelerate/fsdp.yaml`
and the recipe scripts run unmodified. After accelerate's own `__init__`, a MULTI_CPU state with an FSDP plugin
becomes an FSDP state, exactly as accelerate's GPU branch would make it. Nothing in `src/` does this.

Also here, for the resume tests: `HFMM_TEST_EXIT_AFTER_CHECKPOINT=N` kills each rank once checkpoint N is written;
and for the sharding tests: `HFMM_TEST_RECORD_SHARDS=DIR` records what each rank holds of every parameter.
"""

import os

if os.environ.get("HFMM_TEST_FSDP_ON_CPU") == "1":
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    _accelerate_init = AcceleratorState.__init__

    def _init_keeping_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
        _accelerate_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate's own __init__ ends

    AcceleratorState.__init__ = _init_keeping_fsdp_on_cpu

# What FSDP2 holds on each rank while training: at every checkpoint, rank R writes DIR/rank{R}-step{N}.json with, per
# parameter of the prepared model, whether it is a DTensor, its placements, and its local and global shapes.
if os.environ.get("HFMM_TEST_RECORD_SHARDS"):
    import json
    from pathlib import Path

    from torch.distributed.tensor import DTensor
    from transformers import Trainer

    _save_then_record = Trainer._save_checkpoint

    def _shard(parameter) -> dict:
        if not isinstance(parameter, DTensor):
            return {
                "dtensor": False,
                "placements": [],
                "local": list(parameter.shape),
                "global": list(parameter.shape),
            }
        return {"dtensor": True, "placements": [str(p) for p in parameter.placements],
                "local": list(parameter.to_local().shape), "global": list(parameter.shape)}  # fmt: skip

    def _save_checkpoint_and_record(self, *args, **kwargs):
        _save_then_record(self, *args, **kwargs)
        shards = {name: _shard(p) for name, p in self.model_wrapped.named_parameters()}
        folder = Path(os.environ["HFMM_TEST_RECORD_SHARDS"])
        folder.mkdir(parents=True, exist_ok=True)
        rank = self.args.process_index
        (folder / f"rank{rank}-step{self.state.global_step}.json").write_text(json.dumps(shards))

    Trainer._save_checkpoint = _save_checkpoint_and_record

# A run killed right after a checkpoint, for the resume tests: with HFMM_TEST_EXIT_AFTER_CHECKPOINT=N every rank dies
# (no clean-up at all, as a preempted job) as soon as its part of checkpoint N is written.
if os.environ.get("HFMM_TEST_EXIT_AFTER_CHECKPOINT"):
    from transformers import Trainer

    _save_checkpoint = Trainer._save_checkpoint

    def _save_checkpoint_then_die(self, *args, **kwargs):
        _save_checkpoint(self, *args, **kwargs)
        if self.state.global_step == int(os.environ["HFMM_TEST_EXIT_AFTER_CHECKPOINT"]):
            os._exit(3)

    Trainer._save_checkpoint = _save_checkpoint_then_die
