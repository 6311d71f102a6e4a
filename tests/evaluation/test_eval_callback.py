"""hfmm.evaluation.callbacks: `ZeroShotEvalCallback` adds zero-shot accuracy to `Trainer.evaluate` and its log."""

import pytest
from colour_oracle import caption_csv, colour_folder, tiny_clip, tiny_processor
from transformers import Trainer, TrainingArguments

from hfmm.evaluation import ZeroShotEvalCallback, zero_shot_classification


def test_callback_adds_zero_shot_metrics_to_trainer_evaluate(tmp_path):
    from hfmm.training.clip.arguments import CLIPDataArguments
    from hfmm.training.clip.data import CLIPCollator, build_eval_dataset

    processor, tiny_model = tiny_processor(), tiny_clip()
    folder = colour_folder(tmp_path / "zs", {n: [n] for n in ("red", "green", "blue")})
    pairs = caption_csv(tmp_path / "pairs", [(c, f"a {c} picture") for c in ("red", "green", "blue", "cyan")])
    callback = ZeroShotEvalCallback(processor, folder, ["a photo of a {}."], batch_size=2)
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        per_device_eval_batch_size=2,  # 4 pairs: two evaluation steps
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    eval_dataset = build_eval_dataset(CLIPDataArguments(eval_data=str(pairs)), processor)
    trainer = Trainer(
        model=tiny_model, args=args, eval_dataset=eval_dataset, data_collator=CLIPCollator(), callbacks=[callback]
    )
    metrics = trainer.evaluate()
    expected = zero_shot_classification(tiny_model.eval(), processor, folder, progress=False)["metrics"]
    assert metrics["eval_zero_shot_top1"] == pytest.approx(expected["top1"])
    assert "eval_zero_shot_top5" not in metrics  # 3 classes
    assert trainer.state.log_history[-1]["eval_zero_shot_top1"] == metrics["eval_zero_shot_top1"]
    assert "eval_runtime" in trainer.state.log_history[-1]  # merged into the evaluation's own log entry


def test_callback_checks_its_templates_and_restores_training_mode(tmp_path):
    from types import SimpleNamespace

    processor, model = tiny_processor(), tiny_clip()
    folder = colour_folder(tmp_path / "zs", {n: [n] for n in ("red", "blue")})
    with pytest.raises(ValueError, match="must contain"):
        ZeroShotEvalCallback(processor, folder, ["a photo"])  # refused at construction, not at the first evaluation
    callback = ZeroShotEvalCallback(processor, folder)
    state = SimpleNamespace(log_history=[{"loss": 1.0, "step": 3}], global_step=3, epoch=0.5)
    model.train()
    callback.on_evaluate(None, state, None, model=model)
    assert model.training  # put back in training mode
    assert state.log_history[0] == {"loss": 1.0, "step": 3}  # a training log entry is not an evaluation's
    assert state.log_history[-1].keys() == {"eval_zero_shot_top1", "epoch", "step"}
    assert state.log_history[-1]["step"] == 3 and state.log_history[-1]["epoch"] == 0.5
    with pytest.raises(ValueError, match="needs the model"):
        callback.on_evaluate(None, state, None)
