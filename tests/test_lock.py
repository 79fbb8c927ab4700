"""The environment lock (scripts/lock.py): it pins what pyproject.toml asks for, with hashes, never torch in
the main lock, and `check` names every difference between a venv and the lock."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
ROOT = Path(__file__).resolve().parents[1]


def _lock_module():
    spec = importlib.util.spec_from_file_location("midtrain_lock", ROOT / "scripts" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_lock_pins_every_requirement_of_pyproject_within_its_bounds() -> None:
    """Fails when a dependency is added or re-bounded in pyproject.toml without `make lock`."""
    locked = lock.locked_versions(lock.MAIN_LOCK.read_text())
    torch_locked = lock.locked_versions(lock.TORCH_LOCK.read_text())
    for req in _requirements():
        name = canonicalize_name(req.name)
        version = (torch_locked if name == "torch" else locked).get(name)
        assert version is not None, f"{name} is in pyproject.toml but not in the lock: run `make lock`"
        assert req.specifier.contains(version, prereleases=True), f"{name}=={version} outside {req.specifier}"


def test_main_lock_never_installs_torch_and_every_entry_is_hashed() -> None:
    text = lock.MAIN_LOCK.read_text()
    assert "torch" not in lock.locked_versions(text)
    assert "sympy" not in lock.locked_versions(text)  # torch-only dependencies stay with torch
    entries = [block for block in text.split("\n") if block and not block.startswith((" ", "#"))]
    hashed = text.split("\n")
    for entry in entries:
        at = hashed.index(entry)
        assert "--hash=sha256:" in hashed[at + 1], entry
    assert lock.locked_versions(lock.TORCH_LOCK.read_text())["torch"] == "2.13.0+cpu"


def test_data_packages_are_locked_without_their_dependencies() -> None:
    locked = lock.locked_versions(lock.MAIN_LOCK.read_text())
    for spec in lock.DATA_PACKAGES:
        name, version = spec.split("==")
        assert locked[canonicalize_name(name)] == version
    assert "faiss-cpu" not in locked  # a bfcl-eval dependency we never use


def test_differences_name_upgrades_missing_and_unlocked_packages() -> None:
    expected = {"trl": "1.16.0", "peft": "0.21.2", "rich": "15.0.0"}
    have = {"trl": "1.17.0", "rich": "15.0.0", "vllm": "0.32.0", "pip": "23.2.1"}
    lines = lock.lock_differences(expected, have, allowed_extra={"pip"})
    assert lines == [
        "peft: locked 0.21.2, installed nothing",
        "trl: locked 1.16.0, installed 1.17.0",
        "vllm 0.32.0: installed, not in the lock",
    ]
    assert lock.lock_differences(expected, {**expected, "pip": "1"}, {"pip"}) == []


@pytest.mark.integration
@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="not the make-setup venv"
)
def test_the_project_venv_is_exactly_the_lock() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "lock.py"), "check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
