"""A wheel (``pip install .``, not only ``-e``) must carry every package of the tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed_in_pyproject() -> None:
    # setuptools' explicit ``packages`` list does not pick up subpackages on its own; an
    # editable install hides the omission, a wheel drops the package (benzarr.sources and
    # benzarr.synth were missing from wheels until this test).
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "benzarr").rglob("__init__.py")
    }
    on_disk.add("benzarr_cli")  # cli/ is installed under that name (package-dir)
    assert on_disk == listed
