"""Runs a recipe script under `accelerate launch` with a shipped accelerate config, on CPU processes (gloo).

FSDP configs need accelerate's CPU gate lifted: `fsdp_on_cpu/sitecustomize.py` (see its docstring) is put on the
processes' `PYTHONPATH`, test code only. Everything else is the real launcher, the real config file read by
accelerate's own loader, and the real recipe script.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ROOT / "recipes" / "accelerate"
GATE_LIFT = Path(__file__).resolve().with_name("fsdp_on_cpu")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(
    script: Path,
    argv: list[str],
    *,
    config: str = "fsdp.yaml",
    processes: int = 2,
    mixed_precision: str = "no",
    check: bool = True,
    timeout: int = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file recipes/accelerate/CONFIG --num_processes N SCRIPT ARGV` on CPU processes.

    `processes=0` runs the script alone, without the launcher (`python SCRIPT ARGV`): the reference runs. `env`
    adds to the environment.
    """
    env = {**os.environ, "HFMM_TEST_FSDP_ON_CPU": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([str(GATE_LIFT), *filter(None, [env.get("PYTHONPATH")])])
    command = [sys.executable, str(script), *argv, "--use_cpu", "true"]
    if processes:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS / config),
            "--num_processes", str(processes), "--mixed_precision", mixed_precision,
            "--main_process_port", str(free_port()), *command[1:],
        ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
    return result
