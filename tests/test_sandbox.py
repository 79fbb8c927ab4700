"""The code runner's sandbox: escape attempts are contained with a clear tool error and leave the host untouched.

Each attack runs through the tool the model calls (`run_python`) and, where the kernel offers Landlock and
seccomp, once more with the audit hook switched off, to show the kernel layers contain it on their own.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines.envs import code_runner, sandbox
from pipelines.envs.code_runner import CodeRunnerEnv
from pipelines.envs.sandbox import Limits, SandboxUnavailable, run_sandboxed

QUICK = Limits(cpu_seconds=1, wall_seconds=2.5)
SUPPORT = sandbox._kernel_support()
KERNEL = SUPPORT.landlock_abi >= 1 and SUPPORT.seccomp_arch is not None
needs_kernel = pytest.mark.skipif(not KERNEL, reason="needs Landlock and seccomp (Linux x86_64/aarch64)")


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """All sandbox temp dirs go here; afterwards it must be empty (every workdir removed)."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    monkeypatch.setattr(code_runner, "SCRATCH_LIMITS", QUICK)
    yield root
    assert list(root.iterdir()) == [], "a sandbox working directory was left behind"


def tool_error(code: str) -> str:
    """Run `code` through the model-facing tool; it must come back as an error observation."""
    env = CodeRunnerEnv()
    env.reset()
    text, is_error = env._call_tool("run_python", {"code": code})
    assert is_error, text
    return text


# -- the attacks of the Security section, through run_python ------------------------------------------
def test_reading_etc_passwd_is_refused(scratch: Path) -> None:
    text = tool_error("print(open('/etc/passwd').read())")
    assert "blocked by the sandbox" in text and "'/etc/passwd'" in text
    assert "root:" not in text


@pytest.mark.parametrize(
    "path", ["../escape.txt", "../../escape.txt", "{outside}/escape.txt", "/tmp/escape.txt"]
)
def test_writing_outside_the_workdir_is_refused(scratch: Path, tmp_path: Path, path: str) -> None:
    target = path.format(outside=tmp_path)
    text = tool_error(f"open({target!r}, 'w').write('pwned')")
    assert "outside the working directory" in text
    assert not (tmp_path / "escape.txt").exists() and not (scratch / "escape.txt").exists()
    assert not Path("/tmp/escape.txt").exists()


def test_dotdot_reads_are_refused(scratch: Path) -> None:
    text = tool_error("print(open('../../../../../../etc/hostname').read())")
    assert "outside the working directory" in text


def test_symlink_escape_is_refused(scratch: Path) -> None:
    text = tool_error("import os\nos.symlink('/', 'root')\nprint(open('root/etc/passwd').read())")
    assert "symlink" in text and "root:" not in text
    relative = tool_error("import os\nos.symlink('../../..', 'up')\nprint(os.listdir('up'))")
    assert "symlink" in relative


def test_sockets_are_refused(scratch: Path) -> None:
    text = tool_error("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert "socket" in text and "blocked by the sandbox" in text
    udp = tool_error(
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))"
    )
    assert "blocked by the sandbox" in udp


def test_fork_loops_and_subprocesses_are_refused(scratch: Path) -> None:
    assert "creating processes" in tool_error("import os\nwhile True:\n    os.fork()")
    assert "_posixsubprocess" in tool_error("import subprocess\nsubprocess.run(['id'])")
    assert "running commands" in tool_error("import os\nos.system('touch /tmp/pwned-by-sandbox')")
    assert not Path("/tmp/pwned-by-sandbox").exists()


def test_infinite_loop_is_killed(scratch: Path) -> None:
    start = time.monotonic()
    text = tool_error("while True:\n    pass")
    assert "killed" in text and ("CPU time" in text or "longer than" in text)
    assert time.monotonic() - start < QUICK.wall_seconds + 3


def test_sleeping_forever_hits_the_wall_clock(scratch: Path) -> None:
    text = tool_error("import time\nprint('started', flush=True)\ntime.sleep(3600)")
    assert "ran longer than" in text and "started" in text  # output so far is kept


def test_allocating_10_gb_fails_with_memory_error(scratch: Path) -> None:
    text = tool_error("data = bytearray(10 * 1024 ** 3)")
    assert "MemoryError" in text


def test_writing_1_gb_of_output_is_capped(scratch: Path) -> None:
    start = time.monotonic()
    text = tool_error(
        "import sys\nchunk = 'x' * 1024 * 1024\nfor _ in range(1024):\n    sys.stdout.write(chunk)"
    )
    assert "printed more than" in text
    assert len(text) < 10_000 and time.monotonic() - start < 3


def test_writing_a_huge_file_hits_the_file_size_limit(scratch: Path) -> None:
    text = tool_error(
        "with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'x' * 1024 * 1024)"
    )
    assert "File too large" in text


def test_ctypes_cannot_be_imported(scratch: Path) -> None:
    text = tool_error("import ctypes\nctypes.string_at(0, 8)")
    assert "importing ctypes" in text
    assert "importing _ctypes" in tool_error("import _ctypes")


def test_hook_survives_monkeypatching_from_user_code(scratch: Path) -> None:
    code = (
        "import builtins, os, posixpath\n"
        "builtins.isinstance = lambda *a: False\n"
        "posixpath.realpath = lambda p, **k: os.getcwd()\n"
        "os.path.islink = lambda p: False\n"
        "print(open('/etc/passwd').read())"
    )
    assert "blocked by the sandbox" in tool_error(code)


def test_gc_and_code_object_tricks_are_refused(scratch: Path) -> None:
    assert "gc introspection" in tool_error("import gc\nprint(len(gc.get_objects()))")
    assert "code objects" in tool_error("code = (lambda: 0).__code__\nprint(code.replace(co_consts=(1,)))")


def test_signals_to_other_processes_are_refused(scratch: Path) -> None:
    assert "sending signals" in tool_error("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)")


# -- the kernel layers alone (audit hook off) ------------------------------------------------------------------
KERNEL_ONLY = Limits(cpu_seconds=1, wall_seconds=4.0, audit_hook=False, kernel_isolation="require")


@needs_kernel
@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("print(open('/etc/passwd').read())", "Permission denied"),
        ("import os\nos.symlink('/', 'root')\nprint(open('root/etc/passwd').read())", "Permission denied"),
        ("import os\nprint(os.listdir('/'))", "Permission denied"),
        ("import socket\nsocket.socket()", "Operation not permitted"),
        ("import os\nos.fork()", "Operation not permitted"),
        ("import ctypes", "Permission denied"),
        ("import os, signal\nos.kill(os.getppid(), signal.SIGTERM)", "Operation not permitted"),
    ],
)
def test_kernel_layers_contain_attacks_without_the_hook(scratch: Path, code: str, expected: str) -> None:
    result = run_sandboxed(code, limits=KERNEL_ONLY)
    assert result.exit_code == 1 and expected in result.stderr, result.stderr
    assert result.violations == [] and "audit_hook" not in result.isolation
    assert "root:" not in result.stdout


@needs_kernel
def test_kernel_layers_refuse_writes_outside(scratch: Path, tmp_path: Path) -> None:
    result = run_sandboxed(f"open({str(tmp_path / 'out.txt')!r}, 'w').write('x')", limits=KERNEL_ONLY)
    assert "Permission denied" in result.stderr and not (tmp_path / "out.txt").exists()


@needs_kernel
def test_root_loses_its_capabilities(scratch: Path) -> None:
    if not SUPPORT.root:
        pytest.skip("only meaningful when the parent runs as root")
    result = run_sandboxed("import os\nos.setuid(12345)", limits=KERNEL_ONLY)
    assert "Operation not permitted" in result.stderr


def test_require_fails_loudly_without_kernel_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_kernel_support", lambda: sandbox._KernelSupport(0, None, False))
    with pytest.raises(SandboxUnavailable, match="Landlock ABI 0"):
        run_sandboxed("print(1)", limits=Limits(kernel_isolation="require"))
    result = run_sandboxed("print(1)")  # "auto" still runs, on the process and hook layers
    assert result.stdout == "1\n" and result.isolation == ("process", "rlimits", "audit_hook")


# -- what must keep working -------------------------------------------------------------------------------------
def test_ordinary_code_runs_fast_with_stdin_files_and_threads(scratch: Path) -> None:
    code = (
        "import json, sys, threading, collections, re, tempfile\n"
        "data = json.loads(sys.stdin.read())\n"
        "open('notes.txt', 'w').write('kept')\n"
        "with tempfile.NamedTemporaryFile('w') as handle:\n"
        "    handle.write('scratch')\n"
        "worker = threading.Thread(target=lambda: data.append(open('notes.txt').read()))\n"
        "worker.start(); worker.join()\n"
        "print(data, sorted(collections.Counter('abca').items()))\n"
    )
    timings = []
    for _ in range(3):
        result = run_sandboxed(code, stdin="[1, 2]", files={"helper.py": "X = 1\n"})
        timings.append(result.duration_s)
        assert result.ok, result.stderr
        assert result.stdout == "[1, 2, 'kept'] [('a', 2), ('b', 1), ('c', 1)]\n"
    if KERNEL:
        assert {"landlock-v" + str(SUPPORT.landlock_abi), "seccomp", "audit_hook"} <= set(result.isolation)
    assert min(timings) < 0.5  # ~50 ms on an idle core; generous for a loaded CI machine


def test_environment_is_stripped(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDTRAIN_SECRET_TOKEN", "hunter2")
    result = run_sandboxed("import os\nprint(sorted(os.environ))")
    assert result.stdout.strip() == "['HOME', 'LC_ALL', 'TMPDIR']"


def test_workdir_is_removed_even_when_code_locks_it(scratch: Path) -> None:
    code = (
        "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\nos.chmod('a', 0)"
    )
    assert run_sandboxed(code).ok
    # the `scratch` fixture asserts the workdir is gone


def test_limits_reject_unknown_or_bad_values() -> None:
    with pytest.raises(ValidationError):
        Limits(cpu_secs=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Limits(memory_mb=1)


def test_input_file_names_must_stay_in_the_workdir(scratch: Path) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        run_sandboxed("print(1)", files={"../evil.py": "x = 1"})
    assert not (scratch.parent / "evil.py").exists()


def test_no_process_is_left_behind(scratch: Path) -> None:
    result = run_sandboxed(
        "import time\nprint(__import__('os').getpid(), flush=True)\ntime.sleep(60)",
        limits=Limits(wall_seconds=1.5),
    )
    assert result.timed_out and result.killed_reason == "wall_time"
    pid = int(result.stdout.split()[0])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
