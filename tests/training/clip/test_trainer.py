"""CLIPTrainer: GradCache exactness, two-process DDP exactness, resume, logit-scale clamping."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import clip_batch, tiny_clip_config

from hfmm import HfmmCLIPModel
from hfmm.losses import clip_loss
from hfmm.training.clip.arguments import CLIPTrainingArguments
from hfmm.training.clip.trainer import CLIPTrainer, LogitScaleClampCallback

WORKER = Path(__file__).with_name("train_worker.py")


def run_worker(out: Path, *flags: str, processes: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    result = subprocess.run([*launcher, str(WORKER), str(out), *flags], capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def gradients(dtype, chunk, batch, tmp_path) -> dict:
    torch.manual_seed(0)
    model = HfmmCLIPModel(tiny_clip_config()).to(dtype)
    args = CLIPTrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        per_device_train_batch_size=16,
        grad_cache_chunk_size=chunk,
    )
    trainer = CLIPTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; one micro-batch per step here
    trainer.training_step(model, dict(batch))
    return {name: param.grad.clone() for name, param in model.named_parameters()}


@pytest.mark.parametrize("chunk", [2, 4])
def test_grad_cache_gradients_equal_full_batch(tmp_path, chunk):
    """fp64: the identity is exact. fp32: GradCache adds no error of its own.

    In fp32 the chunked forward runs matmuls of other shapes, so embeddings round differently; the full-batch fp32
    gradient is itself 2.6e-6 away from the exact (fp64) gradient on this model (bias gradients of magnitude 0.4),
    and GradCache's distance from the exact gradient is held to the same size.
    """
    batch64 = clip_batch(16, torch.float64)
    assert (
        max_diff(gradients(torch.float64, None, batch64, tmp_path), gradients(torch.float64, chunk, batch64, tmp_path))
        <= 1e-12
    )
    batch32 = clip_batch(16)
    exact = gradients(torch.float64, None, {**batch32, "pixel_values": batch32["pixel_values"].double()}, tmp_path)
    full, cached = (
        gradients(torch.float32, None, batch32, tmp_path),
        gradients(torch.float32, chunk, batch32, tmp_path),
    )
    assert max_diff(full, cached) <= 5e-6
    full_error = max_diff({n: g.double() for n, g in full.items()}, exact)
    cached_error = max_diff({n: g.double() for n, g in cached.items()}, exact)
    assert cached_error <= 1.25 * full_error + 1e-7
    assert full["logit_scale"].abs().item() > 1e-3  # the scale gradient is real and carried through the cache


DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
    ),
]


@pytest.mark.parametrize("device", DEVICES)
def test_grad_cache_replays_dropout_randomness(tmp_path, device):
    """With patch dropout and attention dropout on, GradCache's second forward of each chunk must draw the same masks
    as its first (the cached embeddings): its gradients equal those of the same chunks embedded once with gradients.
    A second forward without the restored RNG state draws other masks and misses by orders of magnitude."""
    config = tiny_clip_config(
        vision={"drop_patch_rate": 0.5, "attention_dropout": 0.3}, text={"attention_dropout": 0.3}
    )
    batch = {k: v.to(device) for k, v in clip_batch(16, torch.float64).items()}
    torch.manual_seed(0)
    model = HfmmCLIPModel(config).double().to(device).train()

    torch.manual_seed(1)  # the reference: every chunk embedded once, with gradients, in GradCache's order
    outs = [model(pixel_values=batch["pixel_values"][i : i + 4], input_ids=batch["input_ids"][i : i + 4],
                  return_logits=False) for i in range(0, 16, 4)]  # fmt: skip
    image, text = (torch.cat([getattr(o, name) for o in outs]) for name in ("image_embeds", "text_embeds"))
    clip_loss(image, text, outs[-1].logit_scale, mode="local").backward()
    expected = {name: param.grad.clone() for name, param in model.named_parameters()}
    with torch.no_grad():
        without_dropout = model.eval()(**batch, return_logits=False).image_embeds
    model.train().zero_grad(set_to_none=True)
    args = CLIPTrainingArguments(
        output_dir=str(tmp_path), use_cpu=device == "cpu", report_to=[], per_device_train_batch_size=16,
        grad_cache_chunk_size=4, loss_mode="local",
    )  # fmt: skip
    trainer = CLIPTrainer(model=model, args=args)
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(1)
    trainer.training_step(model, dict(batch))
    got = {name: param.grad for name, param in model.named_parameters()}
    assert max_diff(expected, got) <= 1e-12
    assert (image.detach() - without_dropout).abs().max() > 1e-5  # dropout really changed the embeddings (~1e-3)


def test_grad_cache_trains_a_contrastive_batch_8x_the_device_batch(tmp_path):
    out = tmp_path / "gc"
    run_worker(
        out, "--dtype", "float32", "--steps", "6", "--batch", "16", "--grad-cache", "2", "--optim", "adamw_torch"
    )
    log = torch.load(out / "rank0.pt", weights_only=True)["log"]
    losses = [entry["loss"] for entry in log if "loss" in entry]
    assert len(losses) == 6 and losses[-1] < losses[0]


@pytest.mark.parametrize("mode", ["gather", "ring"])
def test_two_processes_equal_one(tmp_path, mode):
    """2 gloo ranks x 4 samples == 1 process x 8 samples: first-step gradients and 2 SGD steps.

    fp64 shows the identity is exact (1e-12 on gradients, 1e-10 on parameters). In fp32 the two runs sum the
    same per-sample terms in a different order (per rank, then averaged by DDP), which moves O(1) gradients by a
    few ulps (2e-6 measured on bias gradients of magnitude 0.9), so fp32 is held to 5e-6 absolute.
    """
    for dtype in ("float32", "float64"):
        single, double = tmp_path / f"one-{dtype}", tmp_path / f"two-{dtype}"
        run_worker(single, "--dtype", dtype, "--batch", "8", "--mode", "local")
        run_worker(double, "--dtype", dtype, "--batch", "4", "--mode", mode, processes=2)
        one, ranks = (
            torch.load(single / "rank0.pt", weights_only=True),
            [torch.load(double / f"rank{r}.pt", weights_only=True) for r in (0, 1)],
        )
        ratio = ranks[0]["grads"]["logit_scale"] / one["grads"]["logit_scale"]
        assert abs(ratio.item() - 1) <= 1e-5  # the scale gradient is not multiplied by the world size
        if dtype == "float32":
            assert max_diff(one["grads"], ranks[0]["grads"]) <= 5e-6
        else:
            assert max_diff(one["grads"], ranks[0]["grads"]) <= 1e-12
            assert max_diff(one["params"], ranks[0]["params"]) <= 1e-10
            assert max_diff(ranks[0]["params"], ranks[1]["params"]) == 0.0


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path):
    flags = ["--dtype", "float32", "--steps", "6", "--batch", "8", "--optim", "adamw_torch", "--sampling", "random"]
    run_worker(tmp_path / "straight", *flags)
    crashed = run_worker(tmp_path / "crashed", *flags, "--save-steps", "3", "--crash-after", "4", check=False)
    assert crashed.returncode == 3 and (tmp_path / "crashed" / "run" / "checkpoint-3").is_dir()
    assert not (tmp_path / "crashed" / "rank0.pt").exists()
    checkpoint = str(tmp_path / "crashed" / "run" / "checkpoint-3")
    run_worker(tmp_path / "crashed", *flags, "--save-steps", "3", "--resume", checkpoint)
    straight, resumed = (
        torch.load(tmp_path / "straight" / "rank0.pt", weights_only=True),
        torch.load(tmp_path / "crashed" / "rank0.pt", weights_only=True),
    )
    assert max_diff(straight["params"], resumed["params"]) <= 1e-6


def test_logit_scale_is_clamped_after_the_step():
    model = HfmmCLIPModel(tiny_clip_config())
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    LogitScaleClampCallback(max_logit_scale=100.0).on_optimizer_step(None, None, None, model=model)
    assert model.logit_scale.item() == pytest.approx(math.log(100.0))
    assert model.logit_scale.shape == (1,)


def test_unknown_loss_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="key loss has value 'infonce'; expected 'clip' | 'siglip'"):
        CLIPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], loss="infonce")
    with pytest.raises(ValueError, match="grad_cache_chunk_size must be positive, got 0"):
        CLIPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], grad_cache_chunk_size=0)


def test_trainer_takes_its_own_arguments_class(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(TypeError, match="CLIPTrainer reads its settings from a CLIPTrainingArguments"):
        CLIPTrainer(model=HfmmCLIPModel(tiny_clip_config()), args=args)
