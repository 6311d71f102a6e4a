"""Where hfmm's recipes and model-card templates are: inside the installed wheel, or in the source checkout."""

import importlib.util
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parents[1] / name):  # wheel, then source checkout
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hfmm's {name}/ folder was not found beside the package or in a source checkout")


def recipes_dir() -> Path:
    """The folder of `clip_pretrain.py`, `neva_stage*.py` and their YAML recipes."""
    return _bundled("recipes")


def model_cards_dir() -> Path:
    """The folder of the model-card Jinja templates."""
    return _bundled("model_cards")


def recipe_main(name: str):
    """`main` of `recipes/<name>.py`: the demos run the real recipe scripts, not copies of them."""
    spec = importlib.util.spec_from_file_location(name, recipes_dir() / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main
