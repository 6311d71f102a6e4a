"""FSDP2 `fully_shard` of an hfmm CLIP on a CPU gloo mesh (accelerate drops FSDP on CPU, so shard directly)."""

import json
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("fsdp_worker.py")


def test_fully_shard_two_ranks_gives_the_global_gradients(tmp_path):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    for report in reports:
        assert report["sharded_params"] > 50  # parameters really are split across the ranks
        assert report["worst"] <= 1e-10  # fp64: sharded gradients equal the unsharded global-batch gradients
