"""Megatron's tensor layouts: TP shards merged by rule, fused QKV split per query group, SwiGLU's [gate; up]."""

import pytest
import torch

from hfmm.conversion.nemo.megatron import (
    TensorParallelShards,
    merge_tp_shards,
    split_gqa_qkv,
    split_qkv_per_head,
    split_swiglu,
)


def test_merge_tp_shards_by_rule():
    a, b = torch.arange(8.0).reshape(4, 2), torch.arange(8.0, 16.0).reshape(4, 2)
    assert torch.equal(merge_tp_shards([a, b], "column", "k"), torch.cat([a, b]))
    assert torch.equal(merge_tp_shards([a, b], "row", "k"), torch.cat([a, b], dim=1))
    assert torch.equal(merge_tp_shards([a, a.clone()], "replicated", "k"), a)
    # each rank holds [gate_r; up_r]: the global fc1 is [gate_0; gate_1; up_0; up_1]
    assert torch.equal(merge_tp_shards([a, b], "swiglu", "k"), torch.cat([a[:2], b[:2], a[2:], b[2:]]))
    q_k_v = [torch.full((2, 2), float(i)) for i in range(6)]  # rank 0: q0 k0 v0, rank 1: q1 k1 v1
    strided = merge_tp_shards([torch.cat(q_k_v[:3]), torch.cat(q_k_v[3:])], "strided_qkv", "k")
    assert torch.equal(strided, torch.cat([q_k_v[i] for i in (0, 3, 1, 4, 2, 5)]))
    with pytest.raises(ValueError, match="TP rule 'diagonal' of 'k': choose one of"):
        merge_tp_shards([a, b], "diagonal", "k")


def test_tensor_parallel_shards_merge_on_read():
    shards = [{"w": torch.ones(2, 3), "n": torch.zeros(3)}, {"w": torch.zeros(2, 3), "n": torch.zeros(3)}]
    merged = TensorParallelShards(shards, {r"w": "column"})
    assert merged["w"].shape == (4, 3) and merged["n"].shape == (3,) and sorted(merged) == ["n", "w"]


def test_fused_splits():
    heads, groups, head_dim = 4, 2, 3
    q = torch.randn(heads * head_dim, 5)
    k, v = torch.randn(groups * head_dim, 5), torch.randn(groups * head_dim, 5)
    per_group = heads // groups
    fused = torch.cat(
        [
            torch.cat(
                [
                    q.view(groups, per_group * head_dim, 5)[g],
                    k.view(groups, head_dim, 5)[g],
                    v.view(groups, head_dim, 5)[g],
                ]
            )
            for g in range(groups)
        ]
    )
    for part, expected in zip(split_gqa_qkv(fused, heads, groups), (q, k, v), strict=True):
        assert torch.equal(part, expected)
    per_head = torch.cat(
        [torch.cat([q[h * 3 : h * 3 + 3], q[h * 3 : h * 3 + 3] + 1, q[h * 3 : h * 3 + 3] + 2]) for h in range(4)]
    )
    q1, k1, v1 = split_qkv_per_head(per_head, 4)
    assert torch.equal(q1, q) and torch.equal(k1, q + 1) and torch.equal(v1, q + 2)
    gate, up = split_swiglu(torch.arange(8.0).reshape(4, 2))
    assert torch.equal(gate, torch.arange(4.0).reshape(2, 2)) and torch.equal(up, torch.arange(4.0, 8.0).reshape(2, 2))
