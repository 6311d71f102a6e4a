"""Single-process tests of hfmm.losses: fp64 parity with the naive losses, gradcheck, stability, mixed precision,
a property test, and a deterministic memory test (bytes saved for backward)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from hfmm.losses import DEFAULT_TILE_SIZE, clip_loss, naive_clip_loss, naive_siglip_loss, siglip_loss

LOSSES = {"clip": (clip_loss, naive_clip_loss), "siglip": (siglip_loss, naive_siglip_loss)}


def _embeds(batch, dim, dtype=torch.float64, seed=0, noise=0.5):
    """Unit pairs `text = image + noise * randn`: small noise means pairs that agree (large positive logits);
    `noise=None` gives unrelated pairs."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    text = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    if noise is not None:
        text = image + noise * text
    return F.normalize(image, dim=-1).to(dtype), F.normalize(text, dim=-1).to(dtype)


def _run(fn, image, text, scale, bias, **kwargs):
    """Loss and gradients (image, text, scale, bias) of `fn` on fresh leaves."""
    leaves = [x.detach().clone().requires_grad_() for x in (image, text, scale)]
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    loss = fn(*leaves, logit_bias=bias, **kwargs)
    loss.backward()
    grads = [x.grad for x in leaves] + ([] if bias is None else [bias.grad])
    return loss.detach(), grads


def _tiled(kind):
    return LOSSES[kind][0]


def _naive(kind):
    naive = LOSSES[kind][1]
    return lambda image, text, scale, logit_bias: naive(image, text, scale, logit_bias)


# -------------------------------------------------------------------------------------------- fp64 parity (grid)
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("batch", [1, 7, 64, 130])
@pytest.mark.parametrize("dim", [3, 32])
@pytest.mark.parametrize("tile", [1, 5, 64, 512])
def test_fp64_parity_with_naive(kind, batch, dim, tile):
    image, text = _embeds(batch, dim)
    for scale, bias in itertools.product([1.0, 14.3, 100.0], [None, -10.0]):
        scale = torch.tensor(scale, dtype=torch.float64)
        bias = None if bias is None else torch.tensor([bias], dtype=torch.float64)
        loss, grads = _run(_tiled(kind), image, text, scale, bias, tile_size=tile)
        ref_loss, ref_grads = _run(_naive(kind), image, text, scale, bias)
        msg = f"{kind} B={batch} d={dim} tile={tile} scale={scale.item()} bias={bias}"
        torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-10, msg=msg)
        for name, g, ref in zip(("image", "text", "scale", "bias"), grads, ref_grads):
            torch.testing.assert_close(g, ref, rtol=0, atol=1e-10, msg=f"{msg}: d{name}")


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(sorted(LOSSES)),
    batch=st.integers(1, 48),
    dim=st.integers(1, 24),
    tile=st.integers(1, 64),
    scale=st.floats(0.0, 100.0),
    bias=st.one_of(st.none(), st.floats(-20.0, 20.0)),
    noise=st.sampled_from([None, 0.1, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_property_matches_naive(kind, batch, dim, tile, scale, bias, noise, seed):
    image, text = _embeds(batch, dim, seed=seed, noise=noise)
    scale = torch.tensor([scale], dtype=torch.float64)  # shape [1], as the models' logit_scale
    bias = None if bias is None else torch.tensor(bias, dtype=torch.float64)
    loss, grads = _run(_tiled(kind), image, text, scale, bias, tile_size=tile)
    ref_loss, ref_grads = _run(_naive(kind), image, text, scale, bias)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-10)
    for g, ref in zip(grads, ref_grads):
        assert g.shape == ref.shape
        torch.testing.assert_close(g, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", LOSSES)
def test_gradcheck(kind):
    image, text = _embeds(6, 4)
    inputs = (
        image.requires_grad_(),
        text.requires_grad_(),
        torch.tensor([3.0], dtype=torch.float64, requires_grad=True),
        torch.tensor(-1.5, dtype=torch.float64, requires_grad=True),
    )

    def fn(image, text, scale, bias):
        return _tiled(kind)(image, text, scale, logit_bias=bias, tile_size=4)  # 2 x 2 tiles, uneven

    assert torch.autograd.gradcheck(fn, inputs)


# ---------------------------------------------------------------------------------------------------- stability
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("same_rows", [False, True])
def test_identical_features_at_scale_100_stay_finite(kind, same_rows):
    image, _ = _embeds(300, 16, dtype=torch.float32)
    if same_rows:  # every logit is 100: the softmax is flat, the loss is log(B)
        image = image[:1].expand(300, -1).contiguous()
    scale, bias = torch.tensor(100.0), torch.tensor(-10.0)
    loss, grads = _run(_tiled(kind), image, image, scale, bias, tile_size=128)
    ref_loss, ref_grads = _run(_naive(kind), image.double(), image.double(), scale.double(), bias.double())
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-6, atol=1e-5)
    for g, ref in zip(grads, ref_grads):  # fp32: the scale gradient sums b^2 terms of size 100/b^2 to ~0
        torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("kind", LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("scale", [14.3, 100.0])
def test_low_precision_inputs_match_fp64_on_the_same_rounded_inputs(kind, dtype, scale):
    # noise=2: a loss of order 1 at both scales. Nearly saturated losses (strongly agreeing pairs at scale 100) have
    # gradients of 1e-5 and below that come out of cancellations no fp32 computation resolves.
    image, text = _embeds(300, 64, dtype=dtype, noise=2.0)
    scale, bias = torch.tensor([scale]), torch.tensor([-10.0])  # fp32 parameters, as in a model under AMP
    loss, grads = _run(_tiled(kind), image, text, scale, bias, tile_size=128)
    assert loss.dtype == torch.float32
    assert [g.dtype for g in grads] == [dtype, dtype, torch.float32, torch.float32]

    exact = [x.double() for x in (image, text, scale, bias)]
    ref_loss, ref_grads = _run(_naive(kind), *exact)
    # 1e-5 absolute; relative above 1, where fp32's own spacing is wider (SigLIP at scale 100 is ~470)
    assert abs(loss.double() - ref_loss) <= 1e-5 * max(1.0, ref_loss.abs().item())
    for g, ref in zip(grads, ref_grads):
        # one rounding to the gradient's dtype, plus fp32 accumulation error; CLIP's bias gradient is exactly 0
        tol = torch.finfo(g.dtype).eps * ref.abs() + 1e-5 * ref.abs().max() + 1e-12
        assert ((g.double() - ref).abs() <= tol).all(), ((g.double() - ref).abs() / tol).max()


@pytest.mark.parametrize("kind", LOSSES)
def test_same_result_inside_and_outside_autocast(kind):
    image, text = _embeds(200, 32, dtype=torch.bfloat16)
    scale, bias = torch.tensor(30.0), torch.tensor(-10.0)
    outside = _run(_tiled(kind), image, text, scale, bias, tile_size=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = _run(_tiled(kind), image, text, scale, bias, tile_size=64)
        # autocast is live here: the naive loss's matmul runs in bf16 and changes the result
        naive_inside = _naive(kind)(image.float(), text.float(), scale, bias)
    assert not torch.equal(naive_inside, _naive(kind)(image.float(), text.float(), scale, bias))
    assert torch.equal(outside[0], inside[0])
    for a, b in zip(outside[1], inside[1]):
        assert torch.equal(a, b)


def test_fp32_large_batch_several_default_tiles():
    image, text = _embeds(2 * DEFAULT_TILE_SIZE + 37, 32, dtype=torch.float32)
    scale = torch.tensor(100.0)
    loss, grads = _run(clip_loss, image, text, scale, None)
    ref_loss, ref_grads = _run(naive_clip_loss, image.double(), text.double(), scale.double(), None)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=0, atol=1e-5)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g.double(), ref, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------------------------- memory
def _saved_bytes(fn, batch, dim):
    """Bytes of the distinct storages autograd keeps for backward."""
    image, text = _embeds(batch, dim)
    image.requires_grad_()
    text.requires_grad_()
    scale = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn(image, text, scale, logit_bias=bias)
    loss.backward()
    return sum(storages.values())


@pytest.mark.parametrize("kind", LOSSES)
def test_saved_memory_is_linear_in_batch(kind):
    dim, batches = 16, [256, 512, 1024, 2048]
    tiled = [_saved_bytes(lambda *a, **k: _tiled(kind)(*a, **k, tile_size=128), b, dim) for b in batches]
    naive = [_saved_bytes(_naive(kind), b, dim) for b in batches]
    for b, saved in zip(batches, tiled):
        assert saved <= 3 * 8 * b * dim  # the two fp64 inputs, plus O(b) statistics
    assert all(big / small <= 2.1 for small, big in zip(tiled, tiled[1:])), tiled
    assert all(big / small >= 3.5 for small, big in zip(naive, naive[1:])), naive  # the probe sees b x b


# ------------------------------------------------------------------------------------------------- API contract
@pytest.mark.parametrize("kind", LOSSES)
def test_modes_and_tiles_agree_without_distributed(kind):
    image, text = _embeds(50, 8)
    scale, bias = torch.tensor([20.0], dtype=torch.float64), torch.tensor([-10.0], dtype=torch.float64)
    ref = _run(_tiled(kind), image, text, scale, bias, mode="local", tile_size=7)
    for kwargs in ({"mode": "auto"}, {"tile_size": 50}, {"tile_size": 1000}):
        out = _run(_tiled(kind), image, text, scale, bias, **kwargs)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert [g.shape for g in ref[1][2:]] == [(1,), (1,)]


@pytest.mark.parametrize("kind", LOSSES)
def test_no_grad_and_compile(kind):
    image, text = _embeds(20, 8, dtype=torch.float32)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    expected = _tiled(kind)(image, text, scale, logit_bias=bias, tile_size=8)
    with torch.no_grad():
        assert torch.equal(_tiled(kind)(image, text, scale, logit_bias=bias, tile_size=8), expected)
    compiled = torch.compile(
        lambda i, t: _tiled(kind)(i * 1.0, t, scale, logit_bias=bias, tile_size=8), backend="eager"
    )
    torch.testing.assert_close(compiled(image, text), expected)


def test_clip_bias_gradient_is_exactly_zero():
    image, text = _embeds(10, 4)
    _, grads = _run(clip_loss, image, text, torch.tensor(5.0, dtype=torch.float64), torch.tensor(-3.0).double())
    assert torch.equal(grads[3], torch.zeros_like(grads[3]))


@pytest.mark.parametrize("fn", [clip_loss, siglip_loss])
def test_bad_inputs_raise_value_error(fn):
    x = torch.randn(4, 3)
    s, b = torch.tensor(10.0), torch.tensor(-10.0)
    cases = [
        ("same shape", dict(image_embeds=x, text_embeds=torch.randn(5, 3))),
        ("2-D float", dict(image_embeds=x[0], text_embeds=x[0])),
        ("2-D float", dict(image_embeds=x.long(), text_embeds=x.long())),
        ("empty", dict(image_embeds=x[:0], text_embeds=x[:0])),
        ("one element", dict(logit_scale=torch.ones(2))),
        ("finite", dict(logit_scale=torch.tensor(float("inf")))),
        ("finite", dict(logit_scale=torch.tensor(float("nan")))),
        ("finite", dict(logit_bias=torch.tensor(float("-inf")))),
        ("tile_size", dict(tile_size=0)),
        ("tile_size", dict(tile_size=-3)),
        ("tile_size", dict(tile_size=2.5)),
        ("mode", dict(mode="allgather")),
        ("initialised", dict(mode="ring")),
    ]
    for match, override in cases:
        kwargs = dict(image_embeds=x, text_embeds=x, logit_scale=s, logit_bias=b) | override
        args = [kwargs.pop(k) for k in ("image_embeds", "text_embeds", "logit_scale")]
        with pytest.raises(ValueError, match=match):
            fn(*args, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kind", LOSSES)
def test_cuda_matches_naive(kind):
    torch.backends.cuda.matmul.allow_tf32 = False
    image, text = (x.cuda() for x in _embeds(3000, 64))
    scale, bias = torch.tensor(50.0, dtype=torch.float64).cuda(), torch.tensor(-10.0, dtype=torch.float64).cuda()
    loss, grads = _run(_tiled(kind), image, text, scale, bias, tile_size=1024)
    ref_loss, ref_grads = _run(_naive(kind), image, text, scale, bias)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-10)
    for g, ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, ref, rtol=0, atol=1e-10)
