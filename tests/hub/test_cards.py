"""Model cards: rendered from a converted CLIP, a trained CLIP with eval results and a NeVA; front matter and
`model-index` read back; the usage snippet runs with transformers alone on exactly the files a push would upload."""

import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, metadata_load
from neva_fixtures import save_tiny_neva
from PIL import Image
from reference_models import open_clip_model
from safetensors.torch import save_file

from hfmm.cli import main as hfmm_main
from hfmm.conversion.commands import open_clip_to_hfmm
from hfmm.conversion.open_clip.checkpoint import convert_open_clip_checkpoint
from hfmm.demo.synthetic import make_colour_imagefolder, make_shapes_dataset
from hfmm.evaluation import run_eval
from hfmm.hub.cards import CardError, card_title, load_eval_report, render_card, write_card
from hfmm.hub.push import push
from hfmm.training.clip import recipe as clip_recipe

ROOT = Path(__file__).resolve().parents[2]
BLOCK_HFMM = 'import sys\nsys.modules["hfmm"] = None  # installed here: make sure nothing imports it\n'


def model_index_values(card: ModelCard) -> dict:
    """{(task, dataset, split, metric): value} from a loaded card's `model-index`."""
    return {
        (r.task_type, r.dataset_name, r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results
    }


def eval_values(report: dict) -> dict:
    return {
        (r["task"], r["dataset"]["name"], r["dataset"]["split"], metric): value
        for r in report["results"]
        for metric, value in r["metrics"].items()
    }


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory) -> tuple[Path, Path, dict]:
    """Two steps of `hfmm train clip` on generated shapes, then `hfmm eval` zero-shot and retrieval."""
    root = tmp_path_factory.mktemp("trained")
    pairs = make_shapes_dataset(root / "data", 16, seed=0, split="train")
    colours = make_colour_imagefolder(root / "data" / "colours", 16, seed=1)
    tiny = {"projection_dim": 16, "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32,
            "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
            "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                            "num_attention_heads": 4}}  # fmt: skip
    out = root / "model"
    clip_recipe.main(
        [
            "--config",
            str(ROOT / "recipes" / "clip" / "tiny_demo.yaml"),
            "--config_overrides",
            json.dumps(tiny),
            "--train_data",
            str(pairs),
            "--output_dir",
            str(out),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--warmup_steps",
            "0",
            "--logging_steps",
            "1",
        ]  # fmt: skip
    )
    report = run_eval(out, [("zero-shot", colours), ("retrieval", pairs)], root / "eval.json", progress=False)
    return out, root / "eval.json", report


def test_trained_clip_card_carries_the_run_and_the_measured_results(trained_clip):
    out, eval_path, report = trained_clip
    assert hfmm_main(["card", str(out), "--eval", str(eval_path), "--license", "mit"]) == 0
    card = ModelCard.load(out / "README.md")
    assert model_index_values(card) == eval_values(report)  # every metric, value unchanged
    assert len(card.data.eval_results) == 2 + 6  # top1/top5 + three recalls each way
    metadata = metadata_load(out / "README.md")
    assert metadata["pipeline_tag"] == "zero-shot-image-classification"
    assert metadata["library_name"] == "transformers" and metadata["license"] == "mit"
    assert {"hfmm", "clip", "custom_code"} <= set(metadata["tags"])
    text = str(card)
    assert "Trained for 2 steps" in text and "1 × CPU" in text  # training_run.json written by the recipe
    assert "per_device_train_batch_size" in text and "preset: ViT-B-32" in text  # hyperparameters and recipe.yaml
    top1 = report["results"][0]["metrics"]["top1"]
    assert f"| Zero-shot image classification | colours | test | top-1 accuracy | {top1:.4f} |" in text


def test_converted_clip_card_names_its_source(tmp_path):
    reference, cfg = open_clip_model("ViT-B-32", layers=1)
    src = tmp_path / "hub"
    src.mkdir()
    (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, src / "open_clip_model.safetensors")
    convert_open_clip_checkpoint(src, tmp_path / "converted")
    record = json.loads((tmp_path / "converted" / "conversion.json").read_text())
    assert record["converter"] == "convert/open_clip_to_hfmm.py" and record["source"] == str(src)
    assert max(record["max_difference_from_source"].values()) <= 1e-5  # measured against open_clip at conversion
    card = render_card(tmp_path / "converted", base_model="laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    text = str(card)
    assert f"python convert/open_clip_to_hfmm.py {src} converted" in text
    assert "| Image tower | 1 layers, width 768, 12 heads, MLP 3072 |" in text
    assert f"| Parameters | {sum(p.numel() for p in reference.parameters()):,} |" in text  # from the headers
    assert card.data.base_model == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K" and card.data.eval_results is None


def test_card_names_the_model_from_its_recipe_or_source(trained_clip, tmp_path):
    out, _, _ = trained_clip  # trained by recipes/clip/tiny_demo.yaml into a folder named "model"
    card = render_card(out)
    assert card.data.model_name == "tiny_demo" and "\n# tiny_demo\n" in str(card)
    assert render_card(out, repo_id="org/my-clip").data.model_name == "org/my-clip"  # an explicit Hub id wins
    reference, cfg = open_clip_model("ViT-B-32", layers=1)
    src = tmp_path / "ViT-B-32-laion2b_s34b_b79k"
    src.mkdir()
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, src / "open_clip_model.safetensors")
    (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    convert_open_clip_checkpoint(src, tmp_path / "clip", verify_outputs=False)
    card = render_card(tmp_path / "clip")
    assert card.data.model_name == "ViT-B-32-laion2b_s34b_b79k" and "\n# ViT-B-32-laion2b_s34b_b79k\n" in str(card)
    # a weights file's generic name says nothing: its folder names the model
    record = {"source": str(src / "open_clip_pytorch_model.bin")}
    assert card_title(tmp_path / "clip", None, record, None) == "ViT-B-32-laion2b_s34b_b79k"
    assert card_title(tmp_path / "clip", None, {"source": "/ckpt/neva_7b.nemo"}, None) == "neva_7b"


def test_neva_card_with_vqa_results(tmp_path):
    folder = save_tiny_neva(tmp_path / "neva")
    report = {"model": "neva", "results": [{"task": "visual-question-answering",
              "dataset": {"name": "colour-questions", "split": "test"}, "metrics": {"exact_match": 0.875}}]}  # fmt: skip
    (folder / "eval.json").write_text(json.dumps(report))  # picked up without --eval
    write_card(folder, repo_id="org/tiny-neva", base_model="lmsys/vicuna-7b-v1.5")
    card = ModelCard.load(folder / "README.md")
    assert card.data.pipeline_tag == "image-text-to-text" and "llava" in card.data.tags
    assert model_index_values(card) == {
        ("visual-question-answering", "colour-questions", "test", "exact_match"): 0.875
    }
    assert "| Projector | `mlp2x_gelu` |" in str(card) and 'model_id = "org/tiny-neva"' in str(card)


def test_bad_eval_json_and_folders_are_clear_errors(tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps({"results": [{"task": "guessing", "dataset": {"name": "x"}}]}))
    with pytest.raises(CardError, match="known `task`"):
        load_eval_report(tmp_path / "eval.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CardError, match="not valid JSON"):
        load_eval_report(tmp_path / "broken.json")
    with pytest.raises(CardError, match="no config.json found"):
        render_card(tmp_path)
    assert hfmm_main(["card", str(tmp_path / "nowhere")]) == 2


def python_block(card_text: str) -> str:
    return re.search(r"```python\n(.*?)```", card_text, re.S).group(1)


def test_clip_snippet_runs_with_transformers_alone_on_the_dry_run_files(trained_clip, tmp_path, capsys):
    """The dry-run listing, copied to a fresh folder, is a complete remote-code model: the card's snippet (model,
    processor, zero-shot pipeline) runs in a subprocess where hfmm cannot be imported."""
    out, eval_path, _ = trained_clip
    (out / "checkpoint-1").mkdir(exist_ok=True)
    (out / "checkpoint-1" / "optimizer.pt").write_bytes(b"state")  # training leftovers stay home
    assert hfmm_main(["push", str(out), "--repo", "org/tiny-clip", "--dry-run", "--eval", str(eval_path)]) == 0
    listed = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert "README.md" in listed and "model.safetensors" in listed and "modeling_clip.py" in listed
    assert not any(name.startswith("checkpoint-") or name == "trainer_state.json" for name in listed)
    pushed = tmp_path / "org" / "tiny-clip"
    for name in listed:
        if name != "README.md":  # the card is rendered for the commit; the folder has none
            (pushed / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out / name, pushed / name)
    card = render_card(out, eval_report=eval_path, repo_id=str(pushed))
    Image.new("RGB", (48, 40), (200, 30, 30)).save(tmp_path / "photo.jpg")
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_HFMM + python_block(str(card))],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    probabilities = json.loads(result.stdout.splitlines()[0].replace("'", '"'))
    assert abs(sum(probabilities.values()) - 1) < 1e-5 and len(probabilities) == 3
    assert "'label': 'a photo of a" in result.stdout.splitlines()[1]  # the pipeline's ranked labels


def test_neva_snippet_runs_with_transformers_alone(tmp_path):
    folder = save_tiny_neva(tmp_path / "neva")
    pushed = tmp_path / "copy"
    pushed.mkdir()
    for name in push(folder, "org/tiny-neva", dry_run=True).files:
        if name != "README.md":
            shutil.copy(folder / name, pushed / name)
    Image.new("RGB", (40, 40), (20, 20, 200)).save(tmp_path / "photo.jpg")
    snippet = python_block(str(render_card(folder, repo_id=str(pushed))))
    result = subprocess.run(
        [sys.executable, "-c", BLOCK_HFMM + snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generated_text" in result.stdout  # the pipeline answered (a tiny random model: any text)


def test_snippet_of_a_card_is_valid_python():
    for name in ("clip.md", "neva.md"):
        text = (ROOT / "model_cards" / name).read_text()
        compile(textwrap.dedent(python_block(text)).replace("{{ repo_id }}", "x"), name, "exec")


def test_converted_card_shows_the_exact_rerunnable_command(tmp_path):
    """Issue 15 item 7: `conversion.json` records the script's arguments; the card shows them, shell-quoted."""
    import shlex

    reference, cfg = open_clip_model("ViT-B-32", layers=1)
    src = tmp_path / "my hub"  # a space: the command must quote it to re-run
    src.mkdir()
    (src / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, src / "open_clip_model.safetensors")
    argv = [str(src), str(tmp_path / "converted"), "--no-quick-gelu", "--max-shard-size", "2GB"]
    assert open_clip_to_hfmm.main(argv) == 0  # the body of convert/open_clip_to_hfmm.py
    record = json.loads((tmp_path / "converted" / "conversion.json").read_text())
    assert record["arguments"] == argv
    text = str(render_card(tmp_path / "converted"))
    assert f"python convert/open_clip_to_hfmm.py {shlex.join(argv)}\n" in text
