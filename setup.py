"""Packs the YAML recipes (`recipes/**/*.yaml`) and `model_cards/` into the wheel as `hfmm/_bundled/...`, so
`hfmm train` and `hfmm demo` find them from a wheel install. The recipes' code is the package's
(`hfmm.training.*.recipe`); the `recipes/*.py` launch scripts stay in the source checkout.

Everything else is in pyproject.toml. An editable install reads them from the source checkout instead
(`hfmm.resources`).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BUNDLED = ("recipes", "model_cards")
NOT_BUNDLED = shutil.ignore_patterns("__pycache__", "*.py")  # the launch scripts: their code is the package's


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        root = Path(__file__).resolve().parent
        for name in BUNDLED:
            if (root / name).is_dir():
                target = Path(self.build_lib) / "hfmm" / "_bundled" / name
                shutil.rmtree(target, ignore_errors=True)  # a build folder left by an earlier build
                shutil.copytree(root / name, target, ignore=NOT_BUNDLED)


setup(cmdclass={"build_py": BuildPyWithData})
