"""Run under `torchrun --nproc_per_node 2`: load a saved hfmm CLIP with tp_plan="auto" and compare with one process."""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModel
from transformers.distributed import DistributedConfig

import hfmm  # noqa: F401

path = sys.argv[1]
sharded = AutoModel.from_pretrained(path, distributed_config=DistributedConfig(tp_plan="auto")).eval()
whole = AutoModel.from_pretrained(path).eval()
torch.manual_seed(0)
ids = torch.tensor([[49406, 320, 1125, 539, 320, 2368, 49407], [49406, 1929, 49407, 0, 0, 0, 0]])
pixels = torch.randn(2, 3, 30, 30)
with torch.no_grad():
    ours, ref = sharded(input_ids=ids, pixel_values=pixels), whole(input_ids=ids, pixel_values=pixels)
q_proj = sharded.vision_model.encoder.layers[0].self_attn.q_proj.weight
fc2 = sharded.text_model.encoder.layers[1].mlp.fc2.weight
report = {
    "rank": dist.get_rank(),
    "q_local": list(q_proj.to_local().shape),
    "fc2_local": list(fc2.to_local().shape),
    "image_diff": (ours.image_embeds - ref.image_embeds).abs().max().item(),
    "text_diff": (ours.text_embeds - ref.text_embeds).abs().max().item(),
}
(Path(sys.argv[2]) / f"rank{dist.get_rank()}.json").write_text(json.dumps(report))
