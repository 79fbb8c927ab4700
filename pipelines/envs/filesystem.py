"""A virtual filesystem confined to its own root, and its task sampler.

The tree lives in memory (a dict of file contents and a set of directories), never on disk: a model-written
path is only ever a key into those, so `..`, absolute paths or odd names cannot reach the host whatever they
contain. Paths are resolved against the virtual current directory, `..` may not climb above the workspace
root, and names are limited to a plain character set, so there is no way to even spell a symlink or device.
Errors read like a shell's ("No such file or directory", "Is a directory", "Directory not empty").
"""

from __future__ import annotations

import fnmatch
import json
import re
from typing import Any

from pipelines.envs.base import ToolEnv, ToolError
from pipelines.errors import BadInput

DOMAIN = "filesystem"
MAX_PATH_CHARS = 1024
MAX_NAME_CHARS = 255
MAX_DEPTH = 32
MAX_FILES = 1000
MAX_FILE_CHARS = 100_000
MAX_TOTAL_CHARS = 2_000_000
MAX_MATCHES = 200
_NAME_RE = re.compile(r"^[\w.\- ]+$")  # no separators, quotes, ~, $, *, >, NUL…: nothing a shell would expand


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else ""


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _under(path: str, directory: str) -> bool:
    return directory == "" or path == directory or path.startswith(directory + "/")


def _count_lines(content: str) -> int:
    return len(content.splitlines())


class FileSystemEnv(ToolEnv):
    """Files and folders in a private workspace: list, navigate, read, write, move, copy, delete, search."""

    domain = DOMAIN

    def __init__(self) -> None:
        super().__init__()
        self._files: dict[str, str] = {}
        self._dirs: set[str] = {""}
        self._cwd = ""

    # -- state ------------------------------------------------------------------------------------------------
    def _setup(self, setup: dict[str, Any]) -> None:
        self._files, self._dirs, self._cwd = {}, {""}, ""
        try:
            for directory in setup.get("dirs", []):
                self._add_dirs(self._resolve(directory))
            for path, content in setup.get("files", {}).items():
                resolved = self._resolve(path)
                self._add_dirs(_parent(resolved))
                self._files[resolved] = str(content)
            self._cwd = self._resolve(setup.get("cwd") or ".")
        except ToolError as exc:  # a task file, not a model, wrote this path: bad input, not a tool error
            raise BadInput(f"filesystem task setup: {exc}") from None

    def _add_dirs(self, path: str) -> None:
        while path and path not in self._dirs:
            self._dirs.add(path)
            path = _parent(path)

    def _check_state(self, expected: dict[str, Any]) -> bool:
        """`files`: path → exact content, or None for "must not exist"; `dirs`: folders that must exist."""
        for path, content in expected.get("files", {}).items():
            if content is None and (path in self._files or path in self._dirs):
                return False
            if content is not None and self._files.get(path) != content:
                return False
        return all(directory in self._dirs for directory in expected.get("dirs", []))

    # -- path handling: every tool goes through _resolve ------------------------------------------------------
    def _resolve(self, path: str) -> str:
        """Workspace-relative path ('' = root) of `path` taken from the current directory, or ToolError."""
        if not isinstance(path, str) or not path.strip():
            raise ToolError(f"invalid path {path!r}: give a path relative to the current directory")
        if "\x00" in path:
            raise ToolError("invalid path: it contains a NUL byte")
        if len(path) > MAX_PATH_CHARS:
            raise ToolError(f"File name too long: the path has {len(path)} characters (max {MAX_PATH_CHARS})")
        text = path.strip()
        if text.startswith(("/", "~")) or "\\" in text or re.match(r"^[A-Za-z]:", text):
            raise ToolError(
                f"{path!r}: absolute paths are not allowed; use a path relative to the current directory "
                f"({self._shown(self._cwd)})"
            )
        parts = self._cwd.split("/") if self._cwd else []
        for part in text.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise ToolError(f"{path!r}: Permission denied: it leads outside the workspace root")
                parts.pop()
                continue
            _check_name(part, path)
            parts.append(part)
        if len(parts) > MAX_DEPTH:
            raise ToolError(f"{path!r}: too deeply nested (max {MAX_DEPTH} levels)")
        return "/".join(parts)

    @staticmethod
    def _shown(path: str) -> str:
        return path or "."

    def _existing(self, path: str, original: str) -> str:
        resolved = self._resolve(path)
        if resolved not in self._files and resolved not in self._dirs:
            raise ToolError(f"{original}: No such file or directory")
        return resolved

    def _existing_file(self, path: str) -> str:
        resolved = self._existing(path, path)
        if resolved in self._dirs:
            raise ToolError(f"{path}: Is a directory")
        return resolved

    def _existing_dir(self, path: str) -> str:
        resolved = self._existing(path, path)
        if resolved in self._files:
            raise ToolError(f"{path}: Not a directory")
        return resolved

    def _children(self, directory: str) -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries directly inside `directory`, sorted by name."""
        entries = [(_basename(d), True) for d in self._dirs if d and _parent(d) == directory]
        entries += [(_basename(f), False) for f in self._files if _parent(f) == directory]
        return sorted(entries)

    def _files_under(self, resolved: str) -> list[str]:
        if resolved in self._files:
            return [resolved]
        return sorted(f for f in self._files if _under(f, resolved))

    def _display(self, found: str, root: str, given: str) -> str:
        """Show a hit the way grep/find do: the path given by the caller, then the rest below it."""
        if found == root:
            return given
        rest = found[len(root) + 1 :] if root else found
        prefix = given.strip().rstrip("/")
        return rest if prefix in ("", ".") else f"{prefix}/{rest}"

    # -- tools ------------------------------------------------------------------------------------------------
    def current_directory(self) -> str:
        """Show the current directory, relative to the workspace root ("." is the root)."""
        return self._shown(self._cwd)

    def list_directory(self, path: str = ".") -> str:
        """List the entries of a directory, one per line; directories end with "/".

        Args:
            path: Directory to list, relative to the current directory (default: the current directory).
        """
        resolved = self._existing_dir(path)
        lines = [name + ("/" if is_dir else "") for name, is_dir in self._children(resolved)]
        return "\n".join(lines) if lines else "(empty directory)"

    def change_directory(self, path: str) -> str:
        """Change the current directory; later relative paths start from it.

        Args:
            path: Directory to move into, e.g. "logs", ".." or "notes/2024".
        """
        self._cwd = self._existing_dir(path)
        return f"current directory: {self._shown(self._cwd)}"

    def read_file(self, path: str) -> str:
        """Return the full text of a file.

        Args:
            path: File to read, relative to the current directory, e.g. "config/settings.ini".
        """
        return self._files[self._existing_file(path)]

    def write_file(self, path: str, content: str, append: bool = False) -> str:
        """Create or overwrite a text file (its folder must already exist), or append to it.

        Args:
            path: File to write, relative to the current directory.
            content: The text to write.
            append: Add to the end of an existing file instead of replacing it.
        """
        resolved = self._resolve(path)
        if not isinstance(content, str):
            raise ToolError("content must be a string")
        if resolved in self._dirs:
            raise ToolError(f"{path}: Is a directory")
        if _parent(resolved) not in self._dirs:
            raise ToolError(f"{path}: No such file or directory (create the folder first)")
        new_content = self._files.get(resolved, "") + content if append else content
        self._check_capacity(resolved, new_content)
        self._files[resolved] = new_content
        return f"wrote {len(content)} characters to {self._shown(resolved)}"

    def _check_capacity(self, resolved: str, new_content: str) -> None:
        if len(new_content) > MAX_FILE_CHARS:
            raise ToolError(f"File too large: {len(new_content)} characters (max {MAX_FILE_CHARS})")
        if resolved not in self._files and len(self._files) >= MAX_FILES:
            raise ToolError(f"No space left on device: at most {MAX_FILES} files")
        total = sum(len(c) for p, c in self._files.items() if p != resolved) + len(new_content)
        if total > MAX_TOTAL_CHARS:
            raise ToolError(
                f"No space left on device: the workspace holds at most {MAX_TOTAL_CHARS} characters"
            )

    def make_directory(self, path: str, parents: bool = False) -> str:
        """Create a directory.

        Args:
            path: Directory to create, relative to the current directory.
            parents: Also create missing parent directories (like mkdir -p); no error if it already exists.
        """
        resolved = self._resolve(path)
        if resolved in self._files:
            raise ToolError(f"{path}: File exists (it is a file)")
        if resolved in self._dirs:
            if parents:
                return f"directory {self._shown(resolved)} already exists"
            raise ToolError(f"{path}: File exists")
        if not parents and _parent(resolved) not in self._dirs:
            raise ToolError(f"{path}: No such file or directory (parent folder missing; use parents=true)")
        ancestors = resolved.split("/")
        for depth in range(1, len(ancestors)):
            if "/".join(ancestors[:depth]) in self._files:
                raise ToolError(f"{path}: Not a directory")
        self._add_dirs(resolved)
        return f"created directory {self._shown(resolved)}"

    def _target(self, source: str, destination: str) -> str:
        """Where `source` lands: inside `destination` if that is a folder (like mv/cp), else at it."""
        resolved = self._resolve(destination)
        if resolved in self._dirs:
            resolved = f"{resolved}/{_basename(source)}" if resolved else _basename(source)
        if _parent(resolved) not in self._dirs:
            raise ToolError(f"{destination}: No such file or directory (the target folder does not exist)")
        if resolved in self._dirs:
            raise ToolError(f"{destination}: File exists (a directory is in the way)")
        return resolved

    def move_path(self, source: str, destination: str) -> str:
        """Move or rename a file or directory. If the destination is an existing folder, move into it.

        Args:
            source: File or directory to move, relative to the current directory.
            destination: New path, or an existing folder to move it into.
        """
        resolved = self._existing(source, source)
        if resolved == "":
            raise ToolError("cannot move the workspace root")
        target = self._target(resolved, destination)
        if target == resolved:
            raise ToolError(f"{source} and {destination} are the same file")
        if resolved in self._dirs:
            return self._move_directory(resolved, target, source)
        self._files[target] = self._files.pop(resolved)
        return f"moved {self._shown(resolved)} -> {self._shown(target)}"

    def _move_directory(self, resolved: str, target: str, source: str) -> str:
        if _under(target, resolved):
            raise ToolError(f"cannot move {source} into itself")
        if target in self._files:
            raise ToolError(f"cannot overwrite file {self._shown(target)} with directory {source}")

        def renamed(path: str) -> str:
            return target + path[len(resolved) :]

        self._dirs = {renamed(d) if _under(d, resolved) else d for d in self._dirs}
        self._files = {renamed(f) if _under(f, resolved) else f: c for f, c in self._files.items()}
        if _under(self._cwd, resolved):
            self._cwd = renamed(self._cwd)
        return f"moved {self._shown(resolved)}/ -> {self._shown(target)}/"

    def copy_file(self, source: str, destination: str) -> str:
        """Copy a file. If the destination is an existing folder, copy into it under the same name.

        Args:
            source: File to copy, relative to the current directory.
            destination: Path of the copy, or an existing folder to put it in.
        """
        resolved = self._existing_file(source)
        target = self._target(resolved, destination)
        if target == resolved:
            raise ToolError(f"{source} and {destination} are the same file")
        self._check_capacity(target, self._files[resolved])
        self._files[target] = self._files[resolved]
        return f"copied {self._shown(resolved)} -> {self._shown(target)}"

    def remove_path(self, path: str, recursive: bool = False) -> str:
        """Delete a file, or a directory (an empty one, or any with recursive=true).

        Args:
            path: File or directory to delete, relative to the current directory.
            recursive: Delete a directory together with everything inside it.
        """
        resolved = self._existing(path, path)
        if resolved in self._files:
            del self._files[resolved]
            return f"removed {self._shown(resolved)}"
        if resolved == "" or _under(self._cwd, resolved):
            raise ToolError(f"{path}: cannot remove the workspace root or the current directory")
        if self._children(resolved) and not recursive:
            raise ToolError(f"{path}: Directory not empty (use recursive=true)")
        self._dirs = {d for d in self._dirs if not _under(d, resolved)}
        self._files = {f: c for f, c in self._files.items() if not _under(f, resolved)}
        return f"removed {self._shown(resolved)}/"

    def grep_files(self, pattern: str, path: str = ".", ignore_case: bool = False) -> str:
        """Find lines containing a text (plain substring, not a regex) in a file or in all files under a folder.

        Args:
            pattern: The text to look for.
            path: File or directory to search, relative to the current directory (default: current directory).
            ignore_case: Match regardless of upper/lower case.
        """
        if not isinstance(pattern, str) or not pattern:
            raise ToolError("pattern is empty: give the text to search for")
        resolved = self._existing(path, path)
        needle = pattern.lower() if ignore_case else pattern
        hits = []
        for found in self._files_under(resolved):
            for number, line in enumerate(self._files[found].splitlines(), start=1):
                if needle in (line.lower() if ignore_case else line):
                    hits.append(f"{self._display(found, resolved, path)}:{number}:{line}")
        if not hits:
            return "(no matches)"
        more = f"\n... {len(hits) - MAX_MATCHES} more matches" if len(hits) > MAX_MATCHES else ""
        return "\n".join(hits[:MAX_MATCHES]) + more

    def find_files(self, name_pattern: str, path: str = ".") -> str:
        """Find files and folders whose name matches a shell wildcard pattern, searching all subfolders.

        Args:
            name_pattern: Wildcard pattern for the name, e.g. "*.log" or "report_202?.csv".
            path: Directory to search from, relative to the current directory (default: current directory).
        """
        if not isinstance(name_pattern, str) or not name_pattern or len(name_pattern) > MAX_NAME_CHARS:
            raise ToolError("name_pattern must be a non-empty wildcard pattern such as '*.txt'")
        resolved = self._existing_dir(path)
        found = [f for f in self._files if _under(f, resolved) and f != resolved]
        found += [d + "/" for d in self._dirs if d and _under(d, resolved) and d != resolved]
        hits = sorted(p for p in found if fnmatch.fnmatchcase(_basename(p.rstrip("/")), name_pattern))
        shown = [
            self._display(p.rstrip("/"), resolved, path) + ("/" if p.endswith("/") else "") for p in hits
        ]
        return "\n".join(shown[:MAX_MATCHES]) if shown else "(no matches)"

    def file_info(self, path: str) -> str:
        """Type, size and line count of a file (or the number of entries of a directory).

        Args:
            path: File or directory, relative to the current directory.
        """
        resolved = self._existing(path, path)
        if resolved in self._dirs:
            info: dict[str, Any] = {"path": self._shown(resolved), "type": "directory"}
            info["entries"] = len(self._children(resolved))
        else:
            content = self._files[resolved]
            info = {"path": self._shown(resolved), "type": "file", "size_bytes": len(content.encode("utf-8"))}
            info["lines"] = _count_lines(content)
        return json.dumps(info)


def _check_name(part: str, path: str) -> None:
    if len(part) > MAX_NAME_CHARS:
        raise ToolError(
            f"File name too long: a path component has {len(part)} characters (max {MAX_NAME_CHARS})"
        )
    if not _NAME_RE.match(part):
        raise ToolError(
            f"{path!r}: invalid name {part!r}; names may use letters, digits, spaces, '.', '-' and '_' only"
        )


# == task sampler ==============================================================================================
