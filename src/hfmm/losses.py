"""Exact contrastive losses for CLIP (softmax) and SigLIP (sigmoid), with memory linear in the batch size.

Shapes. On every rank ``image_embeds`` and ``text_embeds`` are `(batch_size, embed_dim)`: the *local* batch ``b_l``
(equal on all ranks); the global batch is ``b = world_size * b_l``. ``logit_scale`` (the multiplier itself, i.e.
``model.logit_scale.exp()``) and ``logit_bias`` are tensors with one element. The logits ``X = s * I @ T.T + beta``,
`(b, b)`, are never stored: they are built one `(tile_size, tile_size)` tile at a time, in the forward and again
(recomputed) in the backward.

Identities used, with ``r_i`` / ``c_j`` the row / column log-sum-exp of ``X`` and ``delta`` the identity::

    CLIP    L = 1/(2b) sum_i (r_i - X_ii) + 1/(2b) sum_j (c_j - X_jj)
            dL/dX_ij = 1/(2b) (exp(X_ij - r_i) + exp(X_ij - c_j)) - delta_ij / b
    SigLIP  L = 1/b sum_ij softplus(-z_ij X_ij),  z = 2 delta - 1
            dL/dX_ij = 1/b (sigmoid(X_ij) - delta_ij)

``r`` and ``c`` are merged tile by tile with ``logaddexp`` from the *same* tile, so one matmul serves both directions;
the backward recomputes each tile once and uses it for both the image and the text gradient (four tile matmuls per
tile in all, against six for the naive loss). With ``Q = s * I`` the scale gradient is ``sum_i <dL/dQ_i, I_i>``, exact
in O(b_l * d). A constant shift cancels in a softmax, so the CLIP bias gradient is exactly zero.

Memory. Saved for the backward: the two inputs and ``r``, ``c`` (``2 * b_l`` floats): O(b_l * d). While running: the
two gradients (``2 * b_l * d``), two `(tile_size, tile_size)` logit tiles and a `(tile_size, d)` block of scaled rows;
``ring`` adds three messages of ``tile_size * (2 d + 2)`` floats and one accumulator chunk per rank, ``gather`` the
gathered texts and their gradient (``2 * b * d``). Nothing `(b, b)` or `(b_l, b)` is ever allocated.

Distributed. ``mode="gather"`` all-gathers the text side (``b * d`` floats) and reduce-scatters its gradient; ``"ring"``
passes chunks of ``tile_size`` columns from rank to rank with ``batch_isend_irecv``, overlapped with the compute of the
current chunk, one packed buffer per hop; both directions of CLIP are done in the same pass (the column statistics and
the text gradients travel one hop behind their columns and come home at the end). Each rank returns its share ``L_r``
(OpenCLIP's ``local_loss=True, gather_with_grad=True``): ``mean_r L_r`` is the global loss, and gradients reaching
rank ``r``'s embeddings are those of ``sum_r L_r``, so DDP/FSDP averaging gives exact gradients. Scale and bias
gradients are per-rank shares and are never all-reduced here (Inf-CL's all-reduce makes them ``world_size`` times too
large). All ranks must call the loss in the same order with the same local batch size. Do not wrap the loss in
activation checkpointing: recomputation would repeat the communication.

Precision. Inputs of any float dtype; they are upcast before scaling and every tile, log-sum-exp and accumulator is in
float32 (float64 when an embedding is float64); autocast is disabled inside; the loss is returned in that compute dtype
and the gradients in the dtype of each input.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "CUDA_TILE_SIZE",
    "DEFAULT_TILE_SIZE",
    "RING_TILE_SIZE",
    "clip_loss",
    "naive_clip_loss",
    "naive_siglip_loss",
    "siglip_loss",
]

MODES = ("auto", "local", "gather", "ring")
# Fastest of 512 / 1024 / 2048 for CLIP at B = 16384, d = 512 on a 2-core AVX-512 CPU (7.7 s vs 9.7 s and 7.8 s,
# `benchmarks/bench_loss.py --tiles 1024,512,2048`); a 1024 x 1024 fp32 tile is 4 MiB.
DEFAULT_TILE_SIZE = 1024
# A ring rank also holds three messages of tile * (2 d + 2) floats; at 512 its memory beyond the gradients stays a
# few MiB (42 vs 55 MiB per rank at B = 16384 on 2 ranks, same speed: BENCHMARKS.md).
RING_TILE_SIZE = 512
# On a GPU a 1024 tile leaves the device idle between small kernels: on an H200 (fp32, d = 512, one process) tile 1024
# took 4x OpenCLIP's time, tile 8192 0.86-0.89x, with 0.7-1.1 GiB beyond the inputs from B = 8192 to 131072
# (`benchmarks/bench_loss_cuda.py`, BENCHMARKS.md). A ring message is then 8192 * (2 d + 2) floats (32 MiB at d = 512).
CUDA_TILE_SIZE = 8192


# ----------------------------------------------------------------------------------------------------- public API
@torch.compiler.disable
def clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    logit_bias: torch.Tensor | None = None,
    mode: str = "auto",
    group: dist.ProcessGroup | None = None,
    tile_size: int | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE loss ``(loss_image_to_text + loss_text_to_image) / 2``, exact, tiled.

    Args:
        image_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`):
            This rank's image embeddings (usually L2-normalised), any float dtype.
        text_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`):
            This rank's text embeddings; row `i` is the positive of image row `i`.
        logit_scale (`torch.Tensor` with one element):
            The multiplier of the cosine similarities (`model.logit_scale.exp()`); must be finite.
        logit_bias (`torch.Tensor` with one element, *optional*):
            Added to every logit. It cancels in the softmax, so its gradient is exactly zero.
        mode (`str`, *optional*, defaults to `"auto"`):
            `"local"` (this rank's batch only), `"gather"`, `"ring"`, or `"auto"`: local when torch.distributed is not
            initialised or has one rank, ring on NCCL, gather otherwise (gloo).
        group (`torch.distributed.ProcessGroup`, *optional*):
            The ranks whose batches form the global batch; defaults to the default group.
        tile_size (`int`, *optional*):
            Rows and columns per logit tile, and columns per ring message. Defaults to `CUDA_TILE_SIZE` (8192) for
            CUDA tensors; on the CPU to `DEFAULT_TILE_SIZE` (1024), or `RING_TILE_SIZE` (512) in ring mode.

    Returns:
        `torch.Tensor`: 0-dim, float32 (float64 for float64 embeddings), this rank's share of the loss; the mean over
        ranks is the loss of the global batch.
    """
    _check_inputs(image_embeds, text_embeds, logit_scale, logit_bias, tile_size)
    comm = _communicator(mode, group, image_embeds)
    return _ClipLoss.apply(
        image_embeds, text_embeds, logit_scale, logit_bias, comm, tile_size or _default_tile(comm, image_embeds)
    )


@torch.compiler.disable
def siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
    *,
    mode: str = "auto",
    group: dist.ProcessGroup | None = None,
    tile_size: int | None = None,
) -> torch.Tensor:
    """Sigmoid loss, normalised as OpenCLIP's `SigLipLoss`: sum over all pairs of this rank's images with all texts,
    divided by the local batch size. Exact, tiled.

    Args:
        image_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`):
            This rank's image embeddings, any float dtype.
        text_embeds (`torch.Tensor` of shape `(batch_size, embed_dim)`):
            This rank's text embeddings; row `i` is the positive of image row `i`, every other pair is negative.
        logit_scale (`torch.Tensor` with one element):
            The multiplier of the similarities (`model.logit_scale.exp()`); must be finite.
        logit_bias (`torch.Tensor` with one element or `None`):
            Added to every logit (OpenCLIP initialises it to -10); must be finite. `None` means no bias.
        mode, group, tile_size:
            As in [`clip_loss`].

    Returns:
        `torch.Tensor`: 0-dim, float32 (float64 for float64 embeddings), this rank's share; the mean over ranks is the
        global loss `sum_ij softplus(-z_ij X_ij) / global_batch_size`.
    """
    _check_inputs(image_embeds, text_embeds, logit_scale, logit_bias, tile_size)
    comm = _communicator(mode, group, image_embeds)
    return _SigLipLoss.apply(
        image_embeds, text_embeds, logit_scale, logit_bias, comm, tile_size or _default_tile(comm, image_embeds)
    )


def naive_clip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference CLIP loss on one process, as OpenCLIP's `ClipLoss`: materialises the `(batch_size, batch_size)`
    logits (O(b^2) memory) in the dtype of the inputs. For tests and benchmarks."""
    logits = logit_scale * image_embeds @ text_embeds.T  # (B, B)
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def naive_siglip_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor | None,
) -> torch.Tensor:
    """Reference SigLIP loss on one process, as OpenCLIP's `SigLipLoss` (O(b^2) memory). For tests and benchmarks."""
    logits = logit_scale * image_embeds @ text_embeds.T  # (B, B)
    if logit_bias is not None:
        logits = logits + logit_bias
    labels = 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / image_embeds.shape[0]


# ----------------------------------------------------------------------------------------------------- validation
def _check_inputs(image_embeds, text_embeds, logit_scale, logit_bias, tile_size) -> None:
    for name, x in (("image_embeds", image_embeds), ("text_embeds", text_embeds)):
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or not x.is_floating_point():
            got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"`{name}` must be a 2-D float tensor (batch_size, embed_dim), got a {got}.")
    if image_embeds.shape != text_embeds.shape:
        raise ValueError(
            f"`image_embeds` and `text_embeds` must have the same shape, got {tuple(image_embeds.shape)} "
            f"and {tuple(text_embeds.shape)}."
        )
    if image_embeds.shape[0] == 0:
        raise ValueError("The batch is empty: `image_embeds` has 0 rows.")
    if image_embeds.device != text_embeds.device:
        raise ValueError(f"Embeddings are on different devices: {image_embeds.device} and {text_embeds.device}.")
    _check_scalar("logit_scale", logit_scale)
    if logit_bias is not None:
        _check_scalar("logit_bias", logit_bias)
    if tile_size is not None and (isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size <= 0):
        raise ValueError(f"`tile_size` must be a positive int or None, got {tile_size!r}.")


def _check_scalar(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.numel() != 1 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must be a float tensor with one element (0-dim or shape [1]), got {got}.")
    if not torch.isfinite(x).all():
        raise ValueError(f"`{name}` must be finite, got {x.item()}.")


def _compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _default_tile(comm: _Comm | None, embeds: torch.Tensor) -> int:
    if embeds.device.type == "cuda":
        return CUDA_TILE_SIZE
    return RING_TILE_SIZE if comm is not None and comm.mode == "ring" else DEFAULT_TILE_SIZE


def _spans(n: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n)) for a in range(0, n, size)]


# -------------------------------------------------------------------------------------------------- communication
_all_gather_single = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)
_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or getattr(dist, "reduce_scatter_tensor", None)


def _communicator(mode: str, group, embeds: torch.Tensor) -> _Comm | None:
    """`None` means one process (local mode); otherwise the ring neighbours and collectives of `group`."""
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}, got {mode!r}.")
    if mode == "local":
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if mode == "auto":
            return None
        raise ValueError(f"mode={mode!r} needs an initialised torch.distributed process group; use 'local' or 'auto'.")
    if dist.get_world_size(group) == 1:
        return None  # a rank never sends to itself (gloo crashes on self P2P, pytorch#106164)
    if mode == "auto":
        mode = "ring" if dist.get_backend(group) == "nccl" else "gather"
    return _Comm(mode, group, embeds)


class _Comm:
    """One loss call's view of a process group: ring neighbours and the collectives the sweeps need."""

    def __init__(self, mode: str, group, embeds: torch.Tensor):
        self.mode, self.group = mode, group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        to_global = (lambda r: r) if group is None else (lambda r: dist.get_global_rank(group, r))
        self.next_peer = to_global((self.rank + 1) % self.size)
        self.prev_peer = to_global((self.rank - 1) % self.size)
        shape = torch.tensor(embeds.shape, dtype=torch.int64, device=embeds.device)
        shapes = self.all_gather(shape[None]).tolist()  # (world, 2)
        if any(s != shapes[0] for s in shapes):
            raise ValueError(
                f"Every rank must pass embeddings of the same shape (batch_size, embed_dim); got {shapes} on ranks "
                "0..n-1. Use drop_last=True (dataloader_drop_last in the Trainer)."
            )

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty((self.size * x.shape[0], *x.shape[1:]))
        _all_gather_single(out, x.contiguous(), group=self.group)
        return out

    def reduce_own(self, full: torch.Tensor, kind: str) -> torch.Tensor:
        """Reduce per-column accumulators `(world * b_l, ...)` over ranks and return this rank's `(b_l, ...)`."""
        if kind == "lse":  # log-sum-exp over ranks: a max all-reduce, then a sum of the shifted exponentials
            m = full.clone()
            dist.all_reduce(m, op=dist.ReduceOp.MAX, group=self.group)
            full.sub_(m).exp_()
        own = full.new_empty((full.shape[0] // self.size, *full.shape[1:]))
        _reduce_scatter_single(own, full, group=self.group)
        return own.log_().add_(m.chunk(self.size)[self.rank]) if kind == "lse" else own


class _Hop:
    """One ring step in flight: `parts` packed into (a prefix of) `send`, the same layout received into `recv` from
    the previous rank. Both are long-lived buffers, left alone until `wait` (gloo needs every request waited)."""

    def __init__(self, comm: _Comm, parts: list[torch.Tensor], send: torch.Tensor, recv: torch.Tensor):
        self.shapes = [p.shape for p in parts]
        sizes = [p.numel() for p in parts]
        send, self.recv = send[: sum(sizes)], recv[: sum(sizes)]
        for chunk, part in zip(send.split(sizes), parts):
            chunk.view(part.shape).copy_(part)
        ops = [
            dist.P2POp(dist.isend, send, comm.next_peer, comm.group),
            dist.P2POp(dist.irecv, self.recv, comm.prev_peer, comm.group),
        ]
        self.works = dist.batch_isend_irecv(ops)

    def wait(self) -> list[torch.Tensor]:
        for work in self.works:
            work.wait()
        sizes = [math.prod(s) for s in self.shapes]
        return [x.view(s) for x, s in zip(self.recv.split(sizes), self.shapes)]


# ----------------------------------------------------------------------------------------------------- tile kernels
class _Rows:
    """This rank's rows (image embeddings) and the work buffers shared by every tile of one sweep: the scaled rows of
    a tile and two `(tile, tile)` logit tiles."""

    def __init__(self, rows: torch.Tensor, scale: torch.Tensor, tile: int, dtype: torch.dtype):
        self.rows, self.scale, self.dtype = rows, scale, dtype
        self.spans = _spans(rows.shape[0], tile)
        side = min(tile, rows.shape[0])  # column chunks are at most this wide too: all ranks have b_l rows
        self.work = torch.empty(2, side * side, dtype=dtype, device=rows.device)
        self.q = torch.empty(side, rows.shape[1], dtype=dtype, device=rows.device)

    def logits(self, p0: int, p1: int, cols: torch.Tensor, bias: torch.Tensor | None = None):
        """Scaled rows `p0:p1` and their logits against `cols` (in work tile 0)."""
        q = self.q[: p1 - p0].copy_(self.rows[p0:p1]).mul_(self.scale)  # (tp, D), upcast before scaling
        x = self.work[0, : (p1 - p0) * cols.shape[0]].view(p1 - p0, cols.shape[0])  # (tp, tc)
        if bias is None:
            torch.mm(q, cols.T, out=x)
        else:
            torch.addmm(bias, q, cols.T, out=x)
        return q, x

    def scratch(self, x: torch.Tensor) -> torch.Tensor:
        return self.work[1, : x.numel()].view_as(x)

    def dot(self, d_rows: torch.Tensor) -> torch.Tensor:
        """`sum_i <d_rows_i, rows_i>` in row tiles, without an upcast copy of all rows."""
        return sum((d_rows[a:b] * self.rows[a:b].to(self.dtype)).sum() for a, b in self.spans)


def _diagonal(x: torch.Tensor, p0: int, q0: int) -> tuple[torch.Tensor, int]:
    """Entries of tile `x` (rows from `p0`, columns from `q0` of the same rank's block) with row == column, and the
    block index of the first one."""
    return x.diagonal(p0 - q0), max(p0, q0)


def _lse(x: torch.Tensor, dim: int, e: torch.Tensor) -> torch.Tensor:
    """Log-sum-exp of `x` along `dim`, using the same-shaped buffer `e`."""
    m = x.amax(dim, keepdim=True)
    torch.sub(x, m, out=e).exp_()
    return e.sum(dim).log_().add_(m.squeeze(dim))


def _clip_forward(rows: _Rows, cols, diag, out, *, lse_rows, pos) -> None:
    """Fold all local rows x one column chunk into the row LSE `lse_rows` and the chunk's column LSE `out`."""
    (t,) = cols
    for p0, p1 in rows.spans:
        _, x = rows.logits(p0, p1, t)  # (tp, tc)
        if diag is not None:
            d, i0 = _diagonal(x, p0, diag)
            pos[i0 : i0 + d.numel()] = d
        e = rows.scratch(x)
        torch.logaddexp(lse_rows[p0:p1], _lse(x, 1, e), out=lse_rows[p0:p1])
        torch.logaddexp(out, _lse(x, 0, e), out=out)


def _clip_backward(rows: _Rows, cols, diag, out, *, lse_rows, g_row, g_pos, d_rows) -> None:
    """Recompute each tile once; `G = g_row exp(X - r) + g_col exp(X - c) - g_pos delta` gives both gradients."""
    t, lse_cols, g_col = cols
    for p0, p1 in rows.spans:
        q, x = rows.logits(p0, p1, t)  # (tp, tc)
        e = rows.scratch(x)
        torch.sub(x, lse_cols, out=e).exp_().mul_(g_col)  # text -> image softmax
        x.sub_(lse_rows[p0:p1, None]).exp_().mul_(g_row).add_(e)  # + image -> text softmax = G
        if diag is not None:
            _diagonal(x, p0, diag)[0].sub_(g_pos)
        d_rows[p0:p1].addmm_(x, t)  # sum_j G_ij T_j   (s applied at the end)
        out.addmm_(x.T, q)  # sum_i G_ij s I_i


def _siglip_forward(rows: _Rows, cols, diag, out, *, bias, total) -> None:
    """Add `sum softplus(-z X)` over all local rows x one column chunk to `total`."""
    (t,) = cols
    for p0, p1 in rows.spans:
        _, x = rows.logits(p0, p1, t, bias)
        if diag is not None:
            _diagonal(x, p0, diag)[0].neg_()  # positives: softplus(-X_ii), exact (no softplus(x) - x cancellation)
        total.sub_(F.logsigmoid(x.neg_()).sum())  # softplus(y) = -logsigmoid(-y)


def _siglip_backward(rows: _Rows, cols, diag, out, *, bias, g, d_rows, d_bias) -> None:
    """`G = g (sigmoid(X) - delta)`, with `sigmoid(X_ii) - 1 = -sigmoid(-X_ii)` on the diagonal."""
    (t,) = cols
    for p0, p1 in rows.spans:
        q, x = rows.logits(p0, p1, t, bias)
        d = _diagonal(x, p0, diag)[0] if diag is not None else None
        if d is not None:
            d.neg_()
        x.sigmoid_()
        if d is not None:
            d.neg_()
        x.mul_(g)
        d_bias.add_(x.sum())
        d_rows[p0:p1].addmm_(x, t)
        out.addmm_(x.T, q)


# ---------------------------------------------------------------------------------------------------- column sweeps
# A sweep runs `kernel(cols, diag, out)` for every chunk of <= tile columns of the global batch against this rank's
# rows. `payload` are `(b_l, ...)` tensors describing this rank's columns (they travel with them); `diag` is the
# chunk's first index in this rank's block when the chunk is this rank's own (so the positives are in it), else None;
# `out` is the chunk's accumulator ("lse": log-sum-exp, "sum": sum) for this rank's rows only. The sweep returns
# the accumulators of this rank's columns merged over all ranks.
Kernel = Callable[..., None]  # (cols, diag, out) -> None


_NEUTRAL = {"lse": -math.inf, "sum": 0.0}


def _neutral(acc, n: int, like: torch.Tensor) -> torch.Tensor | None:
    return None if acc is None else like.new_full((n, *acc[1]), _NEUTRAL[acc[0]])


def _merge(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logaddexp(a, b, out=a) if kind == "lse" else a.add_(b)


def _sweep(comm, payload, kernel: Kernel, acc, tile: int, dtype: torch.dtype):
    if comm is None:
        return _sweep_local(payload, kernel, acc, tile, dtype)
    if comm.mode == "gather":
        return _sweep_gather(comm, payload, kernel, acc, tile, dtype)
    return _sweep_ring(comm, payload, kernel, acc, tile, dtype)


def _sweep_local(payload, kernel: Kernel, acc, tile: int, dtype):
    b_l = payload[0].shape[0]
    out = _neutral(acc, b_l, payload[0].new_empty((), dtype=dtype))
    for q0, q1 in _spans(b_l, tile):
        kernel(tuple(x[q0:q1].to(dtype) for x in payload), q0, None if out is None else out[q0:q1])
    return out


def _sweep_gather(comm: _Comm, payload, kernel: Kernel, acc, tile: int, dtype):
    """All columns gathered on every rank (b * d floats); accumulators reduced over ranks at the end."""
    b_l = payload[0].shape[0]
    full = [comm.all_gather(x) for x in payload]  # (world * b_l, ...)
    out = _neutral(acc, comm.size * b_l, payload[0].new_empty((), dtype=dtype))
    for owner in range(comm.size):
        for q0, q1 in _spans(b_l, tile):
            j0, j1 = owner * b_l + q0, owner * b_l + q1
            diag = q0 if owner == comm.rank else None
            kernel(tuple(x[j0:j1].to(dtype) for x in full), diag, None if out is None else out[j0:j1])
    return None if out is None else comm.reduce_own(out, acc[0])


def _sweep_ring(comm: _Comm, payload, kernel: Kernel, acc, tile: int, dtype):
    """Chunk-major ring. For chunk index j, rank r processes (r, j), (r-1, j), ..., (r-n+1, j), one per step; at each
    step it forwards the chunk it is computing on and, in the same buffer, the accumulator of the chunk it computed
    the step before (merged with its predecessor's), so accumulators travel one hop behind their columns. At the
    first step of chunk j the accumulator that arrives is the finished one of this rank's chunk j - 1.

    Memory: three message buffers (send, receive, and the one holding the columns being computed on) and one
    accumulator chunk, all allocated once: O(tile * d), whatever the batch."""
    n, b_l = comm.size, payload[0].shape[0]
    spans = _spans(b_l, tile)
    like = payload[0].new_empty((), dtype=dtype)
    out = _neutral(acc, b_l, like)
    width = sum(math.prod(x.shape[1:]) for x in payload) + (0 if acc is None else math.prod(acc[1]))
    buffers = [like.new_empty(spans[0][1] * width) for _ in range(3)]
    partial = _neutral(acc, spans[0][1], like)  # this rank's part of a chunk's accumulator, then the chain
    chain, held = None, None  # chain: accumulator of the chunk computed at the previous step; held: buffer of `cols`
    for j, (q0, q1) in enumerate(spans):
        cols, held = tuple(x[q0:q1].to(dtype) for x in payload), None  # own chunk first
        for k in range(n):
            parts = (list(cols) if k < n - 1 else []) + ([] if chain is None else [chain])
            send, recv = [i for i in range(3) if i != held][:2]
            hop = _Hop(comm, parts, buffers[send], buffers[recv]) if parts else None  # packs before partial resets
            mine = None if acc is None else partial[: q1 - q0].fill_(_NEUTRAL[acc[0]])
            kernel(cols, q0 if k == 0 else None, mine)  # overlapped with the transfer
            received = hop.wait() if hop is not None else []
            if acc is not None:
                incoming = received.pop() if chain is not None else None
                if k > 0:
                    _merge(acc[0], mine, incoming)
                elif j > 0:
                    out[slice(*spans[j - 1])] = incoming
                chain = mine
            cols, held = tuple(received), recv
    if acc is not None:  # last hop: the finished accumulator of chunk (r + 1, last) goes home
        out[slice(*spans[-1])] = _Hop(comm, [chain], buffers[0], buffers[1]).wait()[0]
    return out


# -------------------------------------------------------------------------------------------- autograd Functions
def _no_autocast(x: torch.Tensor):
    return torch.autocast(device_type=x.device.type, enabled=False)


class _ClipLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, comm, tile):
        dtype = _compute_dtype(image, text)
        b_l = image.shape[0]
        with _no_autocast(image):
            rows = _Rows(image, scale.reshape(()).to(dtype), tile, dtype)
            lse_rows = image.new_full((b_l,), -math.inf, dtype=dtype)
            pos = image.new_empty((b_l,), dtype=dtype)

            def kernel(cols, diag, out):
                _clip_forward(rows, cols, diag, out, lse_rows=lse_rows, pos=pos)

            lse_cols = _sweep(comm, (text,), kernel, ("lse", ()), tile, dtype)
            loss = (0.5 * (lse_rows + lse_cols) - pos).mean()
        ctx.save_for_backward(image, text, scale, lse_rows, lse_cols)
        ctx.comm, ctx.tile, ctx.bias_like = comm, tile, None if bias is None else torch.zeros_like(bias)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        image, text, scale, lse_rows, lse_cols = ctx.saved_tensors
        dtype, (b_l, dim) = lse_rows.dtype, image.shape
        with _no_autocast(image):
            rows = _Rows(image, scale.reshape(()).to(dtype), ctx.tile, dtype)
            g = grad.to(dtype) / b_l  # dL/dX_ii of the positive term; each softmax gets half
            g_col = (0.5 * g).expand(b_l)  # travels with its columns: their owner's upstream gradient
            d_rows = image.new_zeros((b_l, dim), dtype=dtype)

            def kernel(cols, diag, out):
                _clip_backward(rows, cols, diag, out, lse_rows=lse_rows, g_row=0.5 * g, g_pos=g, d_rows=d_rows)

            d_text = _sweep(ctx.comm, (text, lse_cols, g_col), kernel, ("sum", (dim,)), ctx.tile, dtype)
            d_scale = rows.dot(d_rows)
            d_image = d_rows.mul_(rows.scale)
        return (
            d_image.to(image.dtype),
            d_text.to(text.dtype),
            d_scale.reshape(scale.shape).to(scale.dtype),
            ctx.bias_like,
            None,
            None,
        )


class _SigLipLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, scale, bias, comm, tile):
        dtype = _compute_dtype(image, text)
        with _no_autocast(image):
            rows = _Rows(image, scale.reshape(()).to(dtype), tile, dtype)
            b = None if bias is None else bias.reshape(()).to(dtype)
            total = image.new_zeros((), dtype=dtype)

            def kernel(cols, diag, out):
                _siglip_forward(rows, cols, diag, out, bias=b, total=total)

            _sweep(comm, (text,), kernel, None, tile, dtype)
        ctx.save_for_backward(image, text, scale, bias)
        ctx.comm, ctx.tile, ctx.dtype = comm, tile, dtype
        return total / image.shape[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        image, text, scale, bias = ctx.saved_tensors
        dtype, (b_l, dim) = ctx.dtype, image.shape
        with _no_autocast(image):
            rows = _Rows(image, scale.reshape(()).to(dtype), ctx.tile, dtype)
            b, g = None if bias is None else bias.reshape(()).to(dtype), grad.to(dtype) / b_l
            d_rows = image.new_zeros((b_l, dim), dtype=dtype)
            d_bias = image.new_zeros((), dtype=dtype)

            def kernel(cols, diag, out):
                _siglip_backward(rows, cols, diag, out, bias=b, g=g, d_rows=d_rows, d_bias=d_bias)

            d_text = _sweep(ctx.comm, (text,), kernel, ("sum", (dim,)), ctx.tile, dtype)
            d_scale = rows.dot(d_rows)
            d_image = d_rows.mul_(rows.scale)
        return (
            d_image.to(image.dtype),
            d_text.to(text.dtype),
            d_scale.reshape(scale.shape).to(scale.dtype),
            None if bias is None else d_bias.reshape(bias.shape).to(bias.dtype),
            None,
            None,
        )
