"""`hfmm soup`: the uniform average of checkpoints of one architecture; mismatched architectures refused."""

import pytest
import torch
from conftest import tiny_clip_config
from transformers import AutoModel

from hfmm import HfmmCLIPModel
from hfmm.cli import main as cli_main


def saved(path, seed, **vision):
    torch.manual_seed(seed)
    HfmmCLIPModel(tiny_clip_config(vision=vision)).save_pretrained(path)
    return path


def test_soup_is_the_average(tmp_path):
    paths = [saved(tmp_path / f"run{i}", seed=i) for i in range(3)]
    assert cli_main(["soup", *map(str, paths), "--out", str(tmp_path / "soup")]) == 0
    soup = AutoModel.from_pretrained(tmp_path / "soup").state_dict()
    runs = [AutoModel.from_pretrained(p).state_dict() for p in paths]
    for name, tensor in soup.items():
        expected = sum(run[name].double() for run in runs) / 3
        assert (tensor.double() - expected).abs().max() <= 1e-6, name


def test_soup_refuses_mismatched_architectures(tmp_path, capsys):
    paths = [saved(tmp_path / "a", 0), saved(tmp_path / "b", 1, class_token_length=2)]
    assert cli_main(["soup", *map(str, paths), "--out", str(tmp_path / "soup")]) == 2
    assert "vision_config" in capsys.readouterr().err and not (tmp_path / "soup").exists()


def test_soup_needs_two(tmp_path):
    from hfmm.training.soup import make_soup

    with pytest.raises(ValueError, match="at least two"):
        make_soup([saved(tmp_path / "a", 0)], tmp_path / "soup")


def test_soup_refuses_an_existing_out_before_reading_any_checkpoint(tmp_path):
    """Issue 15 item 15: the destination is checked first; the corrupt checkpoints would fail any later step."""
    from hfmm.training.soup import make_soup

    corrupt = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{ not json")
        (tmp_path / name / "model.safetensors").write_bytes(b"\0garbage")
        corrupt.append(tmp_path / name)
    (tmp_path / "soup").mkdir()
    with pytest.raises(FileExistsError, match="soup exists; pass --force"):
        make_soup(corrupt, tmp_path / "soup")


def test_soup_folder_respects_the_umask(tmp_path):
    """Issue 15 item 11: with umask 022 the soup folder is drwxr-xr-x, as `save_pretrained` makes it."""
    import os
    import stat

    from hfmm.training.soup import make_soup

    paths = [saved(tmp_path / f"run{i}", seed=i) for i in range(2)]
    previous = os.umask(0o022)
    try:
        make_soup(paths, tmp_path / "soup")
    finally:
        os.umask(previous)
    assert stat.filemode((tmp_path / "soup").stat().st_mode) == "drwxr-xr-x"
