"""Megatron's tensor layouts, shared by the NeMo converters (CLIP, GPT, NeVA): tensor-parallel shards merged into
global tensors, fused QKV and SwiGLU weights split, the vocabulary padding trimmed (research/nemo_formats.md §1.3).

A NeMo key map rule is a [`KeyMap`] rule with a third element, the TP rule that merges the key's shards:
`regex -> (hfmm key template(s), transform, TP rule)`, or `None` for a key dropped on purpose.
"""

import re
from collections.abc import Iterator, Mapping
from typing import Literal, get_args

import torch

from hfmm.conversion.common.key_maps import KeyMap, Transform
from hfmm.conversion.common.readers import CheckpointError

TPRule = Literal["replicated", "column", "row", "strided_qkv", "swiglu"]
REPLICATED: TPRule = "replicated"  # every rank holds the whole tensor
COLUMN: TPRule = "column"  # split by output features (dim 0)
ROW: TPRule = "row"  # split by input features (dim 1)
STRIDED_QKV: TPRule = "strided_qkv"  # legacy `megatron_legacy` QKV: each rank holds [q_r; k_r; v_r]
SWIGLU: TPRule = "swiglu"  # SwiGLU fc1: each rank holds [gate_r; up_r]
MegatronRule = tuple[str | tuple[str, ...], Transform, TPRule] | None


# --- tensor-parallel merging ---------------------------------------------------------------------------------------


def merge_tp_shards(shards: list[torch.Tensor], rule: TPRule, key: str) -> torch.Tensor:
    """One global tensor from its TP shards: `column`-parallel shards are stacked on dim 0, `row`-parallel ones on
    dim 1, `replicated` ones must agree in shape (rank 0 is taken); `strided_qkv` becomes `[q_0; q_1; ...; k_0; ...;
    v_0; ...]` and `swiglu` becomes `[gate_0; gate_1; ...; up_0; ...]`."""
    if rule not in get_args(TPRule):
        raise ValueError(f"TP rule {rule!r} of {key!r}: choose one of {list(get_args(TPRule))}.")
    if len(shards) == 1:
        return shards[0]
    if rule == REPLICATED:
        if any(shard.shape != shards[0].shape for shard in shards):
            raise CheckpointError(f"NeMo key {key!r} is replicated across TP ranks but its shapes differ.")
        return shards[0]
    if rule == COLUMN:
        return torch.cat(shards, dim=0)
    if rule == ROW:
        return torch.cat(shards, dim=1)
    if rule == SWIGLU:
        halves = [shard.chunk(2, dim=0) for shard in shards]
        return torch.cat([gate for gate, _ in halves] + [up for _, up in halves], dim=0)
    parts = [shard.reshape(3, -1, *shard.shape[1:]) for shard in shards]  # strided_qkv: (3, rows_r / 3, ...)
    return torch.cat(parts, dim=1).reshape(-1, *shards[0].shape[1:])


class TensorParallelShards(Mapping):
    """A read-only state dict over the TP shards of a checkpoint: each key is merged (`merge_tp_shards`, rule from
    `tp_rules`, a regex -> rule map; `replicated` where none matches) only when it is read."""

    def __init__(self, shards: list[Mapping[str, torch.Tensor]], tp_rules: Mapping[str, TPRule]):
        for rank, shard in enumerate(shards[1:], start=1):
            if set(shard) != set(shards[0]):
                odd = sorted(set(shard) ^ set(shards[0]))[0]
                raise CheckpointError(f"TP rank {rank} and rank 0 hold different keys, e.g. {odd!r}.")
        self.shards = shards
        self.tp_rules = [(re.compile(pattern), rule) for pattern, rule in tp_rules.items()]

    def __getitem__(self, key: str) -> torch.Tensor:
        rule = next((rule for pattern, rule in self.tp_rules if pattern.fullmatch(key)), REPLICATED)
        return merge_tp_shards([shard[key] for shard in self.shards], rule, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.shards[0])

    def __len__(self) -> int:
        return len(self.shards[0])


def split_rules(rules: Mapping[str, MegatronRule], source: str) -> tuple[KeyMap, dict[str, TPRule]]:
    """The [`KeyMap`] of NeMo key map `rules` (named `source` in errors) and the TP rule of each of its patterns."""
    key_map = KeyMap({pattern: None if rule is None else rule[:2] for pattern, rule in rules.items()}, source=source)
    return key_map, {pattern: rule[2] for pattern, rule in rules.items() if rule is not None}


# --- fused weights -------------------------------------------------------------------------------------------------


def split_qkv(tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Fused QKV rows `[q; k; v]` (NeMo legacy with `megatron_legacy: True`, after `merge_tp_shards`)."""
    return tuple(part.contiguous() for part in tensor.chunk(3, dim=0))


def split_gqa_qkv(tensor: torch.Tensor, num_heads: int, num_groups: int) -> tuple[torch.Tensor, ...]:
    """Megatron's fused QKV, per query group `[q x heads/groups, k, v]` (head_dim rows each), as LLaMA's q, k, v."""
    per_group = num_heads // num_groups
    head_dim = tensor.shape[0] // (num_groups * (per_group + 2))
    grouped = tensor.reshape(num_groups, per_group + 2, head_dim, *tensor.shape[1:])
    rest = tensor.shape[1:]
    return (
        grouped[:, :per_group].reshape(num_groups * per_group * head_dim, *rest).contiguous(),
        grouped[:, per_group].reshape(num_groups * head_dim, *rest).contiguous(),
        grouped[:, per_group + 1].reshape(num_groups * head_dim, *rest).contiguous(),
    )


def split_qkv_per_head(tensor: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, ...]:
    """Fused QKV rows `[q_0; k_0; v_0; q_1; ...]`, `head_dim` rows each (megatron-core, NeMo without
    `megatron_legacy`): one query group per head."""
    return split_gqa_qkv(tensor, num_heads, num_heads)


def split_swiglu(tensor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU's fused fc1 `[gate; up]` (after `merge_tp_shards`) as its gate and up projections."""
    gate, up = tensor.chunk(2, dim=0)
    return gate.contiguous(), up.contiguous()


def trim_vocab_padding(tensor: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """NeMo pads the vocabulary to a multiple of `make_vocab_size_divisible_by x TP`; the padding rows are unused (too
    few rows are left as they are, for the shape check to name the key)."""
    return tensor[:vocab_size] if tensor.shape[0] > vocab_size else tensor
