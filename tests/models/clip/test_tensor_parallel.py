"""`from_pretrained(..., tp_plan="auto")` shards both towers across 2 gloo ranks on CPU and matches one process."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import tiny_clip_config

from hfmm import HfmmCLIPModel

WORKER = Path(__file__).with_name("tp_worker.py")


def test_tensor_parallel_two_ranks(tmp_path):
    HfmmCLIPModel(tiny_clip_config()).save_pretrained(tmp_path / "model")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        str(tmp_path / "model"),
        str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(r["rank"] for r in reports) == [0, 1]
    for report in reports:
        assert report["q_local"] == [16, 32]  # colwise: half the output features on each rank
        assert report["fc2_local"] == [32, 32]  # rowwise: half of the 64 input features
        assert report["image_diff"] <= 1e-5 and report["text_diff"] <= 1e-5
