"""The code runner's sandbox: escape attempts are contained with a clear tool error and leave the host untouched.

Each attack of the issue runs through the tool the model calls (`run_python`); then `test_attack_is_contained`
runs every attack under every isolation configuration this machine offers (local and bubblewrap, with all
layers, with the kernel layers alone, with the audit hook alone as on an older kernel) and asserts that level's
declared guarantees: the host is untouched at every level, and the hook reports a refusal wherever it is on.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipelines import sandbox
from pipelines.envs import code_runner
from pipelines.envs.code_runner import CodeRunnerEnv
from pipelines.sandbox import Limits, SandboxSettings, SandboxUnavailable, run_sandboxed
from pipelines.sandbox import kernel as sandbox_kernel

pytestmark = pytest.mark.integration  # every test runs code in a sandboxed child process

QUICK = Limits(cpu_seconds=1, wall_seconds=2.5)
SUPPORT = sandbox_kernel.kernel_support()
OLD_KERNEL = ["landlock", "seccomp", "namespaces"]  # what a machine without Landlock, seccomp or userns gives
KERNEL_ONLY = SandboxSettings(disable=["audit_hook"])
HOOK_ONLY = SandboxSettings(isolation="hook_only", disable=OLD_KERNEL)


def level_of(settings: SandboxSettings) -> str | None:
    try:
        return sandbox.describe(settings).level
    except SandboxUnavailable:
        return None


KERNEL = level_of(KERNEL_ONLY) == "kernel"
needs_kernel = pytest.mark.skipif(not KERNEL, reason="needs Landlock and seccomp (Linux x86_64/aarch64)")
BWRAP_MISSING = sandbox.BwrapBackend().unavailable()
needs_bwrap = pytest.mark.skipif(BWRAP_MISSING is not None, reason=f"bwrap backend: {BWRAP_MISSING}")


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
        "builtins.str = lambda *a: 'x'\n"
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


# -- every attack under every isolation level this machine offers ------------------------------------------------
@dataclass(frozen=True)
class Host:
    """What the attacks aim at, on the host: a secret file, a place to write, a process, a listening port."""

    secret: Path
    secret_db: Path
    outside: Path
    victim: subprocess.Popen[bytes]
    server: socket.socket

    @property
    def values(self) -> dict[str, object]:
        port = self.server.getsockname()[1]
        return {"secret": str(self.secret), "db": str(self.secret_db), "outside": str(self.outside)} | {
            "victim": self.victim.pid,
            "port": port,
        }

    def untouched(self) -> list[str]:
        problems = []
        if self.outside.exists():
            problems.append(f"{self.outside} was written")
        if self.victim.poll() is not None:
            problems.append(f"the victim process died ({self.victim.returncode})")
        try:
            connection, _ = self.server.accept()
            connection.close()
            problems.append("the listening server got a connection")
        except BlockingIOError:
            pass
        return problems


SECRET = "TOPSECRET-b3c1f0"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    db = tmp_path / "secret.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table t (v text)")
        connection.execute("insert into t values (?)", (SECRET,))
    connection.close()
    victim = subprocess.Popen(["sleep", "60"])
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    yield Host(secret, db, tmp_path / "outside.txt", victim, server)
    victim.kill()
    victim.wait()
    server.close()


@dataclass(frozen=True)
class Attack:
    code: str
    hook_reports: bool = True  # with the hook on, a refusal is reported (else: contained some other way)


ATTACKS = {
    "read_secret": Attack("print(open({secret!r}).read())"),
    "write_outside": Attack("open({outside!r}, 'w').write('pwned')"),
    # Issue item 12: os.open(relative, dir_fd=fd) through a symlink. The hook resolved `L` from the cwd (a deep
    # folder, so the ..s stayed inside); the kernel resolves it from `sub`, where L is `.`, and climbs out.
    "dir_fd_symlink": Attack(
        "import os\n"
        "os.makedirs('a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t')\n"
        "os.symlink('a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q/r/s/t', 'L')\n"
        "os.mkdir('sub')\n"
        "try:\n    os.symlink('.', 'sub/L')\nexcept PermissionError:\n    pass\n"
        "fd = os.open('sub', os.O_RDONLY)\n"
        "rel = 'L/' + '../' * 20\n"
        "for path, flags in (({secret!r}, os.O_RDONLY), ({outside!r}, os.O_WRONLY | os.O_CREAT)):\n"
        "    try:\n"
        "        target = os.open(rel + path.lstrip('/'), flags, dir_fd=fd)\n"
        "        print(os.read(target, 100)) if flags == os.O_RDONLY else os.write(target, b'pwned')\n"
        "    except OSError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    ),
    "dir_fd_outside_dir": Attack(
        "import os\nfd = os.open({secret_dir!r}, os.O_RDONLY)\nprint(os.read(os.open('secret.txt', os.O_RDONLY, dir_fd=fd), 99))"
    ),
    # SQL opens files the hook never sees: at hook_only sqlite3 is refused (reported); with a kernel file layer
    # it works and the kernel refuses the file.
    "sqlite_attach": Attack(
        "import sqlite3\nc = sqlite3.connect(':memory:')\nc.execute('ATTACH DATABASE ? AS s', ({db!r},))\n"
        "print(c.execute('select v from s.t').fetchall())",
        hook_reports=False,
    ),
    "sqlite_uri": Attack(
        "import sqlite3\nc = sqlite3.connect('file:' + {db!r} + '?mode=ro', uri=True)\n"
        "print(c.execute('select v from t').fetchall())"
    ),
    "sqlite_vacuum_into": Attack(
        "import sqlite3\nc = sqlite3.connect(':memory:')\nc.execute('create table x (v)')\n"
        "c.execute('VACUUM INTO ?', ({outside!r},))",
        hook_reports=False,
    ),
    # Issue item 12: O_ASYNC + F_SETOWN + F_SETSIG(SIGKILL) makes the kernel kill another process.
    "fcntl_setown_sigkill": Attack(
        "import fcntl, os, signal\nr, w = os.pipe()\nfcntl.fcntl(r, fcntl.F_SETOWN, {victim})\n"
        "fcntl.fcntl(r, 10, signal.SIGKILL)\n"
        "fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)\nos.write(w, b'x')"
    ),
    "ioctl_fiosetown": Attack(
        "import fcntl, os, struct\nr, w = os.pipe()\nfcntl.ioctl(r, 0x8901, struct.pack('i', {victim}))\n"
        "fcntl.ioctl(r, 0x5452, struct.pack('i', 1))\nos.write(w, b'x')"
    ),
    "kill": Attack("import os, signal\nos.kill({victim}, signal.SIGKILL)"),
    "pidfd_kill": Attack(
        "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({victim}), signal.SIGKILL)",
        hook_reports=False,
    ),
    "tcp_connect": Attack(
        "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\ns.sendall(b'hi')"
    ),
    "fork": Attack("import os\npid = os.fork()\nprint('forked', pid)"),
    "subprocess": Attack(
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'echo pwned > ' + {outside!r}])"
    ),
    "path_object_toctou": Attack(
        "import os\nclass P:\n    n = 0\n    def __fspath__(self):\n        P.n += 1\n"
        "        return {outside!r} if P.n == 1 else 'inside.txt'\n"
        "os.mkdir(P())\n"  # os.* audit events carry the path as converted once, for the call itself
    ),
}


def offered_configs() -> dict[str, SandboxSettings]:
    """Each backend with its kernel layers alone and with its hook alone; `local` also with everything on
    (bubblewrap with everything on adds nothing the two bwrap rows do not check)."""
    candidates = {
        "local": SandboxSettings(isolation="hook_only"),
        "local-kernel-alone": KERNEL_ONLY,
        "local-hook-alone": HOOK_ONLY,
        "bwrap-kernel-alone": SandboxSettings(backend="bwrap", disable=["audit_hook"]),
        "bwrap-hook-alone": SandboxSettings(backend="bwrap", isolation="hook_only", disable=OLD_KERNEL),
    }
    return candidates


def config_param(name: str, settings: SandboxSettings) -> object:
    level = level_of(settings)
    wanted = (
        "hook_only"
        if "audit_hook" not in settings.disable and settings.isolation == "hook_only"
        else "kernel"
    )
    reason = None
    if level is None:
        reason = f"{settings.backend} is not available here"
    elif sandbox_child_rank(level) < sandbox_child_rank(wanted):
        reason = f"this machine gives {level!r}, not {wanted!r}"
    return pytest.param(name, settings, marks=pytest.mark.skipif(reason is not None, reason=reason or ""))


def sandbox_child_rank(level: str) -> int:
    return sandbox.sandbox_child.LEVELS.index(level)


CONFIGS = offered_configs()


@pytest.mark.parametrize(("config_name", "settings"), [config_param(n, s) for n, s in CONFIGS.items()])
@pytest.mark.parametrize("attack_name", list(ATTACKS))
def test_attack_is_contained(
    scratch: Path, host: Host, config_name: str, settings: SandboxSettings, attack_name: str
) -> None:
    attack = ATTACKS[attack_name]
    code = attack.code.format(**host.values, secret_dir=str(host.secret.parent))
    result = run_sandboxed(code, limits=Limits(cpu_seconds=2, wall_seconds=4), settings=settings)
    output = result.stdout + result.stderr
    assert SECRET not in output, output
    assert "forked" not in result.stdout, output
    assert host.untouched() == [], output
    hook_on = "audit_hook" not in settings.disable
    if hook_on and attack.hook_reports:
        assert result.violations, f"the hook reported nothing: {output}"
    assert result.level == level_of(settings)
    assert result.forged_violations == 0


# -- item 12: the isolation level is a decision, made visibly -------------------------------------------------------
def test_model_code_is_refused_without_kernel_isolation(caplog: pytest.LogCaptureFixture) -> None:
    older = SandboxSettings(disable=OLD_KERNEL)
    with pytest.raises(SandboxUnavailable, match=r"rl: refusing .*sandbox.isolation: hook_only"):
        sandbox.admit_model_code(older, "rl")
    before = sandbox.active_settings()
    try:
        with caplog.at_level(logging.WARNING, logger="midtrain.sandbox"):
            report = sandbox.admit_model_code(HOOK_ONLY, "rl")
        assert report.level == "hook_only" and report.required == "hook_only"
        assert any("audit hook as its only complete isolation layer" in r.message for r in caplog.records)
        assert report.missing and all(": " in reason for reason in report.missing)
        assert sandbox.active_settings() == HOOK_ONLY
    finally:
        sandbox._active = before


def test_domains_without_model_code_need_no_sandbox() -> None:
    assert code_runner.admit_model_code_for(["calculator"], SandboxSettings(disable=OLD_KERNEL), "rl") is None


def test_hook_only_refuses_modules_whose_file_access_it_cannot_see(scratch: Path) -> None:
    for module in ("sqlite3", "pwd", "readline"):
        result = run_sandboxed(f"import {module}", settings=HOOK_ONLY)
        assert result.violations and "importing" in result.violations[0], result.stderr
    kernel = run_sandboxed(
        "import sqlite3\nprint(sqlite3.connect(':memory:').execute('select 1').fetchall())"
    )
    assert kernel.ok and kernel.stdout == "[(1,)]\n"  # with a kernel file layer, sqlite is fine


def test_relative_dir_fd_paths_inside_the_workdir_still_work(scratch: Path) -> None:
    code = (
        "import os\nos.makedirs('d/e')\nopen('d/e/f.txt', 'w').write('ok')\nfd = os.open('d', os.O_RDONLY)\n"
        "print(os.read(os.open('e/f.txt', os.O_RDONLY, dir_fd=fd), 9).decode())\n"
        "os.mkdir('g', dir_fd=fd)\nprint(sorted(os.listdir('d')))\n"
    )
    for settings in (None, HOOK_ONLY):
        result = run_sandboxed(code, settings=settings)
        assert result.ok and result.stdout == "ok\n['e', 'g']\n", result.stderr


# -- item 13: limits inside the child, total disk use, an unforgeable violation channel ----------------------------
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            text = Path(status).read_text()
        except OSError:
            continue
        ppid = int(text.split("PPid:")[1].split()[0])
        children.setdefault(ppid, []).append(int(status.split("/")[2]))
    found, pending = [], [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.append(pid)
    return alive


def _start_parent(tmp_path: Path, wall_seconds: float) -> tuple[subprocess.Popen[bytes], list[int]]:
    """A separate process that runs a sleeping sandbox; returns it and the sandbox's processes once running."""
    script = (
        "from pipelines.sandbox import Limits, run_sandboxed\n"
        f"run_sandboxed('import time\\ntime.sleep(60)', limits=Limits(wall_seconds={wall_seconds}))\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _descendants(parent.pid)
        if any(_stage(p) == "stage2" for p in _alive(found)):
            return parent, found
        time.sleep(0.05)
    parent.kill()
    raise AssertionError("the sandbox never started")


def test_sandbox_dies_with_its_parent(tmp_path: Path) -> None:
    parent, children = _start_parent(tmp_path, wall_seconds=30)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 3
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(children) == [], "the sandbox outlived the process that started it"


def test_wall_limit_holds_inside_the_child_when_the_parent_hangs(tmp_path: Path) -> None:
    parent, children = _start_parent(tmp_path, wall_seconds=1.0)
    parent.send_signal(signal.SIGSTOP)  # a hung parent enforces nothing
    try:
        deadline = time.monotonic() + 1.0 + sandbox.sandbox_child.WARDEN_GRACE_S + 2
        while len(_alive(children)) > 1 and time.monotonic() < deadline:  # the warden waits for the parent
            time.sleep(0.05)
        assert not any(_stage(p) == "stage2" for p in _alive(children)), "the code outlived its wall limit"
    finally:
        parent.kill()
        parent.wait()


def _stage(pid: int) -> str:
    """`stage1` or `stage2` for a sandbox process (its argv ends with the stage and a descriptor)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    return argv[-3].decode() if len(argv) >= 3 else ""


@pytest.mark.parametrize("settings", [None, HOOK_ONLY], ids=["all-layers", "hook-alone"])
def test_total_disk_use_is_bounded(scratch: Path, settings: SandboxSettings | None) -> None:
    code = "for i in range(200):\n    open(f'f{i}', 'wb').write(b'x' * (1 << 20))\nprint('wrote 200 MB')"
    start = time.monotonic()
    result = run_sandboxed(code, limits=Limits(disk_mb=32, wall_seconds=10), settings=settings)
    assert "wrote 200 MB" not in result.stdout
    assert result.killed_reason == "disk_limit" or "No space left on device" in result.stderr, result
    assert time.monotonic() - start < 8


def test_the_code_cannot_forge_a_violation(scratch: Path) -> None:
    forge = (
        "import os\nfor fd in range(3, 64):\n    try:\n"
        "        os.write(fd, b'0' * 32 + b' 1 sandbox: reading /etc/shadow is not allowed\\n')\n"
        "    except OSError:\n        pass\nprint('done')"
    )
    result = run_sandboxed(forge)
    assert result.violations == [] and result.forged_violations >= 1 and result.stdout == "done\n"
    env = CodeRunnerEnv()
    env.reset()
    text, is_error = env._call_tool("run_python", {"code": forge})
    assert not is_error and "blocked by the sandbox" not in text


def test_the_hooks_frames_and_key_stay_out_of_reach(scratch: Path) -> None:
    code = (
        "try:\n    open('/etc/passwd')\nexcept PermissionError as exc:\n    tb = exc.__traceback__\n"
        "    hidden = tb.tb_next\n    frames = []\n    while tb is not None:\n"
        "        frames.append(tb.tb_frame.f_code.co_name)\n        tb = tb.tb_next\n    print(frames)\n"
        "    try:\n        hidden.tb_frame\n    except PermissionError as inner:\n        print('refused', inner)\n"
        "import traceback\ntry:\n    open('/etc/passwd')\nexcept PermissionError:\n    traceback.print_exc()\n"
    )
    result = run_sandboxed(code)
    assert result.stdout.splitlines()[0] == "['<module>']", result.stdout + result.stderr
    assert "refused sandbox: reading the sandbox's own frames" in result.stdout
    assert "PermissionError: sandbox: open of '/etc/passwd'" in result.stderr  # print_exc still works
    assert len(result.violations) == 2 and result.forged_violations == 0


# -- item 14: no preexec_fn, a seccomp allow-list by name, namespaces -----------------------------------------------
def test_setup_runs_in_the_child_not_in_preexec_fn(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, object]] = []
    real = subprocess.Popen

    def recording(*args: object, **kwargs: object) -> subprocess.Popen[bytes]:
        seen.append(kwargs)
        return real(*args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(sandbox.subprocess, "Popen", recording)
    assert run_sandboxed("print(1)").stdout == "1\n"
    assert seen and all(kwargs.get("preexec_fn") is None for kwargs in seen)


def test_runs_from_a_threaded_parent(scratch: Path) -> None:
    """torch and TRL keep threads; with setup after exec, busy threads (holding locks, allocating) do not matter."""
    stop = threading.Event()
    lock = threading.Lock()

    def busy() -> None:
        while not stop.is_set():
            with lock:
                _ = [bytearray(1024) for _ in range(50)]
            logging.getLogger("busy").debug("tick")

    workers = [threading.Thread(target=busy, daemon=True) for _ in range(6)]
    for worker in workers:
        worker.start()
    results: list[sandbox.SandboxResult] = []
    try:
        runners = [
            threading.Thread(target=lambda i=i: results.append(run_sandboxed(f"print({i} * 2)")))
            for i in range(12)
        ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
    finally:
        stop.set()
    assert sorted(r.stdout for r in results) == sorted(f"{i * 2}\n" for i in range(12))
    assert all(r.ok for r in results)


@needs_kernel
def test_seccomp_is_an_allow_list_built_by_name(scratch: Path) -> None:
    program, missing = sandbox_kernel.seccomp_program()
    assert program and missing == "" and len(program) % 8 == 0
    for code in ("import os\nos.memfd_create('x')", "import os\nos.sched_setaffinity(0, {0})"):
        result = run_sandboxed(code, settings=KERNEL_ONLY)  # neither syscall is on the list
        assert "Operation not permitted" in result.stderr, result.stderr


def test_without_libseccomp_the_level_drops_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    real = sandbox_kernel.kernel_support()
    missing = "libseccomp's Python binding is unavailable (test)"
    monkeypatch.setattr(
        sandbox_kernel, "kernel_support", lambda: replace(real, seccomp_bpf=None, seccomp_missing=missing)
    )
    sandbox._describe.cache_clear()
    try:
        report = sandbox.describe(SandboxSettings(disable=["namespaces"]))
        assert "seccomp" not in report.layers
        if real.root:  # RLIMIT_NPROC does not hold root: nothing kernel-level stops fork
            assert report.level == "hook_only" and any(missing in reason for reason in report.missing)
    finally:
        sandbox._describe.cache_clear()


@needs_kernel
def test_network_and_pid_namespaces_where_the_kernel_allows(scratch: Path, host: Host) -> None:
    layers = sandbox.describe(SandboxSettings()).layers
    if "netns" not in layers:
        pytest.skip("this kernel refuses new namespaces to this user")
    port = host.server.getsockname()[1]
    code = (
        f"import os, socket\nprint(os.getpid())\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)"
    )
    job = sandbox.SandboxJob(code, required="none", disable=frozenset(["seccomp", "landlock", "audit_hook"]))
    result = sandbox.LocalBackend().run(job)  # namespaces alone: no level to require
    assert result.stdout == "1\n" and "Network is unreachable" in result.stderr, result.stderr
    assert host.untouched() == []


# -- item 15: backends ---------------------------------------------------------------------------------------------
def test_backend_setting_is_validated_and_pluggable(scratch: Path) -> None:
    with pytest.raises(ValidationError, match="unknown sandbox backend 'e2b'; known: bwrap, local"):
        SandboxSettings(backend="e2b")

    jobs: list[sandbox.SandboxJob] = []

    class Recording:
        name = "recording"

        def unavailable(self) -> str | None:
            return None

        def run(self, job: sandbox.SandboxJob) -> sandbox.SandboxResult:
            jobs.append(job)
            return sandbox.SandboxResult("remote\n", "", 0, False, None, level="kernel")

    sandbox.register_backend("recording", Recording)
    try:
        result = run_sandboxed(
            "print(1)", files={"solution.py": "x = 1"}, settings=SandboxSettings(backend="recording")
        )
        assert result.stdout == "remote\n"
        assert jobs[0].files == {"solution.py": "x = 1"} and jobs[0].required == "kernel"
    finally:
        del sandbox.BACKENDS["recording"]
        sandbox._backend.cache_clear()


def test_run_config_has_a_sandbox_section() -> None:
    from pipelines.run_config import RunConfig

    base = {"name": "x", "data": {"recipe": "data_recipes/agentic-v1.yaml"}}
    assert RunConfig.model_validate(base).sandbox == SandboxSettings()
    config = RunConfig.model_validate(base | {"sandbox": {"backend": "bwrap", "isolation": "hook_only"}})
    assert config.sandbox.backend == "bwrap" and config.sandbox.isolation == "hook_only"
    with pytest.raises(ValidationError, match="isolation"):
        RunConfig.model_validate(base | {"sandbox": {"isolation": "auto"}})


@needs_bwrap
def test_bwrap_backend_runs_code_in_its_own_filesystem(scratch: Path) -> None:
    code = "import os\nprint(os.getcwd(), sorted(os.listdir('/')))\nopen('out.txt', 'w').write('x')"
    settings = SandboxSettings(backend="bwrap", isolation="hook_only", disable=["audit_hook", "landlock"])
    result = run_sandboxed(code, files={"solution.py": "X = 1\n"}, settings=settings)
    assert result.ok, result.stderr
    cwd, _, listing = result.stdout.partition(" ")
    assert cwd == "/sandbox" and "etc" in listing and "tmp" not in listing and "root" in listing
    assert {"bwrap", "netns", "pidns", "tmpfs"} <= set(result.isolation)


def test_bwrap_missing_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    sandbox._bwrap_unavailable.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="bubblewrap is not installed"):
            run_sandboxed("print(1)", settings=SandboxSettings(backend="bwrap"))
    finally:
        sandbox._bwrap_unavailable.cache_clear()


# -- item 3: leftovers of killed runs ------------------------------------------------------------------------------
def test_stale_workdirs_of_killed_runs_are_cleaned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = sandbox._workdir_prefix()
    names = {
        "dead": f"{sandbox.WORKDIR_PREFIX}{dead.pid}-{sandbox._start_time(os.getpid())}-abcd1234",
        "reused_pid": f"{sandbox.WORKDIR_PREFIX}{os.getpid()}-1-abcd1234",  # our pid, another start time
        "alive": f"{mine}abcd1234",
        "legacy_old": f"{sandbox.WORKDIR_PREFIX}k3j5h2l1",
        "legacy_new": f"{sandbox.WORKDIR_PREFIX}q9w8e7r6",
        "not_ours": "midtrain-sandboxing-notes",
    }
    for name in names.values():
        (root / name).mkdir()
        (root / name / "main.py").write_text("x")
    (root / names["dead"] / "locked").mkdir(mode=0)
    old = time.time() - 3 * 3600
    os.utime(root / names["legacy_old"], (old, old))
    monkeypatch.setattr(sandbox, "_cleaned", set())
    assert run_sandboxed("print(1)").stdout == "1\n"
    left = {p.name for p in root.iterdir()}
    assert left == {names["alive"], names["legacy_new"], names["not_ours"]}


# -- the kernel layers alone (audit hook off) ------------------------------------------------------------------
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
    result = run_sandboxed(code, limits=Limits(cpu_seconds=1, wall_seconds=4.0), settings=KERNEL_ONLY)
    assert result.exit_code == 1 and expected in result.stderr, result.stderr
    assert result.violations == [] and "audit_hook" not in result.isolation
    assert "root:" not in result.stdout


@needs_kernel
def test_kernel_layers_refuse_writes_outside(scratch: Path, tmp_path: Path) -> None:
    result = run_sandboxed(f"open({str(tmp_path / 'out.txt')!r}, 'w').write('x')", settings=KERNEL_ONLY)
    assert "Permission denied" in result.stderr and not (tmp_path / "out.txt").exists()


@needs_kernel
def test_root_loses_its_capabilities(scratch: Path) -> None:
    if not SUPPORT.root:
        pytest.skip("only meaningful when the parent runs as root")
    result = run_sandboxed("import os\nos.setuid(12345)", settings=KERNEL_ONLY)
    assert "Operation not permitted" in result.stderr


def test_require_fails_loudly_without_kernel_support(scratch: Path) -> None:
    with pytest.raises(SandboxUnavailable, match="isolation level 'hook_only' < required 'kernel'"):
        run_sandboxed("print(1)", settings=SandboxSettings(disable=OLD_KERNEL))
    result = run_sandboxed("print(1)", settings=HOOK_ONLY)  # accepted explicitly: process and hook layers
    assert result.stdout == "1\n" and result.level == "hook_only"
    assert {"process", "rlimits", "audit_hook"} <= set(result.isolation)
    assert not any(layer.startswith(("landlock", "seccomp")) for layer in result.isolation)


# -- what must keep working -------------------------------------------------------------------------------------
def test_ordinary_code_runs_fast_with_stdin_files_and_threads(scratch: Path) -> None:
    code = (
        "import json, sys, threading, collections, re, tempfile, pathlib\n"
        "data = json.loads(sys.stdin.read())\n"
        "open('notes.txt', 'w').write('kept')\n"
        "with tempfile.NamedTemporaryFile('w') as handle:\n"
        "    handle.write('scratch')\n"
        "worker = threading.Thread(target=lambda: data.append(open('notes.txt').read()))\n"
        "worker.start(); worker.join()\n"
        "pathlib.Path('p.txt').write_text('path')\n"
        "print(data, sorted(collections.Counter('abca').items()), pathlib.Path('p.txt').read_text())\n"
    )
    timings = []
    for _ in range(3):
        result = run_sandboxed(code, stdin="[1, 2]", files={"helper.py": "X = 1\n"})
        timings.append(result.duration_s)
        assert result.ok, result.stderr
        assert result.stdout == "[1, 2, 'kept'] [('a', 2), ('b', 1), ('c', 1)] path\n"
    if KERNEL:
        assert {"landlock-v" + str(SUPPORT.landlock_abi), "seccomp", "audit_hook"} <= set(result.isolation)
        assert result.level == "kernel"
    assert min(timings) < 0.5  # ~60 ms on an idle core; generous for a loaded CI machine


def test_environment_is_stripped(scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDTRAIN_SECRET_TOKEN", "hunter2")
    result = run_sandboxed("import os\nprint(sorted(os.environ))")
    assert result.stdout.strip() == "['HOME', 'LC_ALL', 'TMPDIR']"


def test_workdir_is_removed_even_when_code_locks_it(scratch: Path) -> None:
    code = (
        "import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\nos.chmod('a/b', 0)\nos.chmod('a', 0)"
    )
    assert run_sandboxed(code).ok
    assert run_sandboxed(code, settings=HOOK_ONLY).ok
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
        "import os, time\nprint(os.getcwd(), flush=True)\ntime.sleep(60)", limits=Limits(wall_seconds=1.0)
    )
    assert result.timed_out and result.killed_reason == "wall_time"
    workdir = result.stdout.split()[0]
    left = []
    for cwd in glob.glob("/proc/[0-9]*/cwd"):
        with contextlib.suppress(OSError):
            if os.readlink(cwd) == workdir:
                left.append(cwd)
    assert left == []
