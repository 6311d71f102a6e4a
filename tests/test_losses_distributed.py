"""Distributed exactness of hfmm.losses on CPU with gloo: real DistributedDataParallel vs the single-process naive loss
on the concatenated batch (fp64), for world sizes 1-4, modes gather and ring, CLIP and SigLIP.

Importing hfmm takes seconds (transformers), so one spawn of 4 processes serves every world size: world 4 is the
default group, worlds 1-3 are sub-groups of the *last* ranks, which also checks group-to-global rank translation."""

import copy
import math
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hfmm.losses import clip_loss, naive_clip_loss, naive_siglip_loss, siglip_loss

LOCAL_BATCH, IN_DIM, EMBED_DIM = 7, 5, 4
LOSSES = {"clip": (clip_loss, naive_clip_loss), "siglip": (siglip_loss, naive_siglip_loss)}


class TinyTowers(nn.Module):
    """Two linear towers with a learnable log-scale and bias, shaped like a CLIP model's outputs."""

    def __init__(self):
        super().__init__()
        self.image = nn.Linear(IN_DIM, EMBED_DIM)
        self.text = nn.Linear(IN_DIM, EMBED_DIM)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))  # shape [1], as in hfmm models
        self.logit_bias = nn.Parameter(torch.tensor([-2.0]))

    def forward(self, pixels, tokens):
        image = F.normalize(self.image(pixels), dim=-1)
        text = F.normalize(self.text(tokens), dim=-1)
        return image, text, self.logit_scale.exp(), self.logit_bias


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world, port, fn, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def _spawn(world, fn, *args):
    mp.spawn(_entry, args=(world, _free_port(), fn, args), nprocs=world, join=True)


def _reference(model, pixels, tokens, kind):
    """Gradients of the naive loss on the whole batch in one process."""
    model = copy.deepcopy(model)
    loss = LOSSES[kind][1](*model(pixels, tokens))
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}


def _check_ddp_step(group, kind, mode, tile):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    torch.manual_seed(0)
    model = TinyTowers().double()
    pixels = torch.randn(world * LOCAL_BATCH, IN_DIM, dtype=torch.float64)
    tokens = pixels + 0.5 * torch.randn(world * LOCAL_BATCH, IN_DIM, dtype=torch.float64)  # correlated pairs
    ref_loss, ref_grads = _reference(model, pixels, tokens, kind)

    ddp = DistributedDataParallel(model, process_group=group)
    shard = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    image, text, scale, bias = ddp(pixels[shard], tokens[shard])
    loss = LOSSES[kind][0](image, text, scale, logit_bias=bias, mode=mode, group=group, tile_size=tile)
    loss.backward()

    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss, group=group)
    torch.testing.assert_close(mean_loss / world, ref_loss, rtol=0, atol=1e-10)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[name], rtol=0, atol=1e-10, msg=f"{kind}/{mode}: {name}")
    ratio = (model.logit_scale.grad / ref_grads["logit_scale"]).item()
    assert abs(ratio - 1) <= 1e-10, f"{kind}/{mode}: logit-scale gradient ratio {ratio} (Inf-CL's bug gives {world})"


def _worker(rank, size, results):
    for world in (4, 3, 2, 1):
        members = list(range(size - world, size))
        group = None if world == size else dist.new_group(members)  # every rank must call new_group
        if rank in members:
            for kind in LOSSES:
                for mode in ("gather", "ring"):
                    for tile in (3, None):  # 3: several uneven chunks per rank; None: one chunk
                        _check_ddp_step(group, kind, mode, tile)
            _check_auto_is_exact(group)
            _check_unequal_batches(group)
            results[f"{world}/{rank}"] = True
        dist.barrier()


def _check_auto_is_exact(group):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    torch.manual_seed(1)
    image = F.normalize(torch.randn(world * LOCAL_BATCH, EMBED_DIM, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(world * LOCAL_BATCH, EMBED_DIM, dtype=torch.float64), dim=-1)
    scale = torch.tensor(20.0, dtype=torch.float64)
    shard = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    share = clip_loss(image[shard], text[shard], scale, mode="auto", group=group)  # gather on gloo
    dist.all_reduce(share, group=group)
    torch.testing.assert_close(share / world, naive_clip_loss(image, text, scale), rtol=0, atol=1e-10)


def _check_unequal_batches(group):
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if world == 1:
        return
    image = torch.randn(LOCAL_BATCH + rank, EMBED_DIM)
    for mode in ("gather", "ring"):
        with pytest.raises(ValueError, match="same shape"):
            clip_loss(image, image.clone(), torch.tensor(10.0), mode=mode, group=group)
        with pytest.raises(ValueError, match="same shape"):
            siglip_loss(image, image.clone(), torch.tensor(10.0), torch.tensor(-10.0), mode=mode, group=group)


def test_ddp_gradients_match_naive_loss_on_concatenated_batch():
    with mp.Manager() as manager:
        results = manager.dict()
        _spawn(4, _worker, results)
        expected = {f"{w}/{r}" for w in (1, 2, 3, 4) for r in range(4 - w, 4)}
        assert set(results.keys()) == expected  # every world size really ran on every member rank
