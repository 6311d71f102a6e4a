"""Exhaustive templated key maps (litgpt style) and the meta-device assembly of an hfmm model from a source state dict.

A key map is a dict from an anchored regular expression over source keys to `(target template(s), transform)`, or to
`None` for keys dropped on purpose. Every source key must match exactly one rule; the groups of the match fill the
`{0}`, `{1}`, ... of the target template. A transform returns one tensor, or a tuple with one tensor per target.
"""

import math
import re
from collections.abc import Callable, Iterable, Mapping

import torch
from accelerate import init_empty_weights
from tqdm.auto import tqdm
from transformers.initialization import no_init_weights

from hfmm.conversion.common.readers import CheckpointError

Transform = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]
Rule = tuple[str | tuple[str, ...], Transform] | None


def same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def transpose(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.t().contiguous()


def as_vector(tensor: torch.Tensor) -> torch.Tensor:
    """A scalar (or 1-element) parameter as hfmm's shape `(1,)` (FSDP2 refuses 0-dim parameters)."""
    return tensor.reshape(1)


def split_rows(tensor: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
    """
    Splits `tensor` into `parts` equal blocks of rows without copying.

    Each block is a tensor over its own slice of the source storage: views of one storage would be cloned by
    `save_pretrained` (it treats them as shared tensors), and copies would cost a second copy of the fused weights
    (or, for a memory-mapped source, keep its pages resident beside the copies).
    """
    if tensor.shape[0] % parts:
        return tuple(chunk.clone() for chunk in tensor.chunk(parts))  # a shape error follows, naming the key
    tensor = tensor.contiguous()
    shape = (tensor.shape[0] // parts, *tensor.shape[1:])
    nbytes = math.prod(shape) * tensor.element_size()
    start = tensor.storage_offset() * tensor.element_size()
    storage = tensor.untyped_storage()
    return tuple(
        torch.empty(0, dtype=tensor.dtype).set_(storage[start + i * nbytes : start + (i + 1) * nbytes], 0, shape)
        for i in range(parts)
    )


def _fill_groups(pattern: str, values: tuple[str, ...]) -> str:
    """The string a simple anchored `pattern` matches when its top-level groups take `values` (escapes undone)."""
    out, depth, index, i = [], 0, 0, 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            if depth == 0:
                out.append(pattern[i + 1])
            i += 2
            continue
        if char == "(":
            if depth == 0:
                out.append(values[index])
                index += 1
            depth += 1
        elif char == ")":
            depth -= 1
        elif depth == 0:
            out.append(char)
        i += 1
    return "".join(out)


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\d+)\}", template)  # literal, group index, literal, ...
    regex = "".join(re.escape(part) if n % 2 == 0 else f"(?P<g{part}>.+?)" for n, part in enumerate(parts))
    return re.compile(regex)


class KeyMap:
    """
    An anchored, templated key map from a source layout onto hfmm's parameter names.

    Args:
        rules (`Mapping[str, Rule]`):
            Regular expression (full match) -> `(target template or tuple of templates, transform)`, or `None` to drop
            the key on purpose.
        source (`str`):
            Name of the source layout, used in error messages (e.g. `"OpenCLIP"`).
    """

    def __init__(self, rules: Mapping[str, Rule], source: str):
        self.rules = dict(rules)
        self.source = source
        self._compiled = [(re.compile(pattern), rule) for pattern, rule in self.rules.items()]
        self._inverse = [
            (_template_regex(template), pattern)
            for pattern, rule in self.rules.items()
            if rule is not None
            for template in (rule[0] if isinstance(rule[0], tuple) else (rule[0],))
        ]

    def map_key(self, key: str) -> tuple[tuple[str, ...], Transform] | None:
        """Target key(s) and transform of one source key; `None` for keys dropped on purpose."""
        for pattern, rule in self._compiled:
            match = pattern.fullmatch(key)
            if match:
                if rule is None:
                    return None
                target, fn = rule
                templates = target if isinstance(target, tuple) else (target,)
                return tuple(t.format(*match.groups()) for t in templates), fn
        raise CheckpointError(f"unknown {self.source} key {key!r}: no rule in hfmm's key map matches it.")

    def source_key(self, target: str) -> str | None:
        """The source key that would produce hfmm's `target` (for error messages), or `None`."""
        for regex, pattern in self._inverse:
            match = regex.fullmatch(target)
            if match:
                values = tuple(match.group(f"g{i}") for i in range(len(match.groupdict())))
                candidate = _fill_groups(pattern, values)
                if re.fullmatch(pattern, candidate):
                    return candidate
        return None

    def plan(self, keys: Iterable[str]) -> dict[str, tuple[tuple[str, ...], Transform]]:
        """Source key -> (targets, transform) for every key that is not dropped; unknown keys raise."""
        plan = {}
        for key in keys:
            mapped = self.map_key(key)
            if mapped is not None:
                plan[key] = mapped
        return plan

    def describe_missing(self, target: str) -> str:
        source = self.source_key(target)
        return f"{self.source} key {source!r} (hfmm {target!r})" if source else f"hfmm key {target!r}"

    def convert(
        self,
        state_dict: Mapping[str, torch.Tensor],
        *,
        expected: Mapping[str, torch.Size] | None = None,
        progress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """
        Every tensor of `state_dict` under its target name(s), transformed; keys dropped on purpose are left out and
        unknown keys raise `CheckpointError`. Tensors are read one at a time, so a lazy `state_dict` is read once.

        Args:
            state_dict (`Mapping[str, torch.Tensor]`):
                Source tensors.
            expected (`Mapping[str, torch.Size]`, *optional*):
                The target model's keys and shapes: every target must be one of them and every one of them must be
                produced, with its shape (checked before any tensor is read, shapes as they are read). Unchecked
                when `None`, for parts of a model that [`build_model`] checks once assembled.
            progress (`bool`, *optional*, defaults to `False`):
                Show a progress bar over the tensors.
        """
        plan = self.plan(state_dict.keys())
        if expected is not None:
            _check_keys(plan, expected, self)
        tensors = {}
        for key, (targets, fn) in tqdm(plan.items(), desc="converting", unit="tensor", disable=not progress):
            source = state_dict[key]
            values = fn(source)
            values = values if isinstance(values, tuple) else (values,)
            for target, value in zip(targets, values, strict=True):
                if expected is not None and value.shape != expected[target]:
                    raise CheckpointError(
                        f"shape mismatch: {self.source} key {key!r} has shape {list(source.shape)}, but the model's "
                        f"{target!r} needs {list(expected[target])} (does the checkpoint match the model config?)."
                    )
                tensors[target] = value
            del source, values  # a transformed source is freed as soon as its copies exist
        return tensors


def _check_keys(plan: Mapping, expected: Mapping[str, torch.Size], key_map: KeyMap) -> None:
    produced = {}  # target -> source key
    for key, (targets, _) in plan.items():
        for target in targets:
            if target not in expected:
                raise CheckpointError(
                    f"{key_map.source} key {key!r} maps to {target!r}, which this architecture does not have "
                    "(does the checkpoint match the model config?)."
                )
            if target in produced:
                raise CheckpointError(
                    f"{key_map.source} keys {produced[target]!r} and {key!r} both map to {target!r}; keep one."
                )
            produced[target] = key
    missing = [target for target in expected if target not in produced]
    if missing:
        raise CheckpointError(
            f"the checkpoint lacks {len(missing)} weight(s) the model needs, first {key_map.describe_missing(missing[0])}"
            " (does the checkpoint match the model config?)."
        )


def build_model(
    model_cls: type[torch.nn.Module],
    config,
    state_dict: Mapping[str, torch.Tensor],
    key_map: KeyMap,
    *,
    progress: bool = False,
) -> torch.nn.Module:
    """
    Builds `model_cls(config)` on the meta device and assigns it the converted tensors of `state_dict`, so that memory
    holds one copy of the weights (tensors are read one at a time from a lazy `state_dict`).

    Keys are checked before any tensor is read: a source key no rule matches, a key the architecture does not have or
    a weight the checkpoint lacks raise `CheckpointError` naming the key; so does a shape mismatch, as it is read.

    Args:
        model_cls (`type`):
            The hfmm model class, e.g. `HfmmCLIPModel`.
        config:
            Its config.
        state_dict (`Mapping[str, torch.Tensor]`):
            Source tensors, read lazily by key.
        key_map ([`KeyMap`]):
            Map from the source layout onto `model_cls`'s parameter names.
        progress (`bool`, *optional*, defaults to `False`):
            Show a progress bar over the tensors.
    """
    # Parameters on meta, buffers (position ids) real and built by `__init__`; no initialisation of the parameters.
    with init_empty_weights(include_buffers=False), no_init_weights():
        model = model_cls(config)
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    tensors = key_map.convert(state_dict, expected=expected, progress=progress)
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()
