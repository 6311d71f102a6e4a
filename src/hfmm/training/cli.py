"""`hfmm train clip | neva-stage1 | neva-stage2 --config RECIPE.yaml [--key value ...]`: the package's recipes.

The same recipes run as scripts (`recipes/*.py`, for `accelerate launch`) and from Python
(`hfmm.training.clip.recipe.main`, `hfmm.training.neva.recipe.main`). Nothing heavy is imported until a recipe runs.
"""

import argparse
import sys

from hfmm.training.arguments import RecipeError

# subcommand: (help, an example recipe)
RECIPES = {
    "clip": ("train a CLIP with the exact tiled contrastive loss", "recipes/clip/tiny_demo.yaml"),
    "neva-stage1": ("NeVA stage 1: train only the projector", "recipes/neva/tiny_demo_stage1.yaml"),
    "neva-stage2": ("NeVA stage 2: fine-tune the projector and language model", "recipes/neva/tiny_demo_stage2.yaml"),
}


class _RecipeParser(argparse.ArgumentParser):
    """Keeps the `--key value` pairs it does not know, the recipe's overrides, instead of refusing them."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, overrides = super().parse_known_args(args, namespace)
        namespace.overrides = overrides
        return namespace, []


def add_train_command(commands) -> None:
    """Adds `train` and its recipes to `commands`, the subparsers of the `hfmm` parser."""
    command = commands.add_parser("train", help="train a CLIP or a NeVA from a YAML recipe (recipes/*/*.yaml)")
    recipes = command.add_subparsers(dest="recipe", required=True, parser_class=_RecipeParser)
    for name, (help_text, example) in RECIPES.items():
        recipe = recipes.add_parser(
            name,
            help=help_text,
            allow_abbrev=False,  # `--co 1` is an override, not `--config`
            usage=f"hfmm train {name} [-h] --config RECIPE.yaml [--key value ...]",
            description=f"{help_text[0].upper()}{help_text[1:]}. Every YAML key can be overridden with `--key value` "
            f"(`--section.key value` inside `lora:` or `quantization:`), e.g. `hfmm train {name} --config {example} "
            "--learning_rate 1e-4`; under several processes run the recipe script through `accelerate launch`.",
        )
        recipe.add_argument("--config", required=True, metavar="RECIPE.yaml", help=f"the recipe, e.g. {example}")
        recipe.set_defaults(func=train_command)


def run_recipe(name: str, argv: list[str]) -> dict:
    """Runs the recipe `name` (a key of `RECIPES`) on `--config RECIPE.yaml [--key value ...]`."""
    if name == "clip":
        from hfmm.training.clip.recipe import main

        return main(argv)
    from hfmm.training.neva.recipe import main

    return main(argv, stage=int(name.removeprefix("neva-stage")))


def train_command(args: argparse.Namespace) -> int:
    run_recipe(args.recipe, ["--config", args.config, *args.overrides])
    return 0


def run_script(name: str) -> None:
    """`python recipes/<script>.py --config RECIPE.yaml [--key value ...]` (or under `accelerate launch`): the recipe
    `name` on `sys.argv`, a bad recipe reported in one line."""
    try:
        run_recipe(name, sys.argv[1:])
    except RecipeError as error:
        sys.exit(f"error: {error}")
