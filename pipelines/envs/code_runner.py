"""A Python code runner for code tasks (write a function, run its tests, fix, pass), and its task sampler.

Every execution happens in `sandbox.run_sandboxed` (a separate, locked-down process; see sandbox.py). Tests are
judged on *this* side: the sandbox only reports what the function returned (its repr, parsed here with
`ast.literal_eval`) for each set of arguments, and the expected values never enter it, so code cannot fake a
pass by printing a report or by reading the hidden tests; it can only pass by returning the right values.

Two task kinds: `function` (a bank of small string/list/math/dict problems with reference solutions, a plausible
buggy first version for the fail → fix → pass pattern, visible examples and hidden tests) and `compute` (answer a
question by running a snippet; its mistake is a snippet that crashes). Both banks live in pipelines/tasks/code_problems.py.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import math
from dataclasses import dataclass
from typing import Any

from pipelines.envs.base import ToolEnv, ToolError
from pipelines.sandbox import Limits, SandboxResult, SandboxSettings, admit_model_code, run_sandboxed

DOMAIN = "coderunner"
SOLUTION_FILE = "solution.py"
SOLUTION_MODULE = SOLUTION_FILE.removesuffix(".py")
MAX_CODE_CHARS = 20_000
MAX_OBSERVATION_CHARS = 4_000
PER_TEST_SECONDS = 1.0
SCRATCH_LIMITS = Limits(cpu_seconds=2, wall_seconds=5.0)
TEST_LIMITS = Limits(cpu_seconds=5, wall_seconds=10.0, output_bytes=256 * 1024)
_RESULTS_MARKER = "@@midtrain-test-results@@"


# -- test cases and their verdicts --------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    """One test: the arguments the function gets, what it must return, and whether the model may see it."""

    args: list[Any]
    expected: Any
    hidden: bool


@dataclass(frozen=True)
class Verdict:
    case: Case
    passed: bool
    detail: str  # what happened, for a failing visible test


def call_text(function: str, args: list[Any], limit: int = 200) -> str:
    text = f"{function}({', '.join(repr(a) for a in args)})"
    return text if len(text) <= limit else text[: limit - 4] + " …)"


def same_value(got: Any, expected: Any) -> bool:
    """Equality after JSON, strict about bool vs number, tolerant about float rounding."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(expected, list) and isinstance(got, list):
        return len(got) == len(expected) and all(same_value(g, e) for g, e in zip(got, expected, strict=True))
    if isinstance(expected, dict) and isinstance(got, dict):
        return got.keys() == expected.keys() and all(same_value(got[k], expected[k]) for k in expected)
    return type(got) is type(expected) and got == expected


def run_test_cases(code: str, function: str, cases: list[Case]) -> list[Verdict]:
    """Run `function` from `code` on every case's arguments in one sandboxed process; judge the values here."""
    arguments = [c.args for c in cases]  # JSON values, so their repr is a Python literal
    program = f"{_harness_source()}\n_test_harness({function!r}, {arguments!r}, {PER_TEST_SECONDS!r})\n"
    result = run_sandboxed(program, limits=TEST_LIMITS, files={SOLUTION_FILE: code})
    reports = _harness_reports(result, len(cases))
    return [_verdict(function, case, report) for case, report in zip(cases, reports, strict=True)]


@functools.cache
def _harness_source() -> str:
    return inspect.getsource(_test_harness)


def _harness_reports(result: SandboxResult, n: int) -> list[tuple[str, str]]:
    """The harness's per-case (kind, text) reports, or one failure reason for all when the run itself broke."""
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(_RESULTS_MARKER):
            reports = _literal(line[len(_RESULTS_MARKER) :])
            if isinstance(reports, list) and len(reports) == n and all(_is_report(r) for r in reports):
                return reports
    if result.violations:
        reason = f"blocked by the sandbox: {result.violations[0]}"
    elif result.killed_reason:
        reason = f"the test run was killed ({result.killed_reason.replace('_', ' ')} limit)"
    else:
        tail = result.stderr.strip().splitlines()[-1:] or [f"exit code {result.exit_code}"]
        reason = f"the test run ended before reporting: {tail[0][:300]}"
    return [("error", reason)] * n


def _is_report(report: Any) -> bool:
    return isinstance(report, tuple) and len(report) == 2 and report[0] in ("value", "error")


def _literal(text: str) -> Any:
    """ast.literal_eval of sandbox output (size-capped by the sandbox); anything unparsable is None."""
    try:
        return ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def _verdict(function: str, case: Case, report: tuple[str, str]) -> Verdict:
    call = call_text(function, case.args)
    kind, text = report
    if kind == "error":
        return Verdict(case, False, f"{call} raised {str(text)[:300]}")
    try:
        got = json.loads(json.dumps(ast.literal_eval(str(text)), sort_keys=True))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return Verdict(
            case, False, f"{call} returned {_clip(str(text), 200)}, which is not a plain JSON-like value"
        )
    if same_value(got, case.expected):
        return Verdict(case, True, f"{call} == {case.expected!r}")
    return Verdict(case, False, f"{call} returned {_clip(repr(got), 300)}, expected {case.expected!r}")


def format_verdicts(function: str, verdicts: list[Verdict]) -> str:
    visible = [v for v in verdicts if not v.case.hidden]
    hidden = [v for v in verdicts if v.case.hidden]
    passed = sum(v.passed for v in verdicts)
    head = f"Tests for {function}: {passed} of {len(verdicts)} passed"
    if hidden:
        head += (
            f" ({sum(v.passed for v in visible)}/{len(visible)} examples, {sum(v.passed for v in hidden)}/"
        )
        head += f"{len(hidden)} hidden)"
    lines = [head + "."]
    lines += [("PASS " if v.passed else "FAIL ") + v.detail for v in visible]
    lines += [f"FAIL hidden test {i}" for i, v in enumerate(hidden, start=1) if not v.passed]
    return "\n".join(lines)


def _test_harness(function_name, cases, per_test_seconds):  # sandbox only
    """Call the solution on each argument list; print a list of ("value", repr) / ("error", text) after a marker.

    Only modules the interpreter has loaded at startup (io, sys, _signal) keep a test run near 50 ms.
    """
    import _signal
    import io  # this function's source runs alone in the sandbox: it imports what it uses
    import sys

    def on_alarm(signum, frame):
        raise TimeoutError(f"took longer than {per_test_seconds} s")

    real_stdout = sys.stdout
    _signal.signal(_signal.SIGALRM, on_alarm)
    try:
        sys.stdout = io.StringIO()  # prints from the solution must not mix with the report
        import solution

        function = getattr(solution, function_name)
    except BaseException as exc:
        reports = [("error", f"importing solution.py failed: {type(exc).__name__}: {exc}"[:500])] * len(cases)
    else:
        reports = []
        for args in cases:
            _signal.setitimer(_signal.ITIMER_REAL, per_test_seconds)
            try:
                sys.stdout = io.StringIO()
                reports.append(("value", repr(function(*args))[:100_000]))
            except BaseException as exc:
                reports.append(("error", f"{type(exc).__name__}: {exc}"[:500]))
            finally:
                _signal.setitimer(_signal.ITIMER_REAL, 0)
    real_stdout.write("@@midtrain-test-results@@" + repr(reports) + "\n")  # the marker is _RESULTS_MARKER


def _clip(text: str, limit: int = MAX_OBSERVATION_CHARS) -> str:
    return text if len(text) <= limit else text[: limit // 2] + "\n[… clipped …]\n" + text[-limit // 2 :]


def _defined_functions(code: str) -> list[str]:
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        raise ToolError(f"syntax error on line {exc.lineno}: {exc.msg}") from None
    return [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]


# -- the environment ----------------------------------------------------------------------------------------
class CodeRunnerEnv(ToolEnv):
    """Write, test and run Python in a sandbox (separate process: no network, no files outside its folder)."""

    domain = DOMAIN

    def __init__(self) -> None:
        super().__init__()
        self._solution: str | None = None
        self._function: str | None = None
        self._cases: list[Case] = []
        self._verdict_cache: dict[str, list[Verdict]] = {}

    def write_solution(self, code: str) -> str:
        """Save Python code as the task's solution (solution.py), replacing any earlier version.

        Args:
            code: The complete source of solution.py, defining the requested function.
        """
        code = str(code)
        if not code.strip():
            raise ToolError("the solution is empty")
        if len(code) > MAX_CODE_CHARS:
            raise ToolError(f"the solution is {len(code)} characters; the limit is {MAX_CODE_CHARS}")
        defined = _defined_functions(code)
        if self._function is not None and self._function not in defined:
            found = ", ".join(f"`{d}`" for d in defined) or "no top-level functions"
            raise ToolError(
                f"the solution must define a function named `{self._function}`; it defines {found}"
            )
        self._solution = code
        names = ", ".join(defined) or "no functions"
        return f"Saved {SOLUTION_FILE} ({len(code.splitlines())} lines; defines {names})."

    def run_tests(self) -> str:
        """Run the task's tests (the examples and hidden tests) against the saved solution and report each result."""
        if self._function is None or not self._cases:
            raise ToolError("this task has no tests; use run_python to run code")
        if self._solution is None:
            raise ToolError("no solution saved yet: call write_solution first")
        return format_verdicts(self._function, self._verdicts(self._solution))

    def run_python(self, code: str) -> str:
        """Run a Python script in a fresh sandbox and return what it printed. solution.py is importable.

        Args:
            code: The script to run, e.g. "from solution import f\\nprint(f(3))".
        """
        code = str(code)
        if len(code) > MAX_CODE_CHARS:
            raise ToolError(f"the script is {len(code)} characters; the limit is {MAX_CODE_CHARS}")
        files = {SOLUTION_FILE: self._solution} if self._solution is not None else {}
        result = run_sandboxed(code, limits=SCRATCH_LIMITS, files=files)
        return _script_observation(result)

    # -- private --------------------------------------------------------------------------------------------
    def _setup(self, setup: dict[str, Any]) -> None:
        self._solution = None
        self._verdict_cache = {}
        self._function = setup.get("function")
        self._cases = [Case(t["args"], t["expected"], bool(t.get("hidden"))) for t in setup.get("tests", [])]

    def _verdicts(self, code: str) -> list[Verdict]:
        if code not in self._verdict_cache:  # the reward re-checks the last tested solution: run it once
            assert self._function is not None
            self._verdict_cache = {code: run_test_cases(code, self._function, self._cases)}
        return self._verdict_cache[code]

    def _check_state(self, expected: dict[str, Any]) -> bool:
        if expected.get("all_tests_pass"):
            return self._solution is not None and all(v.passed for v in self._verdicts(self._solution))
        return True


def _script_observation(result: SandboxResult) -> str:
    """stdout for a clean run; a ToolError (with the output so far) for a crash, a kill or a blocked action."""
    output = _clip(result.stdout.strip())
    errors = _clip(result.stderr.strip(), MAX_OBSERVATION_CHARS // 2)
    if result.violations:
        problem = f"blocked by the sandbox: {result.violations[0]}"
    elif result.killed_reason == "wall_time":
        problem = f"killed: the script ran longer than {SCRATCH_LIMITS.wall_seconds:g} s"
    elif result.killed_reason == "cpu_time":
        problem = f"killed: the script used more than {SCRATCH_LIMITS.cpu_seconds} s of CPU time"
    elif result.killed_reason == "output_limit":
        problem = f"killed: the script printed more than {SCRATCH_LIMITS.output_bytes} bytes"
    elif result.killed_reason == "disk_limit":
        problem = f"killed: the script wrote more than {SCRATCH_LIMITS.disk_mb} MB to disk"
    elif result.killed_reason:
        problem = f"killed ({result.killed_reason})"
    elif result.exit_code != 0:
        problem = f"the script failed (exit code {result.exit_code})"
    else:
        return output + (f"\n[stderr]\n{errors}" if errors else "") if output or errors else "(no output)"
    parts = [problem, errors and f"[stderr]\n{errors}", output and f"[stdout]\n{output}"]
    raise ToolError("\n".join(p for p in parts if p))


def admit_model_code_for(domains: Any, settings: SandboxSettings, stage: str) -> dict[str, Any] | None:
    """Before a stage runs model-written code (it has this domain): check the sandbox meets `settings` (else
    SandboxUnavailable, exit 2) and make it the process's; the isolation report for the stage's outputs."""
    if DOMAIN not in domains:
        return None
    return admit_model_code(settings, stage).as_dict()
