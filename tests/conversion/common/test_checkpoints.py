"""The safe readers under every converter: archives checked before extraction, pickles without code, lazy tensors."""

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hfmm.conversion.common.key_maps import KeyMap, same, split_rows
from hfmm.conversion.common.readers import (
    CheckpointError,
    SafetensorsStateDict,
    load_torch_file,
    read_json,
    read_model_folder,
    read_state_dict,
    safe_extract_tar,
    unwrap_state_dict,
)


def add_file(archive: tarfile.TarFile, name: str, content: bytes = b"weights") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    archive.addfile(info, io.BytesIO(content))


def add_link(archive: tarfile.TarFile, name: str, target: str, kind=tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    archive.addfile(info)


@pytest.mark.parametrize(
    "bad_member, message",
    [
        (lambda a: add_file(a, "../x"), "archive member '../x' leaves the folder (..)"),
        (lambda a: add_file(a, "model/../../x"), "archive member 'model/../../x' leaves the folder (..)"),
        (lambda a: add_file(a, "/tmp/hfmm-absolute-x"), "archive member '/tmp/hfmm-absolute-x' has an absolute path"),
        (lambda a: add_link(a, "model/link", "/etc/passwd"), "archive member 'model/link' is a link"),
        (lambda a: add_link(a, "model/hard", "model_config.yaml", tarfile.LNKTYPE), "'model/hard' is a link"),
    ],
    ids=["dotdot", "nested dotdot", "absolute", "symlink", "hardlink"],
)
@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_unsafe_archives_are_refused_before_extraction(tmp_path, bad_member, message, mode):
    path = tmp_path / "model.nemo"
    with tarfile.open(path, mode) as archive:
        add_file(archive, "model_config.yaml", b"a: 1")  # a harmless member before the bad one: not extracted either
        bad_member(archive)
    dest = tmp_path / "out" / "inner"
    dest.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="refusing") as error:
        safe_extract_tar(path, dest)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not any(dest.iterdir()) and not (tmp_path / "out" / "x").exists() and not (tmp_path / "x").exists()
    assert not Path("/tmp/hfmm-absolute-x").exists()


def test_safe_archive_is_extracted(tmp_path):
    path = tmp_path / "model.tar"
    with tarfile.open(path, "w") as archive:
        add_file(archive, "model_config.yaml", b"a: 1")
        add_file(archive, "model_weights/weights.ckpt")
    safe_extract_tar(path, tmp_path / "out")
    assert (tmp_path / "out" / "model_config.yaml").read_text() == "a: 1"
    assert (tmp_path / "out" / "model_weights" / "weights.ckpt").is_file()


def test_not_a_tar(tmp_path):
    (tmp_path / "junk.nemo").write_bytes(b"not a tar archive, just text " * 40)
    with pytest.raises(CheckpointError, match="not a readable tar archive"):
        safe_extract_tar(tmp_path / "junk.nemo", tmp_path / "out")


class CodeRunner:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_pickle_with_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": {"w": torch.ones(2)}, "hook": CodeRunner(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused to unpickle.*GLOBAL exec"):
        load_torch_file(tmp_path / "evil.pt")
    assert not marker.exists()


def test_training_checkpoint_is_unwrapped(tmp_path):
    weights = {"module.visual.proj": torch.randn(4, 2), "module.logit_scale": torch.tensor(2.0)}
    torch.save({"epoch": 2, "name": "run", "state_dict": weights, "optimizer": {"state": {}}}, tmp_path / "e.pt")
    state_dict = read_state_dict(tmp_path / "e.pt")
    assert sorted(state_dict) == ["logit_scale", "visual.proj"]
    assert torch.equal(state_dict["visual.proj"], weights["module.visual.proj"])
    with pytest.raises(CheckpointError, match="no tensor state dict found"):
        unwrap_state_dict({"epoch": 2, "name": "run"}, "e.pt")


def test_safetensors_reads_lazily_and_refuses_truncation(tmp_path):
    tensors = {"a": torch.randn(64, 64), "b": torch.arange(5)}
    save_file(tensors, tmp_path / "w.safetensors")
    state_dict = read_state_dict(tmp_path / "w.safetensors")
    assert isinstance(state_dict, SafetensorsStateDict) and sorted(state_dict) == ["a", "b"]
    assert torch.equal(state_dict["a"], tensors["a"]) and torch.equal(state_dict["b"], tensors["b"])
    copies = SafetensorsStateDict([tmp_path / "w.safetensors"], backend="pread")
    first, second = copies["a"], copies["a"]
    assert torch.equal(first, tensors["a"]) and first.data_ptr() != second.data_ptr()  # a fresh copy per read
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError, match="cut.safetensors: not a readable safetensors file"):
        read_state_dict(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("shape", [(6, 4), (6,)])
def test_split_rows_shares_memory_without_sharing_storage(shape):
    fused = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    q, k, v = split_rows(fused, 3)
    for part, expected in zip((q, k, v), fused.chunk(3), strict=True):
        assert torch.equal(part, expected) and part.is_contiguous()
    assert k.data_ptr() == fused.data_ptr() + q.numel() * 4  # no copy
    assert len({part.untyped_storage().data_ptr() for part in (q, k, v)}) == 3  # save_pretrained sees 3 tensors


def test_key_map_names_unknown_keys_and_inverts_templates():
    key_map = KeyMap(
        {r"blocks\.(\d+)\.(w|b)": ("layers.{0}.proj.{1}", same), r"tower\.(.+)": ("trunk.{0}", same), r"buf": None},
        source="Toy",
    )
    assert key_map.map_key("blocks.3.w") == (("layers.3.proj.w",), same)
    assert key_map.map_key("buf") is None
    assert key_map.source_key("layers.12.proj.b") == "blocks.12.b"
    assert key_map.source_key("trunk.stages.0.norm.weight") == "tower.stages.0.norm.weight"
    with pytest.raises(CheckpointError, match="unknown Toy key 'blocks.x.w'"):
        key_map.map_key("blocks.x.w")


def test_key_map_convert_checks_against_the_model_when_asked():
    key_map = KeyMap({r"fused": (("a", "b"), lambda t: tuple(t.chunk(2))), r"drop": None}, source="Toy")
    fused = torch.arange(4.0)
    converted = key_map.convert({"fused": fused, "drop": torch.ones(1)})
    assert sorted(converted) == ["a", "b"] and torch.equal(converted["b"], fused[2:])
    with pytest.raises(CheckpointError, match="lacks 1 weight"):
        key_map.convert({"fused": fused}, expected={"a": (2,), "b": (2,), "c": (1,)})
    with pytest.raises(CheckpointError, match="shape mismatch: Toy key 'fused'"):
        key_map.convert({"fused": fused}, expected={"a": (3,), "b": (2,)})
    with pytest.raises(CheckpointError, match="unknown Toy key 'other'"):
        key_map.convert({"other": fused})


def save_sharded(folder: Path, tensors: dict, suffix: str) -> None:
    """Two shards and their index, as `save_pretrained` writes them (`suffix`: "safetensors" or "bin")."""
    index_name = "model.safetensors.index.json" if suffix == "safetensors" else "pytorch_model.bin.index.json"
    stem = "model" if suffix == "safetensors" else "pytorch_model"
    weight_map = {}
    for i, key in enumerate(sorted(tensors)):
        name = f"{stem}-0000{i + 1}-of-00002.{suffix}"
        (save_file if suffix == "safetensors" else torch.save)({key: tensors[key]}, folder / name)
        weight_map[key] = name
    (folder / index_name).write_text(json.dumps({"weight_map": weight_map}))


@pytest.mark.parametrize("form", ["model.safetensors", "sharded safetensors", "pytorch_model.bin", "sharded bin"])
def test_read_model_folder_reads_every_form_transformers_writes(tmp_path, form):
    tensors = {"a": torch.randn(3, 2), "b": torch.arange(4.0)}
    if form == "model.safetensors":
        save_file(tensors, tmp_path / form)
    elif form == "pytorch_model.bin":
        torch.save(tensors, tmp_path / form)
    else:
        save_sharded(tmp_path, tensors, "safetensors" if "safetensors" in form else "bin")
    state_dict = read_model_folder(tmp_path)
    assert sorted(state_dict) == ["a", "b"]
    assert all(torch.equal(state_dict[key], tensors[key]) for key in tensors)


def test_read_model_folder_fallback_and_refusal(tmp_path):
    torch.save({"model.mm_projector.0.weight": torch.ones(2, 2)}, tmp_path / "mm_projector.bin")
    with pytest.raises(CheckpointError, match="no weights; expected one of model.safetensors, pytorch_model.bin"):
        read_model_folder(tmp_path)
    assert list(read_model_folder(tmp_path, fallback=("mm_projector.bin",))) == ["model.mm_projector.0.weight"]


def test_read_json_and_backend_choices_name_the_problem(tmp_path):
    (tmp_path / "broken.json").write_text("{ not json")
    with pytest.raises(CheckpointError, match="broken.json: not a readable JSON file"):
        read_json(tmp_path / "broken.json")
    save_file({"a": torch.ones(1)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="backend='mmap2': choose 'mmap' or 'pread'"):
        SafetensorsStateDict([tmp_path / "w.safetensors"], backend="mmap2")
