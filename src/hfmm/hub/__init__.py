"""hfmm on the Hugging Face Hub: model cards (`cards`), the one-commit push (`push`) and the training-run record the
cards read (`record`)."""

from hfmm.hub.cards import CardError, card_title, load_eval_report, render_card, trainer_model_card, write_card
from hfmm.hub.push import PushError, PushResult, push, upload_plan
from hfmm.hub.record import RECIPE_FILE, TRAINING_RUN_FILE, record_training_run

__all__ = [
    "RECIPE_FILE",
    "TRAINING_RUN_FILE",
    "CardError",
    "PushError",
    "PushResult",
    "card_title",
    "load_eval_report",
    "push",
    "record_training_run",
    "render_card",
    "trainer_model_card",
    "upload_plan",
    "write_card",
]
