"""The sandboxed process's own code. Standard library only: the sandbox runs this file's source as
`python -I -S -B -u -c <source> stage1 <fd>` (no site-packages, no midtrain), and again as `stage2`.

Stage 1 (trusted; no user code has run, no thread exists, so unlike `preexec_fn` in a threaded trainer it may
import, allocate and use ctypes freely):
  parent-death signal → config from a file descriptor → namespaces and a size-capped tmpfs workdir where the
  kernel allows them (local backend; bubblewrap made its own) → input files written → fork:
  - the warden (this process) waits for the worker and kills it once the wall-clock limit (plus a grace the
    parent normally never needs) has passed, so a run ends even when the process that started it is gone or
    hung; it then exits as the worker did;
  - the worker dies with the warden, then takes its limits (rlimits, capabilities, no_new_privs, Landlock,
    seccomp) and execs a fresh interpreter for stage 2, so no ctypes object survives into the user's process.
Stage 2 (the user's process): the audit hook, then main.py as __main__.

The parent reads two channels besides stdout/stderr: a report (JSON lines from stage 1: the layers applied, a
setup error, the warden's kill), closed before user code runs, and the violation channel, on which only the
audit hook's messages count: each carries a keyed BLAKE2 tag the parent checks, with a key that lives only in
the hook's closure (see `_install_audit_hook` for how user code is kept away from it).
"""

from __future__ import annotations

import os
import sys

SETUP_FAILED = 121  # exit code of a run whose isolation could not be set up (no user code ran)
EXEC_FD = 63  # the interpreter, opened O_PATH|O_CLOEXEC; seccomp allows exactly execveat(EXEC_FD, "")
WARDEN_GRACE_S = 1.0
LEVELS = ("none", "hook_only", "kernel")
SIGKILL = 9


# -- isolation levels (shared with the parent) ----------------------------------------------------------------
def guarantees(layers: list[str]) -> dict[str, bool]:
    """Which threats the kernel contains on its own, whatever the code does (native code included)."""
    landlock = [int(layer.split("-v")[1]) for layer in layers if layer.startswith("landlock-v")]
    return {
        "files": bool(landlock) or "bwrap" in layers,
        "network": "seccomp" in layers or "netns" in layers,
        "processes": "seccomp" in layers or "nproc" in layers,
        "signals": "seccomp" in layers or "pidns" in layers or any(abi >= 6 for abi in landlock),
    }


def isolation_level(layers: list[str]) -> str:
    """`kernel`: every guarantee kernel-enforced; `hook_only`: the audit hook is the only complete layer."""
    if all(guarantees(layers).values()):
        return "kernel"
    return "hook_only" if "audit_hook" in layers else "none"


# -- stage 1 --------------------------------------------------------------------------------------------------
def _stage1(config_fd: int) -> None:
    import ctypes
    import marshal  # not json: it would import re and enum, ~20 ms per run at load

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the process that started us
    with os.fdopen(config_fd, "rb") as handle:
        config = marshal.loads(handle.read())
    report_fd = config["report_fd"]
    if config["parent_pid"] is not None and os.getppid() != config["parent_pid"]:
        os._exit(SETUP_FAILED)  # the parent died before the death signal was armed
    try:
        layers = [*config["base_layers"], "pdeathsig", "warden"]
        if config["namespaces"]:
            layers += _enter_namespaces(libc, config)
        _write_inputs(config["workdir"], config["files"])
    except Exception as exc:
        _report(report_fd, "error", f"{type(exc).__name__}: {exc}")
        os._exit(SETUP_FAILED)
    warden = os.getpid()
    worker = os.fork()
    if worker == 0:
        _worker(libc, config, layers, warden)
    _warden(worker, config)


def _report(fd: int, key: str, value: str) -> None:
    """One `key<TAB>value` line on the report channel (parsed by the parent's _parse_report)."""
    try:  # noqa: SIM105  (no contextlib: keep this file's imports to what it uses)
        os.write(fd, (key + "\t" + value.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except OSError:
        pass


def _enter_namespaces(libc, config: dict) -> list[str]:
    """New mount/network/PID/IPC namespaces (with a user namespace where we are not root), then a tmpfs of
    `disk_bytes` over the workdir; each one only where the kernel allows it (the parent is told which)."""
    newns, newuser, newpid, newnet, newipc = 0x20000, 0x10000000, 0x20000000, 0x40000000, 0x08000000
    root = os.geteuid() == 0
    attempts = [newns | newnet | newpid | newipc] if root else []
    attempts.append(newuser | newns | newnet | newpid | newipc)
    for flags in attempts:
        if libc.unshare(flags) == 0:
            break
    else:
        return []
    layers = ["mountns", "netns", "pidns", "ipcns"]
    if flags & newuser:
        layers.insert(0, "userns")
        uid, gid = os.getuid(), os.getgid()
        for name, text in (
            ("setgroups", "deny"),
            ("uid_map", f"{uid} {uid} 1"),
            ("gid_map", f"{gid} {gid} 1"),
        ):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
    # Without the tmpfs (a container may refuse mounts even here) the parent measures the folder instead; never
    # mount before mounts are private, or the tmpfs would appear on the host.
    ms_rec, ms_private, ms_nosuid, ms_nodev = 0x4000, 0x40000, 0x2, 0x4
    if libc.mount(None, b"/", None, ms_rec | ms_private, None) != 0:
        return layers
    workdir = config["workdir"].encode()
    options = f"size={config['disk_bytes']},mode=0700".encode()
    if libc.mount(b"tmpfs", workdir, b"tmpfs", ms_nosuid | ms_nodev, options) != 0:
        return layers
    os.chdir(config["workdir"])  # our cwd was the directory underneath the new mount
    return [*layers, "tmpfs"]


def _write_inputs(workdir: str, files: dict) -> None:
    for name, text in files.items():
        with open(os.path.join(workdir, name), "w", encoding="utf-8") as handle:
            handle.write(text)


def _warden(worker: int, config: dict) -> None:
    """Wait for the worker; past the wall-clock limit kill it. Then exit as it did (code or signal)."""
    import _signal
    import time

    os.close(config["violation_fd"])  # the violation channel's EOF must mean the worker is gone
    deadline = time.monotonic() + config["wall_seconds"] + WARDEN_GRACE_S
    status = _wait_until(worker, deadline)
    if status is None:
        os.kill(worker, SIGKILL)
        _report(config["report_fd"], "warden", "wall_time")
        status = os.waitpid(worker, 0)[1]
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        if number not in (SIGKILL, 19):  # SIGSTOP
            _signal.signal(number, _signal.SIG_DFL)
        os.kill(os.getpid(), number)
        os._exit(128 + number)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _wait_until(pid: int, deadline: float) -> int | None:
    import select
    import time

    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):  # Linux < 5.3: poll
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            time.sleep(0.01)
        return None
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if poller.poll(remaining * 1000):
            return os.waitpid(pid, 0)[1]


def _worker(libc, config: dict, layers: list[str], warden: int) -> None:
    report_fd = config["report_fd"]
    try:
        os.set_inheritable(report_fd, False)  # closed by the exec: user code never sees the report channel
        libc.prctl(1, SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the warden
        if os.getppid() not in (warden, 0):  # 0: the warden is outside our new PID namespace
            os._exit(SETUP_FAILED)
        layers += _lock_down(libc, config, layers)
        if config["hook"] is not None:
            layers.append("audit_hook")
        level = isolation_level(layers)
        _report(report_fd, "layers", ",".join(layers))
        _report(report_fd, "level", level)
        if LEVELS.index(level) < LEVELS.index(config["required"]):
            _report(report_fd, "unavailable", f"isolation level {level!r} < required {config['required']!r}")
            os._exit(SETUP_FAILED)
        argv = [config["executable"], "-I", "-S", "-B", "-u", "-c", config["program"], "stage2"]
        argv.append(str(_stage2_config_fd(config)))
        os.execve(EXEC_FD, argv, config["env"])
    except BaseException as exc:
        _report(report_fd, "error", f"{type(exc).__name__}: {exc}")
    os._exit(SETUP_FAILED)


def _stage2_config_fd(config: dict) -> int:
    """A pipe holding stage 2's config (the hook's key included): read once, then closed, never in argv."""
    import marshal

    read_end, write_end = os.pipe()
    payload = marshal.dumps({"hook": config["hook"], "workdir": config["workdir"]})
    if len(payload) > 60_000:  # a pipe holds 64 KiB; nobody reads before the exec
        raise ValueError("sandbox: stage 2 config too large")
    os.write(write_end, payload)
    os.close(write_end)
    os.set_inheritable(read_end, True)
    return read_end


def _lock_down(libc, config: dict, applied: list[str]) -> list[str]:
    """rlimits, capabilities, no_new_privs, Landlock, seccomp: in that order (each narrows what follows)."""
    import resource

    layers = ["rlimits"]
    limits = config["limits"]
    for name, value in (("RLIMIT_AS", limits["memory"]), ("RLIMIT_FSIZE", limits["file_size"])):
        resource.setrlimit(getattr(resource, name), (value, value))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu"], limits["cpu"] + 1))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if config["seccomp"] is None and os.geteuid() != 0:  # RLIMIT_NPROC does nothing for root
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        layers.append("nproc")
    if config["drop_capabilities"] or "userns" in applied:
        _drop_capabilities(libc)
        layers.append("no_capabilities")
    _checked(libc, libc.prctl(38, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    layers.append("no_new_privs")
    exe = os.open(config["executable"], os.O_PATH | os.O_CLOEXEC)
    os.dup2(exe, EXEC_FD, inheritable=False)
    os.close(exe)
    if config["landlock"] is not None:
        _landlock(libc, config["landlock"], config["workdir"])
        layers.append(f"landlock-v{config['landlock']['abi']}")
    if config["seccomp"] is not None:
        _seccomp(libc, config["seccomp"])
        layers.append("seccomp")
    return layers


def _checked(libc, result: int, what: str) -> None:
    if result < 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _drop_capabilities(libc) -> None:
    """Empty the bounding and ambient sets: after exec, uid 0 gets no capabilities (CAP_KILL, CAP_SYS_ADMIN…)."""
    _checked(libc, libc.prctl(47, 4, 0, 0, 0), "prctl(CAP_AMBIENT_CLEAR_ALL)")
    for capability in range(64):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP; EINVAL past the last capability
            break


def _landlock(libc, spec: dict, workdir: str) -> None:
    """A ruleset built here, after any tmpfs mount, so the workdir rule names what the code will see."""
    import ctypes
    import struct

    abi = spec["abi"]
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    attr = struct.pack("=QQQ", spec["fs_rights"], spec["net_rights"], spec["scoped"])[:size]
    buffer = ctypes.create_string_buffer(attr, size)
    ruleset = libc.syscall(444, buffer, ctypes.c_size_t(size), 0)  # landlock_create_ruleset
    _checked(libc, ruleset, "landlock_create_ruleset")
    try:
        for path, rights in [*spec["rules"], [workdir, spec["fs_rights"]]]:
            try:
                path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except FileNotFoundError:  # a library folder this machine (or this bubblewrap view) lacks
                continue
            try:
                rule = ctypes.create_string_buffer(
                    struct.pack("=Qi", rights & spec["fs_rights"], path_fd), 12
                )
                _checked(libc, libc.syscall(445, ruleset, 1, rule, 0), f"landlock_add_rule({path})")
            finally:
                os.close(path_fd)
        _checked(libc, libc.syscall(446, ruleset, 0), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _seccomp(libc, spec: dict) -> None:
    """Install the parent's BPF program, with its own-pid placeholder replaced by this process's pid."""
    import ctypes
    import struct

    code = bytearray.fromhex(spec["bpf"])
    for offset in range(0, len(code), 8):
        if struct.unpack_from("=I", code, offset + 4)[0] == spec["pid_placeholder"]:
            struct.pack_into("=I", code, offset + 4, os.getpid())
    filters = ctypes.create_string_buffer(bytes(code), len(code))
    program = ctypes.create_string_buffer(
        struct.pack("=HxxxxxxQ", len(code) // 8, ctypes.addressof(filters)), 16
    )
    _checked(libc, libc.prctl(22, 2, program, 0, 0), "prctl(SET_SECCOMP)")


# -- stage 2 --------------------------------------------------------------------------------------------------
def _stage2(config_fd: int) -> None:
    import marshal

    with open(config_fd, "rb", closefd=True) as handle:
        config = marshal.loads(handle.read())
    workdir, hook = config["workdir"], config["hook"]
    del config
    if hook is not None:
        _sanitize_modules()
        _install_audit_hook(workdir, hook)
    del hook
    _run_main(workdir)


# Functions no audit event covers that reach outside the process: deleted before user code runs (the hook
# refuses re-importing these modules). A fresh module built through `_imp` would bring them back: the hook is
# not a boundary on its own; the kernel level is.
_UNAUDITED = {
    "posix": (
        "pidfd_open", "setpriority", "sched_setaffinity", "sched_setscheduler", "sched_setparam", "setpgid",
        "setpgrp", "setsid", "chroot", "setuid", "seteuid", "setreuid", "setresuid", "setgid", "setegid",
        "setregid", "setresgid", "setgroups", "initgroups",
    ),
    "_signal": ("pidfd_send_signal",),
}  # fmt: skip
_SANITIZED_MODULES = ("posix", "_signal")


def _sanitize_modules() -> None:
    """Delete _UNAUDITED from the C modules and from their wrappers where already imported (os is, signal is
    not: importing it later copies what is left)."""
    import _signal  # noqa: F401  (builtin: makes sure sys.modules has it)

    for base, wrapper in (("posix", "os"), ("_signal", "signal")):
        for name in _UNAUDITED[base]:
            for module in (sys.modules[base], sys.modules.get(wrapper)):
                if module is not None and name in module.__dict__:
                    delattr(module, name)


def _run_main(workdir: str) -> None:
    # -I leaves the script's folder off sys.path; put it back so `import solution` works.
    sys.path.insert(0, workdir)
    sys.argv = ["main.py"]
    module = type(sys)("__main__")
    module.__file__ = "main.py"
    sys.modules["__main__"] = module
    with open("main.py", encoding="utf-8") as handle:
        source = handle.read()
    try:
        exec(compile(source, "main.py", "exec"), module.__dict__)
    except SystemExit:
        raise
    except BaseException as exc:
        import traceback

        assert exc.__traceback__ is not None, "a caught exception has a traceback"
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)  # hide this bootstrap frame
        sys.exit(1)


def _install_audit_hook(workdir: str, config: dict) -> None:
    """The audit hook. Everything it uses is captured here, so user code cannot monkeypatch it.

    The hook never runs user code (no `__fspath__`, no `isinstance` on user classes), so no user frame has a
    hook frame below it; the only way to reach the hook's frames, and so the channel key in its closure, is a
    traceback through a refusal, and the hook guards that (`tb_frame`). gc and thread-frame introspection are
    refused outright. Once installed, no module holds the hook.
    """
    import _thread
    import posix
    from _blake2 import blake2b
    from _stat import S_ISDIR

    lstat, posix_stat, readlink, getcwd = posix.lstat, posix.stat, posix.readlink, posix.getcwd
    write, get_ident = posix.write, _thread.get_ident
    s_isdir, traceback_type = S_ISDIR, _traceback_type()
    type_, issubclass_, str_, bytes_, int_ = type, issubclass, str, bytes, int
    any_, reversed_, len_, str_join, PermissionError_ = any, reversed, len, "".join, PermissionError
    write_flags = posix.O_WRONLY | posix.O_RDWR | posix.O_CREAT | posix.O_TRUNC | posix.O_APPEND
    readable_dirs = tuple(config["readable"])
    readable_files = ("/dev/null", "/dev/urandom")
    blocked = frozenset(config["blocked_modules"])
    path_events = {
        name: (tuple(paths), tuple(fds), writes)
        for name, (paths, fds, writes) in config["path_events"].items()
    }
    refused_events, fcntl_refused = config["refused_events"], config["fcntl_refused"]
    violation_fd, key = config["violation_fd"], bytes.fromhex(config["key"])
    sanitized = frozenset(_SANITIZED_MODULES)
    sequence, inside = [0], set()

    def report(message):
        sequence[0] += 1
        body = (str_(sequence[0]) + " " + message).encode("utf-8", "replace")
        tag = blake2b(body, digest_size=16, key=key).hexdigest().encode()
        try:  # noqa: SIM105  (no contextlib in here: the hook must not import while auditing)
            write(violation_fd, tag + b" " + body.replace(b"\n", b" ") + b"\n")
        except OSError:  # the code closed the channel: the refusal itself still stands
            pass

    def refuse(what):
        message = "sandbox: " + what + " is not allowed"
        report(message)
        raise PermissionError_(message)

    def as_text(path):
        """A str for str/bytes (subclasses copied exactly); None for anything else (never calls its code)."""
        kind = type_(path)
        if issubclass_(kind, str_):
            return str_join((path,))
        if issubclass_(kind, bytes_):
            return bytes_.decode(path, "utf-8", "surrogateescape")
        return None

    def resolve(path):
        """realpath() on captured primitives: follows every symlink, so links cannot smuggle a path out."""
        pending = (path if path.startswith("/") else getcwd() + "/" + path).split("/")
        pending.reverse()
        parts: list[str] = []
        hops = 0
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

    def within(path, root):
        return path == root or path.startswith(root + "/")

    def climbs(text):
        """Does a relative path go above its starting folder? With a directory descriptor as the start (dir_fd),
        that is the only way out: links inside the workdir only ever point down (see check_symlink)."""
        depth = 0
        for part in text.split("/"):
            depth += -1 if part == ".." else 0 if part in ("", ".") else 1
            if depth < 0:
                return True
        return False

    def is_directory(path):
        try:
            return s_isdir(posix_stat(path).st_mode)
        except OSError:
            return False

    def check_path(event, raw, writing, relative_to_fd):
        if issubclass_(type_(raw), int_):
            return  # an already-open descriptor: its path was checked when it was opened
        text = as_text(raw)
        if text is None:
            # A path object, passed by a Python-level event (os.walk, shutil.rmtree, …): every os call those make
            # is audited with the str it uses (os.* events carry the converted path). Its __fspath__ would be
            # user code running inside the hook, so it is not called here.
            return
        real = resolve(text)
        if not within(real, workdir):
            if event == "open" and is_directory(real):
                refuse(f"opening the directory {text!r} (directory descriptors only inside the workdir)")
            readable = real in readable_files or any_(within(real, root) for root in readable_dirs)
            if writing or not readable:
                refuse(f"{event} of {text!r} (outside the working directory)")
        if relative_to_fd and not text.startswith("/") and climbs(text):
            refuse(f"{event} of {text!r} (a relative path that climbs out of its folder)")

    def is_write(mode, flags):
        if issubclass_(type_(mode), str_):
            return any_(c in mode for c in "wax+")
        return issubclass_(type_(flags), int_) and (flags & write_flags) != 0

    def check_symlink(target, link, dir_fd):
        text = as_text(target)
        parts = [p for p in (text or "").split("/") if p not in ("", ".")]
        if text is None or text.startswith("/") or ".." in parts or not parts:
            refuse(f"a symlink to {text!r} (only links that point down into the working directory)")
        check_path("os.symlink", link, True, dir_fd is not None)

    def check_import(name):
        name = str_join((name,))
        top = name.partition(".")[0]
        if name in blocked or top in blocked:
            refuse(f"importing {name}")
        if top in sanitized:  # re-importing would bring back what _sanitize_modules removed
            refuse(f"re-importing {name}")

    def own_frame(tb):
        return tb.tb_frame.f_code in own_codes

    def guard_traceback(tb):
        """Reading a refusal's traceback: cut it before the hook's own frames; refuse reading those frames."""
        ident = get_ident()
        if ident in inside:
            return  # our own reads below
        inside.add(ident)
        try:
            if own_frame(tb):
                raise PermissionError_("sandbox: reading the sandbox's own frames is not allowed")
            while tb.tb_next is not None:
                if own_frame(tb.tb_next):
                    tb.tb_next = None
                    break
                tb = tb.tb_next
        finally:
            inside.discard(ident)

    def hook(event, args):
        if event == "open":
            check_path("open", args[0], is_write(args[1], args[2]), True)
        elif event in path_events:
            positions, fd_positions, writing = path_events[event]
            relative_to_fd = any_(len_(args) > p and args[p] is not None for p in fd_positions)
            for position in positions:
                check_path(event, args[position], writing, relative_to_fd)
        elif event == "object.__getattr__":
            if args[1] == "tb_frame" and type_(args[0]) is traceback_type:
                guard_traceback(args[0])
        elif event == "os.symlink":
            check_symlink(args[0], args[1], args[2])
        elif event == "import":
            check_import(args[0])
        elif event in refused_events:
            refuse(f"{refused_events[event]} ({event})")
        elif event == "fcntl.fcntl" or event == "fcntl.ioctl":
            if args[1] in fcntl_refused[event]:
                refuse(f"sending signals to other processes ({event} {args[1]:#x})")
        elif event == "sqlite3.connect":
            text = as_text(args[0])
            if text is not None and text[:5].lower() == "file:":
                refuse(f"sqlite URI filename {text!r}")
            check_path(event, args[0], True, False)
        elif event.startswith(
            ("socket.", "ctypes.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.")
        ):
            refuse(f"network and native access ({event})")

    own_codes = frozenset(
        f.__code__
        for f in (report, refuse, as_text, resolve, within, climbs, is_directory, check_path, is_write,
                  check_symlink, check_import, own_frame, guard_traceback, hook)
    )  # fmt: skip
    del config
    sys.addaudithook(hook)


def _traceback_type() -> type:
    try:
        raise ValueError
    except ValueError as exc:
        return type(exc.__traceback__)


def _main() -> None:
    stage, fd = sys.argv[1], int(sys.argv[2])
    if stage == "stage1":
        _stage1(fd)
    else:
        _stage2(fd)
