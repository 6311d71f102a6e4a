"""`convert/open_clip_to_hfmm.py` on malicious, broken or ambiguous input: one line naming the problem, exit code 1,
nothing written (no DST, no temporary folder), no code run."""

import json
from pathlib import Path

import open_clip
import pytest
import torch
from reference_models import open_clip_model
from safetensors.torch import save_file

from hfmm.conversion.commands import open_clip_to_hfmm
from hfmm.conversion.open_clip.mapping import OPEN_CLIP_KEYS, convert_open_clip_state_dict

ARCHITECTURE = "ViT-B-32-hfmm-errors"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A shrunk ViT-B-32, registered with open_clip under `ARCHITECTURE` so that `--model` can name it."""
    model, cfg = open_clip_model("ViT-B-32", layers=1)
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{ARCHITECTURE}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{ARCHITECTURE}.json")
    return model, cfg


def state_dict(reference) -> dict:
    return {key: tensor.contiguous() for key, tensor in reference[0].state_dict().items()}


def run(tmp_path, capsys, src, *args) -> str:
    """Runs the script on SRC; asserts failure with a one-line error and nothing written; returns the message."""
    dst = tmp_path / "dst"
    assert open_clip_to_hfmm.main([str(src), str(dst), *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bar
    assert err.startswith("error: "), err
    assert not dst.exists() and not list(tmp_path.glob(".dst.tmp-*"))
    return err


class CodeRunner:
    """Unpickling this runs `exec` on a snippet that creates `marker`: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_that_runs_code_is_refused(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    torch.save({"epoch": 1, "state_dict": {"visual.proj": CodeRunner(marker)}}, tmp_path / "evil.pt")
    err = run(tmp_path, capsys, tmp_path / "evil.pt", "--model", "ViT-B-32", "--no-quick-gelu")
    assert "refused to unpickle" in err and "GLOBAL exec was not an allowed global" in err
    assert not marker.exists()


def test_truncated_safetensors(tmp_path, capsys, reference):
    save_file(state_dict(reference), tmp_path / "whole.safetensors")
    data = (tmp_path / "whole.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    err = run(tmp_path, capsys, tmp_path / "cut.safetensors", "--model", ARCHITECTURE)
    assert "cut.safetensors: not a readable safetensors file" in err


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda sd: sd.pop("transformer.resblocks.0.ln_2.bias"),
            "lacks 1 weight(s) the model needs, first OpenCLIP "
            "key 'transformer.resblocks.0.ln_2.bias' (hfmm 'text_model.encoder.layers.0.layer_norm2.bias')",
        ),
        (
            lambda sd: sd.update({"visual.mystery.weight": torch.zeros(3)}),
            "unknown OpenCLIP key 'visual.mystery.weight'",
        ),
        (
            lambda sd: sd.update({"visual.proj": torch.zeros(768, 256)}),
            "shape mismatch: OpenCLIP key 'visual.proj' has "
            "shape [768, 256], but the model's 'visual_projection.weight' needs [512, 768]",
        ),
        (
            lambda sd: sd.update({"visual.head.proj.weight": torch.zeros(512, 768)}),
            "keys 'visual.head.proj.weight' and 'visual.proj' both map to 'visual_projection.weight'",
        ),
        (
            lambda sd: sd.update({"visual.head.mlp.fc1.weight": torch.zeros(1024, 768)}),
            "'visual.head.mlp.fc1.weight' maps to 'visual_projection.fc1.weight', which this architecture does not have",
        ),
        (
            lambda sd: sd.update({"transformer.resblocks.1.ln_1.weight": torch.ones(512)}),
            "'transformer.resblocks.1."
            "ln_1.weight' maps to 'text_model.encoder.layers.1.layer_norm1.weight', which this architecture does not have",
        ),
    ],
    ids=["missing", "unknown", "shape", "two sources", "mlp head on a ViT", "deeper than the config"],
)
def test_broken_state_dict(tmp_path, capsys, reference, edit, message):
    tensors = state_dict(reference)
    edit(tensors)
    save_file(tensors, tmp_path / "weights.safetensors")
    err = run(tmp_path, capsys, tmp_path / "weights.safetensors", "--model", ARCHITECTURE)
    assert message in err


def test_shallower_checkpoint_than_the_preset(tmp_path, capsys, reference):
    save_file(state_dict(reference), tmp_path / "weights.safetensors")
    err = run(tmp_path, capsys, tmp_path / "weights.safetensors", "--model", "ViT-B-32", "--no-quick-gelu")
    assert "lacks 352 weight(s)" in err and "'transformer.resblocks.1." in err


def test_ambiguous_activation_is_refused(tmp_path, capsys, reference):
    save_file(state_dict(reference), tmp_path / "weights.safetensors")
    err = run(tmp_path, capsys, tmp_path / "weights.safetensors", "--model", "ViT-L-14-336")
    assert "activation of ViT-L-14-336 is ambiguous" in err and "--quick-gelu or --no-quick-gelu" in err
    assert "hfmm preset ViT-L-14-336" in err and "open_clip config ViT-L-14-336" in err


@pytest.mark.parametrize(
    "name, quick_gelu",
    [("ViT-B-16-quickgelu", True), ("ViT-g-14", False), ("convnext_base", False), ("ViT-H-16", False)],
)
def test_unambiguous_names(name, quick_gelu):
    from hfmm.conversion.open_clip.checkpoint import activation_of_name

    assert activation_of_name(name) is quick_gelu


def test_existing_destination_needs_force(tmp_path, capsys, reference):
    save_file(state_dict(reference), tmp_path / "weights.safetensors")
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "keep.txt").write_text("mine")
    assert (
        open_clip_to_hfmm.main([str(tmp_path / "weights.safetensors"), str(tmp_path / "dst"), "--model", ARCHITECTURE])
        == 1
    )
    assert "exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "dst" / "keep.txt").read_text() == "mine"
    argv = [str(tmp_path / "weights.safetensors"), str(tmp_path / "dst"), "--model", ARCHITECTURE, "--force"]
    assert open_clip_to_hfmm.main(argv) == 0
    assert (tmp_path / "dst" / "model.safetensors").is_file() and not (tmp_path / "dst" / "keep.txt").exists()


def test_source_without_architecture(tmp_path, capsys, reference):
    save_file(state_dict(reference), tmp_path / "weights.safetensors")
    assert "carries no open_clip_config.json; pass --model" in run(tmp_path, capsys, tmp_path / "weights.safetensors")
    assert "unknown model 'ViT-Q-99'" in run(tmp_path, capsys, tmp_path / "weights.safetensors", "--model", "ViT-Q-99")
    assert "no such file or folder" in run(tmp_path, capsys, tmp_path / "nothing.safetensors", "--model", ARCHITECTURE)


def test_folder_forms(tmp_path, capsys, reference):
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text("{}")
    assert "no OpenCLIP weights in this folder" in run(tmp_path, capsys, hub)
    save_file(state_dict(reference), hub / "open_clip_model.safetensors")
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": reference[1]}))
    assert "carries its own open_clip_config.json; drop --model" in run(tmp_path, capsys, hub, "--model", "ViT-B-32")
    cfg = json.loads(json.dumps(reference[1]))
    cfg["vision_cfg"]["ls_init_value"] = 1e-4
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    assert "options ls_init_value=0.0001 have no hfmm equivalent" in run(tmp_path, capsys, hub)


def test_every_target_names_its_source_key(reference):
    """Error messages name the OpenCLIP key of a missing weight: the inverse of every rule that fires is exact."""
    tensors = state_dict(reference)
    for target in convert_open_clip_state_dict(tensors):
        assert OPEN_CLIP_KEYS.source_key(target) in tensors, target
