"""Run untrusted Python (model-written code, in RL and trace generation) in a separate, locked-down process.

Defence in depth; every attack in tests/test_sandbox.py is stopped by the audit hook with a clear message and,
where the kernel offers it, again by the kernel layers with the hook switched off:

1. Process: a fresh `python -I -S -B -u` (isolated, no site-packages, stdlib only) in a new session, with no
   inherited environment (only HOME and TMPDIR, both the workdir, and LC_ALL), a scratch working directory that
   is deleted afterwards, a wall-clock limit that kills the whole process group, an output cap (the run is
   killed past it) and rlimits on CPU time, address space, file size, open files and core dumps. RLIMIT_NPROC=0
   is only the fallback where seccomp is missing: it does nothing for root, who runs most containers.
2. Kernel, applied between fork and exec (Linux): `no_new_privs`; an empty capability bounding set when the
   parent is root (the child keeps uid 0 but no privilege); Landlock: read-only access to the interpreter, its
   stdlib and the system libraries (minus ctypes and other memory-poking modules), read-write access to the
   working directory only, no TCP, signals scoped to the sandbox; seccomp: no sockets, no fork/vfork/non-thread
   clone, no ptrace/mount/namespaces/module loading/rlimit raising, no signals to other processes.
3. Interpreter: an audit hook installed before user code runs refuses file access outside the working
   directory (stdlib reads excepted), sockets, process creation, ctypes-like imports and introspection that could
   reach the hook. Each refusal raises PermissionError("sandbox: …") and is reported to the parent, which is
   what lets the code runner answer with a precise tool error. PEP 578 hooks are not a security boundary on their
   own (crafted bytecode can defeat them); layers 1-2 are what contain a run that gets past it, so use
   `kernel_isolation="require"` where that matters.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import inspect
import json
import os
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from pipelines.config import StrictModel
from pipelines.errors import MidtrainError

# Refused by name in the audit hook and, under Landlock, unreadable on disk: they can poke memory (ctypes,
# _testcapi), spawn processes (_posixsubprocess) or start interpreters that the hook does not cover.
BLOCKED_MODULES = (
    "ctypes",
    "_ctypes",
    "_ctypes_test",
    "_posixsubprocess",
    "_testcapi",
    "_testinternalcapi",
    "_testbuffer",
    "_testclinic",
    "_testimportmultiple",
    "_testmultiphase",
    "_testsinglephase",
    "_xxsubinterpreters",
    "_xxinterpchannels",
    "_xxinterpqueues",
    "_interpreters",
    "_interpchannels",
    "_interpqueues",
    "_xxtestfuzz",
    "_cffi_backend",
)
USER_FILE = "main.py"
_OUTPUT_TRUNCATED = "\n[sandbox: output truncated at {limit} bytes]"


# Audit events the hook checks: event -> (positions of its path arguments, does it write).
_PATH_EVENTS: dict[str, tuple[tuple[int, ...], bool]] = {
    "os.listdir": ((0,), False),
    "os.scandir": ((0,), False),
    "os.walk": ((0,), False),
    "os.fwalk": ((0,), False),
    "glob.glob": ((0,), False),
    "glob.glob/2": ((0,), False),
    "os.listxattr": ((0,), False),
    "os.getxattr": ((0,), False),
    "os.chdir": ((0,), True),
    "os.mkdir": ((0,), True),
    "os.rmdir": ((0,), True),
    "os.remove": ((0,), True),
    "os.rename": ((0, 1), True),
    "os.link": ((0, 1), True),
    "os.chmod": ((0,), True),
    "os.chown": ((0,), True),
    "os.chflags": ((0,), True),
    "os.truncate": ((0,), True),
    "os.utime": ((0,), True),
    "os.mkfifo": ((0,), True),
    "os.mknod": ((0,), True),
    "os.setxattr": ((0,), True),
    "os.removexattr": ((0,), True),
    "shutil.rmtree": ((0,), True),
    "sqlite3.connect": ((0,), True),
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
    "code.__new__": "building code objects",
    "resource.setrlimit": "changing resource limits",
    "resource.prlimit": "changing resource limits",
    "sqlite3.enable_load_extension": "loading native code",
    "sqlite3.load_extension": "loading native code",
}


class SandboxUnavailable(MidtrainError):
    """`kernel_isolation="require"` on a machine without Landlock or seccomp."""


class Limits(StrictModel):
    """Resource limits of one sandboxed run."""

    cpu_seconds: int = Field(2, ge=1, le=600, description="RLIMIT_CPU; the kernel kills the run past it")
    wall_seconds: float = Field(
        5.0, gt=0, le=3600, description="wall-clock limit; the process group is killed"
    )
    memory_mb: int = Field(512, ge=64, description="RLIMIT_AS: allocations past it raise MemoryError")
    output_bytes: int = Field(64 * 1024, ge=1024, description="stdout+stderr cap; the run is killed past it")
    file_size_mb: int = Field(16, ge=1, description="RLIMIT_FSIZE: the largest file the code may write")
    open_files: int = Field(64, ge=16, description="RLIMIT_NOFILE")
    kernel_isolation: Literal["auto", "require", "off"] = Field(
        "auto", description="Landlock+seccomp+capability drop: use when available, require, or skip"
    )
    audit_hook: bool = Field(
        True, description="the in-interpreter hook; turn off only to test the kernel layers"
    )


@dataclass
class SandboxResult:
    """What one run did. `killed_reason` is set when the run did not end by itself."""

    stdout: str
    stderr: str
    exit_code: int  # the process's return code; negative = killed by that signal
    timed_out: bool
    killed_reason: str | None  # wall_time | cpu_time | output_limit | file_size | signal SIGxxx
    violations: list[str] = field(default_factory=list)  # what the audit hook refused, in order
    isolation: tuple[str, ...] = ()  # layers that were active
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.killed_reason is None and not self.violations


def run_sandboxed(
    code: str,
    stdin: str = "",
    limits: Limits | None = None,
    files: dict[str, str] | None = None,
    workdir_root: str | Path | None = None,
) -> SandboxResult:
    """Run `code` as `main.py` in a fresh sandbox; `files` are written next to it first (e.g. solution.py)."""
    limits = limits or Limits()
    support = _kernel_support()
    _check_required(limits, support)
    workdir = os.path.realpath(tempfile.mkdtemp(prefix="midtrain-sandbox-", dir=workdir_root))
    try:
        _write_inputs(workdir, code, files or {})
        return _execute(workdir, stdin, limits, support)
    finally:
        _remove_tree(workdir)


def _write_inputs(workdir: str, code: str, files: dict[str, str]) -> None:
    for name, text in {**files, USER_FILE: code}.items():
        target = os.path.realpath(os.path.join(workdir, name))
        if os.path.dirname(target) != workdir:
            raise ValueError(f"sandbox input file name {name!r} must be a plain file name")
        Path(target).write_text(text, encoding="utf-8")


def _remove_tree(workdir: str) -> None:
    """Delete the workdir even if the code made parts of it unreadable (chmod 000) to block the cleanup."""

    def make_writable_and_retry(func: Callable[[str], Any], path: str, _exc: Any) -> None:
        parent = os.path.dirname(path)
        for target in (parent, path):
            if os.path.exists(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
        func(path)

    if os.path.isdir(workdir):
        shutil.rmtree(workdir, onerror=make_writable_and_retry)


# -- running the process ------------------------------------------------------------------------------------


def _execute(workdir: str, stdin: str, limits: Limits, support: _KernelSupport) -> SandboxResult:
    use_kernel = limits.kernel_isolation != "off"
    violations_read, violations_write = os.pipe()
    ruleset_fd = (
        _landlock_ruleset(support.landlock_abi, workdir) if use_kernel and support.landlock_abi else None
    )
    config = {
        "workdir": workdir,
        "readable": list(_child_paths().stdlib_dirs),
        "blocked_modules": list(BLOCKED_MODULES),
        "path_events": _PATH_EVENTS,
        "refused_events": _REFUSED_EVENTS,
        "violation_fd": violations_write,
        "audit_hook": limits.audit_hook,
    }
    started = time.monotonic()
    try:
        proc = _spawn(
            workdir, config, stdin, _make_preexec(limits, support if use_kernel else None, ruleset_fd)
        )
    except BaseException:
        os.close(violations_read)
        raise
    finally:
        os.close(violations_write)
        if ruleset_fd is not None:
            os.close(ruleset_fd)
    outcome = _collect(proc, violations_read, limits, started + limits.wall_seconds)
    layers = _active_layers(limits, support)
    return _result(proc.returncode, outcome, limits, layers, time.monotonic() - started)


_START_ATTEMPTS = 3


def _spawn(
    workdir: str, config: dict[str, Any], stdin: str, preexec: Callable[[], None]
) -> subprocess.Popen[bytes]:
    argv = [_child_paths().executable, "-I", "-S", "-B", "-u", "-c", _bootstrap_program(config)]
    env = {"HOME": workdir, "TMPDIR": workdir, "LC_ALL": "C.UTF-8"}
    with (
        tempfile.TemporaryFile() as stdin_file
    ):  # outside the workdir: the code cannot read it back as a file
        stdin_file.write(stdin.encode("utf-8"))
        # Seen once in 10,000 runs on a machine at load 10: the isolation setup in preexec_fn failed
        # transiently. No user code has run at that point, so starting again is safe; a persistent failure
        # still surfaces after the last attempt.
        for attempt in range(_START_ATTEMPTS):
            stdin_file.seek(0)
            try:
                return subprocess.Popen(
                    argv,
                    stdin=stdin_file,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    cwd=workdir,
                    env=env,
                    pass_fds=(config["violation_fd"],),
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except (OSError, subprocess.SubprocessError) as exc:
                if attempt == _START_ATTEMPTS - 1:
                    raise MidtrainError(f"sandbox: could not start the sandboxed interpreter: {exc}") from exc
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")


@dataclass
class _Outcome:
    stdout: bytes = b""
    stderr: bytes = b""
    violations: bytes = b""
    killed_by_us: str | None = None


def _collect(proc: subprocess.Popen[bytes], violations_fd: int, limits: Limits, deadline: float) -> _Outcome:
    """Read stdout, stderr and the violation channel until EOF, the output cap or the deadline."""
    assert proc.stdout is not None and proc.stderr is not None
    streams = {proc.stdout.fileno(): "stdout", proc.stderr.fileno(): "stderr", violations_fd: "violations"}
    buffers = {name: bytearray() for name in streams.values()}
    outcome = _Outcome()
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map() and outcome.killed_by_us is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                outcome.killed_by_us = "wall_time"
                break
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffers[streams[key.fd]] += chunk
                if sum(len(buffer) for buffer in buffers.values()) > limits.output_bytes:
                    outcome.killed_by_us = "output_limit"
    _finish(proc, outcome, deadline)
    os.close(violations_fd)
    proc.stdout.close()
    proc.stderr.close()
    outcome.stdout, outcome.stderr, outcome.violations = (
        bytes(buffers[k]) for k in ("stdout", "stderr", "violations")
    )
    return outcome


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


def _result(
    returncode: int, outcome: _Outcome, limits: Limits, layers: tuple[str, ...], took: float
) -> SandboxResult:
    stdout, stderr = outcome.stdout, outcome.stderr
    if outcome.killed_by_us == "output_limit":  # keep the first output_bytes, stdout first
        stdout = stdout[: limits.output_bytes]
        stderr = stderr[: max(limits.output_bytes - len(stdout), 0)]
        stderr += _OUTPUT_TRUNCATED.format(limit=limits.output_bytes).encode()
    violations = [line for line in outcome.violations.decode("utf-8", "replace").splitlines() if line]
    return SandboxResult(
        stdout=stdout.decode("utf-8", "replace"),
        stderr=stderr.decode("utf-8", "replace"),
        exit_code=returncode,
        timed_out=outcome.killed_by_us == "wall_time",
        killed_reason=outcome.killed_by_us or _signal_reason(returncode),
        violations=violations,
        isolation=layers,
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


# -- the child's interpreter, paths and bootstrap -----------------------------------------------------------


@dataclass(frozen=True)
class _ChildPaths:
    executable: str  # the base interpreter (a venv's python would add the venv to the picture for nothing)
    stdlib_dirs: tuple[str, ...]  # the child's own sys.path under -I -S, resolved


@functools.cache
def _child_paths() -> _ChildPaths:
    executable = os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)
    probe = subprocess.run(
        [executable, "-I", "-S", "-c", "import json, sys; print(json.dumps(sys.path))"],
        capture_output=True,
        text=True,
        env={},
        timeout=60,
        check=True,
    )
    dirs = [os.path.realpath(p) for p in json.loads(probe.stdout) if os.path.isdir(p)]
    return _ChildPaths(executable=executable, stdlib_dirs=tuple(dict.fromkeys(dirs)))


def _bootstrap_program(config: dict[str, Any]) -> str:
    return f"{_child_source()}\n_sandbox_child({config!r})\n"


@functools.cache
def _child_source() -> str:
    return inspect.getsource(_sandbox_child)


def _sandbox_child(config):  # type: ignore[no-untyped-def]  # runs inside the sandboxed interpreter only
    """Install the audit hook, then run main.py as __main__ (this function's source is the child's -c program)."""
    import sys

    def install_audit_hook(
        workdir, readable_dirs, blocked_modules, path_events, refused_events, violation_fd
    ):  # type: ignore[no-untyped-def]
        # Everything the hook uses is captured here, so user code cannot monkeypatch it (os.path, builtins…).
        # Once installed, no frame or module holds the hook: only gc introspection could reach it, and the
        # hook refuses that.
        import posix

        lstat, readlink, getcwd = posix.lstat, posix.readlink, posix.getcwd
        write, fspath = posix.write, posix.fspath
        isinstance_, str_, bytes_ = isinstance, str, bytes
        int_, any_, reversed_, PermissionError_ = int, any, reversed, PermissionError
        write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
        readable_files = ("/dev/null", "/dev/urandom")
        blocked = frozenset(blocked_modules)

        def refuse(what):  # type: ignore[no-untyped-def]
            message = "sandbox: " + what + " is not allowed"
            try:  # noqa: SIM105  (no contextlib in here: the hook must not import while auditing)
                write(violation_fd, (message + "\n").encode("utf-8", "replace"))
            except OSError:  # the code closed the channel: the refusal itself still stands
                pass
            raise PermissionError_(message)

        def as_text(path):  # type: ignore[no-untyped-def]
            if path is None:
                return "."
            if isinstance_(path, str_):
                return "".join((path,))  # an exact str copy: a str subclass cannot lie to the checks below
            if isinstance_(path, bytes_):
                return bytes_.decode(path, "utf-8", "surrogateescape")
            return as_text(fspath(path))

        def resolve(path):  # type: ignore[no-untyped-def]
            """realpath() on captured primitives: follows every symlink, so links cannot smuggle a path out."""
            pending = (path if path.startswith("/") else getcwd() + "/" + path).split("/")
            pending.reverse()
            parts, hops = [], 0
            while pending:
                part = pending.pop()
                if part in ("", "."):
                    continue
                if part == "..":
                    if parts:
                        parts.pop()
                    continue
                candidate = "/" + "/".join([*parts, part])
                try:
                    is_link = (lstat(candidate).st_mode & 0o170000) == 0o120000
                except OSError:
                    is_link = False
                if not is_link:
                    parts.append(part)
                    continue
                hops += 1
                if hops > 40:
                    refuse("a symlink loop")
                target = readlink(candidate)
                if target.startswith("/"):
                    parts = []
                pending.extend(reversed_(target.split("/")))
            return "/" + "/".join(parts)

        def within(path, root):  # type: ignore[no-untyped-def]
            return path == root or path.startswith(root + "/")

        def check_path(event, raw, writing):  # type: ignore[no-untyped-def]
            if isinstance_(raw, int_):
                return  # an already-open descriptor: its path was checked when it was opened
            text = as_text(raw)
            real = resolve(text)
            if within(real, workdir):
                return
            if not writing and (real in readable_files or any_(within(real, root) for root in readable_dirs)):
                return
            refuse(f"{event} of {text!r} (outside the working directory)")

        def is_write(mode, flags):  # type: ignore[no-untyped-def]
            if isinstance_(mode, str_):
                return any_(c in mode for c in "wax+")
            return isinstance_(flags, int_) and (flags & write_flags) != 0

        def check_symlink(target, link):  # type: ignore[no-untyped-def]
            text = as_text(target)
            if text.startswith("/") or ".." in text.split("/"):
                refuse(f"a symlink to {text!r} (only links within the working directory)")
            check_path("os.symlink", link, True)

        def hook(event, args):  # type: ignore[no-untyped-def]
            if event == "open":
                check_path("open", args[0], is_write(args[1], args[2]))
            elif event in path_events:
                positions, writing = path_events[event]
                for position in positions:
                    check_path(event, args[position], writing)
            elif event == "os.symlink":
                check_symlink(args[0], args[1])
            elif event == "import":
                name = "".join((args[0],))
                if name in blocked or name.partition(".")[0] in blocked:
                    refuse(f"importing {name}")
            elif event in refused_events:
                refuse(f"{refused_events[event]} ({event})")
            elif event.startswith(
                ("socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.")
            ):
                refuse(f"network and native access ({event})")

        sys.addaudithook(hook)

    if config["audit_hook"]:
        install_audit_hook(
            config["workdir"],
            tuple(config["readable"]),
            tuple(config["blocked_modules"]),
            config["path_events"],
            config["refused_events"],
            config["violation_fd"],
        )
    del install_audit_hook
    # -I leaves the script's folder off sys.path; put it back so `import solution` works.
    sys.path.insert(0, config["workdir"])
    sys.argv = ["main.py"]
    with open("main.py", encoding="utf-8") as handle:
        source = handle.read()
    namespace = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    del config
    try:
        exec(compile(source, "main.py", "exec"), namespace)
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # hide this bootstrap frame
        sys.exit(1)


# -- kernel layers: probing, rlimits, capabilities, Landlock, seccomp ---------------------------------------

_PR_SET_SECCOMP, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_GET_SECCOMP = 22, 24, 38, 47, 21
_SYS_LANDLOCK_CREATE_RULESET, _SYS_LANDLOCK_ADD_RULE, _SYS_LANDLOCK_RESTRICT_SELF = 444, 445, 446


@dataclass(frozen=True)
class _KernelSupport:
    landlock_abi: int  # 0 = not available
    seccomp_arch: str | None  # a supported architecture with seccomp filters available, else None
    root: bool


@functools.cache
def _libc() -> Any:
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


@functools.cache
def _kernel_support() -> _KernelSupport:
    if not sys.platform.startswith("linux"):
        return _KernelSupport(0, None, False)
    import platform

    libc = _libc()
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, 1)  # LANDLOCK_CREATE_RULESET_VERSION
    seccomp_mode = libc.prctl(_PR_GET_SECCOMP, 0, 0, 0, 0)
    arch = platform.machine()
    return _KernelSupport(
        landlock_abi=max(abi, 0),
        seccomp_arch=arch if seccomp_mode >= 0 and arch in _SECCOMP_ARCHES else None,
        root=os.geteuid() == 0,
    )


def _check_required(limits: Limits, support: _KernelSupport) -> None:
    if limits.kernel_isolation == "require" and not (support.landlock_abi and support.seccomp_arch):
        raise SandboxUnavailable(
            f"sandbox: kernel_isolation='require' but this machine has Landlock ABI {support.landlock_abi} "
            f"and seccomp for {support.seccomp_arch or 'no supported architecture'}; use 'auto' to run with "
            "the process and audit-hook layers only"
        )


def _active_layers(limits: Limits, support: _KernelSupport) -> tuple[str, ...]:
    layers = ["process", "rlimits"]
    if limits.kernel_isolation != "off":
        layers += ["no_capabilities"] if support.root else []
        layers += [f"landlock-v{support.landlock_abi}"] if support.landlock_abi else []
        layers += ["seccomp"] if support.seccomp_arch else []
    if limits.audit_hook:
        layers.append("audit_hook")
    return tuple(layers)


def _make_preexec(
    limits: Limits, support: _KernelSupport | None, ruleset_fd: int | None
) -> Callable[[], None]:
    """What the child does between fork and exec. No imports or locks here: the parent may have threads."""
    libc = _libc() if support is not None else None

    def preexec() -> None:
        _set_rlimits(limits, nproc=support is None or support.seccomp_arch is None)
        if support is None or libc is None:
            return
        if support.root:
            _drop_capabilities(libc)
        _checked(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        if ruleset_fd is not None:
            _checked(libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset_fd, 0), "landlock_restrict_self")
        if support.seccomp_arch is not None:
            _install_seccomp(libc, support.seccomp_arch, os.getpid())

    return preexec


def _set_rlimits(limits: Limits, nproc: bool) -> None:
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if nproc:  # the fallback when seccomp cannot refuse fork; counts the whole uid, so threads fail too
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))


def _drop_capabilities(libc: Any) -> None:
    """Empty the bounding and ambient sets: after exec, uid 0 gets no capabilities (CAP_KILL, CAP_SYS_ADMIN…)."""
    _checked(libc.prctl(_PR_CAP_AMBIENT, 4, 0, 0, 0), "prctl(CAP_AMBIENT_CLEAR_ALL)")
    for capability in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            break  # EINVAL past the kernel's last capability


def _checked(result: int, what: str) -> None:
    if result < 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"sandbox: {what} failed: {os.strerror(errno)}")


# Landlock (https://docs.kernel.org/userspace-api/landlock.html): access rights by ABI version.
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_FILE_RIGHTS = (
    _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | (1 << 14) | (1 << 15)
)  # + TRUNCATE, IOCTL_DEV
_LL_READ_ONLY = _LL_READ_FILE | _LL_READ_DIR


def _landlock_fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1  # ABI 1: EXECUTE … MAKE_SYM
    if abi >= 2:
        rights |= 1 << 13  # REFER
    if abi >= 3:
        rights |= 1 << 14  # TRUNCATE
    if abi >= 5:
        rights |= 1 << 15  # IOCTL_DEV
    return rights


def _landlock_ruleset(abi: int, workdir: str) -> int:
    """A ruleset fd: the stdlib/system libraries read-only, the workdir read-write, no TCP, scoped signals."""
    import ctypes

    fs_rights = _landlock_fs_rights(abi)
    net_rights = 0b11 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, with no port allowed
    scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = ctypes.create_string_buffer(struct.pack("=QQQ", fs_rights, net_rights, scoped)[:size], size)
    ruleset = _libc().syscall(_SYS_LANDLOCK_CREATE_RULESET, attr, ctypes.c_size_t(size), 0)
    _checked(ruleset, "landlock_create_ruleset")
    try:
        for path, rights in _read_only_rules():
            _landlock_allow(ruleset, path, rights & fs_rights)
        _landlock_allow(ruleset, workdir, fs_rights)
    except BaseException:
        os.close(ruleset)
        raise
    return ruleset


def _landlock_allow(ruleset: int, path: str, rights: int) -> None:
    import ctypes

    try:
        path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not os.path.isdir(path):
            rights &= _LL_FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, path_fd), 12)
        _checked(_libc().syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, 1, rule, 0), f"landlock_add_rule({path})")
    finally:
        os.close(path_fd)


@functools.cache
def _read_only_rules() -> tuple[tuple[str, int], ...]:
    """The interpreter, its stdlib and the shared libraries, minus BLOCKED_MODULES and other Python installs."""
    paths = _child_paths()
    roots = [*paths.stdlib_dirs, os.path.dirname(os.path.dirname(paths.executable)) + "/lib"]
    roots += ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"]
    roots = [os.path.realpath(r) for r in roots if os.path.isdir(r)]
    excluded = frozenset(_excluded_paths(paths.stdlib_dirs, roots))
    # Execute rights: the interpreter and its ELF loader only (no other program can be exec'd).
    rules = [
        (p, _LL_EXECUTE | _LL_READ_FILE) for p in (paths.executable, _elf_interpreter(paths.executable)) if p
    ]
    for root in dict.fromkeys(roots):
        if not any(root.startswith(other + "/") for other in roots):  # nested roots are covered already
            rules += _grant_tree(root, excluded)
    rules += [("/etc/ld.so.cache", _LL_READ_FILE), ("/dev/urandom", _LL_READ_FILE)]
    rules += [("/dev/null", _LL_READ_FILE | _LL_WRITE_FILE)]
    return tuple(rules)


def _excluded_paths(stdlib_dirs: tuple[str, ...], roots: list[str]) -> list[str]:
    """BLOCKED_MODULES files of the child's stdlib, plus every other Python tree under the granted roots
    (another install's _ctypes or a site-packages _cffi_backend would load just as well)."""
    blocked = set(BLOCKED_MODULES)
    excluded = [
        os.path.realpath(entry.path)
        for directory in stdlib_dirs
        for entry in os.scandir(directory)
        if entry.name.split(".")[0] in blocked
        or (entry.name in ("site-packages", "dist-packages") and entry.is_dir())
    ]
    for root in roots:
        for candidate in sorted(glob.glob(os.path.join(root, "python[0-9]*"))):
            real = os.path.realpath(candidate)
            if not any(real == d or d.startswith(real + "/") for d in stdlib_dirs):
                excluded.append(real)
    return excluded


def _grant_tree(root: str, excluded: frozenset[str]) -> list[tuple[str, int]]:
    """One rule for `root`, or (when an excluded file lies beneath) one per entry, recursing towards it."""
    if root in excluded:
        return []
    if not any(path.startswith(root + "/") for path in excluded):
        return [(root, _LL_READ_ONLY)]
    # Listing the directory is fine (the rule covers listing below it, never reading the excluded files).
    rules: list[tuple[str, int]] = [(root, _LL_READ_DIR)]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        target = os.path.realpath(entry.path)
        if target.startswith(
            root + "/"
        ):  # a link out of the tree (e.g. /usr/lib/cpp -> /usr/bin) is not granted
            rules += _grant_tree(target, excluded)
    return rules


def _elf_interpreter(executable: str) -> str | None:
    """The PT_INTERP loader (e.g. /lib64/ld-linux-x86-64.so.2) of a 64-bit little-endian ELF, resolved."""
    with open(executable, "rb") as handle:
        header = handle.read(64)
        if header[:6] != b"\x7fELF\x02\x01":
            return None
        phoff, phentsize, phnum = (
            struct.unpack_from("<Q", header, 0x20)[0],
            *struct.unpack_from("<HH", header, 0x36),
        )
        for index in range(phnum):
            handle.seek(phoff + index * phentsize)
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack("<IIQQQQ", handle.read(40))
            if p_type == 3:  # PT_INTERP
                handle.seek(p_offset)
                return os.path.realpath(handle.read(p_filesz).rstrip(b"\0").decode())
    return None


# seccomp: syscall numbers per architecture (x86_64: asm/unistd_64.h; aarch64: asm-generic/unistd.h).
_SECCOMP_ARCHES: dict[str, dict[str, Any]] = {
    "x86_64": {
        "audit_arch": 0xC000003E,
        # socket socketpair fork vfork ptrace process_vm_readv/writev mount umount2 pivot_root chroot unshare
        # setns setrlimit kexec_load kexec_file_load init_module finit_module delete_module reboot swapon
        # swapoff bpf perf_event_open userfaultfd io_uring_* keyctl add_key request_key acct settimeofday
        # clock_settime adjtimex open_by_handle_at name_to_handle_at kcmp fs{open,mount,config,pick}
        # move_mount open_tree mount_setattr quotactl syslog vhangup pidfd_getfd process_madvise iopl ioperm
        # modify_ldt uselib tkill pidfd_send_signal
        "denied": (
            41, 53, 57, 58, 101, 310, 311, 165, 166, 155, 161, 272, 308, 160, 246, 320, 175, 313, 176, 169,
            167, 168, 321, 298, 323, 425, 426, 427, 250, 248, 249, 163, 164, 227, 159, 304, 303, 312, 430, 432,
            431, 433, 429, 428, 442, 179, 103, 153, 438, 440, 172, 173, 154, 134, 200, 424,
        ),
        "clone": 56,
        "clone3": 435,
        "prlimit64": 302,
        "own_pid_only": (62, 234, 129, 297),  # kill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo
    },
    "aarch64": {
        "audit_arch": 0xC00000B7,
        # the same list in the generic table (aarch64 has no fork/vfork/iopl/ioperm/modify_ldt/uselib)
        "denied": (
            198, 199, 117, 270, 271, 40, 39, 41, 51, 97, 268, 164, 104, 294, 105, 273, 106, 142, 224, 225,
            280, 241, 282, 425, 426, 427, 219, 217, 218, 89, 170, 112, 171, 265, 264, 272, 430, 432, 431, 433,
            429, 428, 442, 60, 116, 58, 438, 440, 130, 424,
        ),
        "clone": 220,
        "clone3": 435,
        "prlimit64": 261,
        "own_pid_only": (129, 131, 138, 240),
    },
}  # fmt: skip
_RET_ALLOW, _RET_KILL, _EPERM, _ENOSYS = 0x7FFF0000, 0x80000000, 1, 38
_RET_EPERM, _RET_ENOSYS = 0x00050000 | _EPERM, 0x00050000 | _ENOSYS
_LD_W_ABS, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def _seccomp_program(arch: str, pid: int) -> bytes:
    """A BPF filter: deny the listed syscalls with EPERM, allow the rest (args at offset 16 + 8*i, low word)."""
    table = _SECCOMP_ARCHES[arch]
    program = [
        _bpf(_LD_W_ABS, 4),
        _bpf(_JEQ, table["audit_arch"], 1, 0),
        _bpf(_RET, _RET_KILL),
        _bpf(_LD_W_ABS, 0),
    ]
    if arch == "x86_64":  # x32 syscalls share the arch value; refuse them all
        program += [_bpf(_JGE, 0x40000000, 0, 1), _bpf(_RET, _RET_EPERM)]
    for number in table["denied"]:
        program += [_bpf(_JEQ, number, 0, 1), _bpf(_RET, _RET_EPERM)]
    program += [_bpf(_JEQ, table["clone3"], 0, 1), _bpf(_RET, _RET_ENOSYS)]  # glibc falls back to clone()
    program += [  # clone(): threads only (CLONE_THREAD), never a new process
        _bpf(_JEQ, table["clone"], 0, 4),
        _bpf(_LD_W_ABS, 16),
        _bpf(_JSET, 0x00010000, 0, 1),
        _bpf(_RET, _RET_ALLOW),
        _bpf(_RET, _RET_EPERM),
    ]
    program += [  # prlimit64(): reading limits only (new_limit pointer NULL)
        _bpf(_JEQ, table["prlimit64"], 0, 6),
        _bpf(_LD_W_ABS, 32),
        _bpf(_JEQ, 0, 0, 3),
        _bpf(_LD_W_ABS, 36),
        _bpf(_JEQ, 0, 0, 1),
        _bpf(_RET, _RET_ALLOW),
        _bpf(_RET, _RET_EPERM),
    ]
    for number in table["own_pid_only"]:  # signals: to this process only
        program += [
            _bpf(_JEQ, number, 0, 4),
            _bpf(_LD_W_ABS, 16),
            _bpf(_JEQ, pid, 1, 0),
            _bpf(_RET, _RET_EPERM),
            _bpf(_RET, _RET_ALLOW),
        ]
    return b"".join([*program, _bpf(_RET, _RET_ALLOW)])


def _install_seccomp(libc: Any, arch: str, pid: int) -> None:
    import ctypes

    code = _seccomp_program(arch, pid)
    filters = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("=HxxxxxxQ", len(code) // 8, ctypes.addressof(filters))
    fprog_buffer = ctypes.create_string_buffer(fprog, len(fprog))
    _checked(libc.prctl(_PR_SET_SECCOMP, 2, fprog_buffer, 0, 0), "prctl(SET_SECCOMP)")
