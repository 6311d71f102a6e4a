"""`convert/open_clip_to_hfmm.py`: every preset architecture, every source form, embeddings equal to open_clip's."""

import copy
import json
from pathlib import Path

import open_clip
import pytest
import torch
from PIL import Image
from reference_models import SHRUNK_CONVNEXT_DEPTHS, open_clip_model
from safetensors.torch import save_file
from skimage import data
from transformers import AutoModel, pipeline

import hfmm
from hfmm.conversion.commands import open_clip_to_hfmm
from hfmm.conversion.open_clip.checkpoint import convert_open_clip_checkpoint

TEXTS = ["a photo of a cat", "Ünïcödé &amp; emoji 🐈 " * 3, "x" * 400]
LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket"]
TEMPLATE = "This is a photo of {}."  # the pipeline's default hypothesis template
FORMS = ("hub-safetensors", "hub-bin", "safetensors", "training-pt")


def register_architecture(cfg: dict, name: str, folder: Path) -> str:
    """Registers a shrunk OpenCLIP config with open_clip's own registry, so `--model name` can name it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    return name


def write_source(form: str, reference, cfg: dict, tmp_path: Path, name: str, preprocess=None) -> tuple[Path, list]:
    """Writes `reference`'s weights in one source form; returns SRC and the extra command-line arguments."""
    state_dict = {key: tensor.contiguous() for key, tensor in reference.state_dict().items()}
    if form.startswith("hub"):
        src = tmp_path / "hub"
        src.mkdir()
        hub_config = {"model_cfg": cfg, "preprocess_cfg": preprocess or {}}
        (src / "open_clip_config.json").write_text(json.dumps(hub_config))
        if form == "hub-safetensors":
            save_file(state_dict, src / "open_clip_model.safetensors")
        else:
            torch.save(state_dict, src / "open_clip_pytorch_model.bin")
        return src, []
    model_name = register_architecture(cfg, f"{name}-hfmm-test-{tmp_path.name}", tmp_path / "configs")
    if form == "safetensors":
        src = tmp_path / "weights.safetensors"
        save_file(state_dict, src)
    else:  # what open_clip_train saves: DDP prefixes, optimizer state beside the weights
        src = tmp_path / "epoch_3.pt"
        optimizer = torch.optim.AdamW(reference.parameters())
        next(reference.parameters()).sum().backward()  # some optimizer state to save (the reference steps too)
        optimizer.step()
        state_dict = {f"module.{key}": tensor.detach() for key, tensor in reference.state_dict().items()}
        torch.save({"epoch": 3, "name": "run", "state_dict": state_dict, "optimizer": optimizer.state_dict()}, src)
    return src, ["--model", model_name]


def convert(src: Path, dst: Path, args: list, timm_model_kwargs: dict | None, verify: bool = True) -> None:
    """Through the script; a shrunk timm trunk needs the library API (OpenCLIP configs cannot hold its depths)."""
    if timm_model_kwargs is None:
        assert open_clip_to_hfmm.main([str(src), str(dst), *args] + ([] if verify else ["--no-verify"])) == 0
        return
    model = args[args.index("--model") + 1] if "--model" in args else None
    convert_open_clip_checkpoint(src, dst, model=model, timm_model_kwargs=timm_model_kwargs, verify_outputs=verify)


@torch.no_grad()
def open_clip_outputs(reference, size: int) -> dict:
    """open_clip's embeddings of one random image and three texts (taken before the reference is freed)."""
    pixels, ids = torch.randn(1, 3, size, size), open_clip.get_tokenizer("ViT-B-32")(TEXTS)
    image, text = reference.encode_image(pixels), reference.encode_text(ids)
    return {"pixels": pixels, "ids": ids, "image": image, "text": text, "logit_scale": reference.logit_scale.clone()}


@torch.no_grad()
def assert_embeddings_match(expected: dict, dst: Path) -> None:
    model = AutoModel.from_pretrained(dst).eval()
    assert isinstance(model, hfmm.HfmmCLIPModel)
    assert (model.get_image_features(expected["pixels"]).pooler_output - expected["image"]).abs().max() <= 1e-5
    assert (model.get_text_features(expected["ids"]).pooler_output - expected["text"]).abs().max() <= 1e-5
    assert torch.equal(model.logit_scale, expected["logit_scale"].reshape(1))


# (preset architecture, source form, quick_gelu, layers): every form for ViT-B-32, one form for each other preset. The
# widest towers keep one block; the converter's own check against open_clip is left to the smaller ones (the test
# compares with open_clip itself, and it would hold a third copy of the weights).
CASES = [
    ("ViT-B-32", "hub-safetensors", False, 2),
    ("ViT-B-32", "hub-bin", True, 2),
    ("ViT-B-32", "safetensors", True, 2),
    ("ViT-B-32", "training-pt", False, 2),
    ("ViT-B-16", "hub-bin", False, 2),
    ("ViT-L-14", "training-pt", False, 2),
    ("ViT-L-14-336", "safetensors", True, 2),
    ("ViT-H-14", "hub-safetensors", False, 1),
    ("ViT-H-16", "training-pt", False, 1),
    ("ViT-g-14", "safetensors", False, 1),
    ("ViT-bigG-14", "hub-bin", False, 1),
    ("ViT-e-14", "hub-safetensors", False, 1),
    ("convnext_base", "hub-safetensors", False, 2),
    ("convnext_large_d", "training-pt", False, 2),  # MLP projection head
    ("convnext_xxlarge", "safetensors", False, 1),
]


def test_every_preset_is_covered():
    assert {name for name, *_ in CASES} == set(hfmm.available_presets())
    assert {form for _, form, *_ in CASES} == set(FORMS)


@pytest.mark.parametrize("name, form, quick_gelu, layers", CASES)
def test_converted_embeddings_match_open_clip(tmp_path, name, form, quick_gelu, layers):
    reference, cfg = open_clip_model(name, quick_gelu=quick_gelu, layers=layers)
    if quick_gelu:
        cfg["quick_gelu"] = True  # as `-quickgelu` configs and OpenAI hub folders say
    timm_model_kwargs = {"depths": SHRUNK_CONVNEXT_DEPTHS} if "timm_model_name" in cfg["vision_cfg"] else None
    src, args = write_source(form, reference, cfg, tmp_path, name)
    expected = open_clip_outputs(reference, cfg["vision_cfg"].get("image_size", 224))
    del reference  # one copy of the weights at a time: the widest shrunk towers still hold ~850 MB
    convert(src, tmp_path / "dst", args, timm_model_kwargs, verify=layers > 1)
    assert_embeddings_match(expected, tmp_path / "dst")
    act = json.loads((tmp_path / "dst" / "config.json").read_text())["text_config"]["hidden_act"]
    assert act == ("quick_gelu" if quick_gelu else "gelu")


def test_quick_gelu_flag_overrides_the_config(tmp_path):
    """A checkpoint trained with QuickGELU under a config that does not say so: `--quick-gelu` decides."""
    reference, cfg = open_clip_model("ViT-B-32", quick_gelu=True)
    src, args = write_source("safetensors", reference, cfg, tmp_path, "ViT-B-32")
    assert open_clip_to_hfmm.main([str(src), str(tmp_path / "dst"), *args, "--quick-gelu"]) == 0
    assert_embeddings_match(open_clip_outputs(reference, 224), tmp_path / "dst")


def test_half_precision_checkpoint_keeps_its_dtype(tmp_path):
    """fp16 weights are written as fp16 (bit for bit); the check against open_clip runs on fp32 copies of both."""
    reference, cfg = open_clip_model("ViT-B-32", layers=1)
    reference.half()
    src, args = write_source("hub-safetensors", reference, cfg, tmp_path, "ViT-B-32")
    result = convert_open_clip_checkpoint(src, tmp_path / "dst")
    assert max(result.differences.values()) <= 1e-5
    model = AutoModel.from_pretrained(tmp_path / "dst")
    assert model.dtype == torch.float16
    assert torch.equal(model.text_model.embeddings.token_embedding.weight, reference.token_embedding.weight)
    assert torch.equal(
        model.vision_model.encoder.layers[0].self_attn.v_proj.weight,
        reference.visual.transformer.resblocks[0].attn.in_proj_weight[-768:],
    )


def test_custom_text_layout_and_logit_bias(tmp_path):
    """`CustomTextCLIP` keys (`text.` prefix) and a learned logit bias (`init_logit_bias`): a sigmoid-loss hfmm model."""
    cfg = copy.deepcopy(open_clip.get_model_config("ViT-B-32"))
    cfg["vision_cfg"]["layers"] = cfg["text_cfg"]["layers"] = 1
    cfg |= {"custom_text": True, "init_logit_bias": -10.0}
    torch.manual_seed(0)
    reference = open_clip.CustomTextCLIP(**{k: v for k, v in cfg.items() if k != "custom_text"}).eval()
    with torch.no_grad():
        for param in reference.parameters():
            if param.ndim <= 1:
                param.add_(0.1 * torch.randn_like(param))
    assert any(key.startswith("text.") for key in reference.state_dict())
    src, args = write_source("hub-safetensors", reference, cfg, tmp_path, "ViT-B-32")
    convert(src, tmp_path / "dst", args, None)
    assert_embeddings_match(open_clip_outputs(reference, 224), tmp_path / "dst")
    model = AutoModel.from_pretrained(tmp_path / "dst")
    assert isinstance(model, hfmm.HfmmSigLIPModel) and model.logit_bias.item() == reference.logit_bias.item()


# --- the zero-shot pipeline on photos -------------------------------------------------------------------------------


def photos():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


def open_clip_probabilities(reference, size: int, preprocess_cfg: dict) -> torch.Tensor:
    transform = open_clip.image_transform(
        size,
        is_train=False,
        mean=preprocess_cfg.get("mean"),
        std=preprocess_cfg.get("std"),
        interpolation=preprocess_cfg.get("interpolation"),
        resize_mode=preprocess_cfg.get("resize_mode"),
    )
    tokens = open_clip.get_tokenizer("ViT-B-32")([TEMPLATE.format(label) for label in LABELS])
    with torch.no_grad():
        images = reference.encode_image(torch.stack([transform(image) for image in photos()]))
        texts = reference.encode_text(tokens)
        image, text = torch.nn.functional.normalize(images, dim=-1), torch.nn.functional.normalize(texts, dim=-1)
        return (reference.logit_scale.exp() * image @ text.t()).softmax(dim=-1)


@pytest.mark.parametrize(
    "name, preprocess_cfg",
    [
        ("ViT-B-32", {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bilinear"}),
        ("convnext_base", {}),
    ],
)
def test_zero_shot_pipeline_matches_open_clip(tmp_path, name, preprocess_cfg):
    reference, cfg = open_clip_model(name)
    timm_model_kwargs = {"depths": SHRUNK_CONVNEXT_DEPTHS} if "timm_model_name" in cfg["vision_cfg"] else None
    src, args = write_source("hub-safetensors", reference, cfg, tmp_path, name, preprocess=preprocess_cfg)
    convert(src, tmp_path / "dst", args, timm_model_kwargs)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path / "dst"))
    rows = []
    for image in photos():
        scores = {row["label"]: row["score"] for row in classifier(image, candidate_labels=LABELS)}
        rows.append([scores[label] for label in LABELS])
    size = cfg["vision_cfg"].get("image_size", 224)
    expected = open_clip_probabilities(reference, size, preprocess_cfg)
    assert (torch.tensor(rows) - expected).abs().max() <= 1e-5


# --- full size ------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_full_size_vit_b_32_bare_weights_with_preset(tmp_path):
    """Bare weights named by the hfmm preset; its activation is ambiguous, so the flag says which."""
    reference, _ = open_clip_model("ViT-B-32", layers=None)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "weights.safetensors")
    expected = open_clip_outputs(reference, 224)
    del reference
    argv = [str(tmp_path / "weights.safetensors"), str(tmp_path / "dst"), "--model", "ViT-B-32", "--no-quick-gelu"]
    assert open_clip_to_hfmm.main(argv) == 0
    assert_embeddings_match(expected, tmp_path / "dst")


@pytest.mark.slow
def test_full_size_convnext_base_training_checkpoint(tmp_path):
    reference, cfg = open_clip_model("convnext_base", layers=None)
    src, _ = write_source("training-pt", reference, cfg, tmp_path, "convnext_base")
    expected = open_clip_outputs(reference, 224)
    del reference
    assert open_clip_to_hfmm.main([str(src), str(tmp_path / "dst"), "--model", "convnext_base"]) == 0
    assert_embeddings_match(expected, tmp_path / "dst")


def test_the_converter_says_when_it_verifies_against_open_clip(tmp_path, capfd):
    """After the conversion bar, building open_clip's model and comparing takes a while: a status line says so."""
    reference, cfg = open_clip_model("ViT-B-32", layers=1)
    src, args = write_source("hub-safetensors", reference, cfg, tmp_path, "ViT-B-32")
    assert open_clip_to_hfmm.main([str(src), str(tmp_path / "dst"), *args]) == 0
    assert "verifying against open_clip" in capfd.readouterr().err
