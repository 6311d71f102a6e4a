"""NeVA stage-2 training under two gloo processes equals one process; modality-grouped batches across ranks."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from neva_fixtures import save_tiny_neva
from PIL import Image

WORKER = Path(__file__).with_name("neva_train_worker.py")
COLOURS = {"red": (220, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


@pytest.fixture(scope="module")
def model_and_data(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny NeVA and 16 conversations: 12 with an image, 4 text-only, answers of different lengths (so ranks hold
    different numbers of supervised tokens and the loss must be normalised by the global count)."""
    root = tmp_path_factory.mktemp("neva_ddp")
    save_tiny_neva(root / "model")
    rows = []
    for index, (name, rgb) in enumerate(list(COLOURS.items()) * 3):
        Image.new("RGB", (32, 32), rgb).save(root / f"{index}.png")
        answer = f"The square is {name}" + ("." if index % 2 else " on the left of a white background.")
        rows.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": answer}]})  # fmt: skip
        if index % 3 == 0:
            rows.append({"id": f"text{index}", "conversations": [
                {"from": "human", "value": "Describe the image briefly."},
                {"from": "gpt", "value": f"a {name}" + " circle" * (1 + index % 4)}]})  # fmt: skip
    (root / "rows.json").write_text(json.dumps(rows))
    return root / "model", root / "rows.json"


def run_worker(model_and_data, out: Path, *flags: str, processes: int = 1) -> list[dict]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, str(WORKER), *map(str, model_and_data), str(out), *flags]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(processes)]


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-12), ("float32", 1e-6)])
def test_two_processes_first_step_gradients_equal_one(model_and_data, tmp_path, dtype, tolerance):
    """2 gloo ranks x 4 samples == 1 process x 8 samples (sequential order): projector and language-model gradients."""
    (one,) = run_worker(model_and_data, tmp_path / "one", "--dtype", dtype, "--batch", "8")
    ranks = run_worker(model_and_data, tmp_path / "two", "--dtype", dtype, "--batch", "4", processes=2)
    assert not any("vision_tower" in name for name in one["grads"])  # stage 2: the tower is frozen
    assert any("multi_modal_projector" in name for name in one["grads"])
    assert max(g.abs().max().item() for g in one["grads"].values()) > 0.05  # real gradients, not zeros
    assert max_diff(one["grads"], ranks[0]["grads"]) <= tolerance
    assert max_diff(ranks[0]["grads"], ranks[1]["grads"]) == 0.0  # DDP's all-reduce leaves one gradient
    # one process's batch is the two ranks' batches side by side
    assert one["modalities"][0] == ranks[0]["modalities"][0] + ranks[1]["modalities"][0]


def test_modality_grouped_steps_hold_one_modality_on_every_rank(model_and_data, tmp_path):
    ranks = run_worker(model_and_data, tmp_path / "grouped", "--batch", "2", "--group", processes=2)
    steps = list(zip(ranks[0]["modalities"], ranks[1]["modalities"]))
    assert len(steps) == 4 and sum(len(a) + len(b) for a, b in steps) == 16  # every sample once, no padding rows
    for first, second in steps:
        assert len(set(first + second)) == 1  # one modality per step, on both ranks
    assert {first[0] for first, _ in steps} == {True, False}  # text-only steps happen, between image steps
