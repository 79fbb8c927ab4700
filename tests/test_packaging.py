"""A wheel install works without the repo checkout: package data (thought schemas, templates) ships inside it,
and `midtrain config show` on a copied config runs from the installed package alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.integration
def test_wheel_carries_package_data_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    wheel = next(dist.glob("midtrain-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for schema in (ROOT / "pipelines" / "thought_schemas").glob("*.yaml"):
        assert f"pipelines/thought_schemas/{schema.name}" in names
    assert not any(name.startswith(("tests/", "configs/")) for name in names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    work = tmp_path / "work"  # a user's folder: their copy of a config and its recipe, nothing else
    (work / "configs").mkdir(parents=True)
    shutil.copy(ROOT / "configs" / "smollm2-135m-demo.yaml", work / "configs")
    shutil.copytree(ROOT / "data_recipes", work / "data_recipes")
    script = (
        "import sys, pipelines; assert pipelines.__file__.startswith(sys.argv[1]), pipelines.__file__;"
        "from pipelines.thought import load_thought_schema; load_thought_schema('think-plan-reflect');"
        "from pipelines.cli import main; sys.argv = ['midtrain', 'config', 'show', 'configs/smollm2-135m-demo.yaml'];"
        "main()"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(site)], cwd=work, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert (
        "name: smollm2-135m-demo" in result.stdout and "thought_schema: think-plan-reflect" in result.stdout
    )
