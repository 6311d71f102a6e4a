"""CLIP training through the real recipe under `accelerate launch --config_file recipes/accelerate/fsdp.yaml`.

Two gloo processes, FSDP2 from the shipped config (activation checkpointing on, sharded checkpoints), accelerate's
CPU gate lifted in test code only (tests/fsdp_on_cpu/sitecustomize.py). Each run's reference is the same recipe in
one plain process on the same global batch: 2 ranks x 4 samples against 1 x 8 with sequential sampling (accelerate
deals whole batches round-robin, so the ranks' first batches are samples 0-3 and 4-7, and the contrastive loss of a
global batch does not depend on its order), fp64, plain SGD, no random augmentation (stochastic depth off, crops of
the whole image), so the parameters must agree to rounding.
"""

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_launch import ROOT, accelerate_launch
from safetensors.torch import load_file
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModel, set_seed

from hfmm.demo.synthetic import make_shapes_dataset
from hfmm.training.clip.arguments import CLIPModelArguments
from hfmm.training.clip.model import load_model_and_processor

RECIPE = ROOT / "recipes" / "clip_pretrain.py"
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TOWERS = {
    "vit": {
        "projection_dim": 16,
        "text_config": TINY_TEXT,
        "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4},
    },
    "convnext": {
        "projection_dim": 16,
        "text_config": TINY_TEXT,
        "vision_config": {"timm_model_name": "convnext_atto", "hidden_size": 320, "image_size": 32,
                          "drop_path_rate": 0.0},
    },
}  # fmt: skip
PRESETS = {"vit": "ViT-B-32", "convnext": "convnext_base"}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    return make_shapes_dataset(tmp_path_factory.mktemp("fsdp_data"), 16, seed=0, split="train")


def recipe_args(tower: str, pairs: Path, out: Path, *extra: str, batch: int = 4) -> list[str]:
    """The tiny recipe, fp64, 2 SGD steps, with a deterministic crop (scale and ratio 1: the whole image)."""
    overrides = {
        "preset": PRESETS[tower], "config_overrides": json.dumps(TOWERS[tower]), "dtype": "float64",
        "train_data": str(pairs), "output_dir": str(out), "per_device_train_batch_size": str(batch),
        "max_steps": "2", "optim": "sgd", "learning_rate": "0.5", "lr_scheduler_type": "constant",
        "warmup_steps": "0", "max_grad_norm": "0", "weight_decay": "0", "rrc_scale": "[1, 1]", "rrc_ratio": "[1, 1]",
        "train_sampling_strategy": "sequential", "dataloader_num_workers": "0", "logging_steps": "1",
        "save_strategy": "no", "disable_tqdm": "true",
    }  # fmt: skip
    argv = ["--config", str(ROOT / "recipes" / "clip" / "tiny_demo.yaml")]
    argv += [item for key, value in overrides.items() for item in (f"--{key}", value)]
    return argv + list(extra)


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.fixture(scope="module", params=sorted(TOWERS))
def runs(request, pairs, tmp_path_factory) -> dict:
    """One plain process (batch 8) and two FSDP ranks (batch 4 each) of the same recipe; FSDP checkpoints every step."""
    tower, root = request.param, tmp_path_factory.mktemp(f"fsdp_{request.param}")
    accelerate_launch(RECIPE, recipe_args(tower, pairs, root / "plain", batch=8), processes=0)
    checkpoints = ("--save_strategy", "steps", "--save_steps", "1")
    accelerate_launch(RECIPE, recipe_args(tower, pairs, root / "fsdp", *checkpoints))
    return {"tower": tower, "root": root, "plain": root / "plain", "fsdp": root / "fsdp"}


def test_fsdp_two_ranks_equal_one_process(runs):
    set_seed(0)  # the recipe seeds before building the model: this is its initial model
    model_args = CLIPModelArguments(preset=PRESETS[runs["tower"]], config_overrides=TOWERS[runs["tower"]])
    initial, _ = load_model_and_processor(model_args)
    initial = {name: tensor.double() for name, tensor in initial.state_dict().items()}
    plain, fsdp = weights(runs["plain"]), weights(runs["fsdp"])
    assert {tensor.dtype for tensor in fsdp.values()} == {torch.float64}
    moved = max((plain[name] - initial[name]).abs().max().item() for name in plain)
    assert moved > 1e-3  # two SGD steps changed the model: the comparison below is not vacuous
    assert max_diff(plain, fsdp) <= 1e-10


def test_fsdp_parameters_are_sharded_across_ranks(runs):
    """The checkpoint holds FSDP's own shards: every large tensor is stored as one chunk per rank."""
    reader = FileSystemReader(str(runs["fsdp"] / "checkpoint-1" / "pytorch_model_fsdp_0"))
    tensors = reader.read_metadata().state_dict_metadata
    large = {name: meta for name, meta in tensors.items() if hasattr(meta, "chunks") and meta.size.numel() >= 64}
    assert len(large) > 20
    for name, meta in large.items():
        assert len(meta.chunks) == 2, name  # dim-0 shards of a DTensor, one per rank
        assert sum(chunk.sizes[0] for chunk in meta.chunks) == meta.size[0], name


def test_fsdp_saved_folder_is_the_plain_models(runs):
    """Same files as a one-process save (hfmm's modeling files, no torch `_fsdp_*.py`), loadable by hfmm and by
    transformers alone with remote code."""
    fsdp, plain = runs["fsdp"], runs["plain"]
    assert sorted(p.name for p in fsdp.iterdir() if p.is_file()) == sorted(p.name for p in plain.iterdir())
    assert sorted(p.name for p in fsdp.glob("*.py")) == [
        "configuration_clip.py",
        "modeling_clip.py",
        "processing_clip.py",
    ]
    config = json.loads((fsdp / "config.json").read_text())
    assert config["architectures"] == ["HfmmCLIPModel"]
    assert set(config["auto_map"].values()) == {"configuration_clip.HfmmCLIPConfig", "modeling_clip.HfmmCLIPModel"}
    assert type(AutoModel.from_pretrained(fsdp)).__name__ == "HfmmCLIPModel"
    code = (
        "import sys; from transformers import AutoModel; "
        "m = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True); "
        "assert 'hfmm' not in sys.modules, 'hfmm was imported'; print(type(m).__module__, type(m).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(fsdp)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "HfmmCLIPModel"


def test_fsdp_run_killed_after_a_checkpoint_resumes_to_the_same_model(runs, pairs, monkeypatch):
    """Killed right after the sharded checkpoint of step 1, resumed from it: ends where the uninterrupted run did."""
    tower, out = runs["tower"], runs["root"] / "killed"
    checkpoints = ("--save_strategy", "steps", "--save_steps", "1")
    monkeypatch.setenv("HFMM_TEST_EXIT_AFTER_CHECKPOINT", "1")
    killed = accelerate_launch(RECIPE, recipe_args(tower, pairs, out, *checkpoints), check=False)
    assert killed.returncode != 0 and not (out / "model.safetensors").exists()
    assert (out / "checkpoint-1" / "pytorch_model_fsdp_0").is_dir()
    monkeypatch.delenv("HFMM_TEST_EXIT_AFTER_CHECKPOINT")
    accelerate_launch(RECIPE, recipe_args(tower, pairs, out, "--resume_from_checkpoint", str(out / "checkpoint-1")))
    assert max_diff(weights(runs["fsdp"]), weights(out)) <= 1e-6


def test_fsdp_gradient_accumulation_and_grad_cache_equal_one_process(pairs, tmp_path):
    """2 ranks x 2 samples, 2 accumulated micro-batches, GradCache in chunks of 1, against one plain process with
    micro-batches of 4: the contrastive batch of each micro-step is the same 4 samples, so the updates are equal."""
    accumulate = ("--gradient_accumulation_steps", "2")
    accelerate_launch(RECIPE, recipe_args("vit", pairs, tmp_path / "plain", *accumulate), processes=0)
    grad_cache = ("--grad_cache_chunk_size", "1")
    accelerate_launch(RECIPE, recipe_args("vit", pairs, tmp_path / "fsdp", *accumulate, *grad_cache, batch=2))
    assert max_diff(weights(tmp_path / "plain"), weights(tmp_path / "fsdp")) <= 1e-10


def test_fsdp_bf16_mixed_precision_trains_fp32_weights(pairs, tmp_path):
    """The shipped config's bf16: compute in bf16 (FSDP2's MixedPrecisionPolicy), fp32 master weights saved."""
    args = recipe_args("vit", pairs, tmp_path / "bf16", "--dtype", "float32", "--learning_rate", "0.05")
    result = accelerate_launch(RECIPE, args, mixed_precision="bf16")
    losses = [float(loss) for loss in re.findall(r"'loss': '([^']+)'", result.stdout)]  # the Trainer's log lines
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    saved = weights(tmp_path / "bf16")
    assert {tensor.dtype for tensor in saved.values()} == {torch.float32}
    assert all(torch.isfinite(tensor).all() for tensor in saved.values())


def test_push_after_fsdp_training_uploads_the_plain_folder(pairs, tmp_path, hub):
    """`push_to_hub: true` under FSDP2: the commit (to a local Hub double) holds hfmm's files, not torch's."""
    endpoint, double = hub
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "0", "HF_TOKEN": "hf_test"}
    push = ("--push_to_hub", "true", "--hub_model_id", "org/tiny-clip", "--max_steps", "1")
    accelerate_launch(RECIPE, recipe_args("vit", pairs, tmp_path / "out", *push), env=env)
    uploaded = {line["value"]["path"]: line["value"]["content"] for line in double.commits[-1][1:]}
    assert {"config.json", "model.safetensors", "modeling_clip.py", "README.md"} <= set(uploaded)
    assert not [name for name in uploaded if name.startswith(("_fsdp", "checkpoint-")) or "fsdp" in name]
    config = json.loads(base64.b64decode(uploaded["config.json"]))
    assert config["auto_map"]["AutoModel"] == "modeling_clip.HfmmCLIPModel"
