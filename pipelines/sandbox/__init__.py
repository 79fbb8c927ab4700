"""Run untrusted Python (model-written code, in RL and evaluation) in a separate, locked-down process.

Layers, each reported per run in `SandboxResult.isolation`:

1. Process: a fresh `python -I -S -B -u` (isolated, no site-packages, stdlib only) in a new session, with no
   inherited environment (only HOME and TMPDIR, both the workdir, and LC_ALL), a scratch working directory that
   is deleted afterwards, rlimits on CPU time, address space, file size, open files and core dumps, an output
   cap, a wall-clock limit enforced twice (the parent kills the process group; inside, a warden process kills
   the code past the limit even when the parent is gone), a parent-death signal, and a cap on total disk use
   (a tmpfs of `disk_mb` where mount namespaces exist, else the parent measures the folder and kills the run).
2. Kernel, set up by the child itself after exec (child.py; nothing runs between fork and exec in the
   possibly threaded parent): network, PID, IPC and mount namespaces where the kernel allows them (detected,
   never assumed); `no_new_privs`; an empty capability bounding set; Landlock (stdlib and system libraries
   read-only, the workdir read-write, no TCP, signals scoped); a seccomp allow-list built by syscall name
   (kernel.py). The `bwrap` backend adds bubblewrap's own filesystem view (only the interpreter, its
   libraries and a tmpfs workdir exist).
3. Interpreter: an audit hook refuses file access outside the working directory, sockets, process creation,
   signals to other processes, ctypes-like imports and introspection that could reach the hook. Each refusal
   raises PermissionError("sandbox: …") and is reported to the parent on a channel only the hook can write to
   (messages carry a tag keyed by a per-run secret), which lets the code runner answer with a precise tool error.

Isolation levels (`SandboxSettings.isolation` is the minimum a run accepts; every available layer is used):
- `kernel`: files, network, process creation and signals are each contained by the kernel, so code that gets
  past the audit hook (a native extension, crafted bytecode) is still contained.
- `hook_only`: the audit hook is the only complete layer. PEP 578 hooks are not a security boundary: it stops
  the known pure-Python attacks, and nothing stops native code. RL and evaluation refuse to run model code at
  this level unless the config says `sandbox.isolation: hook_only`; they then warn and record it.

Backends implement `SandboxBackend` (`unavailable()`, `run(job) -> SandboxResult`): `local` and `bwrap` here; a
remote code-execution service (SandboxFusion, E2B) registers its own with `register_backend`.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import marshal
import os
import re
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from hashlib import blake2b
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import Field, field_validator

from pipelines.config import StrictModel
from pipelines.errors import BadInput, MidtrainError
from pipelines.sandbox import child as sandbox_child
from pipelines.sandbox import kernel as sandbox_kernel
from pipelines.sandbox.kernel import BLOCKED_MODULES

log = logging.getLogger("midtrain.sandbox")

USER_FILE = "main.py"
WORKDIR_PREFIX = "midtrain-sandbox-"
_OUTPUT_TRUNCATED = "\n[sandbox: output truncated at {limit} bytes]"
Level = Literal["none", "hook_only", "kernel"]

# Modules whose C code opens files (or processes, or sockets) without an audit event the hook could check.
# With a kernel file layer they are harmless (the kernel sees their opens); at hook_only they are refused.
HOOK_ONLY_BLOCKED_MODULES = (
    "_sqlite3", "_dbm", "_gdbm", "readline", "_posixshmem", "_multiprocessing", "_ssl", "pwd", "grp", "spwd",
    "_curses", "_curses_panel", "_tkinter", "ossaudiodev", "nis", "syslog",
)  # fmt: skip

# Audit events the hook checks: event -> (positions of its path arguments, positions of its dir_fd arguments,
# does it write). A relative path with a dir_fd is resolved by the kernel against that directory, not the cwd.
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], tuple[int, ...], bool]] = {
    "os.listdir": ((0,), (), False),
    "os.scandir": ((0,), (), False),
    "os.walk": ((0,), (), False),
    "os.fwalk": ((0,), (4,), False),
    "glob.glob": ((0,), (), False),
    "glob.glob/2": ((0, 2), (3,), False),
    "os.listxattr": ((0,), (), False),
    "os.getxattr": ((0,), (), False),
    "os.chdir": ((0,), (), True),
    "os.mkdir": ((0,), (2,), True),
    "os.rmdir": ((0,), (1,), True),
    "os.remove": ((0,), (1,), True),
    "os.rename": ((0, 1), (2, 3), True),
    "os.link": ((0, 1), (2, 3), True),
    "os.chmod": ((0,), (2,), True),
    "os.chown": ((0,), (3,), True),
    "os.chflags": ((0,), (), True),
    "os.truncate": ((0,), (), True),
    "os.utime": ((0,), (3,), True),
    "os.mkfifo": ((0,), (2,), True),
    "os.mknod": ((0,), (3,), True),
    "os.setxattr": ((0,), (), True),
    "os.removexattr": ((0,), (), True),
    "shutil.rmtree": ((0,), (1,), True),
}
# Audit events the hook refuses outright: event -> what the refusal message calls it.
_REFUSED_EVENTS: dict[str, str] = {
    "os.fork": "creating processes",
    "os.forkpty": "creating processes",
    "os.system": "running commands",
    "os.exec": "running programs",
    "os.posix_spawn": "creating processes",
    "os.spawn": "creating processes",
    "subprocess.Popen": "running programs",
    "pty.spawn": "creating processes",
    "os.kill": "sending signals",
    "os.killpg": "sending signals",
    "gc.get_objects": "gc introspection",
    "gc.get_referrers": "gc introspection",
    "gc.get_referents": "gc introspection",
    "sys._current_frames": "frame introspection",
    "sys._current_exceptions": "frame introspection",
    "sys.addaudithook": "adding audit hooks",
    "code.__new__": "building code objects",
    "resource.setrlimit": "changing resource limits",
    "resource.prlimit": "changing resource limits",
    "sqlite3.enable_load_extension": "loading native code",
    "sqlite3.load_extension": "loading native code",
}
# fcntl(F_SETOWN, F_SETSIG, F_SETOWN_EX) and ioctl(FIOSETOWN, SIOCSPGRP, FIOASYNC, TIOCSTI): with O_ASYNC they
# make the kernel signal another process (SIGKILL included), e.g. the RL trainer.
_FCNTL_REFUSED = {"fcntl.fcntl": [8, 10, 15], "fcntl.ioctl": [0x8901, 0x8902, 0x5452, 0x5412]}


class SandboxUnavailable(BadInput):
    """The machine cannot give a run the isolation level its settings require (exit 2: the config asks for
    what this machine cannot do; the message says what is missing and the choices)."""


class Limits(StrictModel):
    """Resource limits of one sandboxed run."""

    cpu_seconds: int = Field(2, ge=1, le=600, description="RLIMIT_CPU; the kernel kills the run past it")
    wall_seconds: float = Field(
        5.0, gt=0, le=3600, description="wall-clock limit; the process group is killed"
    )
    memory_mb: int = Field(512, ge=64, description="RLIMIT_AS: allocations past it raise MemoryError")
    output_bytes: int = Field(64 * 1024, ge=1024, description="stdout+stderr cap; the run is killed past it")
    file_size_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: the largest file the code may write")
    disk_mb: int = Field(
        64, ge=1, description="total size of everything the code writes (tmpfs size, or killed past it)"
    )
    open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE")


class SandboxSettings(StrictModel):
    """Where and how model-written code runs (the run config's `sandbox:` section)."""

    backend: str = Field("local", description="`local`, `bwrap` (bubblewrap), or a registered backend")
    isolation: Literal["kernel", "hook_only"] = Field(
        "kernel",
        description="Minimum isolation for model-written code. `kernel`: refuse to run it unless the kernel "
        "contains files, network, processes and signals; `hook_only`: accept the audit hook alone (not a "
        "security boundary; warned and recorded).",
    )
    disable: list[Literal["landlock", "seccomp", "namespaces", "audit_hook"]] = Field(
        default_factory=list,
        description="Layers to switch off: to reproduce an older kernel, or to test the others alone.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value not in BACKENDS:
            raise ValueError(f"unknown sandbox backend {value!r}; known: {', '.join(sorted(BACKENDS))}")
        return value


@dataclass
class SandboxResult:
    """What one run did. `killed_reason` is set when the run did not end by itself."""

    stdout: str
    stderr: str
    exit_code: int  # the process's return code; negative = killed by that signal
    timed_out: bool
    killed_reason: str | None  # wall_time | cpu_time | output_limit | disk_limit | file_size | signal SIGxxx
    violations: list[str] = field(default_factory=list)  # what the audit hook refused, in order
    isolation: tuple[str, ...] = ()  # layers that were active
    level: str = ""  # the isolation level those layers give (see isolation_level)
    forged_violations: int = 0  # lines on the violation channel without the hook's tag (written by the code)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None and not self.violations


@dataclass(frozen=True)
class SandboxJob:
    """One run, as every backend receives it."""

    code: str
    stdin: str = ""
    files: dict[str, str] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    required: Level = "kernel"
    disable: frozenset[str] = frozenset()
    workdir_root: str | None = None


class SandboxBackend(Protocol):
    """Runs a job somewhere isolated. A remote service implements these two methods the same way."""

    name: str

    def unavailable(self) -> str | None:
        """None when this backend can run here, else why not (e.g. `bwrap` not installed)."""

    def run(self, job: SandboxJob) -> SandboxResult:
        """Run the job; raise SandboxUnavailable when it cannot meet `job.required`."""


BACKENDS: dict[str, Callable[[], SandboxBackend]] = {}


def register_backend(name: str, factory: Callable[[], SandboxBackend]) -> None:
    """Make `sandbox.backend: <name>` available (e.g. a SandboxFusion or E2B client)."""
    BACKENDS[name] = factory
    _backend.cache_clear()


@functools.cache
def _backend(name: str) -> SandboxBackend:
    return BACKENDS[name]()


# -- the policy for model-written code --------------------------------------------------------------------------
@dataclass(frozen=True)
class IsolationReport:
    """What a backend gives on this machine, for logs, manifests and run summaries."""

    backend: str
    level: str
    required: str
    layers: tuple[str, ...]
    missing: tuple[str, ...]  # kernel guarantees not given, with the reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "level": self.level,
            "required": self.required,
            "layers": list(self.layers),
            "missing": list(self.missing),
        }


_active = SandboxSettings()


def active_settings() -> SandboxSettings:
    return _active


def admit_model_code(settings: SandboxSettings, stage: str) -> IsolationReport:
    """Make `settings` the sandbox for model-written code in this process, or refuse (SandboxUnavailable) when the
    machine cannot meet `settings.isolation`. At `hook_only` the decision is logged as a warning."""
    global _active
    report = describe(settings)
    if sandbox_child.LEVELS.index(report.level) < sandbox_child.LEVELS.index(settings.isolation):
        raise SandboxUnavailable(
            f"{stage}: refusing to run model-written code: the `{report.backend}` sandbox gives isolation level "
            f"{report.level!r} here, not {settings.isolation!r} ({'; '.join(report.missing)}). Fix the machine, "
            "try `sandbox.backend: bwrap`, or accept the audit hook alone with `sandbox.isolation: hook_only` "
            "(not a security boundary: native code gets past it)"
        )
    if report.level != "kernel":
        log.warning(
            "%s: model-written code runs with the audit hook as its only complete isolation layer "
            "(sandbox.isolation: hook_only; missing: %s)",
            stage,
            "; ".join(report.missing),
        )
    _active = settings
    return report


@contextlib.contextmanager
def using(settings: SandboxSettings) -> Iterator[None]:
    """Run a block with other settings (e.g. our own reference code, which needs no kernel isolation)."""
    global _active
    previous, _active = _active, settings
    try:
        yield
    finally:
        _active = previous


@contextlib.contextmanager
def own_code() -> Iterator[None]:
    """Run our own code (the problem bank's references and drafts, never a model's) at whatever level the
    machine gives: the active backend and layers, with `hook_only` accepted."""
    with using(_active.model_copy(update={"isolation": "hook_only"})):
        yield


def describe(settings: SandboxSettings) -> IsolationReport:
    """The level a backend gives here with these settings, measured by one probe run (cached)."""
    return _describe(settings.backend, frozenset(settings.disable), settings.isolation)


@functools.cache
def _describe(backend_name: str, disable: frozenset[str], required: str) -> IsolationReport:
    backend = _backend(backend_name)
    reason = backend.unavailable()
    if reason is not None:
        raise SandboxUnavailable(f"sandbox backend {backend_name!r}: {reason}")
    probe = backend.run(SandboxJob(code="pass\n", required="none", disable=disable))
    return IsolationReport(
        backend_name, probe.level, required, probe.isolation, _missing(probe.isolation, disable)
    )


def _missing(layers: tuple[str, ...], disable: frozenset[str]) -> tuple[str, ...]:
    """Each kernel guarantee these layers do not give, with why."""
    support = sandbox_kernel.kernel_support()
    off = "switched off by sandbox.disable"
    seccomp = off if "seccomp" in disable else support.seccomp_missing or "not applied"
    landlock = off if "landlock" in disable else f"this kernel's Landlock ABI is {support.landlock_abi}"
    why = {
        "files": f"no Landlock ({landlock}) and no bubblewrap filesystem view",
        "network": f"no seccomp ({seccomp}) and no network namespace",
        "processes": f"no seccomp ({seccomp})"
        + ("; RLIMIT_NPROC does not bind root" if support.root else ""),
        "signals": f"no seccomp ({seccomp}), no PID namespace, no Landlock ABI >= 6",
    }
    given = sandbox_child.guarantees(list(layers))
    return tuple(f"{name}: {why[name]}" for name, ok in given.items() if not ok)


def run_sandboxed(
    code: str,
    stdin: str = "",
    limits: Limits | None = None,
    files: dict[str, str] | None = None,
    workdir_root: str | Path | None = None,
    settings: SandboxSettings | None = None,
) -> SandboxResult:
    """Run `code` as `main.py` in a fresh sandbox; `files` are written next to it first (e.g. solution.py).
    `settings` default to the process's active ones (`admit_model_code`)."""
    settings = settings or _active
    for name in files or {}:
        if not name or "/" in name or name in (".", "..", USER_FILE) or "\0" in name:
            raise ValueError(f"sandbox input file name {name!r} must be a plain file name")
    job = SandboxJob(
        code=code,
        stdin=stdin,
        files=dict(files or {}),
        limits=limits or Limits(),
        required=settings.isolation,
        disable=frozenset(settings.disable),
        workdir_root=str(workdir_root) if workdir_root is not None else None,
    )
    backend = _backend(settings.backend)
    reason = backend.unavailable()
    if reason is not None:
        raise SandboxUnavailable(f"sandbox backend {settings.backend!r}: {reason}")
    return backend.run(job)


# -- local and bubblewrap: a child process running child.py -----------------------------------------------
@dataclass
class _Launch:
    """How a process backend starts stage 1, and what it already provides."""

    argv_prefix: list[str]  # [] for local; bwrap and its options for bwrap
    cwd: str | None
    workdir: str  # the working directory as the child sees it
    host_workdir: str | None  # the folder on this machine to watch and delete (local), else None
    base_layers: list[str]
    namespaces: bool  # stage 1 should try namespaces itself
    parent_pid: int | None


class _ProcessBackend:
    """Shared by `local` and `bwrap`: the stage-1 config, the channels, collecting output, the result."""

    name = ""

    def unavailable(self) -> str | None:
        return None

    def launch(self, job: SandboxJob) -> _Launch:
        raise NotImplementedError

    def run(self, job: SandboxJob) -> SandboxResult:
        launch = self.launch(job)
        try:
            return _run_with_retries(job, launch)
        finally:
            if launch.host_workdir is not None:
                remove_tree(launch.host_workdir)


class LocalBackend(_ProcessBackend):
    """The interpreter started directly; namespaces and tmpfs by the child where the kernel allows them."""

    name = "local"

    def launch(self, job: SandboxJob) -> _Launch:
        root = job.workdir_root or tempfile.gettempdir()
        clean_stale_workdirs(root)
        workdir = os.path.realpath(tempfile.mkdtemp(prefix=_workdir_prefix(), dir=root))
        return _Launch([], workdir, workdir, workdir, [], "namespaces" not in job.disable, os.getpid())


class BwrapBackend(_ProcessBackend):
    """bubblewrap (Debian `bubblewrap`): new user/mount/PID/network/IPC/UTS namespaces, a root filesystem that
    holds only the interpreter, its libraries and a size-capped tmpfs workdir; stage 1 adds the rest."""

    name = "bwrap"
    WORKDIR = "/sandbox"

    def unavailable(self) -> str | None:
        return _bwrap_unavailable()

    def launch(self, job: SandboxJob) -> _Launch:
        argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
        argv += ["--clearenv", "--cap-drop", "ALL", *_bwrap_view()]
        argv += ["--perms", "0700", "--size", str(job.limits.disk_mb * 2**20), "--tmpfs", self.WORKDIR]
        argv += ["--chdir", self.WORKDIR, "--"]
        layers = ["bwrap", "mountns", "tmpfs", "netns", "pidns", "ipcns"]
        return _Launch(argv, None, self.WORKDIR, None, layers, False, None)


register_backend("local", LocalBackend)
register_backend("bwrap", BwrapBackend)


@functools.cache
def _bwrap_unavailable() -> str | None:
    binary = shutil.which("bwrap")
    if binary is None:
        return "bubblewrap is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    probe = subprocess.run(
        [binary, "--unshare-all", "--die-with-parent", "--ro-bind", "/", "/", "--", "/bin/true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if probe.returncode != 0:
        return f"bubblewrap cannot create its namespaces here: {probe.stderr.strip()[:300]}"
    return None


@functools.cache
def _bwrap_view() -> tuple[str, ...]:
    """Read-only binds of exactly what the child reads; blocked modules and other Pythons masked."""
    paths = sandbox_kernel.child_paths()
    args: list[str] = []
    for link in ("/lib", "/lib64", "/bin", "/sbin"):
        if os.path.islink(link):
            args += ["--symlink", os.readlink(link), link]
    binds = [*sandbox_kernel.read_only_roots(), paths.executable, "/etc/ld.so.cache"]
    binds += [p for p in (sandbox_kernel.elf_interpreter(paths.executable),) if p]
    for path in dict.fromkeys(binds):
        args += ["--ro-bind-try", path, path]
    for path in sandbox_kernel.excluded_paths():
        if os.path.basename(path).split(".")[0] in _STAGE1_MODULES:
            continue  # stage 1 needs them; Landlock, where present, still hides them from the code
        args += (
            ["--tmpfs", path, "--remount-ro", path]
            if os.path.isdir(path)
            else ["--ro-bind", "/dev/null", path]
        )
    return (*args, "--dev", "/dev")


_START_ATTEMPTS = 3
_STAGE1_MODULES = ("ctypes", "_ctypes")


def _run_with_retries(job: SandboxJob, launch: _Launch) -> SandboxResult:
    """A setup failure happens before any user code ran, so starting again is safe; seen as transient under load
    (once in 10,000 runs at load 10). A level the machine cannot give is not retried."""
    for attempt in range(_START_ATTEMPTS):
        result, setup_error = _execute(job, launch)
        if setup_error is None:
            return result
        if attempt == _START_ATTEMPTS - 1:
            raise MidtrainError(f"sandbox: could not set up the sandboxed interpreter: {setup_error}")
        time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


@dataclass
class _Channels:
    """The pipes between parent and child; the parent keeps the read ends."""

    violations_read: int
    violations_write: int
    report_read: int
    report_write: int

    @classmethod
    def open(cls) -> _Channels:
        return cls(*os.pipe(), *os.pipe())

    def close_child_ends(self) -> None:
        for fd in (self.violations_write, self.report_write):
            with contextlib.suppress(OSError):
                os.close(fd)


def _execute(job: SandboxJob, launch: _Launch) -> tuple[SandboxResult, str | None]:
    channels = _Channels.open()
    key = os.urandom(32)
    config = _stage1_config(job, launch, channels, key)
    started = time.monotonic()
    try:
        proc = _spawn(job, launch, config, channels)
    except BaseException:
        channels.close_child_ends()
        for fd in (channels.violations_read, channels.report_read):
            os.close(fd)
        raise
    channels.close_child_ends()
    outcome = _collect(proc, channels, job.limits, started + job.limits.wall_seconds, launch.host_workdir)
    report = _parse_report(outcome.report)
    if "unavailable" in report:
        raise SandboxUnavailable(f"sandbox ({launch.workdir}): {report['unavailable']}")
    if "layers" not in report or "error" in report:
        detail = report.get("error") or outcome.stderr.decode("utf-8", "replace").strip()[-500:]
        return _result(proc.returncode, outcome, job.limits, report, key, 0.0), detail or "no report"
    return _result(proc.returncode, outcome, job.limits, report, key, time.monotonic() - started), None


def _stage1_config(job: SandboxJob, launch: _Launch, channels: _Channels, key: bytes) -> dict[str, Any]:
    support = sandbox_kernel.kernel_support()
    paths = sandbox_kernel.child_paths()
    mb = 1024 * 1024
    hook_only = (
        not (support.landlock_abi and "landlock" not in job.disable) and "bwrap" not in launch.base_layers
    )
    hook = {
        "readable": list(paths.stdlib_dirs),
        "blocked_modules": [*BLOCKED_MODULES, *(HOOK_ONLY_BLOCKED_MODULES if hook_only else ())],
        "path_events": _PATH_EVENTS,
        "refused_events": _REFUSED_EVENTS,
        "fcntl_refused": _FCNTL_REFUSED,
        "violation_fd": channels.violations_write,
        "key": key.hex(),
    }
    seccomp = None
    if support.seccomp_bpf is not None and "seccomp" not in job.disable:
        seccomp = {"bpf": support.seccomp_bpf.hex(), "pid_placeholder": sandbox_kernel.PID_PLACEHOLDER}
    landlock = None
    if support.landlock_abi and "landlock" not in job.disable:
        landlock = sandbox_kernel.landlock_spec(support.landlock_abi)
    return {
        "workdir": launch.workdir,
        "files": {**job.files, USER_FILE: job.code},
        "parent_pid": launch.parent_pid,
        "namespaces": launch.namespaces,
        "disk_bytes": job.limits.disk_mb * mb,
        "limits": {
            "cpu": job.limits.cpu_seconds,
            "memory": job.limits.memory_mb * mb,
            "file_size": job.limits.file_size_mb * mb,
            "open_files": job.limits.open_files,
        },
        "landlock": landlock,
        "seccomp": seccomp,
        "drop_capabilities": support.root,
        "executable": paths.executable,
        "program": _child_program(),
        "wall_seconds": job.limits.wall_seconds,
        "report_fd": channels.report_write,
        "violation_fd": channels.violations_write,
        "hook": None if "audit_hook" in job.disable else hook,
        "required": job.required,
        "env": {"HOME": launch.workdir, "TMPDIR": launch.workdir, "LC_ALL": "C.UTF-8"},
        "base_layers": ["process", *launch.base_layers],
    }


@functools.cache
def _child_program() -> str:
    return Path(sandbox_child.__file__).read_text(encoding="utf-8") + "\n_main()\n"


def _spawn(
    job: SandboxJob, launch: _Launch, config: dict[str, Any], channels: _Channels
) -> subprocess.Popen[bytes]:
    # The config and stdin travel as unlinked files outside the workdir: no size limit, nothing left behind.
    with tempfile.TemporaryFile() as config_file, tempfile.TemporaryFile() as stdin_file:
        config_file.write(marshal.dumps(config))  # the child is this same interpreter version
        config_file.seek(0)
        stdin_file.write(job.stdin.encode("utf-8"))
        stdin_file.seek(0)
        executable = sandbox_kernel.child_paths().executable
        argv = [*launch.argv_prefix, executable, "-I", "-S", "-B", "-u", "-c", _child_program()]
        argv += ["stage1", str(config_file.fileno())]
        return subprocess.Popen(
            argv,
            stdin=stdin_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=launch.cwd,
            env={"LC_ALL": "C.UTF-8"},
            pass_fds=(config_file.fileno(), channels.violations_write, channels.report_write),
            start_new_session=True,
        )


@dataclass
class _Outcome:
    stdout: bytes = b""
    stderr: bytes = b""
    violations: bytes = b""
    report: bytes = b""
    killed_by_us: str | None = None


_DISK_POLL_S = 0.05


def _collect(
    proc: subprocess.Popen[bytes], channels: _Channels, limits: Limits, deadline: float, watch: str | None
) -> _Outcome:
    """Read stdout, stderr, the violation and report channels until EOF, a limit or the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = {
        proc.stdout.fileno(): "stdout",
        proc.stderr.fileno(): "stderr",
        channels.violations_read: "violations",
        channels.report_read: "report",
    }
    buffers = {name: bytearray() for name in streams.values()}
    outcome = _Outcome()
    disk_bytes = limits.disk_mb * 1024 * 1024
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and outcome.killed_by_us is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.killed_by_us = "wall_time"
                break
            for key, _ in selector.select(min(remaining, _DISK_POLL_S) if watch else remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffers[streams[key.fd]] += chunk
                if len(buffers["stdout"]) + len(buffers["stderr"]) > limits.output_bytes:
                    outcome.killed_by_us = "output_limit"
            if watch and re.search(rb"^layers\t.*\btmpfs\b", buffers["report"], re.MULTILINE):
                watch = None  # the kernel caps the workdir's size itself
            if watch and _disk_usage(watch, disk_bytes) > disk_bytes:
                outcome.killed_by_us = "disk_limit"
    _finish(proc, outcome, deadline)
    for fd in (channels.violations_read, channels.report_read):
        os.close(fd)
    proc.stdout.close()
    proc.stderr.close()
    outcome.stdout, outcome.stderr = bytes(buffers["stdout"]), bytes(buffers["stderr"])
    outcome.violations, outcome.report = bytes(buffers["violations"]), bytes(buffers["report"])
    return outcome


def _disk_usage(root: str, limit: int) -> int:
    """Allocated bytes under `root`, stopping once past `limit` (folders the code made unreadable count 0)."""
    total, pending = 0, [root]
    while pending and total <= limit:
        with contextlib.suppress(OSError), os.scandir(pending.pop()) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
    return total


def _finish(proc: subprocess.Popen[bytes], outcome: _Outcome, deadline: float) -> None:
    """Wait for the exit (closing the pipes does not end a busy loop); kill the whole group when over limits."""
    if outcome.killed_by_us is None:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.001))
        except subprocess.TimeoutExpired:
            outcome.killed_by_us = "wall_time"
    if outcome.killed_by_us is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _parse_report(raw: bytes) -> dict[str, Any]:
    """Stage 1's `key<TAB>value` lines: layers (comma-separated), level, error, unavailable, warden."""
    report: dict[str, Any] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition("\t")
        report[key] = value.split(",") if key == "layers" else value
    return report


def _verified_violations(raw: bytes, key: bytes) -> tuple[list[str], int]:
    """The hook's messages (tag, sequence number, text); anything else on the channel was written by the code."""
    messages, forged, expected = [], 0, 1
    for line in raw.splitlines():
        tag, _, body = line.partition(b" ")
        number, _, text = body.partition(b" ")
        good = blake2b(body, digest_size=16, key=key).hexdigest().encode()
        if hmac.compare_digest(tag, good) and number == str(expected).encode():
            messages.append(text.decode("utf-8", "replace"))
            expected += 1
        elif line.strip():
            forged += 1
    return messages, forged


def _result(
    returncode: int, outcome: _Outcome, limits: Limits, report: dict[str, Any], key: bytes, took: float
) -> SandboxResult:
    stdout, stderr = outcome.stdout, outcome.stderr
    if outcome.killed_by_us == "output_limit":  # keep the first output_bytes, stdout first
        stdout = stdout[: limits.output_bytes]
        stderr = stderr[: max(limits.output_bytes - len(stdout), 0)]
        stderr += _OUTPUT_TRUNCATED.format(limit=limits.output_bytes).encode()
    violations, forged = _verified_violations(outcome.violations, key)
    killed = outcome.killed_by_us or ("wall_time" if report.get("warden") else None)
    return SandboxResult(
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        exit_code=returncode,
        timed_out=killed == "wall_time",
        killed_reason=killed or _signal_reason(returncode),
        violations=violations,
        isolation=tuple(report.get("layers", ())),
        level=str(report.get("level", "")),
        forged_violations=forged,
        duration_s=round(took, 4),
    )


def _signal_reason(returncode: int) -> str | None:
    if returncode >= 0:
        return None
    number = -returncode
    if number in (signal.SIGXCPU, signal.SIGKILL):  # SIGKILL unsent by us = the hard RLIMIT_CPU (soft + 1 s)
        return "cpu_time"
    if number == signal.SIGXFSZ:
        return "file_size"
    if number == signal.SIGSYS:
        return "seccomp"
    try:
        return f"signal {signal.Signals(number).name}"
    except ValueError:
        return f"signal {number}"


# -- working directories ------------------------------------------------------------------------------------------
def _workdir_prefix() -> str:
    """`midtrain-sandbox-<pid>-<start time>-`: the owner, so a later run can tell a killed run's leftovers."""
    return f"{WORKDIR_PREFIX}{os.getpid()}-{_start_time(os.getpid())}-"


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (pids are reused; pid + start time is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rsplit(")", 1)[1].split()[19]


_OWNED_NAME = re.compile(re.escape(WORKDIR_PREFIX) + r"(\d+)-(\d+)-[A-Za-z0-9_]+$")
_LEGACY_NAME = re.compile(re.escape(WORKDIR_PREFIX) + r"[A-Za-z0-9_]{8}$")  # before owners were in the name
_LEGACY_AGE_S = 2 * 3600  # longer than any run may last (Limits.wall_seconds <= 3600)
_cleaned: set[str] = set()


def clean_stale_workdirs(root: str) -> list[str]:
    """Remove working directories of killed runs under `root`, once per process: only folders with our name,
    owned by this user, whose process is gone (or, for older names without an owner, older than any run)."""
    if root in _cleaned:
        return []
    _cleaned.add(root)
    removed = []
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(WORKDIR_PREFIX) and _is_stale(entry):
                remove_tree(entry.path)
                removed.append(entry.path)
    if removed:
        log.info("sandbox: removed %d working folder(s) left by killed runs under %s", len(removed), root)
    return removed


def _is_stale(entry: os.DirEntry[str]) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.geteuid():
        return False
    owned = _OWNED_NAME.match(entry.name)
    if owned:
        pid, started = owned.groups()
        return _start_time(int(pid)) != started
    return bool(_LEGACY_NAME.match(entry.name)) and time.time() - info.st_mtime > _LEGACY_AGE_S


def remove_tree(workdir: str) -> None:
    """Delete the workdir even if the code made parts of it unreadable (chmod 000) to block the cleanup."""

    def make_writable_and_retry(func: Callable[[str], Any], path: str, _exc: Any) -> None:
        parent = os.path.dirname(path)
        for target in (parent, path):
            if os.path.exists(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        func(path)

    if os.path.isdir(workdir):
        shutil.rmtree(workdir, onerror=make_writable_and_retry)
