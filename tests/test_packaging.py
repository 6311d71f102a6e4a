"""The wheel carries the YAML recipes (and model-card templates) and the recipes' code: `hfmm train` runs from an
installed wheel, outside a source checkout."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from hfmm.demo.synthetic import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = {"projection_dim": 16,
        "vision_config": {"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 4},
        "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                        "num_attention_heads": 4}}  # fmt: skip
# `hfmm train clip` on the wheel's own tiny_demo.yaml, from the installed copy (its path printed first)
TRAIN_FROM_WHEEL = """
import sys
import hfmm
from hfmm.cli import main
from hfmm.resources import recipes_dir
print(hfmm.__file__)
print(recipes_dir())
sys.exit(main(["train", "clip", "--config", str(recipes_dir() / "clip" / "tiny_demo.yaml"), *sys.argv[1:]]))
"""


def test_wheel_bundles_recipes_and_an_installed_copy_trains_with_them(tmp_path):
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("hfmm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"hfmm/_bundled/{path.relative_to(ROOT).as_posix()}" for path in (ROOT / "recipes").rglob("*.y*ml")}
    expected |= {
        "hfmm/training/clip/recipe.py",
        "hfmm/training/neva/recipe.py",
        "hfmm/models/clip/presets/ViT-B-32.json",
    }
    assert expected <= names, sorted(expected - names)
    scripts = sorted(name for name in names if name.startswith("hfmm/_bundled/") and name.endswith(".py"))
    assert not scripts, scripts  # the launch scripts stay in the checkout; their code is the package's

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    assert subprocess.run(install, capture_output=True).returncode == 0
    pairs = make_shapes_dataset(tmp_path / "data", 8, seed=0, split="train")
    out = tmp_path / "out"
    overrides = ["--config_overrides", json.dumps(TINY), "--train_data", str(pairs), "--output_dir", str(out),
                 "--max_steps", "1", "--per_device_train_batch_size", "4", "--warmup_steps", "0",
                 "--disable_tqdm", "true"]  # fmt: skip
    # the installed copy first; its dependencies from this environment's site-packages
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1"}
    trained = subprocess.run(
        [sys.executable, "-c", TRAIN_FROM_WHEEL, *overrides], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    package, recipes = map(Path, trained.stdout.splitlines()[:2])
    assert package == site / "hfmm" / "__init__.py"
    assert recipes == site / "hfmm" / "_bundled" / "recipes"
    assert (out / "model.safetensors").is_file() and (out / "recipe.yaml").is_file()
