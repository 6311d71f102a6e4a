"""NeVA recipes: stage 1 trains only the projector, stage 2 keeps the tower frozen, LoRA/QLoRA train what they say."""

import json
from pathlib import Path

import pytest
import torch
from neva_fixtures import save_tiny_parts
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPVisionModel, LlamaForCausalLM

from hfmm import NevaForConditionalGeneration
from hfmm.training.neva import recipe

RECIPES = Path(__file__).resolve().parents[3] / "recipes"
COLOURS = {"red": (220, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


@pytest.fixture(scope="module")
def parts(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("neva_parts")
    save_tiny_parts(root)  # root/clip, root/llm
    data = root / "data"
    data.mkdir()
    captions, questions = [], []
    for index, (name, rgb) in enumerate(list(COLOURS.items()) * 4):
        Image.new("RGB", (32, 32), rgb).save(data / f"{index}.png")
        captions.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"a {name} square"}]})  # fmt: skip
        questions.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": name}]})  # fmt: skip
    (data / "captions.json").write_text(json.dumps(captions))
    (data / "questions.json").write_text(json.dumps(questions))
    return root


def common(out: Path) -> list[str]:
    return ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_train_epochs", "1",
            "--logging_steps", "1"]  # fmt: skip


def stage1(parts: Path, out: Path) -> dict:
    argv = ["--config", str(RECIPES / "neva" / "tiny_demo_stage1.yaml"), "--vision_tower", str(parts / "clip"),
            "--language_model", str(parts / "llm"), "--train_data", str(parts / "data" / "captions.json"),
            "--image_folder", str(parts / "data"), *common(out)]  # fmt: skip
    return recipe.main(argv, stage=1)


def stage2(parts: Path, stage1_out: Path, out: Path, *extra: str) -> dict:
    argv = ["--config", str(RECIPES / "neva" / "tiny_demo_stage2.yaml"), "--model_name_or_path", str(stage1_out),
            "--pretrained_projector", str(stage1_out / "projector.safetensors"),
            "--train_data", str(parts / "data" / "questions.json"), "--image_folder", str(parts / "data"),
            *common(out), *extra]  # fmt: skip
    return recipe.main(argv, stage=2)


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def stage1_out(parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage1")
    result = stage1(parts, out)
    assert len([e for e in result["log_history"] if "loss" in e]) == 2
    return out


def test_stage1_changes_only_the_projector(parts, stage1_out):
    neva = NevaForConditionalGeneration.from_pretrained(stage1_out)
    vision = CLIPVisionModel.from_pretrained(parts / "clip")
    assert equal_states(neva.model.vision_tower.state_dict(), vision.state_dict())
    llm = LlamaForCausalLM.from_pretrained(parts / "llm")
    ours, theirs = neva.model.language_model.state_dict(), llm.model.state_dict()
    rows = theirs["embed_tokens.weight"].shape[0]
    assert ours["embed_tokens.weight"][:rows].equal(theirs["embed_tokens.weight"])
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs if k != "embed_tokens.weight")
    assert neva.lm_head.weight[:rows].equal(llm.lm_head.weight)
    projector = load_file(stage1_out / "projector.safetensors")
    assert equal_states(projector, neva.model.multi_modal_projector.state_dict())


def test_stage2_full_keeps_the_tower_and_trains_the_language_model(parts, stage1_out, tmp_path):
    stage2(parts, stage1_out, tmp_path / "full")
    before, after = (NevaForConditionalGeneration.from_pretrained(p) for p in (stage1_out, tmp_path / "full"))
    assert equal_states(before.model.vision_tower.state_dict(), after.model.vision_tower.state_dict())
    assert not torch.equal(before.model.language_model.layers[0].mlp.up_proj.weight,
                           after.model.language_model.layers[0].mlp.up_proj.weight)  # fmt: skip


def test_stage2_lora_trains_adapters_and_projector_only(parts, stage1_out, tmp_path):
    from hfmm.training.neva.arguments import LoraArguments, NevaModelArguments
    from hfmm.training.neva.model import load_neva

    model, _ = load_neva(NevaModelArguments(model_name_or_path=str(stage1_out), lora=LoraArguments(r=4, alpha=8)))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name or "multi_modal_projector.modules_to_save" in name for name in trainable)
    assert any("language_model.layers.0.self_attn.q_proj.lora_A" in name for name in trainable)
    stage2(parts, stage1_out, tmp_path / "lora", "--lora.r", "4", "--lora.alpha", "8", "--projector_lr", "1e-4")
    before, after = (NevaForConditionalGeneration.from_pretrained(p) for p in (stage1_out, tmp_path / "lora"))
    assert equal_states(before.model.vision_tower.state_dict(), after.model.vision_tower.state_dict())
    assert not equal_states(
        before.model.multi_modal_projector.state_dict(), after.model.multi_modal_projector.state_dict()
    )


def test_stage2_qlora_runs_on_cpu(parts, stage1_out, tmp_path):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes (the `quant` extra) is not installed")
    result = stage2(parts, stage1_out, tmp_path / "qlora", "--lora.r", "4", "--lora.alpha", "8",
                    "--quantization.bnb_4bit_compute_dtype", "float32")  # fmt: skip
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in result["log_history"] if "loss" in e)
    assert (tmp_path / "qlora" / "adapter" / "adapter_config.json").is_file()


@pytest.mark.parametrize("path", sorted((RECIPES / "neva").glob("*.yaml")), ids=lambda path: path.stem)
def test_every_neva_recipe_runs_two_steps_with_a_tiny_model(parts, stage1_out, tmp_path, path):
    """The recipe's own keys (bf16, activation checkpointing, LoRA/QLoRA sections, ...) with tiny parts swapped in."""
    import yaml

    keys = yaml.safe_load(path.read_text())
    data = parts / "data"
    overrides = ["--train_data", str(data / ("captions.json" if "stage1" in path.stem else "questions.json")),
                 "--image_folder", str(data), *common(tmp_path / "out"), "--save_strategy", "no",
                 "--dataloader_num_workers", "0", "--use_cpu", "true"]  # fmt: skip
    if "stage1" in path.stem:
        overrides += ["--vision_tower", str(parts / "clip"), "--language_model", str(parts / "llm")]
        stage = 1
    else:
        overrides += ["--model_name_or_path", str(stage1_out), "--pretrained_projector", str(stage1_out)]
        stage = 2
    if "quantization" in keys:
        overrides += ["--quantization.bnb_4bit_compute_dtype", "float32"]  # bitsandbytes' CPU path
    result = recipe.main(["--config", str(path), *overrides], stage=stage)
    losses = [entry["loss"] for entry in result["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_accelerate_launch_runs_both_stages_and_bad_samples_are_counted(parts, tmp_path):
    """The README's commands: `accelerate launch recipes/neva_stage1.py --config ...`, then stage 2, on CPU; the data
    has a missing image, a turn without an answer and an extra <image> tag, which are skipped and logged."""
    import subprocess
    import sys

    data = parts / "data"
    rows = json.loads((data / "captions.json").read_text())
    rows += [
        {"id": "missing", "image": "nowhere.png", "conversations": rows[0]["conversations"]},
        {"id": "no-answer", "image": "0.png", "conversations": rows[0]["conversations"][:1]},
        {
            "id": "two-tags",
            "image": "0.png",
            "conversations": [{"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "a red square"}],
        },  # fmt: skip
    ]
    (tmp_path / "captions.json").write_text(json.dumps(rows))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    first = subprocess.run(
        [*launch, str(RECIPES / "neva_stage1.py"), "--config", str(RECIPES / "neva" / "tiny_demo_stage1.yaml"),
         "--vision_tower", str(parts / "clip"), "--language_model", str(parts / "llm"),
         "--train_data", str(tmp_path / "captions.json"), "--image_folder", str(data),
         "--output_dir", str(tmp_path / "stage1"), "--num_train_epochs", "1", "--logging_steps", "2"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    for reason in ("missing_image", "no_assistant_turn", "image_count_mismatch"):
        assert f"'skipped_{reason}': '1'" in first.stdout, reason
    second = subprocess.run(
        [*launch, str(RECIPES / "neva_stage2.py"), "--config", str(RECIPES / "neva" / "tiny_demo_stage2.yaml"),
         "--model_name_or_path", str(tmp_path / "stage1"),
         "--pretrained_projector", str(tmp_path / "stage1" / "projector.safetensors"),
         "--train_data", str(data / "questions.json"), "--image_folder", str(data),
         "--output_dir", str(tmp_path / "stage2"), "--max_steps", "3"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-3000:]
    assert isinstance(NevaForConditionalGeneration.from_pretrained(tmp_path / "stage2"), NevaForConditionalGeneration)


def test_stage1_push_to_hub_is_one_commit_with_hfmm_card(parts, tmp_path, hub):
    """`push_to_hub: true`: stage 1's NeVA and projector go up in one commit with hfmm's card (via the local Hub
    test double: no network here)."""
    import base64
    import os
    import subprocess
    import sys

    endpoint, double = hub
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0", HF_TOKEN="hf_test")
    command = [sys.executable, str(RECIPES / "neva_stage1.py"), "--config", str(RECIPES / "neva" / "tiny_demo_stage1.yaml"),
               "--vision_tower", str(parts / "clip"), "--language_model", str(parts / "llm"),
               "--train_data", str(parts / "data" / "captions.json"), "--image_folder", str(parts / "data"),
               "--output_dir", str(tmp_path / "stage1"), "--max_steps", "1", "--push_to_hub", "true",
               "--hub_model_id", "org/tiny-neva"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (commit,) = double.commits
    files = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in commit[1:]}
    assert {"README.md", "config.json", "model.safetensors", "projector.safetensors", "modeling_neva.py",
            "training_run.json", "recipe.yaml"} <= set(files)  # fmt: skip
    card = files["README.md"].decode()
    assert "pipeline_tag: image-text-to-text" in card and "Trained for 1 step " in card
    assert 'model_id = "org/tiny-neva"' in card
