"""What every converter command shares, run as `hfmm convert <name>` or as its `convert/` script: one parser, one
error report (a single line, exit status 1) and the arguments recorded in `conversion.json`."""

import argparse
import sys
from collections.abc import Callable, Sequence

from hfmm.conversion.common.result import ConversionResult

# A converter command's body: converts with the parsed arguments and prints what it did; it raises on failure. Its
# second argument is the command line after the command's name, recorded so that the conversion can be re-run.
Run = Callable[[argparse.Namespace, list[str]], None]


def command_line(argv: Sequence[str] | None) -> list[str]:
    """The arguments a converter script was run with (`sys.argv[1:]` when `argv` is None), for `conversion.json`."""
    return list(sys.argv[1:] if argv is None else argv)


def add_common_arguments(parser: argparse.ArgumentParser, source: str, *, max_shard_size: bool = True) -> None:
    """The arguments every converter command takes: SRC (described by `source`), DST and --force, and
    --max-shard-size for those that write the weights themselves."""
    parser.add_argument("src", help=source)
    parser.add_argument("dst", help="output folder")
    parser.add_argument("--force", action="store_true", help="replace an existing DST")
    if max_shard_size:
        parser.add_argument("--max-shard-size", default="5GB", help="split the weights above this size (default 5GB)")


def print_report(result: ConversionResult, wrote: str, reference: str | None = None) -> None:
    """The lines a converter command ends with: the notes, the largest difference from `reference` (the source
    implementation the conversion was verified against) when it was verified, and where `wrote` was written."""
    for note in result.notes:
        print(f"note: {note}")
    if result.differences is not None and set(result.differences) == {"logits"}:
        print(f"verified against {reference}: largest logit difference {result.differences['logits']:.2g}")
    elif result.differences is not None:
        found = ", ".join(f"{tower} {diff:.2g}" for tower, diff in result.differences.items())
        print(f"verified against {reference}: largest embedding difference {found}")
    weights = "" if result.weights is None else f" (weights: {result.weights})"
    print(f"wrote {wrote} to {result.dst}{weights}")


def run_command(run: Run, args: argparse.Namespace, arguments: list[str]) -> int:
    """Runs a converter command: exit status 0, or 1 with one `error: ...` line on stderr for a refused or broken
    input.

    `ValueError` covers `CheckpointError` and every refusal of a setting; `OSError` covers an existing destination
    (`FileExistsError`) and unreadable files.
    """
    try:
        run(args, arguments)
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


def script_main(
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    run: Run,
    argv: Sequence[str] | None = None,
) -> int:
    """The `main` of a `convert/` script: parses `argv` (`sys.argv[1:]` when None) and runs the command."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_command(run, parser.parse_args(argv), command_line(argv))


def run_script(main: Callable[[], int]) -> None:
    """Runs a converter script's `main` and exits with its status; Ctrl-C exits quietly with 130 (the shell's status
    for SIGINT). Nothing is left behind either way: outputs appear only when complete (`atomic_output_dir`)."""
    try:
        status = main()
    except KeyboardInterrupt:
        print(file=sys.stderr)
        status = 130
    sys.exit(status)
