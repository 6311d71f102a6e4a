"""`hfmm push`: one commit with the card, config, remote code, weights and processor files; clear errors offline.

No network here: the upload path runs huggingface_hub's real client against a local test double of the Hub's HTTP API
(repo creation, YAML validation, preupload, commit), and the commit it receives is asserted file by file.
"""

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import tiny_clip_config
from neva_fixtures import save_tiny_neva

from hfmm import HfmmCLIPModel
from hfmm.cli import main as hfmm_main
from hfmm.conversion.common.verification import clip_processor
from hfmm.hub.cards import CardError
from hfmm.hub.push import PushError, push, upload_plan


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    model = HfmmCLIPModel(tiny_clip_config())
    model.save_pretrained(folder)
    clip_processor(model.config).save_pretrained(folder)
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.pt").write_bytes(b"optimizer state")
    return folder


def hfmm_push(folder: Path, *flags: str, endpoint: str, token: str | None = "hf_test", home: Path, offline="0"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_OFFLINE=offline, HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    command = [sys.executable, "-m", "hfmm.cli", "push", str(folder), "--repo", "org/tiny-clip", *flags]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_push_sends_one_commit_with_the_card_weights_and_remote_code(hub, model_dir, tmp_path):
    endpoint, double = hub
    result = hfmm_push(model_dir, "--private", endpoint=endpoint, home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "uploaded 9 files to org/tiny-clip" in result.stdout
    (commit,) = double.commits  # one commit
    header, files = commit[0], {line["value"]["path"]: line["value"] for line in commit[1:]}
    assert header["key"] == "header" and all(line["key"] == "file" for line in commit[1:])
    assert set(files) == {"README.md", "config.json", "configuration_clip.py", "modeling_clip.py", "processing_clip.py",
                          "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json"}  # fmt: skip
    sent = {path: base64.b64decode(value["content"]) for path, value in files.items()}
    local = (model_dir / "model.safetensors").read_bytes()
    assert hashlib.sha256(sent["model.safetensors"]).digest() == hashlib.sha256(local).digest()
    assert json.loads(sent["config.json"])["auto_map"]["AutoModel"] == "modeling_clip.HfmmCLIPModel"
    front = yaml.safe_load(sent["README.md"].decode().split("---")[1])
    assert front["pipeline_tag"] == "zero-shot-image-classification" and "hfmm" in front["tags"]
    assert 'model_id = "org/tiny-clip"' in sent["README.md"].decode()  # the snippet loads the pushed repo
    assert not (model_dir / "README.md").exists()  # the user's folder is not written to
    assert all(auth == "Bearer hf_test" for _, auth in double.requests)
    create = [path for path, _ in double.requests if path == "/api/repos/create"]
    assert len(create) == 1


@pytest.mark.parametrize(
    "status, message", [(401, "no valid Hugging Face token"), (403, "cannot write to org/tiny-clip")]
)
def test_refused_push_is_one_clear_error_and_no_commit(hub, model_dir, tmp_path, status, message):
    endpoint, double = hub
    double.refuse = status
    result = hfmm_push(model_dir, endpoint=endpoint, home=tmp_path)
    assert result.returncode == 1 and double.commits == []
    assert result.stderr.startswith("hfmm push: error: push to org/tiny-clip failed, nothing was uploaded")
    assert message in result.stderr and "Traceback" not in result.stderr


def test_no_network_is_one_clear_error(model_dir, tmp_path):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    result = hfmm_push(model_dir, endpoint=f"http://127.0.0.1:{port}", home=tmp_path)
    assert result.returncode == 1 and "the Hub cannot be reached" in result.stderr and "Traceback" not in result.stderr
    offline = hfmm_push(model_dir, endpoint=f"http://127.0.0.1:{port}", home=tmp_path, offline="1")
    assert offline.returncode == 1 and "offline mode is on" in offline.stderr


def test_a_bug_during_the_push_is_not_reported_as_a_hub_failure(model_dir, monkeypatch):
    """Only the Hub's answers and network/OS failures become a PushError; a programming error keeps its traceback."""
    from huggingface_hub import HfApi

    def broken(*args, **kwargs):
        raise TypeError("a bug in the caller")

    monkeypatch.setattr(HfApi, "create_repo", broken)
    with pytest.raises(TypeError, match="a bug in the caller"):
        push(model_dir, "org/tiny-clip", token="hf_test")
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: (_ for _ in ()).throw(ConnectionResetError("reset")))
    with pytest.raises(PushError, match="the Hub cannot be reached"):
        push(model_dir, "org/tiny-clip", token="hf_test")


def test_no_token_is_one_clear_error(hub, model_dir, tmp_path):
    endpoint, double = hub
    result = hfmm_push(model_dir, endpoint=endpoint, home=tmp_path, token=None)  # empty HF_HOME: no stored token
    assert result.returncode == 1 and "no valid Hugging Face token" in result.stderr
    assert double.requests == []  # refused before any request


def test_dry_run_needs_no_token_or_network(model_dir, tmp_path):
    result = hfmm_push(model_dir, "--dry-run", endpoint="http://127.0.0.1:9", home=tmp_path, token=None, offline="1")
    assert result.returncode == 0, result.stderr[-3000:]
    listed = [line.strip() for line in result.stdout.splitlines()[1:]]
    assert len(listed) == 9 and "README.md" in listed and not any("checkpoint" in name for name in listed)


def test_transformers_format_pushes_the_native_export(hub, model_dir, tmp_path):
    endpoint, double = hub
    result = hfmm_push(model_dir, "--format", "transformers", endpoint=endpoint, home=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (commit,) = double.commits
    files = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in commit[1:]}
    config = json.loads(files["config.json"])
    assert config["model_type"] == "clip" and "auto_map" not in config
    assert not any(name.endswith(".py") for name in files)  # no remote code: transformers' own CLIPModel
    assert "custom_code" not in yaml.safe_load(files["README.md"].decode().split("---")[1])["tags"]


def test_recipe_push_to_hub_uploads_hfmm_card(hub, tmp_path):
    """`push_to_hub: true` in a CLIP recipe: the Trainer's upload carries hfmm's card (training run, recipe), never
    transformers' generic one."""
    from hfmm.demo.synthetic import make_shapes_dataset

    endpoint, double = hub
    pairs = make_shapes_dataset(tmp_path / "data", 8, seed=0, split="train")
    root = Path(__file__).resolve().parents[2]
    tiny = {"projection_dim": 16, "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4},
            "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                            "num_attention_heads": 4}}  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="0", HF_TOKEN="hf_test")
    command = [sys.executable, str(root / "recipes" / "clip_pretrain.py"),
               "--config", str(root / "recipes" / "clip" / "tiny_demo.yaml"), "--config_overrides", json.dumps(tiny),
               "--train_data", str(pairs), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
               "--per_device_train_batch_size", "8", "--warmup_steps", "0", "--push_to_hub", "true",
               "--hub_model_id", "org/tiny-clip"]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    readmes = [
        line["value"] for commit in double.commits for line in commit[1:] if line["value"]["path"] == "README.md"
    ]
    assert readmes, [line["value"]["path"] for commit in double.commits for line in commit[1:]]
    card = base64.b64decode(readmes[-1]["content"]).decode()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "hfmm" in front["tags"]
    assert "Trained for 1 step " in card and 'model_id = "org/tiny-clip"' in card


def test_upload_plan_needs_a_model_folder(tmp_path):
    with pytest.raises(CardError, match="not a saved model folder"):
        upload_plan(tmp_path)


def test_upload_plan_leaves_training_state_and_links_home(model_dir, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors", "optimizer.pt", "trainer_state.json", "rng_state_0.pth"):
        (folder / name).write_text("x")
    for name in ("runs/events.out", "checkpoint-5/model.safetensors", "extra/notes.md", ".cache/lock"):
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_text("x")
    (folder / "linked.safetensors").symlink_to(model_dir / "model.safetensors")
    assert upload_plan(folder) == ["config.json", "extra/notes.md", "model.safetensors"]


def test_unknown_push_format_is_refused(model_dir):
    with pytest.raises(ValueError, match="format must be 'hfmm' or 'transformers'"):
        push(model_dir, "org/tiny-clip", fmt="onnx", dry_run=True)


def test_native_export_push_plans(tmp_path):
    """`--format transformers`: a NeVA goes up as transformers' Llava (no remote code); a ConvNeXt CLIP, which
    `CLIPModel` cannot hold, is refused with the reason and nothing else happens."""
    folder = save_tiny_neva(tmp_path / "neva")
    files = push(folder, "org/tiny-neva", fmt="transformers", dry_run=True).files
    assert "README.md" in files and "model.safetensors" in files and not any(f.endswith(".py") for f in files)
    convnext = tiny_clip_config(vision={"model_type": "hfmm_convnext_vision_model", "timm_model_name": "convnext_atto",
                                        "hidden_size": 320, "image_size": 32})  # fmt: skip
    model = HfmmCLIPModel(convnext)
    model.save_pretrained(tmp_path / "convnext")
    clip_processor(model.config).save_pretrained(tmp_path / "convnext")
    with pytest.raises(CardError, match="no native transformers form.*hfmm_convnext_vision_model image tower"):
        push(tmp_path / "convnext", "org/convnext", fmt="transformers", dry_run=True)
    assert (
        hfmm_main(["push", str(tmp_path / "convnext"), "--repo", "org/c", "--format", "transformers", "--dry-run"])
        == 2
    )
