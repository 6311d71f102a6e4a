"""Malicious and broken NeMo inputs: each is a one-line error naming the problem; nothing is written outside a temporary
folder and no DST appears."""

import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from nemo_fixtures import pack_nemo
from nemo_tiny import tiny_legacy_state_dict, write_tiny_nemo

from hfmm.conversion.commands import nemo_clip_to_hfmm


class WritesAFile:
    """Unpickling this would run `open(path, "w")`, creating `path`."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def refuse(src: Path, tmp_path: Path, capsys, *expected: str) -> str:
    """Runs the script on `src`; asserts exit status 1, a one-line error containing `expected`, and no output."""
    dst = tmp_path / "out" / "hfmm"
    assert nemo_clip_to_hfmm.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for text in expected:
        assert text in err, err
    assert not dst.exists()
    assert not (dst.parent.exists() and any(dst.parent.iterdir())), "a temporary folder was left beside DST"
    return err


def tar_with(tmp_path: Path, name: str, member: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A valid tiny `.nemo` tar plus one extra `member`."""
    path = pack_nemo(write_tiny_nemo(tmp_path / "extracted"), tmp_path / name)
    with tarfile.open(path, "a") as archive:
        archive.addfile(member, io.BytesIO(data) if data else None)
    return path


def test_tar_member_leaving_the_folder(tmp_path, capsys):
    info = tarfile.TarInfo("../x")
    info.size = 2
    src = tar_with(tmp_path / "a" / "b", "evil.nemo", info, b"hi")
    refuse(src, tmp_path, capsys, "'../x'", "leaves the folder")
    assert not (tmp_path / "a" / "x").exists()


def test_tar_member_with_absolute_path(tmp_path, capsys):
    target = tmp_path / "absolute-target"
    info = tarfile.TarInfo(str(target))
    info.size = 2
    refuse(tar_with(tmp_path, "evil.nemo", info, b"hi"), tmp_path, capsys, "absolute path")
    assert not target.exists()


def test_tar_symlink(tmp_path, capsys):
    info = tarfile.TarInfo("./model_weights.ckpt.link")
    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    refuse(tar_with(tmp_path, "evil.nemo", info), tmp_path, capsys, "is a link")


def test_pickle_that_runs_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    state_dict = tiny_legacy_state_dict()
    state_dict["model.logit_scale"] = WritesAFile(marker)
    src = pack_nemo(write_tiny_nemo(tmp_path / "extracted", state_dict), tmp_path / "evil.nemo")
    refuse(src, tmp_path, capsys, "evil.nemo:model_weights.ckpt: refused to unpickle", "io.open")
    assert not marker.exists()


def test_distributed_checkpoint_metadata_that_runs_code(tmp_path, capsys):
    """torch's own DCP reader would `pickle.load` this `.metadata`; hfmm's refuses it."""
    marker = tmp_path / "pwned"
    folder = write_tiny_nemo(tmp_path / "extracted", state_dict={})
    (folder / "model_weights.ckpt").unlink()
    (folder / "model_weights").mkdir()
    (folder / "model_weights" / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
    (folder / "model_weights" / ".metadata").write_bytes(pickle.dumps(WritesAFile(marker)))
    refuse(folder, tmp_path, capsys, "refused to unpickle .metadata", "io.open")
    assert not marker.exists()


def test_missing_key(tmp_path, capsys):
    state_dict = tiny_legacy_state_dict()
    del state_dict["model.vision_encoder.backbone.transformer.layers.1.self_attention.dense.weight"]
    refuse(write_tiny_nemo(tmp_path / "src", state_dict), tmp_path, capsys,
           "'vision_model.encoder.layers.1.self_attn.out_proj.weight'",
           "'vision_encoder.backbone.transformer.layers.1.self_attention.dense.weight'")  # fmt: skip


def test_unknown_key(tmp_path, capsys):
    state_dict = tiny_legacy_state_dict()
    state_dict["model.vision_encoder.backbone.transformer.layers.0.post_attention_layerscale.gamma"] = torch.ones(32)
    refuse(write_tiny_nemo(tmp_path / "src", state_dict), tmp_path, capsys,
           "unknown NeMo CLIP key 'vision_encoder.backbone.transformer.layers.0.post_attention_layerscale.gamma'")  # fmt: skip


def test_shape_mismatch(tmp_path, capsys):
    state_dict = tiny_legacy_state_dict()
    key = "model.text_encoder.language_model.encoder.layers.0.mlp.dense_h_to_4h.weight"
    state_dict[key] = state_dict[key][:-1]
    refuse(write_tiny_nemo(tmp_path / "src", state_dict), tmp_path, capsys,
           "shape mismatch", "'text_encoder.language_model.encoder.layers.0.mlp.dense_h_to_4h.weight'")  # fmt: skip


def test_missing_tensor_parallel_rank(tmp_path, capsys):
    folder = write_tiny_nemo(tmp_path / "src")
    (folder / "mp_rank_01").mkdir()
    (folder / "model_weights.ckpt").rename(folder / "mp_rank_01" / "model_weights.ckpt")
    refuse(folder, tmp_path, capsys, "rank(s) tp 0 pp 0 are missing")


def test_zarr_distributed_checkpoint(tmp_path, capsys):
    folder = write_tiny_nemo(tmp_path / "src")
    (folder / "model_weights.ckpt").unlink()
    (folder / "model_weights").mkdir()
    (folder / "model_weights" / "metadata.json").write_text(json.dumps({"sharded_backend": "zarr"}))
    refuse(folder, tmp_path, capsys, "`zarr` format")


@pytest.mark.parametrize("what", ["distributed", "pickle"])
def test_bare_weights_without_config(tmp_path, capsys, what):
    folder = tmp_path / "weights"
    folder.mkdir()
    if what == "distributed":
        (folder / "metadata.json").write_text(json.dumps({"sharded_backend": "torch_dist"}))
        (folder / ".metadata").write_bytes(b"")
        expected = "bare megatron-core distributed checkpoint"
    else:
        torch.save(tiny_legacy_state_dict(), folder / "model_weights.ckpt")
        expected = "model_weights.ckpt weights"
    refuse(folder, tmp_path, capsys, expected, "model_config.yaml", "context/model.yaml")


def test_truncated_archive(tmp_path, capsys):
    path = pack_nemo(write_tiny_nemo(tmp_path / "src"), tmp_path / "clip.nemo")
    path.write_bytes(path.read_bytes()[:3000])
    refuse(path, tmp_path, capsys, "clip.nemo")


def test_truncated_weights(tmp_path, capsys):
    folder = write_tiny_nemo(tmp_path / "src")
    weights = folder / "model_weights.ckpt"
    weights.write_bytes(weights.read_bytes()[:5000])
    refuse(folder, tmp_path, capsys, "model_weights.ckpt", "not a readable PyTorch checkpoint")


def test_existing_dst_needs_force(tmp_path, capsys):
    folder = write_tiny_nemo(tmp_path / "src")
    dst = tmp_path / "hfmm"
    dst.mkdir()
    (dst / "keep").write_text("old")
    assert nemo_clip_to_hfmm.main([str(folder), str(dst)]) == 1
    assert "pass --force" in capsys.readouterr().err and (dst / "keep").exists()
    assert nemo_clip_to_hfmm.main([str(folder), str(dst), "--force"]) == 0
    assert (dst / "model.safetensors").is_file() and not (dst / "keep").exists()


def test_extraction_stays_in_a_temporary_folder(tmp_path, capsys, monkeypatch):
    """A `.nemo` is extracted into a temporary folder that is gone afterwards, whether conversion succeeds or not."""
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    good = pack_nemo(write_tiny_nemo(tmp_path / "good"), tmp_path / "good.nemo")
    assert nemo_clip_to_hfmm.main([str(good), str(tmp_path / "good-hfmm")]) == 0
    capsys.readouterr()
    state_dict = tiny_legacy_state_dict()
    state_dict.pop("model.logit_scale")
    bad = pack_nemo(write_tiny_nemo(tmp_path / "bad", state_dict), tmp_path / "bad.nemo")
    refuse(bad, tmp_path, capsys, "'logit_scale'")
    assert list((tmp_path / "tmp").iterdir()) == []
