"""The zero-shot pipeline on saved hfmm folders: OpenCLIP's probabilities, remote code, SigLIP's sigmoid, CLI."""

import json
import subprocess
import sys
import textwrap

import open_clip
import pytest
import torch
from conftest import tiny_clip_config
from PIL import Image
from reference_models import hfmm_twin, open_clip_model
from skimage import data
from transformers import pipeline

from hfmm import HfmmSigLIPConfig, HfmmSigLIPModel
from hfmm.cli import main as cli_main
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

LABELS = ["an astronaut", "a cat", "a cup of coffee", "a rocket"]
TEMPLATE = "This is a photo of {}."  # the pipeline's default hypothesis template


def photos():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())]


@pytest.fixture(scope="module")
def saved_vit(tmp_path_factory):
    """A depth-shrunk ViT-B-32 with OpenCLIP-identical weights, saved with its processor."""
    reference, cfg = open_clip_model("ViT-B-32")
    model = hfmm_twin(reference, cfg)
    path = tmp_path_factory.mktemp("vit")
    model.save_pretrained(path)
    HfmmCLIPProcessor.from_vision_config(model.config.vision_config).save_pretrained(path)
    return path, reference


def open_clip_probabilities(reference, images, labels):
    preprocess = open_clip.image_transform(224, is_train=False)
    tokens = open_clip.get_tokenizer("ViT-B-32")([TEMPLATE.format(label) for label in labels])
    with torch.no_grad():
        image = torch.nn.functional.normalize(
            reference.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1
        )
        text = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1)
        return (reference.logit_scale.exp() * image @ text.t()).softmax(dim=-1)


def pipeline_probabilities(classifier, images, labels):
    rows = []
    for image in images:
        scores = {row["label"]: row["score"] for row in classifier(image, candidate_labels=labels)}
        rows.append([scores[label] for label in labels])
    return torch.tensor(rows, dtype=torch.float32)


def test_pipeline_matches_open_clip(saved_vit):
    path, reference = saved_vit
    classifier = pipeline("zero-shot-image-classification", model=str(path))
    ours = pipeline_probabilities(classifier, photos(), LABELS)
    theirs = open_clip_probabilities(reference, photos(), LABELS)
    assert (ours - theirs).abs().max() <= 1e-5


def test_remote_code_load_without_hfmm(saved_vit):
    """transformers alone, `trust_remote_code=True`: the saved modeling and processing files do the work."""
    path, reference = saved_vit
    config = json.loads((path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForZeroShotImageClassification"] == "modeling_clip.HfmmCLIPModel"
    script = textwrap.dedent(f"""
        import sys
        sys.modules["hfmm"] = None  # hfmm is installed here; make sure nothing can import it
        try:
            import hfmm
            raise SystemExit("hfmm importable")
        except ImportError:
            pass
        import json, torch
        from PIL import Image
        from skimage import data
        from transformers import AutoModel, pipeline
        model = AutoModel.from_pretrained({str(path)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        classifier = pipeline("zero-shot-image-classification", model={str(path)!r}, trust_remote_code=True)
        scores = {{r["label"]: r["score"] for r in classifier(Image.fromarray(data.chelsea()), candidate_labels={LABELS!r})}}
        print(json.dumps([scores[label] for label in {LABELS!r}]))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    expected = open_clip_probabilities(reference, [Image.fromarray(data.chelsea())], LABELS)[0]
    assert (remote - expected).abs().max() <= 1e-5


def test_siglip_pipeline_applies_sigmoid(tmp_path):
    tiny = tiny_clip_config(vision={"image_size": 32, "patch_size": 8})
    model = HfmmSigLIPModel(
        HfmmSigLIPConfig(vision_config=tiny.vision_config, text_config=tiny.text_config, projection_dim=16)
    )
    with torch.no_grad():
        model.logit_bias.fill_(-1.0)
    model.save_pretrained(tmp_path)
    processor = HfmmCLIPProcessor.from_vision_config(model.config.vision_config)
    processor.save_pretrained(tmp_path)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    image = photos()[1]
    scores = pipeline_probabilities(classifier, [image], LABELS)[0]
    inputs = processor(
        text=[TEMPLATE.format(label) for label in LABELS], images=image, return_tensors="pt", padding=True
    )
    with torch.no_grad():
        expected = model(**inputs).logits_per_image.sigmoid()[0]
    assert (scores - expected).abs().max() <= 1e-5
    assert abs(scores.sum().item() - 1.0) > 1e-3  # independent sigmoids, not a softmax


def test_cli_zero_shot(saved_vit, tmp_path, capsys):
    path, _ = saved_vit
    image_path = tmp_path / "cat.png"
    photos()[1].save(image_path)
    assert cli_main(["zero-shot", "--model", str(path), "--label", "a cat", "--label", "a dog", str(image_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image_path) and len(lines) == 3
    assert abs(sum(float(line.split()[0]) for line in lines[1:]) - 1.0) < 1e-3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--label", "a cat"], "None of the 1 image(s) given could be read"),  # not an image (skipped with a warning)
        ([], "at least one --label"),
    ],
)
def test_cli_bad_input(saved_vit, tmp_path, capsys, argv, message):
    path, _ = saved_vit
    bogus = tmp_path / "notes.txt"
    bogus.write_text("not an image")
    assert cli_main(["zero-shot", "--model", str(path), *argv, str(bogus)]) == 2
    assert message in capsys.readouterr().err
