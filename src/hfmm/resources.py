"""Where hfmm's recipes and model-card templates are: inside the installed wheel, or in the source checkout."""

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _bundled(name: str) -> Path:
    for candidate in (_PACKAGE / "_bundled" / name, _PACKAGE.parents[1] / name):  # wheel, then source checkout
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"hfmm's {name}/ folder was not found beside the package or in a source checkout")


def recipes_dir() -> Path:
    """The folder of the YAML recipes (`clip/*.yaml`, `neva/*.yaml`, `accelerate/*.yaml`)."""
    return _bundled("recipes")


def model_cards_dir() -> Path:
    """The folder of the model-card Jinja templates."""
    return _bundled("model_cards")
