"""`hfmm convert <name> SRC DST ...`: one subcommand per converter, the same commands as the `convert/` scripts
(`hfmm convert open-clip SRC DST` is `python convert/open_clip_to_hfmm.py SRC DST`)."""

import argparse
from functools import partial
from types import ModuleType

from hfmm.conversion.commands import (
    llava_to_hfmm,
    nemo_clip_to_hfmm,
    nemo_neva_to_hfmm,
    open_clip_to_hfmm,
    to_transformers,
    transformers_to_hfmm,
)
from hfmm.conversion.common.script import run_command

# subcommand -> its module in `hfmm.conversion.commands`, named as its `convert/` script
COMMANDS = {
    "open-clip": open_clip_to_hfmm,
    "transformers": transformers_to_hfmm,
    "nemo-clip": nemo_clip_to_hfmm,
    "llava": llava_to_hfmm,
    "nemo-neva": nemo_neva_to_hfmm,
    "to-transformers": to_transformers,
}


class _KeepArguments(argparse._SubParsersAction):
    """Subcommands that also keep the arguments given after the subcommand's name: `conversion.json` records them,
    and the card shows them as the command that re-runs the conversion."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.arguments = list(values[1:])
        super().__call__(parser, namespace, values, option_string)


def _run(command: ModuleType, args: argparse.Namespace) -> int:
    return run_command(command.run, args, args.arguments)


def add_convert_command(commands: argparse._SubParsersAction) -> None:
    """Adds `hfmm convert` and one subcommand per converter to `hfmm`'s `commands`."""
    convert = commands.add_parser(
        "convert",
        help="convert a checkpoint (OpenCLIP, transformers, NeMo, LLaVA) into an hfmm folder, or export one",
        description="Convert a checkpoint into an hfmm model folder, exactly, or export an hfmm folder to a "
        "transformers-native one. Each converter is also a script: convert/<name>.py.",
    )
    converters = convert.add_subparsers(dest="converter", required=True, metavar="CONVERTER", action=_KeepArguments)
    for name, command in COMMANDS.items():
        parser = converters.add_parser(
            name,
            help=command.__doc__.splitlines()[0],
            description=command.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(parser)
        parser.set_defaults(func=partial(_run, command))
