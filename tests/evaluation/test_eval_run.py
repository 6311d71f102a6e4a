"""hfmm.evaluation.run: `run_eval` and `hfmm eval` load a saved model and write the eval JSON schema (CLIP tasks and a
NeVA's VQA)."""

import json
from pathlib import Path

import pytest
from colour_oracle import PRIMARIES, caption_csv, colour_folder, flat_image, tiny_clip, tiny_processor
from neva_fixtures import save_tiny_neva

from hfmm.cli import main as cli
from hfmm.evaluation import run_eval


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    tiny_clip().save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    return folder


def check_schema(report: dict, model: str):
    assert report.keys() == {"model", "results"} and report["model"] == model
    zero_shot, retrieval = report["results"]
    assert zero_shot.keys() == retrieval.keys() == {"task", "dataset", "metrics"}
    assert zero_shot["task"] == "zero-shot-image-classification" and retrieval["task"] == "image-text-retrieval"
    assert zero_shot["dataset"] == {"name": "eval", "split": "test"}
    assert retrieval["dataset"] == {"name": "captions", "split": "test"}
    assert set(zero_shot["metrics"]) == {"top1", "top5"}
    assert set(retrieval["metrics"]) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    for result in report["results"]:
        assert all(isinstance(v, float) and 0 <= v <= 1 for v in result["metrics"].values())


def eval_data(tmp_path: Path) -> tuple[Path, Path]:
    folder = colour_folder(tmp_path / "eval" / "test", {n: [n] for n in PRIMARIES})
    return folder, caption_csv(tmp_path / "c", [("red", "red"), ("blue", "blue"), ("blue", "sky")])


def test_run_eval_writes_the_json_schema(tmp_path, saved_model):
    folder, captions = eval_data(tmp_path)
    out = tmp_path / "reports" / "eval.json"
    report = run_eval(saved_model, [("zero-shot", folder), ("retrieval", captions)], out, progress=False)
    check_schema(report, str(saved_model))
    assert json.loads(out.read_text()) == report
    with pytest.raises(ValueError, match="Unknown task"):
        run_eval(saved_model, [("captioning", folder)])


def test_run_eval_refuses_no_tasks_and_vqa_mixed_with_clip_tasks(tmp_path, saved_model):
    folder, _ = eval_data(tmp_path)
    with pytest.raises(ValueError, match="at least one"):
        run_eval(saved_model, [])
    with pytest.raises(ValueError, match="run them separately"):
        run_eval(saved_model, [("zero-shot", folder), ("vqa", tmp_path / "questions.json")])


def test_run_eval_answers_questions_with_a_saved_neva(tmp_path):
    model = save_tiny_neva(tmp_path / "neva")
    data = tmp_path / "questions" / "test.json"
    data.parent.mkdir()
    samples = []
    for colour in ("red", "blue"):
        flat_image(colour, (28, 28)).save(data.parent / f"{colour}.png")
        turns = [{"from": "human", "value": "<image>\nWhat colour is the square?"}, {"from": "gpt", "value": colour}]
        samples.append({"image": f"{colour}.png", "conversations": turns})
    data.write_text(json.dumps(samples))
    report = run_eval(model, [("visual-question-answering", data)], tmp_path / "eval.json", progress=False)
    (result,) = report["results"]
    assert result["task"] == "visual-question-answering" and result["dataset"] == {
        "name": "questions",
        "split": "test",
    }
    assert result["metrics"].keys() == {"exact_match"} and result["metrics"]["exact_match"] in (0.0, 0.5, 1.0)
    assert json.loads((tmp_path / "eval.json").read_text()) == report


def test_hfmm_eval_cli(tmp_path, saved_model, capsys):
    folder, captions = eval_data(tmp_path)
    out = tmp_path / "eval.json"
    args = ["eval", "--model", str(saved_model), "--task", "zero-shot", "--data", str(folder)]
    args += [
        "--template",
        "a photo of a {}.",
        "--template",
        "a {} thing",
        "--task",
        "retrieval",
        "--data",
        str(captions),
    ]
    assert cli([*args, "--out", str(out), "--batch-size", "3"]) == 0
    check_schema(json.loads(out.read_text()), str(saved_model))
    assert "zero-shot-image-classification on eval/test: top1" in capsys.readouterr().out
    assert cli(["eval", "--model", str(saved_model), "--task", "zero-shot"]) == 2
    assert "one --data per --task" in capsys.readouterr().err
