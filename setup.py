"""Packs `recipes/` and `model_cards/` into the wheel as `hfmm/_bundled/...`, so the CLI works from a wheel install.

Everything else is in pyproject.toml. An editable install reads them from the source checkout instead
(`hfmm.resources`).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("recipes", "model_cards")


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        root = Path(__file__).resolve().parent
        for name in BUNDLED:
            if (root / name).is_dir():
                target = Path(self.build_lib) / "hfmm" / "_bundled" / name
                shutil.copytree(root / name, target, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)


setup(cmdclass={"build_py": BuildPyWithData})
