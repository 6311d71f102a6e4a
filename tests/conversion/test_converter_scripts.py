"""What every converter shares: one command in `hfmm.conversion.commands`, run as `hfmm convert <name>` or as its thin
`convert/` script; Ctrl-C exits quietly with the shell's status for SIGINT."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sigint_as_in_a_terminal, tiny_clip_config

from hfmm import HfmmCLIPModel
from hfmm.cli import main as hfmm_main
from hfmm.conversion.cli import COMMANDS
from hfmm.models.clip.processing_clip import HfmmCLIPProcessor

CONVERT = Path(__file__).resolve().parents[2] / "convert"
SCRIPTS = sorted(CONVERT.glob("*_hfmm.py")) + [CONVERT / "to_transformers.py"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_every_converter_runs_through_run_script(script):
    """`if __name__ == "__main__": run_script(main)`, the one place that turns Ctrl-C into status 130, with `main`
    imported from the package command of the same name."""
    tree = ast.parse(script.read_text())
    guard = next(node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
    assert ast.unparse(guard.body[0]) == "run_script(main)"
    imports = [ast.unparse(node) for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert f"from hfmm.conversion.commands.{script.stem} import main" in imports


def test_every_script_is_an_hfmm_convert_subcommand():
    assert sorted(command.__name__.rsplit(".", 1)[-1] for command in COMMANDS.values()) == sorted(
        script.stem for script in SCRIPTS
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_hfmm_convert_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        hfmm_main(["convert", name, "--help"])
    assert stop.value.code == 0
    help_text = capsys.readouterr().out
    assert help_text.startswith(f"usage: hfmm convert {name}") and f"hfmm convert {name} SRC DST" in help_text


def test_script_help_is_the_command_help():
    run = subprocess.run(
        [sys.executable, str(CONVERT / "open_clip_to_hfmm.py"), "--help"], capture_output=True, text=True
    )
    assert run.returncode == 0 and "python convert/open_clip_to_hfmm.py SRC DST" in run.stdout
    assert "--quick-gelu" in run.stdout and "--max-shard-size" in run.stdout


def test_hfmm_convert_runs_as_the_script_and_records_its_arguments(tmp_path, capsys):
    """The same lines and exit statuses as the scripts; `conversion.json` records the arguments after the command's
    name, so the card's `python convert/<script>.py ...` re-runs the conversion."""
    model = HfmmCLIPModel(tiny_clip_config()).eval()
    model.save_pretrained(tmp_path / "hfmm")
    HfmmCLIPProcessor.from_vision_config(model.config.vision_config).save_pretrained(tmp_path / "hfmm")
    native, back = str(tmp_path / "native"), str(tmp_path / "back")
    assert hfmm_main(["convert", "to-transformers", str(tmp_path / "hfmm"), native]) == 0
    assert capsys.readouterr().out == f"wrote a transformers CLIPModel to {native}\n"
    assert hfmm_main(["convert", "to-transformers", str(tmp_path / "hfmm"), native]) == 1
    assert capsys.readouterr().err == f"error: {native} exists; pass --force to overwrite it.\n"
    assert hfmm_main(["convert", "transformers", native, back, "--max-shard-size", "2GB"]) == 0
    assert capsys.readouterr().out.endswith(f"wrote an hfmm CLIP to {back}\n")
    record = json.loads((tmp_path / "back" / "conversion.json").read_text())
    assert record["converter"] == "convert/transformers_to_hfmm.py"
    assert record["arguments"] == [native, back, "--max-shard-size", "2GB"]


def test_ctrl_c_exits_quietly_with_130(tmp_path):
    """A real SIGINT in the middle of `main`: no traceback, status 130."""
    code = (
        "import os, signal, time\n"
        "from hfmm.conversion.common.script import run_script\n"
        "def main():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(30)\n"
        "    return 0\n"
        "run_script(main)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, preexec_fn=sigint_as_in_a_terminal
    )
    assert result.returncode == 130
    assert "Traceback" not in result.stderr and "KeyboardInterrupt" not in result.stderr
