"""Run under torchrun (gloo, CPU): FSDP2 `fully_shard` of an hfmm CLIP, one step of the tiled loss.

Writes OUT/rank{r}.json (OUT = argv[1]) with the largest gradient difference against an unsharded copy that saw the global batch.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from conftest import tiny_clip_config  # noqa: E402

from hfmm import HfmmCLIPModel  # noqa: E402
from hfmm.losses import clip_loss  # noqa: E402
from hfmm.models.clip.modeling_clip import HfmmCLIPEncoderLayer  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()  # FSDP averages the ranks' gradients of their loss shares
mesh = init_device_mesh("cpu", (world,))
torch.manual_seed(0)
reference = HfmmCLIPModel(tiny_clip_config()).double()
sharded = HfmmCLIPModel(tiny_clip_config()).double()
sharded.load_state_dict(reference.state_dict())
for module in sharded.modules():
    if isinstance(module, HfmmCLIPEncoderLayer):
        fully_shard(module, mesh=mesh)
fully_shard(sharded, mesh=mesh)  # the root holds logit_scale: a (1,)-shaped parameter, as FSDP2 requires

generator = torch.Generator().manual_seed(1)
pixels = torch.randn(4 * world, 3, 30, 30, generator=generator, dtype=torch.float64)
ids = torch.randint(1, 49000, (4 * world, 10), generator=generator)
ids[:, 0], ids[:, -1] = 49406, 49407
local = slice(4 * rank, 4 * rank + 4)

out = sharded(input_ids=ids[local], pixel_values=pixels[local], return_logits=False)
clip_loss(out.image_embeds, out.text_embeds, out.logit_scale, mode="gather").backward()
ref = reference(input_ids=ids, pixel_values=pixels, return_logits=False)
clip_loss(ref.image_embeds, ref.text_embeds, ref.logit_scale, mode="local").backward()

sharded_params = dict(sharded.named_parameters())
worst, sharded_count = 0.0, 0
for name, param in reference.named_parameters():
    grad = sharded_params[name].grad
    sharded_count += int(grad.to_local().shape != grad.shape)
    worst = max(worst, (grad.full_tensor() - param.grad).abs().max().item())
report = {"rank": rank, "worst": worst, "sharded_params": sharded_count}
(Path(sys.argv[1]) / f"rank{rank}.json").write_text(json.dumps(report))
dist.destroy_process_group()
