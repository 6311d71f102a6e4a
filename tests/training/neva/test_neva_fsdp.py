"""NeVA stage 1, stage 2 full and stage 2 LoRA under Accelerate FSDP2, through the real recipes and launcher.

Each run is `accelerate launch --config_file recipes/accelerate/fsdp_neva.yaml --num_processes 2 recipes/neva_stage*.py`
on two gloo processes (`fsdp_launch.accelerate_launch`: accelerate's CPU gate for FSDP lifted, test code only). Two
fp64 SGD steps on 2 ranks x 2 samples must save the parameters of one plain process on 4 samples (sequential order;
NeVA's loss is normalised by the global count of supervised tokens); the checkpoint of step 1 must hold each parameter
as two shards, one per rank; a run killed after that checkpoint and resumed must end where an uninterrupted run ends;
the saved folder must be a plain NeVA that hfmm and transformers alone load.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fsdp_launch import ROOT, accelerate_launch
from neva_fixtures import save_tiny_neva, save_tiny_parts
from PIL import Image
from safetensors.torch import load_file

from hfmm.training.neva.model import projector_state
from hfmm.training.neva.trainer import QLORA_UNDER_FSDP

RECIPES = ROOT / "recipes"
COLOURS = {"red": (220, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}
CASES = ("stage1", "stage2_full", "stage2_lora")
FSDP_CONFIG = "fsdp_neva.yaml"
MODEL_FILES = {"configuration_neva.py", "modeling_neva.py", "processing_neva.py"}


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    """A tiny CLIP tower and LLaMA (stage 1's parts), a tiny NeVA (stage 2's start) and 8 samples per stage whose
    answers differ in length, so the two ranks hold different numbers of supervised tokens."""
    root = tmp_path_factory.mktemp("neva_fsdp")
    save_tiny_parts(root)  # root/clip, root/llm
    save_tiny_neva(root / "neva")
    captions, questions = [], []
    for index, (name, rgb) in enumerate(list(COLOURS.items()) * 2):
        Image.new("RGB", (32, 32), rgb).save(root / f"{index}.png")
        tail = "" if index % 2 else " on the left of a white background"
        captions.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a {name} square{tail}"}]})  # fmt: skip
        questions.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"},
            {"from": "gpt", "value": f"The square is {name}{tail}."}]})  # fmt: skip
    (root / "captions.json").write_text(json.dumps(captions))
    (root / "questions.json").write_text(json.dumps(questions))
    return root


def recipe_argv(case: str, parts: Path, out: Path, per_device_batch: int) -> tuple[Path, list[str]]:
    """The recipe script and its `--key value`s: 2 fp64 SGD steps in data order, a sharded checkpoint every step."""
    argv = ["--output_dir", str(out), "--dtype", "float64", "--optim", "sgd", "--learning_rate", "0.5",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--max_grad_norm", "0", "--max_steps", "2",
            "--per_device_train_batch_size", str(per_device_batch), "--train_sampling_strategy", "sequential",
            "--dataloader_drop_last", "true", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1",
            "--image_folder", str(parts), "--seed", "0", "--activation_checkpointing", "true"]  # fmt: skip
    if case == "stage1":
        config = RECIPES / "neva" / "tiny_demo_stage1.yaml"
        argv += ["--vision_tower", str(parts / "clip"), "--language_model", str(parts / "llm"),
                 "--train_data", str(parts / "captions.json")]  # fmt: skip
        return RECIPES / "neva_stage1.py", ["--config", str(config), *argv]
    config = RECIPES / "neva" / "tiny_demo_stage2.yaml"
    argv += ["--model_name_or_path", str(parts / "neva"), "--pretrained_projector", "null",
             "--train_data", str(parts / "questions.json")]  # fmt: skip
    if case == "stage2_lora":
        argv += ["--lora.r", "4", "--lora.alpha", "8", "--lora.dropout", "0"]  # dropout off: runs must agree
    return RECIPES / "neva_stage2.py", ["--config", str(config), *argv]


def train(case: str, parts: Path, out: Path, processes: int = 2, **launch) -> subprocess.CompletedProcess:
    """`processes=2`: FSDP2 on 2 ranks x 2 samples; `processes=0`: one plain process on 4 samples (the reference)."""
    script, argv = recipe_argv(case, parts, out, per_device_batch=2 if processes else 4)
    return accelerate_launch(script, argv, config=FSDP_CONFIG, processes=processes, **launch)


class Runs(dict):
    """Per case, the FSDP run's folder and the one-process reference's folder, each trained once per module, when a
    test first asks for the case."""

    def __init__(self, parts: Path, tmp_path_factory):
        super().__init__()
        self.parts, self.tmp_path_factory = parts, tmp_path_factory

    def __missing__(self, case: str) -> tuple[Path, Path]:
        fsdp = self.tmp_path_factory.mktemp(f"{case}_fsdp")
        reference = self.tmp_path_factory.mktemp(f"{case}_reference")
        train(case, self.parts, fsdp, env={"HFMM_TEST_RECORD_SHARDS": str(fsdp / "shards")})
        train(case, self.parts, reference, processes=0)
        self[case] = fsdp, reference
        return fsdp, reference


@pytest.fixture(scope="module")
def runs(parts, tmp_path_factory) -> Runs:
    return Runs(parts, tmp_path_factory)


def saved(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def sharded_checkpoint(folder: Path):
    """The metadata and the full tensors of FSDP's sharded (DCP) model checkpoint, read back in this process."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(folder, folder.parent / "gathered.pt")
    return FileSystemReader(str(folder)).read_metadata(), torch.load(folder.parent / "gathered.pt", weights_only=True)[
        "model"
    ]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[key] - b[key]).abs().max().item() for key in a)


@pytest.mark.parametrize("case", CASES)
def test_fsdp_training_saves_the_parameters_of_one_process(runs, parts, case):
    fsdp, reference = runs[case]
    ours, theirs = saved(fsdp), saved(reference)
    assert all(tensor.dtype == torch.float64 for tensor in ours.values())
    assert max_diff(ours, theirs) <= 1e-10
    assert max_diff(load_file(fsdp / "projector.safetensors"), load_file(reference / "projector.safetensors")) <= 1e-10
    # not a vacuous equality: step 2 moved the projector away from step 1's checkpoint ...
    _, step1 = sharded_checkpoint(fsdp / "checkpoint-1" / "pytorch_model_fsdp_0")
    moved = max_diff(projector_state(ours), {k: v.double() for k, v in projector_state(step1).items()})
    assert moved > 1e-3
    # ... and what each stage trains differs from where it started, what it freezes does not
    start = saved(parts / "neva") if case != "stage1" else None
    if start is not None:
        tower = [key for key in start if ".vision_tower." in key]
        assert max_diff({k: ours[k] for k in tower}, {k: start[k].double() for k in tower}) == 0.0
        key = "model.language_model.layers.0.self_attn.q_proj.weight"  # trained fully, or through LoRA (merged)
        assert (ours[key] - start[key].double()).abs().max() > 1e-4
    else:
        llm = load_file(parts / "llm" / "model.safetensors")
        key = "layers.1.mlp.down_proj.weight"
        assert torch.equal(ours[f"model.language_model.{key}"], llm[f"model.{key}"].double())


@pytest.mark.parametrize("case", CASES)
def test_parameters_are_sharded_across_the_two_ranks_during_training(runs, case):
    """While training, each rank holds half the rows of every parameter (FSDP2's `Shard(dim=0)` DTensors), trained
    or frozen; and FSDP's checkpoint of step 1 is written by both ranks."""
    fsdp = runs[case][0]
    ranks = [json.loads((fsdp / "shards" / f"rank{rank}-step1.json").read_text()) for rank in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() and len(ranks[0]) > 10
    for name, shard in ranks[0].items():
        assert shard["dtensor"] and shard["placements"] == ["S(0)"], name  # Shard(dim=0) as str() writes it
        assert [rank[name]["local"][0] for rank in ranks] == [-(-shard["global"][0] // 2), shard["global"][0] // 2], (
            name
        )  # torch.chunk's split: ceil for rank 0, the rest for rank 1
    trained = "modules_to_save.default.linear_1.weight" if case == "stage2_lora" else "projector.linear_1.weight"
    projector = next(name for name in ranks[0] if name.endswith(trained))  # PEFT trains a copy of the projector
    assert ranks[0][projector]["global"][0] == 2 * ranks[0][projector]["local"][0] > 0
    if case == "stage2_lora":
        assert sum(".lora_A.default." in name for name in ranks[0]) == 14  # 7 projections x 2 layers
    folder = fsdp / "checkpoint-1" / "pytorch_model_fsdp_0"
    files = sorted(path.name for path in folder.glob("*.distcp"))
    assert files == ["__0_0.distcp", "__1_0.distcp"]
    assert all((folder / name).stat().st_size > 10_000 for name in files)
    if case != "stage2_lora":  # accelerate >= 1.16 saves PEFT adapters gathered (`get_peft_model_state_dict`)
        metadata, _ = sharded_checkpoint(folder)
        key = next(k for k in metadata.state_dict_metadata if k.endswith("multi_modal_projector.linear_1.weight"))
        chunks = metadata.state_dict_metadata[key].chunks
        rows = metadata.state_dict_metadata[key].size[0]
        assert sorted(tuple(chunk.offsets) for chunk in chunks) == [(0, 0), (rows // 2, 0)]


# LoRA is the case that can go wrong (its checkpoints hold only adapters and projector); the others cost a minute more
@pytest.mark.parametrize("case", [pytest.param("stage1", marks=pytest.mark.slow),
                                  pytest.param("stage2_full", marks=pytest.mark.slow), "stage2_lora"])  # fmt: skip
def test_a_killed_run_resumed_from_its_sharded_checkpoint_ends_where_one_run_ends(
    runs, parts, tmp_path, case, monkeypatch
):
    out = tmp_path / "run"
    monkeypatch.setenv("HFMM_TEST_EXIT_AFTER_CHECKPOINT", "1")  # fsdp_on_cpu/sitecustomize.py: exit(3) after it
    killed = train(case, parts, out, check=False)
    assert killed.returncode != 0 and "exitcode  : 3 " in killed.stderr
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    assert not (out / "model.safetensors").exists()
    monkeypatch.delenv("HFMM_TEST_EXIT_AFTER_CHECKPOINT")
    script, argv = recipe_argv(case, parts, out, per_device_batch=2)
    accelerate_launch(script, [*argv, "--resume_from_checkpoint", str(out / "checkpoint-1")], config=FSDP_CONFIG)
    assert max_diff(saved(out), saved(runs[case][0])) <= 1e-6


LOAD_WITH_TRANSFORMERS_ALONE = """
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
assert "hfmm" not in sys.modules
for folder in sys.argv[1:]:
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float64)
    AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "NevaForConditionalGeneration" and "hfmm" not in type(model).__module__
    weights = load_file(folder + "/model.safetensors")
    assert all(torch.equal(model.state_dict()[key], tensor) for key, tensor in weights.items())
assert "hfmm" not in sys.modules
print("loaded", len(sys.argv) - 1)
"""


def test_saved_folders_are_plain_nevas_that_hfmm_and_transformers_alone_load(runs):
    from transformers import AutoModelForImageTextToText

    from hfmm import NevaForConditionalGeneration
    from hfmm.hub.push import upload_plan

    folders = [runs[case][0] for case in CASES]
    for folder in folders:
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"].values()) == {"configuration_neva.NevaConfig", "modeling_neva.NevaModel",
                                                    "modeling_neva.NevaForConditionalGeneration"}  # fmt: skip
        assert config["architectures"] == ["NevaForConditionalGeneration"]
        assert {path.name for path in folder.glob("*.py")} == MODEL_FILES  # no torch `_fsdp_*.py`
        assert not (folder / "adapter").exists() and not list(folder.glob("adapter_*"))  # LoRA merged
        model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float64)
        assert type(model) is NevaForConditionalGeneration
        assert all(torch.equal(model.state_dict()[k], v) for k, v in saved(folder).items())
        # what the recipe's `push_to_hub` commits (besides hfmm's card): this folder, no sharded checkpoints
        plan = upload_plan(folder)
        assert {"config.json", "model.safetensors", "projector.safetensors", *MODEL_FILES} <= set(plan)
        assert not [name for name in plan if "checkpoint" in name or "fsdp" in name or name.endswith(".distcp")]
    result = subprocess.run([sys.executable, "-c", LOAD_WITH_TRANSFORMERS_ALONE, *map(str, folders)],
                            capture_output=True, text=True, timeout=300, cwd="/")  # fmt: skip
    assert result.returncode == 0 and "loaded 3" in result.stdout, result.stderr[-3000:]


def test_qlora_is_refused_under_fsdp_before_training(parts, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the `quant` extra) is not installed")
    script, argv = recipe_argv("stage2_lora", parts, tmp_path / "qlora", per_device_batch=2)
    argv = [arg if arg != "float64" else "float32" for arg in argv]
    argv += ["--quantization.bnb_4bit_compute_dtype", "float32"]
    result = accelerate_launch(script, argv, config=FSDP_CONFIG, check=False)
    assert result.returncode != 0
    assert f"error: {QLORA_UNDER_FSDP}" in result.stderr
    assert not list((tmp_path / "qlora").glob("checkpoint-*"))
