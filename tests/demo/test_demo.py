"""A shortened `hfmm demo`: the tiny CLIP learns colour from generated images, through the real recipe."""

import json

from hfmm.demo.clip import run_clip_demo


def test_short_demo_learns_colour(tmp_path):
    report = run_clip_demo(tmp_path, n_train=800, n_eval=160, epochs=4)
    metrics = {result["task"]: result["metrics"] for result in report["results"]}
    assert metrics["zero-shot-image-classification"]["top1"] >= 0.6  # chance: 1/8
    assert report["pipeline_zero_shot_top1"] >= 0.5
    assert metrics["image-text-retrieval"]["text_to_image_R@10"] > 3 * 10 / 160  # well above chance
    saved = json.loads((tmp_path / "clip" / "eval.json").read_text())
    assert saved["results"] == report["results"]


def test_short_neva_demo_answers_colour_questions(tmp_path, capsys):
    from hfmm.demo.neva import run_neva_demo

    report = run_neva_demo(tmp_path, n_train=960, n_eval=48, epochs=(1, 3))
    stages = [line for line in capsys.readouterr().out.splitlines() if line.startswith("==> ")]
    assert [line.split(":")[0] for line in stages] == [
        f"==> building the parts into {tmp_path / 'parts'}",
        "==> stage 1 of 2, feature alignment (hfmm train neva-stage1)",
        "==> stage 2 of 2, fine-tuning (hfmm train neva-stage2)",
        "==> evaluating",
    ]  # which step runs, before each long silent one (issue 15, item 13)
    assert report["accuracy"] >= 0.5  # chance: 1/8
    assert (tmp_path / "stage1" / "projector.safetensors").is_file()
    saved = json.loads((tmp_path / "stage2" / "eval.json").read_text())  # written by `hfmm eval --task vqa`'s code
    assert saved["results"][0]["task"] == "visual-question-answering"
    assert saved["results"][0]["metrics"]["exact_match"] == report["accuracy"]


def test_demo_eval_data_is_named_for_what_it_holds(tmp_path):
    from hfmm.demo.clip import make_data
    from hfmm.evaluation import dataset_identity

    paths = make_data(tmp_path / "data", 8, 8)
    assert dataset_identity(paths["retrieval"]) == ("shapes", "test")  # not "data" (issue 15, item 17)
    assert dataset_identity(paths["colours"]) == ("colours", "test")


def test_vqa_answers_are_normalised_before_matching():
    from hfmm.evaluation import normalize_answer

    assert normalize_answer(" The Red.") == normalize_answer("red") == "red"
    assert normalize_answer("a dark-blue square!") == "dark blue square"
    assert normalize_answer("red") != normalize_answer("green")
