"""Exceptions that map to the CLI's exit codes (0 ok, 2 bad input, 1 internal failure)."""

from __future__ import annotations


class MidtrainError(Exception):
    """An internal failure: exit code 1."""

    exit_code = 1


class BadInput(MidtrainError):
    """Bad config, data or arguments: exit code 2. The message names the file, line/key or row and the fix."""

    exit_code = 2
