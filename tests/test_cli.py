"""`hfmm zero-shot | chat | eval | card` on bad input: 16-bit images, unreadable files and folders, missing or
wrong-kind models, empty prompts, Ctrl-C and library noise (issue 15, items 3, 8, 9, 10, 12, 16)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import sigint_as_in_a_terminal, tiny_clip_config
from neva_fixtures import save_tiny_neva
from PIL import Image

from hfmm import HfmmCLIPModel
from hfmm.cli import main
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

LABELS = ["red", "green", "blue"]
BNB_NOISE = "kernels-community"  # in both of bitsandbytes' import-time warnings on a CPU-only machine


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    config = tiny_clip_config()
    torch.manual_seed(0)
    HfmmCLIPModel(config).save_pretrained(folder)
    HfmmCLIPProcessor.from_vision_config(config.vision_config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def neva_dir(tmp_path_factory) -> Path:
    return save_tiny_neva(tmp_path_factory.mktemp("neva"))


@pytest.fixture(scope="module")
def gradient_16bit(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A 16-bit grey PNG written by Pillow (values up to 60000: RGB conversion saturates nearly all to white)."""
    values = np.linspace(2000, 60000, 48 * 40).reshape(40, 48).astype(np.uint16)
    path = tmp_path_factory.mktemp("images") / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    return path, values


def _scores(output: str) -> dict[str, dict[str, float]]:
    """`{image: {label: score}}` from `hfmm zero-shot`'s output."""
    scores, image = {}, None
    for line in output.splitlines():
        if line.startswith("  "):
            score, label = line.split(maxsplit=1)
            scores[image][label] = float(score)
        else:
            image = line
            scores[image] = {}
    return scores


def _direct_scores(clip_dir: Path, image: Image.Image) -> dict[str, float]:
    model = HfmmCLIPModel.from_pretrained(clip_dir).eval()
    processor = HfmmCLIPProcessor.from_pretrained(clip_dir)
    inputs = processor(images=image, text=[f"a photo of {label}." for label in LABELS], return_tensors="pt")
    with torch.inference_mode():
        probs = model(**inputs).logits_per_image.softmax(-1)[0]
    return {label: round(p, 4) for label, p in zip(LABELS, probs.tolist())}


def _zero_shot(model: Path, *images) -> list[str]:
    return [
        "zero-shot",
        "--model",
        str(model),
        *(arg for label in LABELS for arg in ("--label", label)),
        *map(str, images),
    ]


# --- item 3: images are read as hfmm's processor reads them ------------------------------------------------------------


def test_zero_shot_scales_a_16_bit_png_instead_of_saturating_it(clip_dir, gradient_16bit, capsys):
    path, values = gradient_16bit
    eight_bit = _direct_scores(clip_dir, Image.fromarray(np.rint(values / 257).astype(np.uint8)))
    white = _direct_scores(clip_dir, Image.new("RGB", (48, 40), "white"))
    assert eight_bit != white  # else the test could not tell them apart
    assert main(_zero_shot(clip_dir, path)) == 0
    assert _scores(capsys.readouterr().out)[str(path)] == pytest.approx(eight_bit, abs=1.5e-4)


def test_chat_refuses_a_16_bit_image_as_the_readme_says(neva_dir, gradient_16bit, capsys):
    assert main(["chat", "--model", str(neva_dir), "--image", str(gradient_16bit[0]), "What is it?"]) == 2
    error = capsys.readouterr().err
    assert error.endswith("\n") and "mode 'I;16" in error.splitlines()[-1] and error.count("error") == 1, error


# --- item 8: unreadable files are skipped, folders expanded --------------------------------------------------------


def test_zero_shot_skips_unreadable_files_and_expands_folders(clip_dir, tmp_path, capsys, caplog):
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name, colour in (("a.png", "red"), ("b.jpg", "blue")):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    last = tmp_path / "last.png"
    Image.new("RGB", (30, 30), "green").save(last)
    assert main(_zero_shot(clip_dir, broken, folder, last)) == 0
    scores = _scores(capsys.readouterr().out)
    assert list(scores) == [str(folder / "a.png"), str(folder / "b.jpg"), str(last)]
    assert all(set(row) == set(LABELS) for row in scores.values())
    assert any("broken.png" in record.getMessage() for record in caplog.records)


def test_zero_shot_with_no_readable_image_is_one_line(clip_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    assert main(_zero_shot(clip_dir, broken)) == 2
    assert "None of the 1 image(s)" in capsys.readouterr().err


# --- item 9: a mistyped local model path fails at once ---------------------------------------------------------------


@pytest.mark.parametrize("path", ["./my-clip", "/x/y", "foo/bar/baz", "~/no-such-hfmm-model", "EXISTING/missing"])
def test_missing_local_model_is_one_line_at_once(path, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "EXISTING").mkdir()
    Image.new("RGB", (30, 30)).save(tmp_path / "x.png")
    for argv in (
        _zero_shot(path, "x.png"),
        ["chat", "--model", path, "--image", "x.png", "What?"],
        ["eval", "--model", path, "--task", "zero-shot", "--data", "x.png"],
        ["card", path],
    ):
        started = time.monotonic()
        assert main(argv) == 2, argv
        error = capsys.readouterr().err
        assert error == f"hfmm {argv[0]}: error: " + error.split("error: ", 1)[1] and error.count("\n") == 1, error
        assert f"{path} does not exist" in error
        assert time.monotonic() - started < 5


def test_recipe_model_paths_are_checked(tmp_path, monkeypatch):
    from hfmm.training.arguments import RecipeError, check_model_paths, looks_local
    from hfmm.training.clip.arguments import CLIPModelArguments
    from hfmm.training.clip.model import load_model_and_processor
    from hfmm.training.neva.arguments import NevaModelArguments

    monkeypatch.chdir(tmp_path)
    assert not looks_local("openai/clip-vit-base-patch32") and not looks_local("gpt2")
    assert looks_local("demo_output/neva/parts/llm") and looks_local("./x") and looks_local("~/x")
    with pytest.raises(
        RecipeError, match=r"^vision_tower demo_output/neva/parts/clip does not exist; `make demo-neva`"
    ):
        check_model_paths(NevaModelArguments(vision_tower="demo_output/neva/parts/clip", language_model="lmsys/x"))
    with pytest.raises(RecipeError, match=r"^model_name_or_path \./my-clip does not exist"):
        load_model_and_processor(CLIPModelArguments(model_name_or_path="./my-clip"))
    (tmp_path / "parts").mkdir()
    check_model_paths(NevaModelArguments(vision_tower="parts", language_model="lmsys/vicuna-7b-v1.5"))


# --- item 10: the wrong kind of model ----------------------------------------------------------------------------------


def test_wrong_kind_of_model_is_named(clip_dir, neva_dir, gradient_16bit, capsys):
    image = str(gradient_16bit[0])
    needs_neva = f"this needs a NeVA (image-text-to-text) model; {clip_dir} is a CLIP (model_type hfmm_clip)."
    needs_clip = f"this needs a CLIP (zero-shot image classification) model; {neva_dir} is a NeVA (model_type neva)."
    for argv, expected in (
        (["chat", "--model", str(clip_dir), "--image", image, "What?"], needs_neva),
        (["eval", "--model", str(clip_dir), "--task", "vqa", "--data", "q.json"], needs_neva),
        (_zero_shot(neva_dir, image), needs_clip),
        (["eval", "--model", str(neva_dir), "--task", "zero-shot", "--data", "folder"], needs_clip),
    ):
        assert main(argv) == 2
        assert capsys.readouterr().err == f"hfmm {argv[0]}: error: {expected}\n"


# --- item 16: empty prompt, Ctrl-C --------------------------------------------------------------------------------------


def test_chat_refuses_an_empty_question(neva_dir, gradient_16bit, capsys):
    assert main(["chat", "--model", str(neva_dir), "--image", str(gradient_16bit[0]), "  "]) == 2
    assert "the question is empty" in capsys.readouterr().err


def _hfmm(*args: str, **kwargs) -> subprocess.Popen:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "hfmm.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        **kwargs,
    )  # fmt: skip


def test_ctrl_c_exits_quietly_with_130(tmp_path):
    process = _hfmm("demo", "--out", str(tmp_path / "demo"), preexec_fn=sigint_as_in_a_terminal)
    first = process.stdout.readline()  # "rendering ...": the command is running
    assert first.startswith("rendering"), first + process.stderr.read()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr


# --- item 12: no bitsandbytes noise --------------------------------------------------------------------------------------


def test_no_bitsandbytes_noise(clip_dir, gradient_16bit, tmp_path):
    Image.new("RGB", (30, 30), "red").save(tmp_path / "red.png")
    for args in (["--help"], ["eval", "--model", str(clip_dir), "--task", "zero-shot", "--data", str(tmp_path)]):
        process = _hfmm(*args)
        _, stderr = process.communicate(timeout=300)
        assert BNB_NOISE not in stderr, stderr
    process = _hfmm(*_zero_shot(clip_dir, gradient_16bit[0]))
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0 and BNB_NOISE not in stderr, stderr


@pytest.mark.parametrize("recipe", ["clip_pretrain.py", "neva_stage1.py", "neva_stage2.py"])
def test_no_bitsandbytes_noise_in_recipes(recipe):
    """The recipes import hfmm (and its log filters) before transformers, which imports peft and bitsandbytes."""
    script = Path(__file__).resolve().parents[1] / "recipes" / recipe
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert "usage" in result.stderr  # it ran its imports and stopped at the missing --config
    assert BNB_NOISE not in result.stderr, result.stderr
