"""HfmmCLIPImageProcessor gives OpenCLIP's eval pixels (`open_clip.image_transform(..., is_train=False)`)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hfmm.models.clip.processing_clip import HfmmCLIPImageProcessor

open_clip = pytest.importorskip("open_clip")
skimage_data = pytest.importorskip("skimage.data")

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(3, 1, 1)


def _images() -> dict[str, Image.Image]:
    """Real photos plus every image mode OpenCLIP users feed, at odd aspect ratios."""
    rng = np.random.default_rng(0)
    images = {name: Image.fromarray(getattr(skimage_data, name)()) for name in ("astronaut", "chelsea", "coffee")}
    images["rocket"] = Image.fromarray(skimage_data.rocket())
    images["camera (L)"] = Image.fromarray(skimage_data.camera())
    cat = images["chelsea"].resize((91, 37))  # (width, height)
    alpha = rng.integers(0, 256, (37, 91), dtype=np.uint8)
    images["L 37x91"] = cat.convert("L")
    images["LA 37x91"] = Image.fromarray(np.dstack([np.asarray(cat.convert("L")), alpha]))
    images["P 300x17"] = images["coffee"].resize((17, 300)).convert("P")
    transparent = cat.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    transparent.info["transparency"] = 3
    images["P with transparency"] = transparent
    images["RGBA 37x91"] = Image.fromarray(np.dstack([np.asarray(cat), alpha]))
    images["CMYK 300x17"] = images["rocket"].resize((300, 17)).convert("CMYK")
    images["1 37x91"] = cat.convert("1")
    images["F 37x91"] = cat.convert("F")
    return images


IMAGES = _images()


def assert_same_pixels(processor, reference, images=IMAGES):
    for name, image in images.items():
        expected = reference(image)
        actual = processor(image)["pixel_values"]
        assert actual.shape == (1, *expected.shape), name
        assert (actual[0] - expected).abs().max().item() <= 1e-6, name


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("size", [224, 256])
def test_matches_openclip(size, interpolation, resize_mode):
    reference = open_clip.image_transform(size, is_train=False, interpolation=interpolation, resize_mode=resize_mode)
    processor = HfmmCLIPImageProcessor(size=size, interpolation=interpolation, resize_mode=resize_mode)
    assert_same_pixels(processor, reference)


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("size", [(200, 300), (300, 200)])
def test_non_square_matches_openclip(size, resize_mode):
    reference = open_clip.image_transform(size, is_train=False, resize_mode=resize_mode)
    assert_same_pixels(HfmmCLIPImageProcessor(size=size, resize_mode=resize_mode), reference)


def test_mean_std_and_fill_color_match_openclip():
    kwargs = {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "resize_mode": "longest", "fill_color": 128}
    reference = open_clip.image_transform(224, is_train=False, **kwargs)
    processor = HfmmCLIPImageProcessor(image_mean=0.5, image_std=0.5, resize_mode="longest", fill_color=128)
    assert_same_pixels(processor, reference)


def test_nearest_matches_torchvision():
    """OpenCLIP has no nearest option; the reference is its pipeline with torchvision's nearest `Resize`."""
    from torchvision import transforms

    reference = transforms.Compose(
        [
            transforms.Resize(224, interpolation=transforms.InterpolationMode.NEAREST),
            transforms.CenterCrop(224),
            open_clip.transform.MaybeConvertMode(),
            transforms.ToTensor(),
            transforms.Normalize(MEAN.flatten().tolist(), STD.flatten().tolist()),
        ]
    )
    assert_same_pixels(HfmmCLIPImageProcessor(interpolation="nearest"), reference)


def test_batches_arrays_tensors_and_paths(tmp_path):
    processor = HfmmCLIPImageProcessor()
    photo, rgba = IMAGES["chelsea"], IMAGES["RGBA 37x91"]
    expected = torch.cat([processor(photo)["pixel_values"], processor(rgba)["pixel_values"]])
    assert torch.equal(processor([photo, rgba])["pixel_values"], expected)

    array = np.array(photo)  # (height, width, 3) uint8
    assert torch.equal(processor(array)["pixel_values"], expected[:1])
    assert torch.equal(processor(torch.from_numpy(array).permute(2, 0, 1))["pixel_values"], expected[:1])
    assert torch.equal(processor(np.stack([array, array]))["pixel_values"], expected[[0, 0]])
    assert torch.equal(processor(torch.from_numpy(array).permute(2, 0, 1)[None])["pixel_values"], expected[:1])
    assert torch.equal(processor(np.asarray(rgba))["pixel_values"], expected[1:])

    floats = np.random.default_rng(0).random((37, 91, 3))  # floats in [0, 1] are scaled by 255 and rounded
    rounded = np.rint(floats * 255).astype(np.uint8)
    assert torch.equal(processor(floats)["pixel_values"], processor(rounded)["pixel_values"])
    assert torch.equal(
        processor(torch.from_numpy(floats).permute(2, 0, 1))["pixel_values"], processor(rounded)["pixel_values"]
    )

    gray = np.asarray(IMAGES["L 37x91"])
    assert torch.equal(processor(gray)["pixel_values"], processor(IMAGES["L 37x91"])["pixel_values"])
    assert torch.equal(processor(gray[:, :, None])["pixel_values"], processor(gray)["pixel_values"])

    path = tmp_path / "rgba.png"
    rgba.save(path)
    assert torch.equal(processor(str(path))["pixel_values"], expected[1:])
    assert torch.equal(processor(path)["pixel_values"], expected[1:])

    as_numpy = processor([photo, rgba], return_tensors="np")["pixel_values"]
    assert isinstance(as_numpy, np.ndarray) and np.array_equal(as_numpy, expected.numpy())


def _normalized_gray(value: int) -> torch.Tensor:
    """The pixel of a uniform 8-bit gray image of `value` after OpenCLIP's preprocessing, per channel."""
    return (torch.full((3, 1, 1), value, dtype=torch.uint8).float().div(255) - MEAN) / STD


def test_sixteen_bit_images_are_scaled_not_saturated():
    processor = HfmmCLIPImageProcessor()
    levels = np.random.default_rng(0).integers(0, 256, (40, 60)).astype(np.uint16)
    eight_bit = processor(Image.fromarray(levels.astype(np.uint8)))["pixel_values"]
    as_i16 = Image.fromarray(levels * 257)  # mode I;16: 257 * k is the 16-bit value of the 8-bit level k
    assert as_i16.mode == "I;16"
    as_i16b = Image.frombytes("I;16B", (60, 40), (levels * 257).astype(">u2").tobytes())
    as_i = Image.fromarray((levels * 257).astype(np.int32))
    assert as_i.mode == "I"
    for image in (as_i16, as_i16b, as_i, levels * 257, np.dstack([levels * 257] * 3)):
        assert torch.equal(processor(image)["pixel_values"], eight_bit)

    # Arbitrary 16-bit values map to round(value / 257).
    values = np.random.default_rng(1).integers(0, 65536, (40, 60)).astype(np.uint16)
    expected = np.floor(values / 257 + 0.5).astype(np.uint8)
    assert torch.equal(processor(Image.fromarray(values))["pixel_values"], processor(expected)["pixel_values"])

    # Mid gray (32896 = 128 * 257) stays mid gray; OpenCLIP's `convert("RGB")` saturates it to white.
    gray = Image.fromarray(np.full((30, 30), 32896, dtype=np.uint16))
    assert torch.allclose(processor(gray)["pixel_values"][0], _normalized_gray(128).expand(3, 224, 224))
    saturated = open_clip.image_transform(224, is_train=False)(gray)
    assert torch.allclose(saturated, _normalized_gray(255).expand(3, 224, 224))


@pytest.mark.parametrize(
    "bad_input, message",
    [
        ("not/an/image.png", "not a file"),
        ("https://example.com/cat.jpg", "not a file"),
        (5, "Unsupported image input of type int"),
        (None, "Unsupported image input of type NoneType"),
        ([], "No images"),
        (np.zeros((4, 32, 32), dtype=np.uint8), r"channels last.*\(4, 32, 32\)"),
        (np.zeros((8, 8, 5), dtype=np.uint8), "1 to 4 channels"),
        (np.zeros((2, 2, 8, 8, 3), dtype=np.uint8), "shape"),
        (np.zeros((0, 8, 3), dtype=np.uint8), "empty"),
        (np.full((8, 8, 3), 2.0), r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan), r"\[0, 1\]"),
        (np.full((8, 8, 3), 300, dtype=np.int32), r"\[0, 255\]"),
        (np.zeros((8, 8, 3), dtype=np.complex64), "dtype"),
        (torch.zeros(32, 32, 4, dtype=torch.uint8), r"channels first.*\(32, 32, 4\)"),
        (Image.new("RGB", (0, 5)), "empty"),
    ],
)
def test_bad_input_raises_value_error(bad_input, message):
    with pytest.raises(ValueError, match=message):
        HfmmCLIPImageProcessor()(bad_input)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resize_mode": "crop"}, "resize_mode"),
        ({"interpolation": "lanczos"}, "interpolation"),
        ({"size": 0}, "size"),
        ({"size": (224, 224, 3)}, "size"),
        ({"image_std": (0.5, 0.0, 0.5)}, "zeros"),
        ({"image_mean": (0.5, 0.5)}, "image_mean"),
        ({"fill_color": 0.5}, "fill_color"),
    ],
)
def test_bad_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HfmmCLIPImageProcessor(**kwargs)
    with pytest.raises(ValueError, match=message):
        HfmmCLIPImageProcessor()(IMAGES["chelsea"], **kwargs)


def test_unsupported_arguments_raise_value_error():
    with pytest.raises(ValueError, match="do_resize"):
        HfmmCLIPImageProcessor()(IMAGES["chelsea"], do_resize=False)
    with pytest.raises(ValueError, match="return_tensors"):
        HfmmCLIPImageProcessor()(IMAGES["chelsea"], return_tensors="tf")


def test_per_call_overrides():
    processor = HfmmCLIPImageProcessor()
    reference = open_clip.image_transform(256, is_train=False, resize_mode="squash", interpolation="bilinear")
    actual = processor(IMAGES["coffee"], size=256, resize_mode="squash", interpolation="bilinear")["pixel_values"]
    assert torch.equal(actual[0], reference(IMAGES["coffee"]))
    assert processor.size == 224 and processor.resize_mode == "shortest"


def test_save_and_reload(tmp_path):
    processor = HfmmCLIPImageProcessor(size=(200, 300), resize_mode="longest", interpolation="bilinear", fill_color=7)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert config["auto_map"] == {"AutoImageProcessor": "processing_clip.HfmmCLIPImageProcessor"}
    assert (tmp_path / "processing_clip.py").is_file()
    reloaded = HfmmCLIPImageProcessor.from_pretrained(tmp_path)
    for name in ("size", "resize_mode", "interpolation", "image_mean", "image_std", "fill_color"):
        assert getattr(reloaded, name) == getattr(processor, name), name
    images = list(IMAGES.values())
    assert torch.equal(reloaded(images)["pixel_values"], processor(images)["pixel_values"])


def test_from_vision_config():
    config = SimpleNamespace(
        image_size=256, image_mean=(0.5,) * 3, image_std=(0.5,) * 3, interpolation="bilinear", resize_mode="squash"
    )
    processor = HfmmCLIPImageProcessor.from_vision_config(config)
    assert (processor.size, processor.resize_mode, processor.interpolation) == (256, "squash", "bilinear")
    assert processor.image_mean == processor.image_std == [0.5] * 3
    assert HfmmCLIPImageProcessor.from_vision_config(SimpleNamespace(image_size=336)).size == 336
