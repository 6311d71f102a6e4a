"""The wheel carries the recipes (and model-card templates): the CLI finds them outside a source checkout."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_bundles_recipes_and_an_installed_copy_finds_them(tmp_path):
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
    expected |= {"hfmm/_bundled/recipes/clip_pretrain.py", "hfmm/models/clip/presets/ViT-B-32.json"}
    assert expected <= names, sorted(expected - names)

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)]
    assert subprocess.run(install, capture_output=True).returncode == 0
    probe = "import hfmm.resources as r; print(r.recipes_dir())"
    found = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(site)}
    )
    assert found.returncode == 0, found.stderr[-2000:]
    recipes = Path(found.stdout.strip().splitlines()[-1])
    assert recipes == site / "hfmm" / "_bundled" / "recipes"
    assert (recipes / "clip" / "tiny_demo.yaml").is_file()
