"""What the kernel offers the code sandbox, and the rules the sandboxed child applies (built here, in the parent).

- Landlock (https://docs.kernel.org/userspace-api/landlock.html): the interpreter, its stdlib and the system
  libraries read-only, minus modules that poke memory or spawn processes and every other Python install; the
  child adds its working directory and restricts itself.
- seccomp: an allow-list built by syscall *name* with libseccomp (PyPI `pyseccomp`), exported as BPF; whatever
  is not listed fails with EPERM. Without libseccomp there is no seccomp layer (the isolation level says so).
"""

from __future__ import annotations

import errno
import functools
import glob
import json
import os
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import Any

from pipelines.sandbox.child import EXEC_FD

# Refused by name in the audit hook and, under Landlock, unreadable on disk: they can poke memory (ctypes,
# _testcapi), spawn processes (_posixsubprocess) or start interpreters that the hook does not cover.
BLOCKED_MODULES = (
    "ctypes", "_ctypes", "_ctypes_test", "_posixsubprocess", "_testcapi", "_testinternalcapi", "_testbuffer",
    "_testclinic", "_testimportmultiple", "_testmultiphase", "_testsinglephase", "_xxsubinterpreters",
    "_xxinterpchannels", "_xxinterpqueues", "_interpreters", "_interpchannels", "_interpqueues", "_xxtestfuzz",
    "_cffi_backend",
)  # fmt: skip

# The own-pid placeholder in the BPF program; the child writes its pid over it before installing the filter.
PID_PLACEHOLDER = 0x5A5DBEEF


@dataclass(frozen=True)
class KernelSupport:
    landlock_abi: int  # 0 = not available
    seccomp_bpf: bytes | None  # the allow-list program, or None
    seccomp_missing: str  # why there is no seccomp program ("" when there is one)
    root: bool


@functools.cache
def kernel_support() -> KernelSupport:
    if not sys.platform.startswith("linux"):
        return KernelSupport(0, None, f"seccomp is Linux-only ({sys.platform})", False)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
    program, missing = None, ""
    if libc.prctl(21, 0, 0, 0, 0) < 0:  # PR_GET_SECCOMP
        missing = "the kernel has no seccomp"
    else:
        program, missing = seccomp_program()
    return KernelSupport(max(abi, 0), program, missing, os.geteuid() == 0)


# -- the child's interpreter and what it may read --------------------------------------------------------------
@dataclass(frozen=True)
class ChildPaths:
    executable: str  # the base interpreter (a venv's python would add the venv to the picture for nothing)
    stdlib_dirs: tuple[str, ...]  # the child's own sys.path under -I -S, resolved


@functools.cache
def child_paths() -> ChildPaths:
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
    return ChildPaths(executable=executable, stdlib_dirs=tuple(dict.fromkeys(dirs)))


_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_LL_FILE_RIGHTS = (
    _LL_EXECUTE | _LL_WRITE_FILE | _LL_READ_FILE | (1 << 14) | (1 << 15)
)  # + TRUNCATE, IOCTL_DEV
_LL_READ_ONLY = _LL_READ_FILE | _LL_READ_DIR


@functools.cache
def landlock_spec(abi: int) -> dict[str, Any]:
    """What the child needs to build its ruleset: handled rights by ABI version and the read-only rules."""
    fs_rights = (1 << 13) - 1  # ABI 1: EXECUTE … MAKE_SYM
    fs_rights |= (1 << 13) if abi >= 2 else 0  # REFER
    fs_rights |= (1 << 14) if abi >= 3 else 0  # TRUNCATE
    fs_rights |= (1 << 15) if abi >= 5 else 0  # IOCTL_DEV
    return {
        "abi": abi,
        "fs_rights": fs_rights,
        "net_rights": 0b11 if abi >= 4 else 0,  # BIND_TCP | CONNECT_TCP, with no port allowed
        "scoped": 0b11 if abi >= 6 else 0,  # ABSTRACT_UNIX_SOCKET | SIGNAL: nothing outside the sandbox
        # Rights a file cannot carry are masked here, once, so the child need not stat every path.
        "rules": [
            [path, rights if os.path.isdir(path) else rights & _LL_FILE_RIGHTS]
            for path, rights in read_only_rules()
        ],
    }


def read_only_roots() -> list[str]:
    """Folders the child reads: its stdlib, its install's lib (libpython), the system library folders."""
    paths = child_paths()
    roots = [*paths.stdlib_dirs, os.path.dirname(os.path.dirname(paths.executable)) + "/lib"]
    roots += ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib"]
    roots = [os.path.realpath(r) for r in roots if os.path.isdir(r)]
    unique = dict.fromkeys(roots)
    return [r for r in unique if not any(r.startswith(other + "/") for other in unique)]


@functools.cache
def read_only_rules() -> tuple[tuple[str, int], ...]:
    """Landlock rules: the roots minus excluded_paths(); execute rights for the interpreter and its loader."""
    paths = child_paths()
    excluded = frozenset(excluded_paths())
    rules = [
        (p, _LL_EXECUTE | _LL_READ_FILE) for p in (paths.executable, elf_interpreter(paths.executable)) if p
    ]
    for root in read_only_roots():
        rules += _grant_tree(root, excluded)
    rules += [("/etc/ld.so.cache", _LL_READ_FILE), ("/dev/urandom", _LL_READ_FILE)]
    rules += [("/dev/null", _LL_READ_FILE | _LL_WRITE_FILE)]
    return tuple(rules)


@functools.cache
def excluded_paths() -> tuple[str, ...]:
    """BLOCKED_MODULES files of the child's stdlib, plus every other Python tree under the granted roots
    (another install's _ctypes or a site-packages _cffi_backend would load just as well)."""
    stdlib_dirs = child_paths().stdlib_dirs
    blocked = set(BLOCKED_MODULES)
    excluded = [
        os.path.realpath(entry.path)
        for directory in stdlib_dirs
        for entry in os.scandir(directory)
        if entry.name.split(".")[0] in blocked
        or (entry.name in ("site-packages", "dist-packages") and entry.is_dir())
    ]
    for root in read_only_roots():
        for candidate in sorted(glob.glob(os.path.join(root, "python[0-9]*"))):
            real = os.path.realpath(candidate)
            if not any(real == d or d.startswith(real + "/") for d in stdlib_dirs):
                excluded.append(real)
    return tuple(dict.fromkeys(excluded))


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


def elf_interpreter(executable: str) -> str | None:
    """The PT_INTERP loader (e.g. /lib64/ld-linux-x86-64.so.2) of a 64-bit little-endian ELF, resolved."""
    with open(executable, "rb") as handle:
        header = handle.read(64)
        if header[:6] != b"\x7fELF\x02\x01":
            return None
        phoff = struct.unpack_from("<Q", header, 0x20)[0]
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        for index in range(phnum):
            handle.seek(phoff + index * phentsize)
            p_type, _flags, p_offset, _vaddr, _paddr, p_filesz = struct.unpack("<IIQQQQ", handle.read(40))
            if p_type == 3:  # PT_INTERP
                handle.seek(p_offset)
                return os.path.realpath(handle.read(p_filesz).rstrip(b"\0").decode())
    return None


# -- seccomp ---------------------------------------------------------------------------------------------------
# What the interpreter and the stdlib need to run a script that computes, reads and writes its own files, uses
# threads and sleeps. Everything else (socket, fork, ptrace, mount, unshare, bpf, keyctl, io_uring, setuid,
# chroot, memfd_create, SysV IPC, pidfd_*, personality, …) fails with EPERM.
_ALLOWED = (
    "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
    "lseek", "close", "close_range", "open", "openat", "openat2", "creat", "stat", "fstat", "lstat",
    "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2", "readlink", "readlinkat",
    "getdents", "getdents64", "getcwd", "chdir", "fchdir", "mkdir", "mkdirat", "rmdir", "unlink", "unlinkat",
    "rename", "renameat", "renameat2", "link", "linkat", "symlink", "symlinkat", "chmod", "fchmod", "fchmodat",
    "truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "utime", "utimes", "utimensat", "futimesat",
    "umask", "dup", "dup2", "dup3", "pipe", "pipe2", "flock", "select", "pselect6", "poll", "ppoll",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd2",
    "sendfile", "copy_file_range", "splice", "tee", "fadvise64", "getxattr", "lgetxattr", "fgetxattr",
    "listxattr", "llistxattr", "flistxattr", "mmap", "munmap", "mprotect", "mremap", "madvise", "msync",
    "mincore", "brk", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait",
    "rt_sigsuspend", "sigaltstack", "nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres",
    "gettimeofday", "time", "getitimer", "setitimer", "alarm", "pause", "times", "getrusage", "sysinfo",
    "getrlimit", "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getresuid",
    "getresgid", "getgroups", "getpgrp", "getpgid", "getsid", "getpriority", "sched_yield", "sched_getaffinity",
    "sched_getparam", "sched_getscheduler", "sched_get_priority_max", "sched_get_priority_min", "getcpu",
    "uname", "arch_prctl", "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "futex",
    "futex_waitv", "membarrier", "exit", "exit_group", "wait4", "waitid", "getrandom", "restart_syscall",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
)  # fmt: skip
# Commands allowed with an argument check (everything else refused): fcntl without F_SETOWN/F_SETOWN_EX/F_SETSIG,
# whose O_ASYNC signals reach other processes (Landlock only scopes those from ABI 6); ioctl for tty queries,
# FIONREAD/FIONBIO/FIOCLEX only (no FIOSETOWN/SIOCSPGRP/FIOASYNC/TIOCSTI); prctl for thread names.
_FCNTL_ALLOWED = (0, 1, 2, 3, 4, 5, 6, 7, 9, 11, 36, 37, 38, 1025, 1030, 1031, 1032, 1033, 1034)
_IOCTL_ALLOWED = (
    0x5401,
    0x5413,
    0x541B,
    0x5421,
    0x5450,
    0x5451,
)  # TCGETS TIOCGWINSZ FIONREAD FIONBIO FIONCLEX FIOCLEX
_PRCTL_ALLOWED = (15, 16)  # PR_SET_NAME, PR_GET_NAME
_CLONE_THREAD, _AT_EMPTY_PATH = 0x00010000, 0x1000


def seccomp_program() -> tuple[bytes | None, str]:
    """(BPF program, "") or (None, why there is none). Unknown names on this architecture are skipped."""
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, RuntimeError) as exc:  # RuntimeError: libseccomp.so.2 not found
        return None, f"libseccomp's Python binding is unavailable ({exc}); `pip install pyseccomp`"
    allow, arg = seccomp.ALLOW, seccomp.Arg
    rules: list[tuple[int, str, tuple[Any, ...]]] = [(allow, name, ()) for name in _ALLOWED]
    rules += [(allow, "fcntl", (arg(1, seccomp.EQ, cmd),)) for cmd in _FCNTL_ALLOWED]
    rules += [(allow, "ioctl", (arg(1, seccomp.EQ, request),)) for request in _IOCTL_ALLOWED]
    rules += [(allow, "prctl", (arg(0, seccomp.EQ, option),)) for option in _PRCTL_ALLOWED]
    rules += [
        (
            allow,
            "clone",
            (arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, _CLONE_THREAD),),
        ),  # threads, never processes
        (
            seccomp.ERRNO(errno.ENOSYS),
            "clone3",
            (),
        ),  # its flags live in memory seccomp cannot read; glibc falls back
        (allow, "prlimit64", (arg(2, seccomp.EQ, 0),)),  # reading limits only
        (
            allow,
            "execveat",
            (arg(0, seccomp.EQ, EXEC_FD), arg(4, seccomp.EQ, _AT_EMPTY_PATH)),
        ),  # stage 2 only
    ]
    rules += [
        (allow, name, (arg(0, seccomp.EQ, PID_PLACEHOLDER),))  # signals to this process only
        for name in ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")
    ]
    try:
        program = seccomp.SyscallFilter(defaction=seccomp.ERRNO(errno.EPERM))
        for action, name, conditions in rules:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) != -1:  # -1: no such syscall here
                program.add_rule(action, name, *conditions)
        with tempfile.TemporaryFile() as out:
            program.export_bpf(out)
            out.seek(0)
            return out.read(), ""
    except OSError as exc:
        return None, f"libseccomp could not build the filter: {exc}"
