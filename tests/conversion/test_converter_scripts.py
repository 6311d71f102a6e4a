"""What every converter script shares: Ctrl-C exits quietly with the shell's status for SIGINT."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sigint_as_in_a_terminal

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "convert").glob("*_hfmm.py")) + [
    Path(__file__).resolve().parents[2] / "convert" / "to_transformers.py"
]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_every_converter_runs_through_run_script(script):
    """`if __name__ == "__main__": run_script(main)`, the one place that turns Ctrl-C into status 130."""
    tree = ast.parse(script.read_text())
    guard = next(node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))
    assert ast.unparse(guard.body[0]) == "run_script(main)"


def test_ctrl_c_exits_quietly_with_130(tmp_path):
    """A real SIGINT in the middle of `main`: no traceback, status 130."""
    code = (
        "import os, signal, time\n"
        "from hfmm.conversion.common.writer import run_script\n"
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
