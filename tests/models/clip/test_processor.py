"""HfmmCLIPProcessor: OpenCLIP's ids and pixels together, save/load, and loading as Hub remote code."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hfmm.models.clip.processing_clip import HfmmCLIPImageProcessor, HfmmCLIPProcessor, HfmmCLIPTokenizer

open_clip = pytest.importorskip("open_clip")

TEXTS = ["a photo of a cat", "ＡＢＣ &amp; “Hi” wow!!", "x(<end_of_text> <start_of_text> y", "word " * 100, ""]
SRC = Path(__file__).resolve().parents[3] / "src"


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 91, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (37, 91, 1), dtype=np.uint8)
    return [
        Image.fromarray(rgb),
        Image.fromarray(np.concatenate([rgb, alpha], axis=-1)),  # RGBA
        Image.fromarray(rgb).resize((17, 300)).convert("P"),
    ]


@pytest.fixture(scope="module")
def processor():
    vision_config = SimpleNamespace(image_size=224, interpolation="bicubic", resize_mode="shortest")
    return HfmmCLIPProcessor.from_vision_config(vision_config)


def test_matches_openclip(processor):
    images = _images()
    inputs = processor(text=TEXTS, images=images)
    assert torch.equal(inputs["input_ids"], open_clip.get_tokenizer("ViT-B-32")(TEXTS))
    assert torch.equal(inputs["attention_mask"], (torch.arange(77) <= inputs["input_ids"].argmax(-1)[:, None]).long())
    transform = open_clip.image_transform(224, is_train=False)
    assert torch.equal(inputs["pixel_values"], torch.stack([transform(image) for image in images]))


def test_text_or_images_alone_and_overrides(processor):
    assert set(processor(text="a dog")) == {"input_ids", "attention_mask"}
    assert set(processor(images=_images()[0])) == {"pixel_values"}
    short = processor(text=["a dog", "a photo of a cat"], padding=True)["input_ids"]
    assert short.shape == (2, 7) and short[0, -2:].tolist() == [0, 0]
    as_numpy = processor(text="a dog", images=_images()[0], return_tensors="np")
    assert isinstance(as_numpy["input_ids"], np.ndarray) and isinstance(as_numpy["pixel_values"], np.ndarray)


def test_bad_input_raises_value_error(processor):
    with pytest.raises(ValueError):
        processor()
    with pytest.raises(ValueError, match="Unsupported image input"):
        processor(text="a dog", images=3)


def test_save_and_reload(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert {"processing_clip.py", "processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= set(
        os.listdir(tmp_path)
    )
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    tokenizer_config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_clip.HfmmCLIPProcessor"
    assert processor_config["image_processor"]["auto_map"]["AutoImageProcessor"] == (
        "processing_clip.HfmmCLIPImageProcessor"
    )
    assert tokenizer_config["auto_map"]["AutoTokenizer"] == ["processing_clip.HfmmCLIPTokenizer", None]

    reloaded = HfmmCLIPProcessor.from_pretrained(tmp_path)
    assert isinstance(reloaded.tokenizer, HfmmCLIPTokenizer)
    assert isinstance(reloaded.image_processor, HfmmCLIPImageProcessor)
    expected, actual = processor(text=TEXTS, images=_images()), reloaded(text=TEXTS, images=_images())
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


REMOTE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    src, folder, out = sys.argv[1:4]
    sys.path = [p for p in sys.path if os.path.realpath(p) != os.path.realpath(src)]  # hide the hfmm checkout
    try:
        import hfmm
    except ImportError:
        pass
    else:
        raise SystemExit("hfmm is importable; the test would not prove anything")

    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=True)
    image_processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    texts = torch.load(os.path.join(folder, "texts.pt"), weights_only=True)
    images = [Image.open(os.path.join(folder, f"image{i}.png")) for i in range(3)]
    inputs = dict(processor(text=texts, images=images))
    inputs["tokenizer_ids"] = tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                                        return_tensors="pt")["input_ids"]
    inputs["image_processor_pixels"] = image_processor(images)["pixel_values"]
    inputs["modules"] = [type(obj).__module__ for obj in (processor, tokenizer, image_processor)]
    torch.save(inputs, out)
    """
)


def test_remote_code_load_without_hfmm(processor, tmp_path):
    folder = tmp_path / "model"
    processor.save_pretrained(folder)
    torch.save(TEXTS, folder / "texts.pt")
    for i, image in enumerate(_images()):
        image.save(folder / f"image{i}.png")
    out = tmp_path / "out.pt"
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-I", "-c", REMOTE_SCRIPT, str(SRC), str(folder), str(out)]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    remote = torch.load(out, weights_only=True)
    assert all(module.startswith("transformers_modules.") for module in remote["modules"])
    images = [Image.open(folder / f"image{i}.png") for i in range(3)]
    expected = processor(text=TEXTS, images=images)
    for key in ("input_ids", "attention_mask", "pixel_values"):
        assert torch.equal(remote[key], expected[key]), key
    assert torch.equal(remote["tokenizer_ids"], expected["input_ids"])
    assert torch.equal(remote["image_processor_pixels"], expected["pixel_values"])
