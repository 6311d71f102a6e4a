"""hfmm.evaluation.clip: zero-shot classification and retrieval, exact on a model with known embeddings and equal to
brute-force references (OpenCLIP's zero-shot recipe, CLIP_benchmark's recalls) on a real tiny CLIP."""

import pytest
import torch
import torch.nn.functional as F
from colour_oracle import PRIMARIES, ColourOracle, caption_csv, colour_folder, tiny_clip, tiny_processor
from PIL import Image

from hfmm.evaluation import image_text_retrieval, retrieval_recall, topk_accuracy, zero_shot_classification
from hfmm.evaluation.clip import fill_template


@pytest.fixture(scope="module")
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def tiny_model():
    return tiny_clip()


# ---------------------------------------------------------------------------------------------------------------------
# Known answers
# ---------------------------------------------------------------------------------------------------------------------


def test_zero_shot_is_exact_on_a_model_with_known_embeddings(tmp_path, processor):
    oracle = ColourOracle(processor)
    folder = colour_folder(tmp_path / "test", {name: [name, name] for name in PRIMARIES})
    result = zero_shot_classification(oracle, processor, folder, templates=["a photo of a {}.", "a {c} thing"])
    assert result == {
        "task": "zero-shot-image-classification",
        "dataset": {"name": tmp_path.name, "split": "test"},
        "metrics": {"top1": 1.0, "top5": 1.0},
    }
    # One red image filed as green: 1 of 3 wrong at top-1; 3 classes give no top-5.
    folder = colour_folder(tmp_path / "primaries", {"blue": ["blue"], "green": ["red"], "red": ["red"]})
    assert zero_shot_classification(oracle, processor, folder)["metrics"] == {"top1": pytest.approx(2 / 3)}


def test_zero_shot_from_a_csv_with_labels_or_class_indices(tmp_path, processor):
    oracle = ColourOracle(processor)
    colour_folder(tmp_path, {"x": ["red", "green", "blue", "blue"]})
    rows = [("x/0.png", "red"), ("x/1.png", "green"), ("x/2.png", "blue"), ("x/3.png", "green")]  # last one wrong
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"{p},{label}\n" for p, label in rows))
    metrics = zero_shot_classification(oracle, processor, tmp_path / "labels.csv")["metrics"]
    assert metrics == {"top1": 0.75}
    (tmp_path / "indices.csv").write_text("image,label\nx/0.png,1\nx/1.png,0\n")
    result = zero_shot_classification(oracle, processor, tmp_path / "indices.csv", classnames=["green", "red"])
    assert result["metrics"] == {"top1": 1.0}
    with pytest.raises(ValueError, match="pass `classnames`"):
        zero_shot_classification(oracle, processor, tmp_path / "indices.csv")


def test_retrieval_is_exact_on_a_model_with_known_embeddings(tmp_path, processor):
    oracle = ColourOracle(processor)
    pairs = [("red", "a red square"), ("green", "green"), ("green", "a green field"), ("blue", "deep blue")]
    result = image_text_retrieval(oracle, processor, caption_csv(tmp_path / "val", pairs))
    assert result["task"] == "image-text-retrieval" and result["dataset"] == {"name": "captions", "split": "test"}
    assert result["metrics"] == {f"{d}_R@{k}": 1.0 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    # A blue image captioned "red": text->image R@1 misses it (1 of 3); image->text R@1 misses it too.
    pairs = [("red", "red"), ("green", "green"), ("blue", "a red sky")]
    metrics = image_text_retrieval(oracle, processor, caption_csv(tmp_path / "x", pairs))["metrics"]
    assert metrics["text_to_image_R@1"] == pytest.approx(2 / 3)
    assert metrics["text_to_image_R@5"] == metrics["image_to_text_R@10"] == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Against brute-force references
# ---------------------------------------------------------------------------------------------------------------------


def test_recall_and_topk_match_explicit_loops():
    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(7, 5, generator=generator), dim=-1)
    owners = [0, 0, 1, 2, 2, 2, 3, 4, 5, 6, 6, 1]  # several captions for some images
    texts = F.normalize(images[owners] + 0.9 * torch.randn(len(owners), 5, generator=generator), dim=-1)
    metrics = retrieval_recall(images, texts, torch.tensor(owners))
    for k in (1, 5, 10):
        hits = 0
        for t in range(len(texts)):
            scores = [float(texts[t] @ images[i]) for i in range(len(images))]
            ranked = sorted(range(len(images)), key=lambda i: -scores[i])
            hits += owners[t] in ranked[:k]
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(hits / len(texts))
        hits = 0
        for i in range(len(images)):
            scores = [float(images[i] @ texts[t]) for t in range(len(texts))]
            ranked = sorted(range(len(texts)), key=lambda t: -scores[t])
            hits += any(owners[t] == i for t in ranked[:k])
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(hits / len(images))
    assert 0 < metrics["text_to_image_R@1"] < 1  # the case is not trivial
    logits, labels = torch.randn(20, 6, generator=generator), torch.randint(0, 6, (20,), generator=generator)
    expected = [
        sum(int(labels[n]) in sorted(range(6), key=lambda c: -logits[n, c])[:k] for n in range(20)) / 20
        for k in (1, 5)
    ]
    assert topk_accuracy(logits, labels) == pytest.approx({"top1": expected[0], "top5": expected[1]})


def reference_embedding(model, processor, *, path=None, text=None) -> torch.Tensor:
    """One image or one text, one forward pass each, normalised (OpenCLIP's `encode_*(normalize=True)`)."""
    with torch.no_grad():
        if path is not None:
            features = model.get_image_features(processor(images=Image.open(path))["pixel_values"]).pooler_output
        else:
            features = model.get_text_features(processor(text=[text])["input_ids"]).pooler_output
    return F.normalize(features[0], dim=-1)


def test_zero_shot_matches_open_clips_recipe_on_a_real_tiny_clip(tmp_path, processor, tiny_model):
    folder = colour_folder(
        tmp_path / "test", {n: [n, "red", "blue"] for n in ("red", "green", "blue", "cyan", "yellow")}
    )
    templates = ["a photo of a {}.", "itap of a {}.", "a {} thing"]
    result = zero_shot_classification(tiny_model, processor, folder, templates=templates, batch_size=4, progress=False)
    classnames = sorted(p.name for p in folder.iterdir())
    weights = []
    for name in classnames:  # OpenCLIP: normalise per template, average, renormalise
        per_template = torch.stack(
            [reference_embedding(tiny_model, processor, text=t.format(name)) for t in templates]
        )
        weights.append(F.normalize(per_template.mean(dim=0), dim=-1))
    weights = torch.stack(weights, dim=1)  # (E, C)
    top1 = top5 = 0
    paths = [(p, label) for label, name in enumerate(classnames) for p in sorted((folder / name).iterdir())]
    for path, label in paths:
        logits = 100 * reference_embedding(tiny_model, processor, path=path) @ weights
        ranked = logits.argsort(descending=True).tolist()
        top1 += ranked[0] == label
        top5 += label in ranked[:5]
    assert result["metrics"] == pytest.approx({"top1": top1 / len(paths), "top5": top5 / len(paths)})


def test_retrieval_matches_a_brute_force_reference_on_a_real_tiny_clip(tmp_path, processor, tiny_model):
    pairs = [("red", "a red one"), ("red", "crimson"), ("green", "a green one"), ("blue", "blue"), ("cyan", "sea")]
    path = caption_csv(tmp_path, pairs)
    metrics = image_text_retrieval(tiny_model, processor, path, batch_size=2, progress=False)["metrics"]
    images = sorted({colour for colour, _ in pairs}, key=[c for c, _ in pairs].index)
    image_embeds = [reference_embedding(tiny_model, processor, path=tmp_path / "images" / f"{c}.png") for c in images]
    text_embeds = [reference_embedding(tiny_model, processor, text=text) for _, text in pairs]
    owners = [images.index(colour) for colour, _ in pairs]
    for k in (1, 5, 10):
        t2i = sum(
            owners[t] in sorted(range(len(images)), key=lambda i: -float(e @ image_embeds[i]))[:k]
            for t, e in enumerate(text_embeds)
        )
        i2t = sum(
            any(owners[t] == i for t in sorted(range(len(pairs)), key=lambda t: -float(e @ text_embeds[t]))[:k])
            for i, e in enumerate(image_embeds)
        )
        assert metrics[f"text_to_image_R@{k}"] == pytest.approx(t2i / len(pairs))
        assert metrics[f"image_to_text_R@{k}"] == pytest.approx(i2t / len(images))


def test_unreadable_images_are_skipped(tmp_path, processor):
    oracle = ColourOracle(processor)
    folder = colour_folder(tmp_path / "test", {"red": ["red"], "blue": ["blue"]})
    (folder / "red" / "broken.png").write_bytes(b"\x89PNG broken")
    assert zero_shot_classification(oracle, processor, folder)["metrics"] == {"top1": 1.0}


def test_clear_errors(tmp_path, processor):
    oracle = ColourOracle(processor)
    with pytest.raises(ValueError, match="does not exist"):
        zero_shot_classification(oracle, processor, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no class subfolders"):
        zero_shot_classification(oracle, processor, tmp_path)
    folder = colour_folder(tmp_path / "f", {"red": ["red"], "blue": ["blue"]})
    with pytest.raises(ValueError, match="must contain"):
        zero_shot_classification(oracle, processor, folder, templates=["a photo"])
    with pytest.raises(ValueError, match="2 classes"):
        zero_shot_classification(oracle, processor, folder, classnames=["a", "b", "c"])
    path = caption_csv(tmp_path / "c", [("red", "red")])
    with pytest.raises(ValueError, match="no column 'text'"):
        image_text_retrieval(oracle, processor, path, caption_column="text")


def test_templates_take_the_class_name_in_either_slot():
    assert fill_template("a photo of a {}.", "red fox") == "a photo of a red fox."
    assert fill_template("itap of a {c}", "dog") == "itap of a dog"
    with pytest.raises(ValueError, match="must contain"):
        fill_template("a photo", "dog")
